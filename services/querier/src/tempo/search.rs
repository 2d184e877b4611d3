//! `GET /api/search`: find traces by TraceQL (`q`) or by tags.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spindle_otlp::otlp::common::v1::KeyValue;
use spindle_otlp::tempo_json;
use spindle_query::filter::tags_to_traceql;
use spindle_query::traceql::search::{SearchRequest, SpansetHit, TraceHit};
use spindle_traceql::{BinaryOp, Field, FieldExpr, Intrinsic, SpansetExpr, Stage, Static};

use crate::params::{duration, json_response, logfmt, positive, tenants, time_range, traceql};
use crate::{ApiError, Querier};

/// Most traces one search may return.
const MAX_LIMIT: usize = 5000;
/// Most spans per spanset one search may return (Tempo's limit).
const MAX_SPSS: usize = 100;

/// Query parameters of `/api/search`.
#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    limit: Option<String>,
    spss: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

/// `expr` narrowed to traces whose duration is within `[min, max]`.
fn with_trace_duration(expr: SpansetExpr, min: Option<i64>, max: Option<i64>) -> SpansetExpr {
    let bound = |op, ns| FieldExpr::Binary {
        op,
        lhs: Box::new(FieldExpr::Field(Field::Intrinsic(Intrinsic::TraceDuration))),
        rhs: Box::new(FieldExpr::Static(Static::Duration(ns))),
    };
    let cond = match (min.map(|m| bound(BinaryOp::Ge, m)), max.map(|m| bound(BinaryOp::Le, m))) {
        (None, None) => return expr,
        (Some(a), None) | (None, Some(a)) => a,
        (Some(a), Some(b)) => FieldExpr::Binary { op: BinaryOp::And, lhs: Box::new(a), rhs: Box::new(b) },
    };
    let filter = Stage::Spanset(SpansetExpr::Filter(cond));
    match expr {
        SpansetExpr::Pipeline(mut stages) => {
            stages.push(filter);
            SpansetExpr::Pipeline(stages)
        }
        other => SpansetExpr::Pipeline(vec![Stage::Spanset(other), filter]),
    }
}

fn request(p: &SearchParams) -> Result<SearchRequest, ApiError> {
    let q = p.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let tags = p.tags.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let spans = match (q, tags) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("invalid request: q and tags cannot be combined")),
        (Some(q), None) => {
            let query = traceql(q)?;
            if query.metrics.is_some() {
                return Err(ApiError::bad_request(
                    "a TraceQL metrics query goes to /api/metrics/query_range or /api/metrics/query",
                ));
            }
            query.spans
        }
        (None, Some(t)) => tags_to_traceql(&logfmt(t)?),
        (None, None) => SpansetExpr::Filter(FieldExpr::Static(Static::Bool(true))),
    };
    let min = p.min_duration.as_deref().filter(|s| !s.is_empty()).map(|d| duration("minDuration", d)).transpose()?;
    let max = p.max_duration.as_deref().filter(|s| !s.is_empty()).map(|d| duration("maxDuration", d)).transpose()?;
    if let (Some(a), Some(b)) = (min, max) {
        if b < a {
            return Err(ApiError::bad_request("invalid request: maxDuration is less than minDuration"));
        }
    }
    let spss = positive("spss", p.spss.as_deref(), 3)?;
    if spss > MAX_SPSS {
        return Err(ApiError::bad_request(format!("invalid spss {spss}: at most {MAX_SPSS}")));
    }
    Ok(SearchRequest {
        spans: with_trace_duration(spans, min, max),
        time_range: time_range(p.start.as_deref(), p.end.as_deref())?,
        limit: positive("limit", p.limit.as_deref(), 20)?.min(MAX_LIMIT),
        spans_per_spanset: spss,
    })
}

/// Tempo's search response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchResponse {
    traces: Vec<TraceJson>,
    metrics: SearchMetrics,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchMetrics {
    inspected_traces: u64,
    inspected_bytes: String,
    total_blocks: u64,
    completed_jobs: u64,
    total_jobs: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TraceJson {
    #[serde(rename = "traceID")]
    trace_id: String,
    root_service_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_trace_name: Option<String>,
    start_time_unix_nano: String,
    duration_ms: i64,
    span_sets: Vec<SpansetJson>,
    span_set: Option<SpansetJson>,
    service_stats: BTreeMap<String, ServiceStats>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpansetJson {
    spans: Vec<SpanJson>,
    matched: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanJson {
    #[serde(rename = "spanID")]
    span_id: String,
    name: String,
    start_time_unix_nano: String,
    duration_nanos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStats {
    span_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    error_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn attributes(kvs: &[KeyValue]) -> Option<Value> {
    (!kvs.is_empty()).then(|| tempo_json::attributes(kvs))
}

fn spanset_json(s: &SpansetHit) -> SpansetJson {
    SpansetJson {
        spans: s
            .spans
            .iter()
            .map(|x| SpanJson {
                span_id: hex::encode(x.span_id),
                name: x.name.clone(),
                start_time_unix_nano: x.start_ns.to_string(),
                duration_nanos: x.duration_ns.to_string(),
                attributes: attributes(&x.attributes),
            })
            .collect(),
        matched: s.matched,
        attributes: attributes(&s.attributes),
    }
}

fn trace_json(t: &TraceHit) -> TraceJson {
    let span_sets: Vec<SpansetJson> = t.spansets.iter().map(spanset_json).collect();
    TraceJson {
        trace_id: spindle_types::trace_id_hex(&t.trace_id),
        root_service_name: t.root_service_name.clone().unwrap_or_else(|| "<root span not yet received>".into()),
        root_trace_name: t.root_trace_name.clone(),
        start_time_unix_nano: t.start_ns.to_string(),
        duration_ms: t.duration_ns / 1_000_000,
        span_set: span_sets.first().cloned(),
        span_sets,
        service_stats: t
            .service_stats
            .iter()
            .map(|(svc, (spans, errors))| (svc.clone(), ServiceStats { span_count: *spans, error_count: *errors }))
            .collect(),
    }
}

/// `GET /api/search`.
pub async fn search(State(q): State<Querier>, Query(p): Query<SearchParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let request = request(&p)?;
        let mut traces = Vec::new();
        let (mut inspected_traces, mut inspected_bytes) = (0, 0);
        for tenant in tenants(&headers)? {
            let r = q.engine.bounded(q.engine.search(&tenant, &request)).await?;
            inspected_traces += r.inspected_traces;
            inspected_bytes += r.inspected_bytes;
            traces.extend(r.traces);
        }
        // Several tenants: keep the `limit` newest, then order by start as Tempo does.
        traces.sort_by_key(|t| std::cmp::Reverse(t.newest_selected_ns));
        traces.truncate(request.limit);
        traces.sort_by(|a, b| b.start_ns.cmp(&a.start_ns).then(b.trace_id.cmp(&a.trace_id)));
        Ok::<_, ApiError>(SearchResponse {
            traces: traces.iter().map(trace_json).collect(),
            metrics: SearchMetrics {
                inspected_traces,
                inspected_bytes: inspected_bytes.to_string(),
                total_blocks: 0,
                completed_jobs: 1,
                total_jobs: 1,
            },
        })
    }
    .await;
    q.metrics.observe("search", result.is_ok(), start);
    match result {
        Ok(body) => json_response(&body),
        Err(e) => e.into_response(),
    }
}
