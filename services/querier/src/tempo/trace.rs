//! `GET /api/traces/{id}` and `GET /api/v2/traces/{id}`.

use std::collections::HashSet;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use serde::Deserialize;
use spindle_otlp::{from_arrow, tempo_json};
use spindle_proto::tempo::{Trace, TraceByIdMetrics, TraceByIdResponse};

use crate::params::{tenants, time_range, trace_id};
use crate::{ApiError, Querier};

#[derive(Debug, Deserialize)]
pub struct TraceParams {
    start: Option<String>,
    end: Option<String>,
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/protobuf") || a.contains("application/x-protobuf"))
}

/// Most spans returned for one trace (Tempo cuts traces at a size limit too); the answer is
/// then marked partial.
pub const MAX_TRACE_SPANS: usize = 100_000;

/// A loaded trace.
struct Loaded {
    resource_spans: Vec<ResourceSpans>,
    bytes: u64,
    partial: bool,
}

/// Loads a trace from every tenant asked for; spans seen twice (a retried export) appear once.
async fn load(q: &Querier, headers: &HeaderMap, id: &str, params: &TraceParams) -> Result<Loaded, ApiError> {
    let id = trace_id(id)?;
    let range = time_range(params.start.as_deref(), params.end.as_deref())?;
    let mut batches = Vec::new();
    let mut rows = 0;
    for tenant in tenants(headers)? {
        let remaining = MAX_TRACE_SPANS + 1 - rows.min(MAX_TRACE_SPANS + 1);
        if remaining == 0 {
            break;
        }
        let got = q.engine.trace_by_id(&tenant, id, range, remaining).await?;
        rows += got.iter().map(|b| b.num_rows()).sum::<usize>();
        batches.extend(got);
    }
    let partial = rows > MAX_TRACE_SPANS;
    let bytes = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
    let mut resource_spans = from_arrow::batches_to_resource_spans(&batches)
        .map_err(|e| ApiError::from(spindle_query::QueryError::Internal(e.to_string())))?;
    let mut seen = HashSet::new();
    for rs in &mut resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| seen.insert(s.span_id.clone()));
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    if partial {
        truncate_spans(&mut resource_spans, MAX_TRACE_SPANS);
    }
    Ok(Loaded { resource_spans, bytes, partial })
}

/// Keeps the first `max` spans.
fn truncate_spans(resource_spans: &mut Vec<ResourceSpans>, max: usize) {
    let mut left = max;
    for rs in resource_spans.iter_mut() {
        for ss in &mut rs.scope_spans {
            let keep = ss.spans.len().min(left);
            ss.spans.truncate(keep);
            left -= keep;
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
}

fn partial_message() -> String {
    format!("trace exceeds {MAX_TRACE_SPANS} spans; only the first {MAX_TRACE_SPANS} are returned")
}

/// Tempo v1: 404 when not found; `{"batches": [...]}` or protobuf `Trace`.
pub async fn v1(
    State(q): State<Querier>,
    Path(id): Path<String>,
    Query(p): Query<TraceParams>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result = load(&q, &headers, &id, &p).await;
    q.metrics.observe("trace_by_id", result.is_ok(), start);
    let Loaded { resource_spans, .. } = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if resource_spans.is_empty() {
        return (StatusCode::NOT_FOUND, "").into_response();
    }
    if wants_protobuf(&headers) {
        let body = Trace { resource_spans }.encode_to_vec();
        return ([(header::CONTENT_TYPE, "application/protobuf")], body).into_response();
    }
    let body = serde_json::json!({ "batches": tempo_json::resource_spans(&resource_spans) });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Tempo v2: always 200 (an unknown trace is an empty one).
pub async fn v2(
    State(q): State<Querier>,
    Path(id): Path<String>,
    Query(p): Query<TraceParams>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result = load(&q, &headers, &id, &p).await;
    q.metrics.observe("trace_by_id", result.is_ok(), start);
    let Loaded { resource_spans, bytes, partial } = match result {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if wants_protobuf(&headers) {
        let body = TraceByIdResponse {
            trace: Some(Trace { resource_spans }),
            metrics: Some(TraceByIdMetrics { inspected_bytes: bytes }),
            status: i32::from(partial),
            message: if partial { partial_message() } else { String::new() },
        }
        .encode_to_vec();
        return ([(header::CONTENT_TYPE, "application/protobuf")], body).into_response();
    }
    let trace = if resource_spans.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "resourceSpans": tempo_json::resource_spans(&resource_spans) })
    };
    let mut body = serde_json::json!({ "trace": trace, "metrics": { "inspectedBytes": bytes.to_string() } });
    if partial {
        body["status"] = "PARTIAL".into();
        body["message"] = partial_message().into();
    }
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    #[test]
    fn truncation_keeps_the_first_spans() {
        let rs = |n: usize| ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: vec![Span::default(); n], ..Default::default() }],
            ..Default::default()
        };
        let mut list = vec![rs(3), rs(4), rs(2)];
        truncate_spans(&mut list, 5);
        let counts: Vec<usize> = list.iter().map(|r| r.scope_spans[0].spans.len()).collect();
        assert_eq!(counts, vec![3, 2]);
    }
}
