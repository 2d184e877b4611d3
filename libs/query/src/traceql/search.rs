//! TraceQL search: the traces whose spans a query selects, newest first, with Tempo's summary
//! of each (root span, start, duration, matched spans, per-service counts).
//!
//! Candidates come from one aggregate over the time range ([`CandidatePlan`]), ordered by the
//! start of their latest leaf-matching span, which bounds the start of their latest selected
//! span. Whole candidate traces are then evaluated in chunks, newest first, until `limit`
//! traces are found and no later chunk can hold a newer one: the answer is exactly the `limit`
//! traces whose latest selected span is newest, whatever the query. The summary of each chunk
//! is computed by DataFusion aggregates over the evaluated frame.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampNanosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::functions_aggregate::expr_fn::{bool_or, count, first_value, max, min, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{cast, when, ExprFunctionExt};
use datafusion::prelude::{ident, lit, Expr, SessionContext};
use spindle_otlp::otlp::common::v1::{any_value, AnyValue, KeyValue};
use spindle_schema::col as c;
use spindle_storage::TenantId;
use spindle_traceql::{Field, FieldExpr, Intrinsic, SpansetExpr, Stage};

use super::fields::{FieldCompiler, Frame};
use super::plan::{evaluate, CandidatePlan, Evaluation, ValueColumns};
use crate::filter::trace_id_literal;
use crate::hints::time_filter;
use crate::{QueryEngine, QueryError, Result};

/// What to search for.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The spans to find (a validated TraceQL query without metrics).
    pub spans: SpansetExpr,
    /// Only spans starting within `[start, end]` (unix ns) can be selected; the trace-level
    /// facts (structure, root, duration) come from the whole trace.
    pub time_range: Option<(i64, i64)>,
    /// Most traces to return.
    pub limit: usize,
    /// Most spans to return per spanset.
    pub spans_per_spanset: usize,
}

/// A span of a result spanset.
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
    /// The values of the fields the query reads or selects (keys without scope, as Tempo).
    pub attributes: Vec<KeyValue>,
}

/// One spanset of a trace (one per trace, or one per `by()` group).
#[derive(Debug, Clone)]
pub struct SpansetHit {
    /// The first spans by start time, at most `spans_per_spanset`.
    pub spans: Vec<SpanHit>,
    /// How many spans the spanset holds.
    pub matched: u64,
    /// `by(...)` values and aggregate values.
    pub attributes: Vec<KeyValue>,
}

/// One trace found.
#[derive(Debug, Clone)]
pub struct TraceHit {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Service of the root span; `None` when the root span has not arrived.
    pub root_service_name: Option<String>,
    /// Name of the root span.
    pub root_trace_name: Option<String>,
    /// Earliest span start, unix ns.
    pub start_ns: i64,
    /// Latest span end minus earliest start, ns.
    pub duration_ns: i64,
    /// The result spansets.
    pub spansets: Vec<SpansetHit>,
    /// Spans and error spans per service, over the whole trace.
    pub service_stats: BTreeMap<String, (u64, u64)>,
    /// Start of the latest selected span (the order of results).
    pub newest_selected_ns: i64,
}

/// The answer to a search.
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    /// Traces found, by start time, newest first.
    pub traces: Vec<TraceHit>,
    /// Traces whose spans were evaluated.
    pub inspected_traces: u64,
    /// Bytes of span data evaluated (in memory).
    pub inspected_bytes: u64,
}

/// Candidates kept in memory at most (each is 24 bytes); more make the search fail with a
/// request to narrow the time range.
const MAX_CANDIDATES: usize = 4_000_000;
/// Largest chunk of candidate traces evaluated at once.
const MAX_CHUNK: usize = 2_000;

/// Intrinsics Tempo does not list among a span's attributes in search results.
fn shown_as_attribute(f: &Field) -> bool {
    !matches!(
        f,
        Field::Intrinsic(
            Intrinsic::Name
                | Intrinsic::Duration
                | Intrinsic::TraceDuration
                | Intrinsic::RootServiceName
                | Intrinsic::RootName
                | Intrinsic::TraceId
                | Intrinsic::SpanId
                | Intrinsic::EventName
                | Intrinsic::EventTimeSinceStart
                | Intrinsic::LinkTraceId
                | Intrinsic::LinkSpanId
                | Intrinsic::Parent
        ) | Field::Attribute(spindle_traceql::Attribute {
            scope: spindle_traceql::AttributeScope::Event | spindle_traceql::AttributeScope::Link,
            ..
        }) | Field::Attribute(spindle_traceql::Attribute { parent: true, .. })
    )
}

/// The fields a query reads, in order, without repeats.
pub fn touched_fields(expr: &SpansetExpr) -> Vec<Field> {
    fn walk(expr: &SpansetExpr, out: &mut Vec<Field>) {
        let add = |e: &FieldExpr, out: &mut Vec<Field>| {
            for f in e.fields() {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        };
        match expr {
            SpansetExpr::Filter(e) => add(e, out),
            SpansetExpr::Op { lhs, rhs, .. } => {
                walk(lhs, out);
                walk(rhs, out);
            }
            SpansetExpr::Pipeline(stages) => {
                for s in stages {
                    match s {
                        Stage::Spanset(x) => walk(x, out),
                        Stage::By(e) => add(e, out),
                        Stage::Select(fields) => {
                            for f in fields {
                                if !out.contains(f) {
                                    out.push(f.clone());
                                }
                            }
                        }
                        Stage::ScalarFilter(_) | Stage::Coalesce => {}
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

impl QueryEngine {
    /// Finds the traces `request` selects.
    pub async fn search(&self, tenant: &TenantId, request: &SearchRequest) -> Result<SearchResult> {
        let ctx = self.session(tenant)?;
        let plan = CandidatePlan::new(&request.spans)?;
        let in_range = match request.time_range {
            Some((start, end)) => time_filter(start, end),
            None => lit(true),
        };
        let mut scan = ctx.table("spans").await?.filter(in_range.clone().and(plan.span_filter()))?;
        let mut flags = Vec::new();
        for (i, leaf) in plan.leaves.iter().enumerate() {
            let name = format!("__leaf{i}");
            scan = scan.with_column(&name, leaf.clone())?;
            flags.push(bool_or(ident(&name)).alias(&name));
        }
        let mut aggregates = vec![max(ident(c::START_TIME)).alias("__key")];
        aggregates.extend(flags);
        let requirement = plan.requirement.condition(&|i| ident(format!("__leaf{i}")));
        let mut candidates = scan
            .aggregate(vec![ident(c::TRACE_ID)], aggregates)?
            .filter(requirement)?
            .sort(vec![ident("__key").sort(false, false), ident(c::TRACE_ID).sort(false, false)])?;
        if plan.single_exact_filter {
            candidates = candidates.limit(0, Some(request.limit))?;
        }
        let mut ids: Vec<([u8; 16], i64)> = Vec::new();
        let mut stream = candidates.select(vec![ident(c::TRACE_ID), ident("__key")])?.execute_stream().await?;
        use futures::StreamExt;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let tid = batch.column(0).as_fixed_size_binary();
            let key = cast_ts(batch.column(1));
            for (i, key) in key.iter().enumerate() {
                if let Ok(id) = tid.value(i).try_into() {
                    ids.push((id, *key));
                }
            }
            if ids.len() > MAX_CANDIDATES {
                return Err(QueryError::ResourcesExhausted(format!(
                    "more than {MAX_CANDIDATES} traces may match; narrow the time range or the query"
                )));
            }
        }

        let mut result = SearchResult::default();
        let mut found: Vec<TraceHit> = Vec::new();
        let mut next = 0;
        let mut chunk = request.limit.clamp(1, MAX_CHUNK);
        while next < ids.len() {
            let end = (next + chunk).min(ids.len());
            let batch_ids: Vec<[u8; 16]> = ids[next..end].iter().map(|(id, _)| *id).collect();
            next = end;
            let hits = self.evaluate_chunk(&ctx, request, &batch_ids, in_range.clone(), &mut result).await?;
            found.extend(hits);
            found.sort_by(|a, b| b.newest_selected_ns.cmp(&a.newest_selected_ns).then(b.trace_id.cmp(&a.trace_id)));
            found.truncate(request.limit);
            // Every later candidate's selected spans start at or before its key.
            let done = found.len() >= request.limit
                && ids.get(next).is_none_or(|(_, key)| found[request.limit - 1].newest_selected_ns >= *key);
            if done {
                break;
            }
            chunk = (chunk * 4).min(MAX_CHUNK);
        }
        found.sort_by(|a, b| b.start_ns.cmp(&a.start_ns).then(b.trace_id.cmp(&a.trace_id)));
        result.traces = found;
        Ok(result)
    }

    async fn evaluate_chunk(
        &self,
        ctx: &SessionContext,
        request: &SearchRequest,
        ids: &[[u8; 16]],
        in_range: Expr,
        result: &mut SearchResult,
    ) -> Result<Vec<TraceHit>> {
        let list: Vec<Expr> = ids.iter().map(|id| trace_id_literal(*id)).collect();
        let frame = ctx.table("spans").await?.filter(ident(c::TRACE_ID).in_list(list, false))?;
        let eval = evaluate(frame, &request.spans, in_range, &[])?;
        let hits = summarise(eval, request).await?;
        result.inspected_traces += ids.len() as u64;
        result.inspected_bytes += hits.1;
        Ok(hits.0)
    }
}

fn cast_ts(a: &ArrayRef) -> Vec<i64> {
    match a.data_type() {
        DataType::Timestamp(..) => a.as_primitive::<TimestampNanosecondType>().values().to_vec(),
        _ => a.as_primitive_opt::<Int64Type>().map(|p| p.values().to_vec()).unwrap_or_default(),
    }
}

/// One value column per type component of a field shown on spans.
struct Shown {
    key: String,
    value: ValueColumns,
}

async fn summarise(eval: Evaluation, request: &SearchRequest) -> Result<(Vec<TraceHit>, u64)> {
    let Evaluation { mut frame, matched, groups, attributes, selected } = eval;
    // Values of the touched and selected fields, as columns.
    let mut compiler = FieldCompiler::new(Frame::Traces);
    let mut shown = Vec::new();
    let mut fields = touched_fields(&request.spans);
    for f in selected {
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    for (n, f) in fields.iter().filter(|f| shown_as_attribute(f)).enumerate() {
        let value = compiler.value(&FieldExpr::Field(f.clone()))?;
        let mut columns = ValueColumns::default();
        for (ty, e) in [
            ("str", value.str),
            ("int", value.int),
            ("float", value.float),
            ("bool", value.bool),
            ("duration", value.duration),
            ("status", value.status),
            ("kind", value.kind),
            ("encoded", value.array),
        ] {
            if let Some(e) = e {
                let name = format!("__show{n}_{ty}");
                frame = frame.with_column(&name, e)?;
                columns.columns.push((ty, name));
            }
        }
        let key = match f {
            Field::Attribute(a) => a.name.clone(),
            Field::Intrinsic(i) => i.name().to_string(),
        };
        shown.push(Shown { key, value: columns });
    }
    let mut keep: Vec<Expr> = [
        c::TRACE_ID,
        c::SPAN_ID,
        c::PARENT_SPAN_ID,
        c::START_TIME,
        c::DURATION_NS,
        c::NAME,
        c::SERVICE_NAME,
        c::STATUS_CODE,
    ]
    .iter()
    .map(|n| ident(*n))
    .collect();
    keep.push(ident(&matched));
    keep.extend(groups.iter().map(ident));
    for a in &attributes {
        keep.extend(a.value.columns.iter().map(|(_, n)| ident(n)));
    }
    for s in &shown {
        keep.extend(s.value.columns.iter().map(|(_, n)| ident(n)));
    }
    let frame = frame.select(dedup(keep))?.cache().await?;

    let mut spanset_key: Vec<Expr> = vec![ident(c::TRACE_ID)];
    spanset_key.extend(groups.iter().map(ident));
    let selected_spans = frame.clone().filter(ident(&matched))?;

    let mut set_aggs = vec![count(lit(1i64)).alias("__matched"), max(ident(c::START_TIME)).alias("__key")];
    for a in &attributes {
        for (_, n) in &a.value.columns {
            // `by()` values are group keys, already in the output.
            if !groups.contains(n) {
                set_aggs.push(first_value(ident(n), vec![]).alias(n));
            }
        }
    }
    let sets = selected_spans.clone().aggregate(spanset_key.clone(), set_aggs)?.collect().await?;

    let order = vec![ident(c::START_TIME).sort(true, false), ident(c::SPAN_ID).sort(true, false)];
    let rn = row_number().partition_by(spanset_key.clone()).order_by(order).build()?;
    let spans = selected_spans
        .with_column("__rn", rn)?
        .filter(ident("__rn").lt_eq(lit(request.spans_per_spanset as u64)))?
        .collect()
        .await?;

    let root = |v: &str| {
        first_value(ident(v), vec![ident(c::START_TIME).sort(true, false), ident(c::SPAN_ID).sort(true, false)])
            .filter(ident(c::PARENT_SPAN_ID).is_null())
            .build()
    };
    let start_i64 = cast(ident(c::START_TIME), DataType::Int64);
    let traces = frame
        .clone()
        .aggregate(
            vec![ident(c::TRACE_ID)],
            vec![
                min(start_i64.clone()).alias("__start"),
                max(start_i64 + ident(c::DURATION_NS)).alias("__end"),
                root(c::NAME)?.alias("__root_name"),
                root(c::SERVICE_NAME)?.alias("__root_service"),
            ],
        )?
        .collect()
        .await?;
    let stats = frame
        .clone()
        .aggregate(
            vec![ident(c::TRACE_ID), ident(c::SERVICE_NAME)],
            vec![
                count(lit(1i64)).alias("__spans"),
                sum(when(ident(c::STATUS_CODE).eq(lit("error")), lit(1i64)).otherwise(lit(0i64))?).alias("__errors"),
            ],
        )?
        .collect()
        .await?;
    let bytes: u64 = frame.collect().await?.iter().map(|b| b.get_array_memory_size() as u64).sum();

    // Assemble: traces, then their spansets, then the spansets' spans.
    let mut out: HashMap<[u8; 16], TraceHit> = HashMap::new();
    for b in &traces {
        let ids = b.column(0).as_fixed_size_binary();
        let start = b.column(1).as_primitive::<Int64Type>();
        let end = b.column(2).as_primitive::<Int64Type>();
        let name = b.column(3).as_string_opt::<i32>();
        let svc = b.column(4).as_string_opt::<i32>();
        for i in 0..b.num_rows() {
            let Ok(id) = <[u8; 16]>::try_from(ids.value(i)) else { continue };
            let text =
                |a: Option<&arrow::array::StringArray>| a.filter(|a| a.is_valid(i)).map(|a| a.value(i).to_string());
            out.insert(
                id,
                TraceHit {
                    trace_id: id,
                    root_service_name: text(svc),
                    root_trace_name: text(name),
                    start_ns: start.value(i),
                    duration_ns: end.value(i).saturating_sub(start.value(i)),
                    spansets: Vec::new(),
                    service_stats: BTreeMap::new(),
                    newest_selected_ns: i64::MIN,
                },
            );
        }
    }
    for b in &stats {
        let ids = b.column(0).as_fixed_size_binary();
        let svc = b.column(1).as_string::<i32>();
        let n = b.column(2).as_primitive::<Int64Type>();
        let e = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let Ok(id) = <[u8; 16]>::try_from(ids.value(i)) else { continue };
            if let Some(t) = out.get_mut(&id) {
                let service = if svc.is_valid(i) { svc.value(i).to_string() } else { String::new() };
                t.service_stats.insert(service, (n.value(i) as u64, e.value(i) as u64));
            }
        }
    }
    // Spansets, keyed by trace id and the printed group values.
    let mut set_index: HashMap<([u8; 16], String), (usize, usize)> = HashMap::new();
    for b in &sets {
        let ids = b.column_by_name(c::TRACE_ID).map(|a| a.as_fixed_size_binary());
        let Some(ids) = ids else { continue };
        let group_text = group_texts(b, &groups)?;
        let matched_col = column(b, "__matched")?.as_primitive::<Int64Type>();
        let key_col = cast_ts(column(b, "__key")?);
        for i in 0..b.num_rows() {
            let Ok(id) = <[u8; 16]>::try_from(ids.value(i)) else { continue };
            let Some(t) = out.get_mut(&id) else { continue };
            let mut attrs = Vec::new();
            for a in &attributes {
                let value = value_at(b, &a.value, i)?.unwrap_or_else(nil_value);
                attrs.push(KeyValue { key: a.key.clone(), value: Some(value), ..Default::default() });
            }
            t.newest_selected_ns = t.newest_selected_ns.max(key_col[i]);
            set_index.insert((id, group_text[i].clone()), (0, t.spansets.len()));
            t.spansets.push(SpansetHit { spans: Vec::new(), matched: matched_col.value(i) as u64, attributes: attrs });
        }
    }
    for b in &spans {
        let ids = column(b, c::TRACE_ID)?.as_fixed_size_binary();
        let span_ids = column(b, c::SPAN_ID)?.as_fixed_size_binary();
        let names = column(b, c::NAME)?.as_string::<i32>();
        let starts = cast_ts(column(b, c::START_TIME)?);
        let durations = column(b, c::DURATION_NS)?.as_primitive::<Int64Type>();
        let group_text = group_texts(b, &groups)?;
        let mut rows: Vec<usize> = (0..b.num_rows()).collect();
        rows.sort_by_key(|&i| (starts[i], span_ids.value(i).to_vec()));
        for i in rows {
            let Ok(id) = <[u8; 16]>::try_from(ids.value(i)) else { continue };
            let Some(&(_, set)) = set_index.get(&(id, group_text[i].clone())) else { continue };
            let Some(t) = out.get_mut(&id) else { continue };
            let mut attributes = Vec::new();
            for s in &shown {
                if let Some(value) = value_at(b, &s.value, i)? {
                    attributes.push(KeyValue { key: s.key.clone(), value: Some(value), ..Default::default() });
                }
            }
            t.spansets[set].spans.push(SpanHit {
                span_id: span_ids.value(i).try_into().unwrap_or([0; 8]),
                name: names.value(i).to_string(),
                start_ns: starts[i],
                duration_ns: durations.value(i),
                attributes,
            });
        }
    }
    let hits = out.into_values().filter(|t| !t.spansets.is_empty()).collect();
    Ok((hits, bytes))
}

fn dedup(exprs: Vec<Expr>) -> Vec<Expr> {
    let mut out: Vec<Expr> = Vec::new();
    for e in exprs {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("missing column {name}")))
}

/// The group values of each row, printed (the identity of a spanset within its trace).
fn group_texts(b: &RecordBatch, groups: &[String]) -> Result<Vec<String>> {
    let mut out = vec![String::new(); b.num_rows()];
    let options = FormatOptions::default().with_null("\u{0}");
    for g in groups {
        let formatter = ArrayFormatter::try_new(column(b, g)?.as_ref(), &options)?;
        for (i, text) in out.iter_mut().enumerate() {
            text.push_str(&formatter.value(i).to_string());
            text.push('\u{1}');
        }
    }
    Ok(out)
}

fn nil_value() -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue("nil".into())) }
}

/// The OTLP value of the first non-null component at row `i`, as Tempo prints it.
fn value_at(b: &RecordBatch, value: &ValueColumns, i: usize) -> Result<Option<AnyValue>> {
    use any_value::Value as V;
    for (ty, name) in &value.columns {
        let a = column(b, name)?;
        if a.is_null(i) {
            continue;
        }
        let v = match (*ty, a.data_type()) {
            ("int", _) => V::IntValue(int_at(a, i)),
            ("float", _) => V::DoubleValue(float_at(a, i)),
            ("bool", DataType::Boolean) => V::BoolValue(a.as_boolean().value(i)),
            ("duration", _) => V::StringValue(spindle_traceql::format_duration(int_at(a, i))),
            // An array (or other encoded value) the scalar columns do not hold: shown as stored.
            ("encoded", DataType::Binary) => match spindle_otlp::decode_any(a.as_binary::<i32>().value(i)).value {
                Some(v @ (V::ArrayValue(_) | V::KvlistValue(_) | V::BytesValue(_))) => v,
                _ => continue,
            },
            (_, DataType::Utf8) => V::StringValue(a.as_string::<i32>().value(i).to_string()),
            _ => continue,
        };
        return Ok(Some(AnyValue { value: Some(v) }));
    }
    Ok(None)
}

fn int_at(a: &ArrayRef, i: usize) -> i64 {
    match a.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i),
        DataType::Float64 => a.as_primitive::<arrow::datatypes::Float64Type>().value(i) as i64,
        _ => 0,
    }
}

fn float_at(a: &ArrayRef, i: usize) -> f64 {
    match a.data_type() {
        DataType::Float64 => a.as_primitive::<arrow::datatypes::Float64Type>().value(i),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i) as f64,
        _ => 0.0,
    }
}
