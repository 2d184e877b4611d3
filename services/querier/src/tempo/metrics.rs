//! TraceQL metrics: `GET /api/metrics/query_range` and `GET /api/metrics/query`, over every
//! retained span (no generator, no "last hour" limit).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use spindle_otlp::otlp::common::v1::KeyValue;
use spindle_otlp::tempo_json;
use spindle_query::traceql::metrics::{MetricsRequest, MetricsResult, Series};

use crate::params::{json_response, tenants, traceql, unix_nanos};
use crate::{ApiError, Querier};

/// Exemplars per query at most (Tempo's default limit).
const MAX_EXEMPLARS: usize = 100;
/// Series returned when `maxSeries` is not given, and at most.
const DEFAULT_MAX_SERIES: usize = 1_000;
const MAX_SERIES: usize = 10_000;
const SECOND: i64 = 1_000_000_000;

/// Query parameters of both endpoints.
#[derive(Debug, Deserialize)]
pub struct MetricsParams {
    q: Option<String>,
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
    step: Option<String>,
    exemplars: Option<String>,
    #[serde(rename = "maxSeries")]
    max_series: Option<String>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Tempo's default step: a 240th of the range, down to a multiple of 5 s (1 s below that).
pub fn default_step(range_ns: i64) -> i64 {
    let raw = range_ns / 240;
    let grain = if raw >= 5 * SECOND { 5 * SECOND } else { SECOND };
    (raw / grain * grain).max(SECOND)
}

fn step(text: &str) -> Result<i64, ApiError> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok((seconds * 1e9) as i64);
        }
    }
    spindle_traceql::parse_duration(t)
        .filter(|d| *d > 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid step {t:?}: expected seconds or a duration like 30s")))
}

fn request(p: &MetricsParams, instant: bool) -> Result<MetricsRequest, ApiError> {
    let q = p.q.as_deref().or(p.query.as_deref()).map(str::trim).filter(|s| !s.is_empty());
    let q = q.ok_or_else(|| ApiError::bad_request("missing q: a TraceQL metrics query, e.g. { } | rate()"))?;
    let query = traceql(q)?;
    if query.metrics.is_none() {
        return Err(ApiError::bad_request(
            "not a metrics query: add a metrics function, e.g. { } | rate(); searches go to /api/search",
        ));
    }
    let end = match p.end.as_deref().filter(|s| !s.is_empty()) {
        Some(e) => unix_nanos("end", e)?,
        None => now_ns(),
    };
    let start = match p.start.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => unix_nanos("start", s)?,
        None => {
            let since = match p.since.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => spindle_traceql::parse_duration(s)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid since {s:?}")))?,
                None => 3600 * SECOND,
            };
            end.min(now_ns()) - since
        }
    };
    if end < start {
        return Err(ApiError::bad_request("invalid time range: end must not be before start"));
    }
    let step_ns = match p.step.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => step(s)?,
        None => default_step(end - start),
    };
    let exemplars = match p.exemplars.as_deref().map(str::trim) {
        None | Some("") => MAX_EXEMPLARS,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid exemplars {t:?}")))?
            .min(MAX_EXEMPLARS),
    };
    // `with(exemplars=false)` turns them off whatever the parameter says.
    let exemplars = if query.hint("exemplars") == Some(&spindle_traceql::Static::Bool(false)) { 0 } else { exemplars };
    let max_series = match p.max_series.as_deref().map(str::trim) {
        None | Some("") | Some("0") => DEFAULT_MAX_SERIES,
        Some(t) => {
            t.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid maxSeries {t:?}")))?.min(MAX_SERIES)
        }
    };
    Ok(MetricsRequest {
        query,
        start_ns: start,
        end_ns: end,
        step_ns: if instant { (end - start).max(1) } else { step_ns },
        instant: instant || end - start == step_ns,
        exemplars: if instant { 0 } else { exemplars },
        max_series,
    })
}

/// A float as Go's jsonpb writes it (NaN and infinities as strings).
fn float<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("NaN")
    } else if v.is_infinite() {
        s.serialize_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*v)
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SampleJson {
    timestamp_ms: String,
    #[serde(serialize_with = "float", skip_serializing_if = "is_zero")]
    value: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExemplarJson {
    labels: Value,
    #[serde(serialize_with = "float", skip_serializing_if = "is_zero")]
    value: f64,
    timestamp_ms: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SeriesJson {
    labels: Value,
    samples: Vec<SampleJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exemplars: Vec<ExemplarJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InstantSeriesJson {
    labels: Value,
    #[serde(serialize_with = "float", skip_serializing_if = "is_zero")]
    value: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricsJson {
    inspected_traces: u64,
    inspected_spans: String,
    inspected_bytes: String,
    completed_jobs: u64,
    total_jobs: u64,
}

#[derive(Debug, Serialize)]
struct RangeResponse {
    series: Vec<SeriesJson>,
    metrics: MetricsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize)]
struct InstantResponse {
    series: Vec<InstantSeriesJson>,
    metrics: MetricsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn labels(s: &Series) -> Value {
    let kvs: Vec<KeyValue> = s
        .labels
        .iter()
        .map(|(k, v)| KeyValue { key: k.clone(), value: Some(v.clone()), ..Default::default() })
        .collect();
    tempo_json::attributes(&kvs)
}

/// Runs the query for every tenant of the request; several tenants' series are concatenated.
async fn run(q: &Querier, headers: &HeaderMap, request: &MetricsRequest) -> Result<MetricsResult, ApiError> {
    let mut all = MetricsResult::default();
    for tenant in tenants(headers)? {
        let r = q.engine.bounded(q.engine.metrics(&tenant, request)).await?;
        all.series.extend(r.series);
        all.partial = all.partial.or(r.partial);
        all.inspected_traces += r.inspected_traces;
        all.inspected_spans += r.inspected_spans;
    }
    if all.series.len() > request.max_series {
        all.series.truncate(request.max_series);
        all.partial.get_or_insert_with(|| format!("Response exceeds maximum series limit of {}", request.max_series));
    }
    Ok(all)
}

fn metrics_json(r: &MetricsResult) -> MetricsJson {
    MetricsJson {
        inspected_traces: r.inspected_traces,
        inspected_spans: r.inspected_spans.to_string(),
        inspected_bytes: "0".into(),
        completed_jobs: 1,
        total_jobs: 1,
    }
}

/// `GET /api/metrics/query_range`.
pub async fn query_range(State(q): State<Querier>, Query(p): Query<MetricsParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let request = request(&p, false)?;
        let r = run(&q, &headers, &request).await?;
        Ok::<_, ApiError>(RangeResponse {
            series: r
                .series
                .iter()
                .map(|s| SeriesJson {
                    labels: labels(s),
                    samples: s
                        .samples
                        .iter()
                        .map(|(t, v)| SampleJson { timestamp_ms: t.to_string(), value: *v })
                        .collect(),
                    exemplars: s
                        .exemplars
                        .iter()
                        .map(|e| ExemplarJson {
                            labels: tempo_json::attributes(&e.labels),
                            value: e.value,
                            timestamp_ms: e.timestamp_ms.to_string(),
                        })
                        .collect(),
                })
                .collect(),
            metrics: metrics_json(&r),
            status: r.partial.as_ref().map(|_| "PARTIAL"),
            message: r.partial.clone(),
        })
    }
    .await;
    q.metrics.observe("metrics_query_range", result.is_ok(), start);
    match result {
        Ok(body) => json_response(&body),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/metrics/query`: one value per series over `(start, end]`.
pub async fn query_instant(State(q): State<Querier>, Query(p): Query<MetricsParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        let request = request(&p, true)?;
        let r = run(&q, &headers, &request).await?;
        Ok::<_, ApiError>(InstantResponse {
            series: r
                .series
                .iter()
                .map(|s| InstantSeriesJson { labels: labels(s), value: s.samples.first().map_or(0.0, |x| x.1) })
                .collect(),
            metrics: metrics_json(&r),
            status: r.partial.as_ref().map(|_| "PARTIAL"),
            message: r.partial.clone(),
        })
    }
    .await;
    q.metrics.observe("metrics_query", result.is_ok(), start);
    match result {
        Ok(body) => json_response(&body),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_steps_as_tempo() {
        assert_eq!(default_step(3600 * SECOND), 15 * SECOND);
        assert_eq!(default_step(600 * SECOND), 2 * SECOND);
        assert_eq!(default_step(60 * SECOND), SECOND);
        assert_eq!(default_step(24 * 3600 * SECOND), 360 * SECOND);
    }
}
