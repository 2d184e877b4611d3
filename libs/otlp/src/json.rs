//! OTLP/JSON request decoding.
//!
//! The OTLP spec sends ids as hex and enums as numbers, but Tempo-style clients send ids as
//! base64 and enums as names; both are accepted. The JSON is normalised in place and then
//! decoded with the OTLP crate's serde support.

use base64::Engine;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use spindle_schema::{SPAN_KINDS, STATUS_CODES};

use crate::{ConvertError, Result};

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_export_trace_request(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ConvertError::Invalid(format!("invalid OTLP/JSON: {e}")))?;
    if !value.is_object() {
        return Err(ConvertError::Invalid("invalid OTLP/JSON: the body must be a JSON object".into()));
    }
    normalize(&mut value);
    serde_json::from_value(value).map_err(|e| ConvertError::Invalid(format!("invalid OTLP/JSON: {e}")))
}

fn normalize(request: &mut Value) {
    for rs in array_mut(request, "resourceSpans") {
        for ss in array_mut(rs, "scopeSpans") {
            for span in array_mut(ss, "spans") {
                normalize_id(span, "traceId", 16);
                normalize_id(span, "spanId", 8);
                normalize_id(span, "parentSpanId", 8);
                normalize_enum(span, "kind", "SPAN_KIND_", &SPAN_KINDS);
                if let Some(status) = span.get_mut("status") {
                    normalize_enum(status, "code", "STATUS_CODE_", &STATUS_CODES);
                }
                for link in array_mut(span, "links") {
                    normalize_id(link, "traceId", 16);
                    normalize_id(link, "spanId", 8);
                }
            }
        }
    }
}

fn array_mut<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// Rewrites a base64 id of the right length as hex; leaves hex (and anything else) alone.
fn normalize_id(obj: &mut Value, key: &str, len: usize) {
    let Some(Value::String(s)) = obj.get_mut(key) else {
        return;
    };
    if s.is_empty() || (s.len() == len * 2 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
        return;
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
        if bytes.len() == len {
            *s = hex::encode(bytes);
        }
    }
}

/// Rewrites an enum given by name (`SPAN_KIND_SERVER`, `server`) as its number.
fn normalize_enum(obj: &mut Value, key: &str, prefix: &str, names: &[&str]) {
    let Some(Value::String(s)) = obj.get(key) else {
        return;
    };
    let short = s.strip_prefix(prefix).unwrap_or(s).to_ascii_lowercase();
    let number = names.iter().position(|n| *n == short).unwrap_or(0);
    obj[key] = Value::from(number as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hex_and_base64_ids_and_enum_names() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a","kind":2},
            {"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"b","kind":"SPAN_KIND_CLIENT",
             "status":{"code":"STATUS_CODE_ERROR"},"startTimeUnixNano":"1700000000000000000"}]}]}]}"#;
        let req = decode_export_trace_request(body).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].trace_id, spans[1].trace_id);
        assert_eq!(spans[0].span_id, spans[1].span_id);
        assert_eq!(spans[1].kind, 3);
        assert_eq!(spans[1].status.as_ref().unwrap().code, 2);
        assert_eq!(spans[1].start_time_unix_nano, 1_700_000_000_000_000_000);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_export_trace_request(b"{not json").is_err());
        assert!(decode_export_trace_request(b"[1,2]").is_err());
        assert!(decode_export_trace_request(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#)
            .is_err());
    }
}
