//! Jaeger's `api/v3` over HTTP: traces as OTLP/JSON (`{"result": {"resourceSpans": [...]}}`,
//! hex ids), errors as `{"error": {"httpCode", "message"}}`. Parameters are read in camelCase
//! or snake_case (`query.serviceName` or `query.service_name`).

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde::Serialize;

use super::{json_tags, operations as list_operations, parse_kind, services as list_services, Operation, Search};
use crate::params::{duration, json_response, tenants, trace_id, unix_nanos};
use crate::traces::load;
use crate::{ApiError, Querier};

/// Default number of traces a search returns (Jaeger's search depth).
const DEFAULT_SEARCH_DEPTH: usize = 100;

type Params = HashMap<String, String>;

/// The first non-empty value among the spellings of one parameter.
fn param<'a>(p: &'a Params, names: &[&str]) -> Option<&'a str> {
    names.iter().filter_map(|n| p.get(*n)).map(|v| v.as_str()).find(|v| !v.trim().is_empty())
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    http_code: u16,
    message: String,
}

fn error(e: ApiError) -> Response {
    let body = ErrorBody { error: ErrorDetail { http_code: e.status.as_u16(), message: e.message.clone() } };
    e.response_with("application/json", serde_json::to_vec(&body).unwrap_or_default())
}

fn reply<T: Serialize>(q: &Querier, what: &str, start: Instant, result: Result<T, ApiError>) -> Response {
    q.metrics.observe(what, result.is_ok(), start);
    match result {
        Ok(body) => json_response(&body),
        Err(e) => error(e),
    }
}

fn no_traces() -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: "No traces found".into() }
}

#[derive(Debug, Serialize)]
struct Services {
    services: Vec<String>,
}

/// `GET /api/v3/services`.
pub async fn services(State(q): State<Querier>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async { Ok(Services { services: list_services(&q, &tenants(&headers)?).await? }) }.await;
    reply(&q, "jaeger_services", start, result)
}

#[derive(Debug, Serialize)]
struct Operations {
    operations: Vec<Operation>,
}

/// `GET /api/v3/operations?service=&spanKind=`.
pub async fn operations(State(q): State<Querier>, Query(p): Query<Params>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let service =
            param(&p, &["service"]).ok_or_else(|| ApiError::bad_request("parameter 'service' is required"))?;
        let kind = parse_kind(param(&p, &["spanKind", "span_kind"]))?;
        let ops = list_operations(&q, &tenants(&headers)?, service, kind).await?;
        let operations = ops
            .into_iter()
            // api/v3 has no "unspecified": Jaeger reports those spans as internal.
            .map(|(name, kind)| Operation { name, span_kind: if kind.is_empty() { "internal".into() } else { kind } })
            .collect();
        Ok(Operations { operations })
    }
    .await;
    reply(&q, "jaeger_operations", start, result)
}

#[derive(Debug, Serialize)]
struct TracesBody {
    result: TracesData,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TracesData {
    resource_spans: Vec<ResourceSpans>,
}

/// `GET /api/v3/traces/{trace_id}`: the trace as OTLP/JSON, or 404.
pub async fn get_trace(State(q): State<Querier>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let id =
            trace_id(&id).map_err(|e| ApiError::bad_request(format!("malformed parameter trace_id: {}", e.message)))?;
        let loaded = load(&q, &tenants(&headers)?, id, None).await?;
        if loaded.resource_spans.is_empty() {
            return Err(no_traces());
        }
        Ok(TracesBody { result: TracesData { resource_spans: loaded.resource_spans } })
    }
    .await;
    reply(&q, "jaeger_trace_by_id", start, result)
}

/// A time parameter (RFC 3339; a `+` sent unencoded arrives as a space).
fn time(p: &Params, names: &[&str]) -> Result<Option<i64>, ApiError> {
    param(p, names)
        .map(|t| {
            unix_nanos(names[0], &t.trim().replace(' ', "+"))
                .map_err(|e| ApiError::bad_request(format!("malformed parameter {}: {}", names[0], e.message)))
        })
        .transpose()
}

/// The search `query.*` parameters describe.
fn search(p: &Params) -> Result<Search, ApiError> {
    let min = time(p, &["query.startTimeMin", "query.start_time_min"])?;
    let max = time(p, &["query.startTimeMax", "query.start_time_max"])?;
    let (Some(min), Some(max)) = (min, max) else {
        return Err(ApiError::bad_request("query.startTimeMin and query.startTimeMax are required"));
    };
    if min >= max {
        return Err(ApiError::bad_request("query.startTimeMin must be before query.startTimeMax"));
    }
    let mut s = Search {
        service: param(p, &["query.serviceName", "query.service_name"]).map(str::to_string),
        operation: param(p, &["query.operationName", "query.operation_name"]).map(str::to_string),
        range: (min, max),
        limit: DEFAULT_SEARCH_DEPTH,
        ..Default::default()
    };
    if let Some(d) = param(p, &["query.durationMin", "query.duration_min"]) {
        s.min_duration_ns = Some(duration("query.durationMin", d)?);
    }
    if let Some(d) = param(p, &["query.durationMax", "query.duration_max"]) {
        s.max_duration_ns = Some(duration("query.durationMax", d)?);
    }
    if let (Some(a), Some(b)) = (s.min_duration_ns, s.max_duration_ns) {
        if b < a {
            return Err(ApiError::bad_request("query.durationMax must not be less than query.durationMin"));
        }
    }
    if let Some(depth) = param(p, &["query.searchDepth", "query.search_depth", "query.num_traces"]) {
        s.limit = depth.trim().parse::<usize>().ok().filter(|d| *d > 0).ok_or_else(|| {
            ApiError::bad_request(format!("malformed parameter query.searchDepth: {depth:?} is not a positive integer"))
        })?;
    }
    if let Some(attrs) = param(p, &["query.attributes"]) {
        json_tags(attrs, &mut s.tags)?;
    }
    Ok(s)
}

/// `GET /api/v3/traces?query...`: the matching traces, whole, as one OTLP/JSON list; 404 when
/// none match (as Jaeger answers).
pub async fn find_traces(State(q): State<Querier>, Query(p): Query<Params>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let (traces, _) = search(&p)?.traces(&q, &tenants(&headers)?).await?;
        if traces.is_empty() {
            return Err(no_traces());
        }
        Ok(TracesBody { result: TracesData { resource_spans: traces.into_iter().flatten().collect() } })
    }
    .await;
    reply(&q, "jaeger_search", start, result)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    trace_id: String,
    root_service_name: String,
    root_operation_name: String,
    min_start_time_unix_nano: String,
    max_end_time_unix_nano: String,
    #[serde(skip_serializing_if = "is_zero")]
    span_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    error_span_count: u64,
    services: Vec<ServiceSummary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSummary {
    name: String,
    #[serde(skip_serializing_if = "is_zero")]
    span_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    error_span_count: u64,
}

#[derive(Debug, Serialize)]
struct Summaries {
    summaries: Vec<Summary>,
}

/// `GET /api/v3/trace-summaries?query...` (what the Jaeger UI's search lists): one line per
/// matching trace, without reading the traces whole.
pub async fn trace_summaries(State(q): State<Querier>, Query(p): Query<Params>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let hits = search(&p)?.hits(&q, &tenants(&headers)?).await?;
        let summaries = hits
            .into_iter()
            .map(|(_, t)| Summary {
                trace_id: hex::encode(t.trace_id),
                root_service_name: t.root_service_name.unwrap_or_default(),
                root_operation_name: t.root_trace_name.unwrap_or_default(),
                min_start_time_unix_nano: t.start_ns.to_string(),
                max_end_time_unix_nano: t.start_ns.saturating_add(t.duration_ns).to_string(),
                span_count: t.service_stats.values().map(|(n, _)| n).sum(),
                error_span_count: t.service_stats.values().map(|(_, e)| e).sum(),
                services: t
                    .service_stats
                    .into_iter()
                    .map(|(name, (span_count, error_span_count))| ServiceSummary { name, span_count, error_span_count })
                    .collect(),
            })
            .collect();
        Ok(Summaries { summaries })
    }
    .await;
    reply(&q, "jaeger_search", start, result)
}
