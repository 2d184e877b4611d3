//! OTLP traces as protobuf-JSON the way Tempo's query API writes them (Go jsonpb): ids in
//! base64, enums by name, 64-bit integers as strings, default values left out.

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, Span, Status};
use serde_json::{json, Map, Value};

const KIND_NAMES: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_NAMES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Inserts `value` unless it is the protobuf default (empty string, zero, empty list).
fn put(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let is_default = match &value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        Value::Null => true,
        Value::Object(_) => false,
    };
    if !is_default {
        obj.insert(key.to_string(), value);
    }
}

/// Inserts a 64-bit integer as a string (jsonpb), unless it is zero.
fn put_u64(obj: &mut Map<String, Value>, key: &str, value: u64) {
    if value != 0 {
        obj.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// A list of resource spans as jsonpb values.
pub fn resource_spans(list: &[ResourceSpans]) -> Value {
    Value::Array(list.iter().map(resource_span).collect())
}

fn resource_span(rs: &ResourceSpans) -> Value {
    let mut obj = Map::new();
    if let Some(r) = &rs.resource {
        let mut res = Map::new();
        put(&mut res, "attributes", attributes(&r.attributes));
        put(&mut res, "droppedAttributesCount", json!(r.dropped_attributes_count));
        obj.insert("resource".into(), Value::Object(res));
    }
    let scopes = rs
        .scope_spans
        .iter()
        .map(|ss| {
            let mut o = Map::new();
            if let Some(scope) = &ss.scope {
                o.insert("scope".into(), instrumentation_scope(scope));
            }
            put(&mut o, "spans", Value::Array(ss.spans.iter().map(span_json).collect()));
            put(&mut o, "schemaUrl", json!(ss.schema_url));
            Value::Object(o)
        })
        .collect();
    put(&mut obj, "scopeSpans", Value::Array(scopes));
    put(&mut obj, "schemaUrl", json!(rs.schema_url));
    Value::Object(obj)
}

fn instrumentation_scope(scope: &InstrumentationScope) -> Value {
    let mut o = Map::new();
    put(&mut o, "name", json!(scope.name));
    put(&mut o, "version", json!(scope.version));
    put(&mut o, "attributes", attributes(&scope.attributes));
    put(&mut o, "droppedAttributesCount", json!(scope.dropped_attributes_count));
    Value::Object(o)
}

/// One span as a jsonpb value.
pub fn span_json(s: &Span) -> Value {
    let mut o = Map::new();
    o.insert("traceId".into(), b64(&s.trace_id));
    o.insert("spanId".into(), b64(&s.span_id));
    put(&mut o, "traceState", json!(s.trace_state));
    if !s.parent_span_id.is_empty() {
        o.insert("parentSpanId".into(), b64(&s.parent_span_id));
    }
    put(&mut o, "flags", json!(s.flags));
    put(&mut o, "name", json!(s.name));
    if s.kind != 0 {
        o.insert("kind".into(), json!(KIND_NAMES.get(s.kind as usize).copied().unwrap_or("SPAN_KIND_UNSPECIFIED")));
    }
    put_u64(&mut o, "startTimeUnixNano", s.start_time_unix_nano);
    put_u64(&mut o, "endTimeUnixNano", s.end_time_unix_nano);
    put(&mut o, "attributes", attributes(&s.attributes));
    put(&mut o, "droppedAttributesCount", json!(s.dropped_attributes_count));
    put(&mut o, "events", Value::Array(s.events.iter().map(event).collect()));
    put(&mut o, "droppedEventsCount", json!(s.dropped_events_count));
    put(&mut o, "links", Value::Array(s.links.iter().map(link).collect()));
    put(&mut o, "droppedLinksCount", json!(s.dropped_links_count));
    o.insert("status".into(), status(s.status.as_ref()));
    Value::Object(o)
}

fn status(s: Option<&Status>) -> Value {
    let mut o = Map::new();
    if let Some(s) = s {
        put(&mut o, "message", json!(s.message));
        if s.code != 0 {
            o.insert("code".into(), json!(STATUS_NAMES.get(s.code as usize).copied().unwrap_or("STATUS_CODE_UNSET")));
        }
    }
    Value::Object(o)
}

fn event(e: &span::Event) -> Value {
    let mut o = Map::new();
    put_u64(&mut o, "timeUnixNano", e.time_unix_nano);
    put(&mut o, "name", json!(e.name));
    put(&mut o, "attributes", attributes(&e.attributes));
    put(&mut o, "droppedAttributesCount", json!(e.dropped_attributes_count));
    Value::Object(o)
}

fn link(l: &span::Link) -> Value {
    let mut o = Map::new();
    put(&mut o, "traceId", b64(&l.trace_id));
    put(&mut o, "spanId", b64(&l.span_id));
    put(&mut o, "traceState", json!(l.trace_state));
    put(&mut o, "attributes", attributes(&l.attributes));
    put(&mut o, "droppedAttributesCount", json!(l.dropped_attributes_count));
    put(&mut o, "flags", json!(l.flags));
    Value::Object(o)
}

/// Attributes as a jsonpb list of `{key, value}`.
pub fn attributes(attrs: &[KeyValue]) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|kv| {
                let mut o = Map::new();
                o.insert("key".into(), json!(kv.key));
                o.insert("value".into(), any_value(kv.value.as_ref()));
                Value::Object(o)
            })
            .collect(),
    )
}

/// One `AnyValue` as jsonpb (a set oneof member is written even when it holds a default value).
pub fn any_value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        None => json!({}),
        Some(Any::StringValue(s)) => json!({ "stringValue": s }),
        Some(Any::BoolValue(b)) => json!({ "boolValue": b }),
        Some(Any::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(Any::DoubleValue(d)) => {
            let d = *d;
            let value = if d.is_nan() {
                json!("NaN")
            } else if d.is_infinite() {
                json!(if d > 0.0 { "Infinity" } else { "-Infinity" })
            } else {
                json!(d)
            };
            json!({ "doubleValue": value })
        }
        Some(Any::BytesValue(b)) => json!({ "bytesValue": b64(b) }),
        Some(Any::StringValueStrindex(i)) => json!({ "stringValueStrindex": i }),
        Some(Any::ArrayValue(a)) => {
            let values: Vec<Value> = a.values.iter().map(|v| any_value(Some(v))).collect();
            json!({ "arrayValue": if values.is_empty() { json!({}) } else { json!({ "values": values }) } })
        }
        Some(Any::KvlistValue(kvs)) => {
            json!({ "kvlistValue": if kvs.values.is_empty() { json!({}) } else { json!({ "values": attributes(&kvs.values) }) } })
        }
    }
}
