//! Jaeger's JSON API (`/jaeger/api/...`): every answer is `{"data", "total", "limit",
//! "offset", "errors"}`, errors with `{"code", "msg"}` items.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::model::{self, trace_id_text};
use super::{
    json_tags, now_ns, operations as list_operations, parse_kind, services as list_services, Operation, Search,
    MAX_SEARCH_SPANS, MAX_TRACES,
};
use crate::params::{duration, tenants, trace_id};
use crate::traces::load;
use crate::{ApiError, Querier};

/// Default number of traces a search returns (Jaeger's).
const DEFAULT_LIMIT: usize = 100;
/// Default search window before `end` (Jaeger's: 48 hours).
const DEFAULT_LOOKBACK_NS: i64 = 48 * 3600 * 1_000_000_000;
/// Default `lookback` of `/api/dependencies` (one day), in ms.
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 24 * 3600 * 1000;
/// Longest `lookback` of `/api/dependencies` (30 days), in ms: a longer one is cut to it.
const MAX_DEPENDENCY_LOOKBACK_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Serialize)]
struct Envelope<T> {
    data: T,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<Vec<ErrorItem>>,
}

#[derive(Debug, Serialize)]
struct ErrorItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

fn ok<T: Serialize>(data: T, total: usize, errors: Vec<ErrorItem>) -> Response {
    let errors = (!errors.is_empty()).then_some(errors);
    crate::params::json_response(&Envelope { data, total, limit: 0, offset: 0, errors })
}

/// An error in Jaeger's envelope, with the status it names.
fn error(e: ApiError) -> Response {
    let body = Envelope {
        data: (),
        total: 0,
        limit: 0,
        offset: 0,
        errors: Some(vec![ErrorItem { code: Some(e.status.as_u16()), msg: e.message.clone(), trace_id: None }]),
    };
    e.response_with("application/json", serde_json::to_vec(&body).unwrap_or_default())
}

fn reply<T: Serialize>(q: &Querier, what: &str, start: Instant, result: Result<(T, usize), ApiError>) -> Response {
    q.metrics.observe(what, result.is_ok(), start);
    match result {
        Ok((data, total)) => ok(data, total, Vec::new()),
        Err(e) => error(e),
    }
}

/// `GET /api/services`.
pub async fn services(State(q): State<Querier>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let list = list_services(&q, &tenants(&headers)?).await?;
        let n = list.len();
        Ok((list, n))
    }
    .await;
    reply(&q, "jaeger_services", start, result)
}

/// `GET /api/services/{service}/operations`: names only.
pub async fn service_operations(State(q): State<Querier>, Path(service): Path<String>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let ops = list_operations(&q, &tenants(&headers)?, &service, None).await?;
        let names: Vec<String> = ops.into_iter().map(|(n, _)| n).collect::<BTreeSet<_>>().into_iter().collect();
        let n = names.len();
        Ok((names, n))
    }
    .await;
    reply(&q, "jaeger_operations", start, result)
}

/// Parameters of `/api/operations`.
#[derive(Debug, Deserialize)]
pub struct OperationParams {
    service: Option<String>,
    #[serde(rename = "spanKind")]
    span_kind: Option<String>,
}

/// `GET /api/operations?service=&spanKind=`.
pub async fn operations(State(q): State<Querier>, Query(p): Query<OperationParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let service = p
            .service
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("parameter 'service' is required"))?;
        let ops = list_operations(&q, &tenants(&headers)?, service, parse_kind(p.span_kind.as_deref())?).await?;
        let ops: Vec<Operation> = ops.into_iter().map(|(name, span_kind)| Operation { name, span_kind }).collect();
        let n = ops.len();
        Ok((ops, n))
    }
    .await;
    reply(&q, "jaeger_operations", start, result)
}

/// The query string as pairs, repeated keys kept (`tag`, `tags`, `traceID` repeat).
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
}

fn micros_param(name: &str, text: &str) -> Result<i64, ApiError> {
    text.trim().parse::<i64>().ok().filter(|us| *us >= 0).and_then(|us| us.checked_mul(1000)).ok_or_else(|| {
        ApiError::bad_request(format!("unable to parse param '{name}': {text:?} is not unix microseconds"))
    })
}

/// `GET /api/traces`: search (`service` required), or the traces named by `traceID`.
pub async fn find_traces(State(q): State<Querier>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let tenants = tenants(&headers)?;
        let mut search = Search { limit: DEFAULT_LIMIT, ..Default::default() };
        let (mut start_ns, mut end_ns) = (None, None);
        let mut ids = Vec::new();
        for (key, value) in pairs(query.as_deref())? {
            let value_opt = Some(value.clone()).filter(|v| !v.is_empty());
            match key.as_str() {
                "service" => search.service = value_opt,
                "operation" => search.operation = value_opt,
                "start" if !value.is_empty() => start_ns = Some(micros_param("start", &value)?),
                "end" if !value.is_empty() => end_ns = Some(micros_param("end", &value)?),
                "limit" if !value.is_empty() => {
                    search.limit = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|e| ApiError::bad_request(format!("unable to parse param 'limit': {e}")))?
                }
                "minDuration" if !value.is_empty() => search.min_duration_ns = Some(duration("minDuration", &value)?),
                "maxDuration" if !value.is_empty() => search.max_duration_ns = Some(duration("maxDuration", &value)?),
                "tag" => match value.split_once(':') {
                    Some((k, v)) => search.tags.push((k.to_string(), v.to_string())),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "malformed 'tag' parameter, expecting key:value, received: {value}"
                        )))
                    }
                },
                "tags" if !value.is_empty() => json_tags(&value, &mut search.tags)?,
                "traceID" => ids.push(
                    trace_id(&value)
                        .map_err(|e| ApiError::bad_request(format!("cannot parse traceID param: {}", e.message)))?,
                ),
                _ => {} // lookback, raw, ...: not needed
            }
        }
        if search.tags.len() > super::MAX_TAGS {
            return Err(ApiError::bad_request(format!("at most {} tags may be searched for at once", super::MAX_TAGS)));
        }
        if let (Some(a), Some(b)) = (search.min_duration_ns, search.max_duration_ns) {
            if b < a {
                return Err(ApiError::bad_request("'maxDuration' should be greater than 'minDuration'"));
            }
        }
        if !ids.is_empty() {
            let ids: BTreeSet<[u8; 16]> = ids.into_iter().collect();
            if ids.len() > MAX_TRACES {
                return Err(ApiError::bad_request(format!("at most {MAX_TRACES} traceID values at once")));
            }
            let (mut traces, mut errors, mut spans) = (Vec::new(), Vec::new(), 0);
            for id in ids {
                let loaded = load(&q, &tenants, id, None).await?;
                let item = |msg: String| ErrorItem { code: None, msg, trace_id: Some(trace_id_text(&id)) };
                match model::trace(&loaded.resource_spans) {
                    Some(t) if spans + t.spans.len() > MAX_SEARCH_SPANS => {
                        errors.push(item(format!("left out: the answer holds at most {MAX_SEARCH_SPANS} spans")))
                    }
                    Some(t) => {
                        spans += t.spans.len();
                        traces.push(t);
                    }
                    None => errors.push(item("trace not found".into())),
                }
            }
            return Ok((traces, errors));
        }
        if search.service.is_none() {
            return Err(ApiError::bad_request("parameter 'service' is required"));
        }
        let end = end_ns.unwrap_or_else(now_ns);
        search.range = (start_ns.unwrap_or(end.saturating_sub(DEFAULT_LOOKBACK_NS)), end);
        if search.range.1 < search.range.0 {
            return Err(ApiError::bad_request("'end' must not be before 'start'"));
        }
        let (found, left_out) = search.traces(&q, &tenants).await?;
        let traces: Vec<model::Trace> = found.iter().filter_map(|rs| model::trace(rs)).collect();
        let mut errors = Vec::new();
        if left_out > 0 {
            errors.push(ErrorItem {
                code: None,
                msg: format!(
                    "{left_out} more traces match but the answer holds at most {} spans; narrow the search",
                    MAX_SEARCH_SPANS
                ),
                trace_id: None,
            });
        }
        Ok((traces, errors))
    }
    .await;
    q.metrics.observe("jaeger_search", result.is_ok(), start);
    match result {
        Ok((traces, errors)) => ok(traces, 0, errors),
        Err(e) => error(e),
    }
}

/// `GET /api/traces/{id}`: the trace, or 404.
pub async fn get_trace(State(q): State<Querier>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let loaded = load(&q, &tenants(&headers)?, trace_id(&id)?, None).await?;
        model::trace(&loaded.resource_spans)
            .ok_or_else(|| ApiError { status: StatusCode::NOT_FOUND, message: "trace not found".into() })
    }
    .await;
    q.metrics.observe("jaeger_trace_by_id", result.is_ok(), start);
    match result {
        Ok(trace) => ok(vec![trace], 0, Vec::new()),
        Err(e) => error(e),
    }
}

/// Parameters of `/api/dependencies`.
#[derive(Debug, Deserialize)]
pub struct DependencyParams {
    #[serde(rename = "endTs")]
    end_ts: Option<String>,
    lookback: Option<String>,
    service: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    parent: String,
    child: String,
    call_count: u64,
}

fn millis_param(name: &str, text: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(default),
        Some(t) => t.parse::<i64>().map_err(|e| ApiError::bad_request(format!("unable to parse param '{name}': {e}"))),
    }
}

/// `GET /api/dependencies?endTs=&lookback=`: calls between services (a span of one service
/// whose parent span is of another) in the window, counted from the stored spans.
pub async fn dependencies(State(q): State<Querier>, Query(p): Query<DependencyParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let end_ms = millis_param("endTs", p.end_ts.as_deref(), now_ns() / 1_000_000)?;
        let lookback_ms = millis_param("lookback", p.lookback.as_deref(), DEFAULT_DEPENDENCY_LOOKBACK_MS)?
            .min(MAX_DEPENDENCY_LOOKBACK_MS);
        if lookback_ms < 1 || end_ms <= 0 || end_ms > i64::MAX / 1_000_000 {
            return Err(ApiError::bad_request(
                "'lookback' must be a positive number of ms and 'endTs' unix milliseconds",
            ));
        }
        let (end_ns, start_ns) = (end_ms * 1_000_000, (end_ms - lookback_ms) * 1_000_000);
        let mut edges: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for tenant in tenants(&headers)? {
            for (parent, child, calls) in super::dependencies(&q, &tenant, start_ns, end_ns).await? {
                *edges.entry((parent, child)).or_default() += calls;
            }
        }
        let service = p.service.filter(|s| !s.is_empty());
        let list: Vec<Dependency> = edges
            .into_iter()
            .filter(|((parent, child), _)| service.as_ref().is_none_or(|s| s == parent || s == child))
            .map(|((parent, child), call_count)| Dependency { parent, child, call_count })
            .collect();
        Ok((list, 0))
    }
    .await;
    reply(&q, "jaeger_dependencies", start, result)
}
