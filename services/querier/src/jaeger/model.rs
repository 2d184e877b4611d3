//! Jaeger's JSON trace model (what the Jaeger UI and Grafana's Jaeger datasource read from
//! `/api/traces`), made from OTLP the way Jaeger's own OTLP translator does: one process per
//! resource (`service.name` and the other resource attributes as tags), span tags in the order
//! scope, attributes by key, `span.kind`, `otel.status_code`, `error`, `otel.status_description`,
//! `w3c.tracestate`; the parent as a `CHILD_OF` reference and links as `FOLLOWS_FROM`; events as
//! logs led by an `event` field; times in microseconds.

use std::collections::BTreeMap;

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans};
use serde::Serialize;
use serde_json::Value as Json;

/// A trace.
#[derive(Debug, Serialize)]
pub struct Trace {
    /// Trace id as Jaeger prints it ([`trace_id_text`]).
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Its spans.
    pub spans: Vec<Span>,
    /// Processes by id (`p1`, `p2`, ...).
    pub processes: BTreeMap<String, Process>,
    /// Always `null`.
    pub warnings: Option<Vec<String>>,
}

/// A span.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// Trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Span id, 16 hex digits.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Span name.
    pub operation_name: String,
    /// Parent and links.
    pub references: Vec<Reference>,
    /// Start, unix microseconds.
    pub start_time: i64,
    /// Microseconds.
    pub duration: i64,
    /// Attributes and the status, kind and scope as tags.
    pub tags: Vec<Tag>,
    /// Events.
    pub logs: Vec<Log>,
    /// Key of its process in the trace's `processes`.
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Always `null`.
    pub warnings: Option<Vec<String>>,
}

/// A reference to another span.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    pub ref_type: &'static str,
    /// Trace id of the referenced span.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Its span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A typed key/value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// `string`, `bool`, `int64`, `float64` or `binary`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The value (an int64 beyond 2^53 as a string, binary as base64).
    pub value: Json,
}

/// An event.
#[derive(Debug, Serialize)]
pub struct Log {
    /// Unix microseconds.
    pub timestamp: i64,
    /// `event` (the name) first, then its attributes.
    pub fields: Vec<Tag>,
}

/// The resource spans come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// `service.name`.
    pub service_name: String,
    /// The other resource attributes.
    pub tags: Vec<Tag>,
}

/// A trace id as Jaeger prints it: 16 hex digits when its high half is zero, else 32.
pub fn trace_id_text(id: &[u8]) -> String {
    match id {
        [0, 0, 0, 0, 0, 0, 0, 0, low @ ..] if low.len() == 8 => hex::encode(low),
        _ => hex::encode(id),
    }
}

/// Microseconds of unix nanoseconds.
fn micros(ns: u64) -> i64 {
    (ns / 1000) as i64
}

/// Largest integer a JavaScript number holds exactly; larger ones are sent as text.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn tag(key: impl Into<String>, value: Option<&AnyValue>) -> Tag {
    let key = key.into();
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Tag { key, ty: "string", value: Json::String(s.clone()) },
        Some(Value::BoolValue(b)) => Tag { key, ty: "bool", value: Json::Bool(*b) },
        Some(Value::IntValue(i)) if i.unsigned_abs() > MAX_SAFE_INTEGER => {
            Tag { key, ty: "int64", value: Json::String(i.to_string()) }
        }
        Some(Value::IntValue(i)) => Tag { key, ty: "int64", value: Json::from(*i) },
        Some(Value::DoubleValue(f)) => match serde_json::Number::from_f64(*f) {
            Some(n) => Tag { key, ty: "float64", value: Json::Number(n) },
            None => Tag { key, ty: "float64", value: Json::String(f.to_string()) },
        },
        Some(Value::BytesValue(b)) => {
            Tag { key, ty: "binary", value: Json::String(base64::engine::general_purpose::STANDARD.encode(b)) }
        }
        Some(other @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => {
            Tag { key, ty: "string", value: Json::String(json_text(other).to_string()) }
        }
        // A string-table index (profiles only) or no value: nothing to show.
        Some(Value::StringValueStrindex(_)) | None => Tag { key, ty: "string", value: Json::String(String::new()) },
    }
}

/// An array or map value as compact JSON (how Jaeger shows them).
fn json_text(v: &Value) -> Json {
    match v {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Value::BytesValue(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::ArrayValue(a) => Json::Array(a.values.iter().filter_map(|x| x.value.as_ref()).map(json_text).collect()),
        Value::KvlistValue(kv) => Json::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (kv.key.clone(), kv.value.as_ref().and_then(|v| v.value.as_ref()).map_or(Json::Null, json_text))
                })
                .collect(),
        ),
        Value::StringValueStrindex(_) => Json::Null,
    }
}

fn sorted_tags(kvs: &[KeyValue]) -> Vec<Tag> {
    let mut kvs: Vec<&KeyValue> = kvs.iter().collect();
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    kvs.into_iter().map(|kv| tag(kv.key.clone(), kv.value.as_ref())).collect()
}

fn string_tag(key: &str, value: &str) -> Tag {
    Tag { key: key.to_string(), ty: "string", value: Json::String(value.to_string()) }
}

/// The process of a resource.
fn process(rs: &ResourceSpans) -> Process {
    let attrs = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
    let service = attrs.iter().find(|kv| kv.key == "service.name");
    let service_name = match service.and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        _ if attrs.is_empty() => "OTLPResourceNoServiceName".to_string(),
        _ => String::new(),
    };
    let others: Vec<KeyValue> = attrs.iter().filter(|kv| kv.key != "service.name").cloned().collect();
    Process { service_name, tags: sorted_tags(&others) }
}

/// The span kind as Jaeger's `span.kind` tag (`None` for unspecified).
pub fn kind_name(kind: i32) -> Option<&'static str> {
    match SpanKind::try_from(kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Unspecified => None,
        SpanKind::Internal => Some("internal"),
        SpanKind::Server => Some("server"),
        SpanKind::Client => Some("client"),
        SpanKind::Producer => Some("producer"),
        SpanKind::Consumer => Some("consumer"),
    }
}

/// The spans of one trace (as the trace loader returns them) in Jaeger's model; `None` when
/// there are none.
pub fn trace(resource_spans: &[ResourceSpans]) -> Option<Trace> {
    let mut processes: Vec<Process> = Vec::new();
    let mut spans = Vec::new();
    for rs in resource_spans {
        let p = process(rs);
        let index = match processes.iter().position(|x| *x == p) {
            Some(i) => i,
            None => {
                processes.push(p);
                processes.len() - 1
            }
        };
        let process_id = format!("p{}", index + 1);
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref();
            for s in &ss.spans {
                let trace_id = trace_id_text(&s.trace_id);
                let mut tags = Vec::new();
                if let Some(scope) = scope {
                    if !scope.name.is_empty() {
                        tags.push(string_tag("otel.scope.name", &scope.name));
                    }
                    if !scope.version.is_empty() {
                        tags.push(string_tag("otel.scope.version", &scope.version));
                    }
                }
                tags.extend(sorted_tags(&s.attributes));
                if let Some(kind) = kind_name(s.kind) {
                    tags.push(string_tag("span.kind", kind));
                }
                let status = s.status.clone().unwrap_or_default();
                match StatusCode::try_from(status.code).unwrap_or(StatusCode::Unset) {
                    StatusCode::Ok => tags.push(string_tag("otel.status_code", "OK")),
                    StatusCode::Error => {
                        tags.push(string_tag("otel.status_code", "ERROR"));
                        tags.push(Tag { key: "error".into(), ty: "bool", value: Json::Bool(true) });
                    }
                    StatusCode::Unset => {}
                }
                if !status.message.is_empty() {
                    tags.push(string_tag("otel.status_description", &status.message));
                }
                if !s.trace_state.is_empty() {
                    tags.push(string_tag("w3c.tracestate", &s.trace_state));
                }
                let mut references = Vec::new();
                if !s.parent_span_id.is_empty() && s.parent_span_id.iter().any(|b| *b != 0) {
                    references.push(Reference {
                        ref_type: "CHILD_OF",
                        trace_id: trace_id.clone(),
                        span_id: hex::encode(&s.parent_span_id),
                    });
                }
                for link in &s.links {
                    let to_parent = link.trace_id == s.trace_id && link.span_id == s.parent_span_id;
                    if link.trace_id.iter().all(|b| *b == 0) || to_parent {
                        continue;
                    }
                    let child_of = link.attributes.iter().any(|kv| {
                        kv.key == "opentracing.ref_type"
                            && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(t)) if t == "child_of")
                    });
                    references.push(Reference {
                        ref_type: if child_of { "CHILD_OF" } else { "FOLLOWS_FROM" },
                        trace_id: trace_id_text(&link.trace_id),
                        span_id: hex::encode(&link.span_id),
                    });
                }
                let logs = s
                    .events
                    .iter()
                    .map(|e| {
                        let mut fields = Vec::with_capacity(e.attributes.len() + 1);
                        if !e.name.is_empty() && !e.attributes.iter().any(|kv| kv.key == "event") {
                            fields.push(string_tag("event", &e.name));
                        }
                        fields.extend(sorted_tags(&e.attributes));
                        Log { timestamp: micros(e.time_unix_nano), fields }
                    })
                    .collect();
                spans.push(Span {
                    trace_id,
                    span_id: hex::encode(&s.span_id),
                    operation_name: s.name.clone(),
                    references,
                    start_time: micros(s.start_time_unix_nano),
                    duration: micros(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)),
                    tags,
                    logs,
                    process_id: process_id.clone(),
                    warnings: None,
                });
            }
        }
    }
    spans.sort_by_key(|s| s.start_time);
    let trace_id = spans.first()?.trace_id.clone();
    let processes = processes.into_iter().enumerate().map(|(i, p)| (format!("p{}", i + 1), p)).collect();
    Some(Trace { trace_id, spans, processes, warnings: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span as OtlpSpan, Status};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    #[test]
    fn an_otlp_trace_in_jaegers_model() {
        let mut trace_id = vec![0u8; 16];
        trace_id[15] = 0xab;
        let span = |id: u8, parent: Option<u8>| OtlpSpan {
            trace_id: trace_id.clone(),
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: parent.map(|p| vec![0, 0, 0, 0, 0, 0, 0, p]).unwrap_or_default(),
            name: format!("op{id}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id) * 1000,
            end_time_unix_nano: 1_700_000_000_000_123_999 + u64::from(id) * 1000,
            attributes: vec![
                kv("z", Value::IntValue(1 << 60)),
                kv(
                    "a",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue { value: Some(Value::StringValue("x".into())) }],
                    }),
                ),
                kv("m", Value::DoubleValue(1.5)),
            ],
            events: vec![Event {
                time_unix_nano: 1_700_000_000_000_050_000,
                name: "exception".into(),
                attributes: vec![kv("exception.message", Value::StringValue("boom".into()))],
                ..Default::default()
            }],
            links: vec![Link { trace_id: vec![9; 16], span_id: vec![8; 8], ..Default::default() }],
            status: Some(Status { code: StatusCode::Error as i32, message: "failed".into() }),
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![
                kv("service.name", Value::StringValue("api".into())),
                kv("host.name", Value::StringValue("h".into())),
            ],
            ..Default::default()
        };
        let rs = |spans| ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "lib".into(), ..Default::default() }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = trace(&[rs(vec![span(2, Some(1))]), rs(vec![span(1, None)])]).unwrap();
        assert_eq!(t.trace_id, "00000000000000ab");
        assert_eq!(t.processes.len(), 1, "one process per distinct resource");
        let json = serde_json::to_value(&t).unwrap();
        let root = &json["spans"][0];
        assert_eq!(root["spanID"], "0000000000000001");
        assert_eq!(root["startTime"], 1_700_000_000_000_001_i64);
        assert_eq!(root["duration"], 123);
        assert_eq!(root["processID"], "p1");
        assert_eq!(root["warnings"], Json::Null);
        assert_eq!(
            root["references"],
            serde_json::json!([{"refType": "FOLLOWS_FROM", "traceID": "09090909090909090909090909090909", "spanID": "0808080808080808"}])
        );
        let keys: Vec<&str> = root["tags"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap()).collect();
        assert_eq!(
            keys,
            ["otel.scope.name", "a", "m", "z", "span.kind", "otel.status_code", "error", "otel.status_description"]
        );
        assert_eq!(root["tags"][1], serde_json::json!({"key": "a", "type": "string", "value": "[\"x\"]"}));
        assert_eq!(root["tags"][3], serde_json::json!({"key": "z", "type": "int64", "value": "1152921504606846976"}));
        assert_eq!(root["tags"][6], serde_json::json!({"key": "error", "type": "bool", "value": true}));
        assert_eq!(
            root["logs"],
            serde_json::json!([{"timestamp": 1_700_000_000_000_050_i64, "fields": [
                {"key": "event", "type": "string", "value": "exception"},
                {"key": "exception.message", "type": "string", "value": "boom"}]}])
        );
        assert_eq!(json["spans"][1]["references"][0]["refType"], "CHILD_OF");
        assert_eq!(
            json["processes"]["p1"],
            serde_json::json!({"serviceName": "api", "tags": [{"key": "host.name", "type": "string", "value": "h"}]})
        );
        assert!(trace(&[]).is_none());
    }
}
