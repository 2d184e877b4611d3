//! Zipkin v2 JSON: a list of span objects with hex ids and microsecond times.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{check_times, excerpt, kind_of, non_empty, Annotation, Endpoint, Span, SpanError, ZipkinError};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    trace_id: Option<String>,
    id: Option<String>,
    parent_id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    local_endpoint: Option<RawEndpoint>,
    remote_endpoint: Option<RawEndpoint>,
    annotations: Option<Vec<Option<RawAnnotation>>>,
    tags: Option<BTreeMap<String, Option<String>>>,
    shared: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEndpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct RawAnnotation {
    timestamp: Option<u64>,
    value: Option<String>,
}

/// Decodes a JSON list of Zipkin v2 spans (`null` entries are skipped; `null` is no spans).
pub fn decode_json(body: &[u8]) -> Result<Vec<Span>, ZipkinError> {
    let raw: Option<Vec<Option<RawSpan>>> = serde_json::from_slice(body)?;
    raw.unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, span)| span.map(|s| (index, s)))
        .map(|(index, span)| span_of(span).map_err(|error| ZipkinError::Span { index, error }))
        .collect()
}

fn span_of(raw: RawSpan) -> Result<Span, SpanError> {
    let trace_id = match raw.trace_id.as_deref() {
        None | Some("") => return Err(SpanError::Missing { field: "traceId" }),
        Some(t) => hex_id::<16>("traceId", t)?,
    };
    if trace_id == [0; 16] {
        return Err(SpanError::Zero { field: "traceId" });
    }
    let id = match raw.id.as_deref() {
        None | Some("") => return Err(SpanError::Missing { field: "id" }),
        Some(t) => hex_id::<8>("id", t)?,
    };
    if id == [0; 8] {
        return Err(SpanError::Zero { field: "id" });
    }
    let parent_id = match raw.parent_id.as_deref() {
        None | Some("") => None,
        Some(t) => Some(hex_id::<8>("parentId", t)?),
    }
    .filter(|p| *p != [0; 8] && *p != id);
    let mut annotations = Vec::new();
    for a in raw.annotations.unwrap_or_default().into_iter().flatten() {
        let timestamp_us = a.timestamp.filter(|t| *t > 0).ok_or(SpanError::AnnotationWithoutTimestamp)?;
        annotations.push(Annotation { timestamp_us, value: a.value.unwrap_or_default() });
    }
    let span = Span {
        trace_id,
        id,
        parent_id,
        kind: raw.kind.as_deref().and_then(kind_of),
        name: raw.name.unwrap_or_default(),
        timestamp_us: raw.timestamp.filter(|t| *t > 0),
        duration_us: raw.duration.unwrap_or(0),
        local_endpoint: raw.local_endpoint.map(endpoint).transpose()?.and_then(non_empty),
        remote_endpoint: raw.remote_endpoint.map(endpoint).transpose()?.and_then(non_empty),
        annotations,
        tags: raw.tags.unwrap_or_default().into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
        shared: raw.shared.unwrap_or(false),
    };
    check_times(&span)?;
    Ok(span)
}

fn endpoint(raw: RawEndpoint) -> Result<Endpoint, SpanError> {
    let bad = |field, value: &str, family| SpanError::BadAddress { field, value: excerpt(value), family };
    let ipv4 = match raw.ipv4.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| bad("ipv4", t, "IPv4"))?),
    };
    let ipv6 = match raw.ipv6.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => Some(t.parse().map_err(|_| bad("ipv6", t, "IPv6"))?),
    };
    Ok(Endpoint { service_name: raw.service_name.unwrap_or_default(), ipv4, ipv6, port: raw.port.unwrap_or(0) })
}

/// Parses 1 to `2 * N` hex digits into `N` big-endian bytes, left-padded with zeros.
fn hex_id<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], SpanError> {
    let bad = || SpanError::BadHex { field, value: excerpt(text), max: 2 * N };
    if text.len() > 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = format!("{text:0>width$}", width = 2 * N);
    let mut out = [0u8; N];
    hex::decode_to_slice(padded, &mut out).map_err(|_| bad())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn a_full_span_decodes() {
        let body =
            br#"[{"traceId":"5982fe77008310cc80f1da5e10147517","id":"bd7a977555f6b982","parentId":"90394f6bcffb5d13",
            "name":"get /api","kind":"SERVER","timestamp":1556604172355737,"duration":1431,"debug":true,"shared":true,
            "localEndpoint":{"serviceName":"backend","ipv4":"192.168.99.1","port":3306},
            "remoteEndpoint":{"ipv6":"2001:db8::c001","port":58648},
            "annotations":[{"timestamp":1556604172355740,"value":"wr"}],
            "tags":{"http.method":"GET","nothing":null}}, null]"#;
        let spans = decode_json(body).unwrap();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(hex::encode(s.trace_id), "5982fe77008310cc80f1da5e10147517");
        assert_eq!(s.parent_id.map(hex::encode).as_deref(), Some("90394f6bcffb5d13"));
        assert_eq!((s.kind, s.timestamp_us, s.duration_us), (Some(Kind::Server), Some(1556604172355737), 1431));
        let local = s.local_endpoint.as_ref().unwrap();
        assert_eq!(
            (local.service_name.as_str(), local.ipv4.unwrap().to_string(), local.port),
            ("backend", "192.168.99.1".into(), 3306)
        );
        assert_eq!(s.remote_endpoint.as_ref().unwrap().ipv6.unwrap().to_string(), "2001:db8::c001");
        assert_eq!(s.tags.get("nothing").map(String::as_str), Some(""));
        assert_eq!(s.annotations[0].value, "wr");
    }

    #[test]
    fn short_ids_are_left_padded_and_a_self_parent_is_none() {
        let spans = decode_json(br#"[{"traceId":"a","id":"B","parentId":"b"}]"#).unwrap();
        assert_eq!(hex::encode(spans[0].trace_id), "0000000000000000000000000000000a");
        assert_eq!(hex::encode(spans[0].id), "000000000000000b");
        assert_eq!((spans[0].parent_id, spans[0].timestamp_us), (None, None));
        assert!(decode_json(b"null").unwrap().is_empty());
        assert!(decode_json(b"[]").unwrap().is_empty());
    }

    #[test]
    fn bad_spans_are_refused_by_position() {
        for (body, want) in [
            (r#"[{"id":"1"}]"#, "span 0: traceId is required"),
            (r#"[{"traceId":"1","id":"1"},{"traceId":"xyz","id":"1"}]"#, "span 1: traceId \"xyz\""),
            (r#"[{"traceId":"1","id":"0"}]"#, "span 0: id is all zeros"),
            (r#"[{"traceId":"1","id":"12345678901234567"}]"#, "expected 1 to 16"),
            (r#"[{"traceId":"1","id":"1","localEndpoint":{"ipv4":"300.1.1.1"}}]"#, "not an IPv4"),
            (r#"[{"traceId":"1","id":"1","annotations":[{"value":"x"}]}]"#, "no timestamp"),
            (r#"[{"traceId":"1","id":"1","timestamp":9300000000000000000}]"#, "after the year 2262"),
            (
                r#"[{"traceId":"1","id":"1","timestamp":9000000000000000,"duration":300000000000000}]"#,
                "after the year 2262",
            ),
            (
                r#"[{"traceId":"1","id":"1","annotations":[{"timestamp":18446744073709551615,"value":"x"}]}]"#,
                "annotation timestamp",
            ),
        ] {
            let e = decode_json(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        for body in [
            r#"{}"#,
            r#"[{"traceId":"1","id":"1","tags":{"a":1}}]"#,
            r#"[{"traceId":"1","id":"1","timestamp":-1}]"#,
            "[",
            "",
        ] {
            assert!(matches!(decode_json(body.as_bytes()), Err(ZipkinError::Json(_))), "{body}");
        }
    }
}
