//! `GET /api/traces/{id}` and `GET /api/v2/traces/{id}`.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde::Deserialize;
use spindle_otlp::tempo_json;
use spindle_proto::tempo::{Trace, TraceByIdMetrics, TraceByIdResponse};

use crate::params::{tenants, time_range, trace_id};
use crate::traces::{load, Loaded, MAX_TRACE_SPANS};
use crate::Querier;

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
    let result = async {
        load(&q, &tenants(&headers)?, trace_id(&id)?, time_range(p.start.as_deref(), p.end.as_deref())?).await
    }
    .await;
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
    let result = async {
        load(&q, &tenants(&headers)?, trace_id(&id)?, time_range(p.start.as_deref(), p.end.as_deref())?).await
    }
    .await;
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
