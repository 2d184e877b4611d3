//! Zipkin v2 protobuf (`zipkin.proto3.ListOfSpans`, openzipkin/zipkin-api `zipkin.proto`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use prost::Message;

use crate::{check_times, non_empty, Annotation, Endpoint, Kind, Span, SpanError, ZipkinError};

/// `zipkin.proto3.ListOfSpans`.
#[derive(Clone, PartialEq, Message)]
pub struct ListOfSpans {
    /// The spans.
    #[prost(message, repeated, tag = "1")]
    pub spans: Vec<ProtoSpan>,
}

/// `zipkin.proto3.Span`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoSpan {
    /// 8 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// Empty or 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub parent_id: Vec<u8>,
    /// 8 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub id: Vec<u8>,
    /// 0 unspecified, 1 client, 2 server, 3 producer, 4 consumer.
    #[prost(int32, tag = "4")]
    pub kind: i32,
    /// Operation name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// Epoch microseconds.
    #[prost(fixed64, tag = "6")]
    pub timestamp: u64,
    /// Microseconds.
    #[prost(uint64, tag = "7")]
    pub duration: u64,
    /// Where the span was recorded.
    #[prost(message, optional, tag = "8")]
    pub local_endpoint: Option<ProtoEndpoint>,
    /// The other side.
    #[prost(message, optional, tag = "9")]
    pub remote_endpoint: Option<ProtoEndpoint>,
    /// Timestamped events.
    #[prost(message, repeated, tag = "10")]
    pub annotations: Vec<ProtoAnnotation>,
    /// String tags.
    #[prost(btree_map = "string, string", tag = "11")]
    pub tags: BTreeMap<String, String>,
    /// Debug flag (ignored, as the Collector does).
    #[prost(bool, tag = "12")]
    pub debug: bool,
    /// Shared flag (ignored, as the Collector does).
    #[prost(bool, tag = "13")]
    pub shared: bool,
}

/// `zipkin.proto3.Endpoint`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoEndpoint {
    /// Service name.
    #[prost(string, tag = "1")]
    pub service_name: String,
    /// 4 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub ipv4: Vec<u8>,
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv6: Vec<u8>,
    /// Port.
    #[prost(int32, tag = "4")]
    pub port: i32,
}

/// `zipkin.proto3.Annotation`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAnnotation {
    /// Epoch microseconds.
    #[prost(fixed64, tag = "1")]
    pub timestamp: u64,
    /// The text.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Decodes a protobuf `ListOfSpans`.
pub fn decode_protobuf(body: &[u8]) -> Result<Vec<Span>, ZipkinError> {
    let list = ListOfSpans::decode(body)?;
    list.spans
        .into_iter()
        .enumerate()
        .map(|(index, span)| span_of(span).map_err(|error| ZipkinError::Span { index, error }))
        .collect()
}

fn span_of(p: ProtoSpan) -> Result<Span, SpanError> {
    let mut trace_id = [0u8; 16];
    match p.trace_id.len() {
        16 => trace_id.copy_from_slice(&p.trace_id),
        8 => trace_id[8..].copy_from_slice(&p.trace_id),
        len => return Err(SpanError::BadLength { field: "trace_id", len, expected: "8 or 16" }),
    }
    if trace_id == [0; 16] {
        return Err(SpanError::Zero { field: "trace_id" });
    }
    let id: [u8; 8] =
        p.id.as_slice().try_into().map_err(|_| SpanError::BadLength { field: "id", len: p.id.len(), expected: "8" })?;
    if id == [0; 8] {
        return Err(SpanError::Zero { field: "id" });
    }
    let parent_id = match p.parent_id.len() {
        0 => None,
        8 => p.parent_id.as_slice().try_into().ok(),
        len => return Err(SpanError::BadLength { field: "parent_id", len, expected: "8" }),
    }
    .filter(|parent: &[u8; 8]| *parent != [0; 8] && *parent != id);
    let kind = match p.kind {
        1 => Some(Kind::Client),
        2 => Some(Kind::Server),
        3 => Some(Kind::Producer),
        4 => Some(Kind::Consumer),
        _ => None,
    };
    let span = Span {
        trace_id,
        id,
        parent_id,
        kind,
        name: p.name,
        timestamp_us: Some(p.timestamp).filter(|t| *t > 0),
        duration_us: p.duration,
        local_endpoint: p.local_endpoint.map(endpoint).transpose()?.and_then(non_empty),
        remote_endpoint: p.remote_endpoint.map(endpoint).transpose()?.and_then(non_empty),
        annotations: p
            .annotations
            .into_iter()
            .map(|a| Annotation { timestamp_us: a.timestamp, value: a.value })
            .collect(),
        tags: p.tags,
        shared: p.shared,
    };
    check_times(&span)?;
    Ok(span)
}

fn endpoint(p: ProtoEndpoint) -> Result<Endpoint, SpanError> {
    let ipv4 = match p.ipv4.len() {
        0 => None,
        4 => Some(Ipv4Addr::new(p.ipv4[0], p.ipv4[1], p.ipv4[2], p.ipv4[3])),
        len => return Err(SpanError::BadLength { field: "ipv4", len, expected: "4" }),
    };
    let ipv6 = match <[u8; 16]>::try_from(p.ipv6.as_slice()) {
        _ if p.ipv6.is_empty() => None,
        Ok(b) => Some(Ipv6Addr::from(b)),
        Err(_) => return Err(SpanError::BadLength { field: "ipv6", len: p.ipv6.len(), expected: "16" }),
    };
    let port = u16::try_from(p.port).map_err(|_| SpanError::BadPort(p.port))?;
    Ok(Endpoint { service_name: p.service_name, ipv4, ipv6, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> ProtoSpan {
        ProtoSpan {
            trace_id: vec![7; 16],
            id: vec![1; 8],
            parent_id: vec![2; 8],
            kind: 1,
            name: "call".into(),
            timestamp: 1_700_000_000_000_000,
            duration: 25,
            local_endpoint: Some(ProtoEndpoint {
                service_name: "a".into(),
                ipv4: vec![10, 0, 0, 1],
                ipv6: vec![],
                port: 80,
            }),
            remote_endpoint: None,
            annotations: vec![ProtoAnnotation { timestamp: 1_700_000_000_000_010, value: "cs".into() }],
            tags: [("k".to_string(), "v".to_string())].into(),
            debug: false,
            shared: false,
        }
    }

    #[test]
    fn a_list_decodes() {
        let body = ListOfSpans { spans: vec![span()] }.encode_to_vec();
        let spans = decode_protobuf(&body).unwrap();
        assert_eq!(spans[0].trace_id, [7; 16]);
        assert_eq!((spans[0].kind, spans[0].parent_id), (Some(Kind::Client), Some([2; 8])));
        assert_eq!(spans[0].local_endpoint.as_ref().unwrap().ipv4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        let mut short = span();
        short.trace_id = vec![7; 8];
        let spans = decode_protobuf(&ListOfSpans { spans: vec![short] }.encode_to_vec()).unwrap();
        assert_eq!(spans[0].trace_id[..8], [0; 8]);
    }

    #[test]
    fn bad_ids_and_endpoints_are_refused() {
        type Change = fn(&mut ProtoSpan);
        let cases: [(Change, &str); 5] = [
            (|s| s.trace_id = vec![1; 5], "trace_id has 5 bytes"),
            (|s| s.id = vec![], "id has 0 bytes"),
            (|s| s.local_endpoint.as_mut().unwrap().ipv4 = vec![1, 2], "ipv4 has 2 bytes"),
            (|s| s.local_endpoint.as_mut().unwrap().port = 70000, "port 70000"),
            (|s| s.timestamp = u64::MAX, "after the year 2262"),
        ];
        for (change, want) in cases {
            let mut s = span();
            change(&mut s);
            let e = decode_protobuf(&ListOfSpans { spans: vec![span(), s] }.encode_to_vec()).unwrap_err().to_string();
            assert!(e.starts_with("span 1: ") && e.contains(want), "{e}");
        }
        assert!(matches!(decode_protobuf(b"\x0a\xff"), Err(ZipkinError::Protobuf(_))));
    }
}
