//! Tempo-style trace search: traces with at least one span matching a filter, newest first,
//! with trace-level facts (root span, duration, per-service counts) and the matching spans.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::prelude::{col, lit, Expr};
use spindle_otlp::from_arrow::batches_to_resource_spans;
use spindle_otlp::otlp::common::v1::KeyValue;
use spindle_schema::col as c;
use spindle_storage::TenantId;

use crate::filter::trace_id_literal;
use crate::hints::time_filter;
use crate::{QueryEngine, QueryError, Result};

/// What to search for.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Span filter; `None` matches every span.
    pub filter: Option<Expr>,
    /// Attributes the filter reads, as (scope, key): their values are returned with matched spans.
    /// Scope is `Some(true)` for resource, `Some(false)` for span, `None` for either.
    pub touched: Vec<(Option<bool>, String)>,
    /// Only spans starting within `[start, end]` (unix ns) are considered.
    pub time_range: Option<(i64, i64)>,
    /// Minimum trace duration (ns).
    pub min_duration_ns: Option<i64>,
    /// Maximum trace duration (ns).
    pub max_duration_ns: Option<i64>,
    /// Most traces to return.
    pub limit: usize,
    /// Most matched spans to return per trace.
    pub spans_per_spanset: usize,
}

/// A matched span, as the search result shows it.
#[derive(Debug, Clone)]
pub struct SpanHit {
    /// Span id.
    pub span_id: [u8; 8],
    /// Span name.
    pub name: String,
    /// Start, unix ns.
    pub start_ns: i64,
    /// Duration, ns.
    pub duration_ns: i64,
    /// The touched attributes of the span.
    pub attributes: Vec<KeyValue>,
}

/// One trace found by a search.
#[derive(Debug, Clone)]
pub struct TraceHit {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Service of the root span (`<root span not yet received>` if none).
    pub root_service_name: String,
    /// Name of the root span.
    pub root_trace_name: String,
    /// Earliest span start, unix ns.
    pub start_ns: i64,
    /// Latest span end minus earliest start, ns.
    pub duration_ns: i64,
    /// The first matched spans (by start time).
    pub spans: Vec<SpanHit>,
    /// How many spans matched.
    pub matched: u64,
    /// Spans and error spans per service.
    pub service_stats: BTreeMap<String, (u64, u64)>,
}

/// The answer to a search.
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    /// Traces found.
    pub traces: Vec<TraceHit>,
    /// Traces inspected.
    pub inspected_traces: u64,
    /// Bytes of span data inspected (in memory).
    pub inspected_bytes: u64,
}

/// Used when a trace's root span has not arrived (Tempo's wording).
pub const NO_ROOT: &str = "<root span not yet received>";

const MATCHED: &str = "__matched";

impl QueryEngine {
    /// Finds traces with a span matching `request.filter`.
    pub async fn search(&self, tenant: &TenantId, request: &SearchRequest) -> Result<SearchResult> {
        let ctx = self.session(tenant)?;
        let mut predicate = request.filter.clone().unwrap_or_else(|| lit(true));
        if let Some((start, end)) = request.time_range {
            predicate = predicate.and(time_filter(start, end));
        }
        let duration_filtered = request.min_duration_ns.is_some() || request.max_duration_ns.is_some();
        let candidate_cap = if duration_filtered { (request.limit * 20).clamp(200, 5000) } else { request.limit };
        let candidates = ctx
            .table("spans")
            .await?
            .filter(predicate.clone())?
            .aggregate(
                vec![col(c::TRACE_ID)],
                vec![count(lit(1)).alias("matched"), max(col(c::START_TIME)).alias("last")],
            )?
            .sort(vec![col("last").sort(false, false)])?
            .limit(0, Some(candidate_cap))?
            .collect()
            .await?;
        let mut ids: Vec<[u8; 16]> = Vec::new();
        for b in &candidates {
            let column = b.column(0).as_fixed_size_binary();
            for i in 0..b.num_rows() {
                if let Ok(id) = column.value(i).try_into() {
                    ids.push(id);
                }
            }
        }
        let mut result = SearchResult::default();
        let chunk = request.limit.max(50);
        for ids in ids.chunks(chunk) {
            let list: Vec<Expr> = ids.iter().map(|id| trace_id_literal(*id)).collect();
            let rows = ctx
                .table("spans")
                .await?
                .filter(col(c::TRACE_ID).in_list(list, false))?
                .with_column(MATCHED, predicate.clone())?
                .collect()
                .await?;
            result.inspected_traces += ids.len() as u64;
            result.inspected_bytes += rows.iter().map(|b| b.get_array_memory_size() as u64).sum::<u64>();
            let mut hits = summarise(&rows, request)?;
            // Keep the newest-first order of the candidates.
            let order: HashMap<[u8; 16], usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            hits.sort_by_key(|h| order.get(&h.trace_id).copied().unwrap_or(usize::MAX));
            for h in hits {
                let ok_min = request.min_duration_ns.is_none_or(|m| h.duration_ns >= m);
                let ok_max = request.max_duration_ns.is_none_or(|m| h.duration_ns <= m);
                if ok_min && ok_max && result.traces.len() < request.limit {
                    result.traces.push(h);
                }
            }
            if result.traces.len() >= request.limit {
                break;
            }
        }
        Ok(result)
    }
}

#[derive(Default)]
struct Acc {
    start: i64,
    end: i64,
    root: Option<(String, String)>,
    matched: Vec<(usize, usize, i64)>,
    stats: BTreeMap<String, (u64, u64)>,
}

fn summarise(batches: &[RecordBatch], request: &SearchRequest) -> Result<Vec<TraceHit>> {
    let mut traces: HashMap<[u8; 16], Acc> = HashMap::new();
    for (bi, b) in batches.iter().enumerate() {
        let get =
            |name: &str| b.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("missing column {name}")));
        let trace_id = get(c::TRACE_ID)?.as_fixed_size_binary();
        let parent = get(c::PARENT_SPAN_ID)?.as_fixed_size_binary();
        let name = get(c::NAME)?.as_string::<i32>();
        let service = get(c::SERVICE_NAME)?.as_string::<i32>();
        let start = get(c::START_TIME)?.as_primitive::<TimestampNanosecondType>();
        let duration = get(c::DURATION_NS)?.as_primitive::<Int64Type>();
        let status = get(c::STATUS_CODE)?.as_string::<i32>();
        let matched = get(MATCHED)?.as_boolean();
        for row in 0..b.num_rows() {
            let Ok(id) = <[u8; 16]>::try_from(trace_id.value(row)) else {
                continue;
            };
            let s = start.value(row);
            let e = s.saturating_add(duration.value(row).max(0));
            let acc = traces.entry(id).or_insert_with(|| Acc { start: i64::MAX, end: i64::MIN, ..Default::default() });
            acc.start = acc.start.min(s);
            acc.end = acc.end.max(e);
            let svc = if service.is_null(row) { String::new() } else { service.value(row).to_string() };
            if parent.is_null(row) && acc.root.is_none() {
                acc.root = Some((svc.clone(), name.value(row).to_string()));
            }
            let entry = acc.stats.entry(svc).or_default();
            entry.0 += 1;
            if status.value(row) == "error" {
                entry.1 += 1;
            }
            if matched.is_valid(row) && matched.value(row) {
                acc.matched.push((bi, row, s));
            }
        }
    }
    let mut out = Vec::with_capacity(traces.len());
    for (trace_id, mut acc) in traces {
        if acc.matched.is_empty() {
            continue;
        }
        acc.matched.sort_by_key(|m| m.2);
        let spans = acc
            .matched
            .iter()
            .take(request.spans_per_spanset)
            .map(|&(bi, row, _)| span_hit(&batches[bi], row, &request.touched))
            .collect::<Result<Vec<_>>>()?;
        let (root_service_name, root_trace_name) =
            acc.root.unwrap_or_else(|| (NO_ROOT.to_string(), NO_ROOT.to_string()));
        out.push(TraceHit {
            trace_id,
            root_service_name,
            root_trace_name,
            start_ns: acc.start,
            duration_ns: acc.end.saturating_sub(acc.start),
            spans,
            matched: acc.matched.len() as u64,
            service_stats: acc.stats,
        });
    }
    Ok(out)
}

fn span_hit(batch: &RecordBatch, row: usize, touched: &[(Option<bool>, String)]) -> Result<SpanHit> {
    let one = batch.slice(row, 1);
    let rs = batches_to_resource_spans(&[one]).map_err(|e| QueryError::Internal(e.to_string()))?;
    let resource = rs.first().and_then(|r| r.resource.clone()).unwrap_or_default();
    let span = rs
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .next()
        .ok_or_else(|| QueryError::Internal("span row vanished".into()))?;
    let mut attributes = Vec::new();
    for (scope, key) in touched {
        let from_span = scope != &Some(true);
        let from_resource = scope != &Some(false);
        let found = span
            .attributes
            .iter()
            .filter(|_| from_span)
            .chain(resource.attributes.iter().filter(|_| from_resource))
            .find(|kv| &kv.key == key);
        if let Some(kv) = found {
            if !attributes.iter().any(|a: &KeyValue| a.key == kv.key) {
                attributes.push(kv.clone());
            }
        }
    }
    Ok(SpanHit {
        span_id: span.span_id.as_slice().try_into().unwrap_or([0; 8]),
        name: span.name,
        start_ns: span.start_time_unix_nano as i64,
        duration_ns: span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as i64,
        attributes,
    })
}
