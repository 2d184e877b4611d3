//! `GET /api/search`: find traces by TraceQL (`q`) or by tags.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use spindle_otlp::tempo_json;
use spindle_query::filter::{tags_filter, traceql_filter};
use spindle_query::search::{SearchRequest, TraceHit};
use spindle_traceql::{Attribute, Scope};

use crate::params::{duration, logfmt, tenants, time_range};
use crate::{ApiError, Querier};

/// Most traces one search may return.
const MAX_LIMIT: usize = 5000;

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

fn positive(name: &str, text: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match text.map(str::trim) {
        None | Some("") => Ok(default),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid {name} {t:?}: expected a positive integer"))),
    }
}

fn request(p: &SearchParams) -> Result<SearchRequest, ApiError> {
    let q = p.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let tags = p.tags.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (filter, touched) = match (q, tags) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("invalid request: q and tags cannot be combined")),
        (Some(q), None) => {
            let query = spindle_traceql::parse(q).map_err(|e| ApiError::bad_request(e.to_string()))?;
            match query.filter {
                None => (None, Vec::new()),
                Some(expr) => {
                    let touched = expr
                        .attributes()
                        .into_iter()
                        .filter_map(|a| match a {
                            Attribute::Attr { scope, key } => Some((
                                match scope {
                                    Scope::Resource => Some(true),
                                    Scope::Span => Some(false),
                                    Scope::Unscoped => None,
                                },
                                key.clone(),
                            )),
                            Attribute::Intrinsic(_) => None,
                        })
                        .collect();
                    (Some(traceql_filter(&expr)?), touched)
                }
            }
        }
        (None, Some(t)) => {
            let pairs = logfmt(t)?;
            let touched = pairs.iter().map(|(k, _)| (None, k.clone())).collect();
            (tags_filter(&pairs), touched)
        }
        (None, None) => (None, Vec::new()),
    };
    let min = p.min_duration.as_deref().filter(|s| !s.is_empty()).map(|d| duration("minDuration", d)).transpose()?;
    let max = p.max_duration.as_deref().filter(|s| !s.is_empty()).map(|d| duration("maxDuration", d)).transpose()?;
    if let (Some(a), Some(b)) = (min, max) {
        if b < a {
            return Err(ApiError::bad_request("invalid request: maxDuration is less than minDuration"));
        }
    }
    Ok(SearchRequest {
        filter,
        touched,
        time_range: time_range(p.start.as_deref(), p.end.as_deref())?,
        min_duration_ns: min,
        max_duration_ns: max,
        limit: positive("limit", p.limit.as_deref(), 20)?.min(MAX_LIMIT),
        spans_per_spanset: positive("spss", p.spss.as_deref(), 3)?,
    })
}

fn trace_json(t: &TraceHit) -> Value {
    let spans: Vec<Value> = t
        .spans
        .iter()
        .map(|s| {
            let mut o = json!({
                "spanID": hex::encode(s.span_id),
                "name": s.name,
                "startTimeUnixNano": s.start_ns.to_string(),
                "durationNanos": s.duration_ns.to_string(),
            });
            if !s.attributes.is_empty() {
                o["attributes"] = tempo_json::attributes(&s.attributes);
            }
            o
        })
        .collect();
    let span_set = json!({ "spans": spans, "matched": t.matched });
    let stats: BTreeMap<&String, Value> = t
        .service_stats
        .iter()
        .map(|(svc, (spans, errors))| {
            let mut o = json!({ "spanCount": spans });
            if *errors > 0 {
                o["errorCount"] = json!(errors);
            }
            (svc, o)
        })
        .collect();
    let hex_id = hex::encode(t.trace_id);
    let trimmed = hex_id.trim_start_matches('0');
    json!({
        "traceID": if trimmed.is_empty() { "0" } else { trimmed },
        "rootServiceName": t.root_service_name,
        "rootTraceName": t.root_trace_name,
        "startTimeUnixNano": t.start_ns.to_string(),
        "durationMs": (t.duration_ns / 1_000_000),
        "spanSets": [span_set.clone()],
        "spanSet": span_set,
        "serviceStats": stats,
    })
}

/// `GET /api/search`.
pub async fn search(State(q): State<Querier>, Query(p): Query<SearchParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let request = request(&p)?;
        let mut traces = Vec::new();
        let (mut inspected_traces, mut inspected_bytes) = (0, 0);
        for tenant in tenants(&headers)? {
            let r = q.engine.search(&tenant, &request).await?;
            inspected_traces += r.inspected_traces;
            inspected_bytes += r.inspected_bytes;
            traces.extend(r.traces);
        }
        traces.sort_by_key(|t| std::cmp::Reverse(t.start_ns));
        traces.truncate(request.limit);
        Ok::<_, ApiError>(json!({
            "traces": traces.iter().map(trace_json).collect::<Vec<_>>(),
            "metrics": {
                "inspectedTraces": inspected_traces,
                "inspectedBytes": inspected_bytes.to_string(),
                "totalBlocks": 0,
                "completedJobs": 1,
                "totalJobs": 1,
            }
        }))
    }
    .await;
    q.metrics.observe("search", result.is_ok(), start);
    match result {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        Err(e) => e.into_response(),
    }
}
