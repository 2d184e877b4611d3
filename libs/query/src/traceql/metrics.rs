//! TraceQL metrics (`rate()`, `count_over_time()`, `*_over_time(x)`, `quantile_over_time`,
//! `histogram_over_time`, `by(...)`, `topk`/`bottomk`) over every retained span.
//!
//! The spans a query selects are grouped by time interval and `by()` values in one DataFusion
//! aggregate (count, sum, min, max and an exemplar per group; for quantiles and histograms also
//! by power-of-two bucket). A query that needs whole traces (structural operators, pipelines,
//! trace-level intrinsics) is evaluated over its candidate traces in chunks and the chunks'
//! partial aggregates are merged. The time grid, labels, quantile interpolation and series
//! order follow Tempo (see `docs/traceql.md`).

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::dataframe::DataFrame;
use datafusion::functions::math::expr_fn::{ceil, log2};
use datafusion::functions_aggregate::expr_fn::{count, first_value, max, min, sum};
use datafusion::logical_expr::cast;
use datafusion::prelude::{ident, lit, Expr, SessionContext};
use spindle_otlp::otlp::common::v1::{any_value, AnyValue, KeyValue};
use spindle_schema::col as c;
use spindle_storage::TenantId;
use spindle_traceql::{FieldExpr, MetricsFunction, MetricsQuery, MetricsStage, Query, SpansetExpr, ValueType};

use super::fields::{needs_trace_frame, FieldCompiler, Frame, Typed};
use super::plan::{evaluate, CandidatePlan};
use crate::filter::trace_id_literal;
use crate::hints::time_filter;
use crate::{QueryEngine, QueryError, Result};

/// Most intervals one query may ask for.
pub const MAX_INTERVALS: i64 = 11_000;
/// Candidate traces evaluated at once when a query needs whole traces.
pub(super) const CHUNK: usize = 2_000;

/// A metrics query and its time grid.
#[derive(Debug, Clone)]
pub struct MetricsRequest {
    /// A validated query with a metrics part.
    pub query: Query,
    /// Start of the range, unix ns.
    pub start_ns: i64,
    /// End of the range, unix ns.
    pub end_ns: i64,
    /// Interval length, ns.
    pub step_ns: i64,
    /// One interval `(start, end]` without alignment (`/api/metrics/query`).
    pub instant: bool,
    /// Most exemplars per series (0 for none).
    pub exemplars: usize,
    /// Most series returned; more make the answer partial.
    pub max_series: usize,
}

/// A series label value.
pub type LabelValue = AnyValue;

/// An exemplar: a span that contributed to a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// `trace:id` and the series' labels.
    pub labels: Vec<KeyValue>,
    /// The span's value (seconds for durations) or the sample's value.
    pub value: f64,
    /// The span's start, unix ms.
    pub timestamp_ms: i64,
}

/// One series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels, in order.
    pub labels: Vec<(String, LabelValue)>,
    /// `(timestamp ms, value)` by time; missing intervals have no sample.
    pub samples: Vec<(i64, f64)>,
    /// Exemplars by time.
    pub exemplars: Vec<Exemplar>,
}

/// The answer to a metrics query.
#[derive(Debug, Clone, Default)]
pub struct MetricsResult {
    /// Series in Tempo's order.
    pub series: Vec<Series>,
    /// Set when series were left out (`maxSeries`).
    pub partial: Option<String>,
    /// Traces evaluated whole (queries that need whole traces).
    pub inspected_traces: u64,
    /// Spans aggregated.
    pub inspected_spans: u64,
}

/// The time grid: intervals `(first + i*step, first + (i+1)*step]`, stamped with their end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Start of the first interval (exclusive), unix ns.
    pub first: i64,
    /// Interval length, ns.
    pub step: i64,
    /// Number of intervals.
    pub intervals: i64,
}

impl Grid {
    /// Tempo's grid: for a range query the start is aligned down to the step, less one step,
    /// and the end aligned up; an instant query is one interval `(start, end]`.
    pub fn new(start: i64, end: i64, step: i64, instant: bool) -> Result<Self> {
        if step <= 0 || end < start {
            return Err(QueryError::BadRequest(
                "invalid range: end must not be before start, step must be positive".into(),
            ));
        }
        if instant {
            return Ok(Grid { first: start, step: (end - start).max(1), intervals: 1 });
        }
        let first = start - start.rem_euclid(step) - step;
        let last = end.div_euclid(step) * step + if end.rem_euclid(step) == 0 { 0 } else { step };
        let intervals = (last - first) / step;
        if intervals > MAX_INTERVALS {
            return Err(QueryError::BadRequest(format!(
                "the range holds {intervals} steps; at most {MAX_INTERVALS} are allowed: raise step"
            )));
        }
        Ok(Grid { first, step, intervals })
    }

    /// End of the grid, unix ns.
    pub fn last(&self) -> i64 {
        self.first + self.intervals * self.step
    }

    /// Timestamp (ms) of interval `i`.
    pub fn timestamp_ms(&self, i: i64) -> i64 {
        (self.first + (i + 1) * self.step).div_euclid(1_000_000)
    }

    /// Spans in the grid: start in `(first, last]`.
    pub(super) fn span_filter(&self) -> Expr {
        time_filter(self.first.saturating_add(1), self.last())
    }

    /// The interval of each span (Int64).
    pub(super) fn interval(&self) -> Expr {
        (cast(ident(c::START_TIME), DataType::Int64) - lit(self.first + 1)) / lit(self.step)
    }
}

/// How a metrics function reads its value.
struct ValueSpec {
    /// Float64 value per span (seconds for durations), if the function reads one.
    value: Option<Expr>,
    /// Log2 bucket exponent per span, for quantiles and histograms (of nanoseconds for durations).
    bucket: Option<Expr>,
}

fn value_spec(function: &MetricsFunction, compiler: &mut FieldCompiler) -> Result<ValueSpec> {
    let Some(field) = function.field() else {
        return Ok(ValueSpec { value: None, bucket: None });
    };
    let typed = compiler.value(&FieldExpr::Field(field.clone()))?;
    let duration = field.value_type() == ValueType::Duration;
    let raw = typed.number().ok_or_else(|| {
        QueryError::BadRequest(format!("{}() needs a numeric value, and {field} has none", function.name()))
    })?;
    let value = if duration { raw.clone() / lit(1e9) } else { raw.clone() };
    let bucket = match function {
        MetricsFunction::QuantileOverTime { .. } | MetricsFunction::HistogramOverTime(_) => {
            // Integers and durations below 2 fall in no bucket (as in Tempo); floats need to be positive.
            let is_float = typed.float.is_some() && typed.int.is_none() && typed.duration.is_none();
            let exponent = cast(ceil(log2(raw.clone())), DataType::Int64);
            let usable = if is_float || (typed.float.is_some() && !duration) {
                // An attribute may be an int in one span and a float in another.
                let int_like = typed.int.clone().map(|i| i.is_not_null()).unwrap_or(lit(false));
                int_like.clone().and(raw.clone().gt_eq(lit(2.0))).or((!int_like).and(raw.clone().gt(lit(0.0))))
            } else {
                raw.clone().gt_eq(lit(2.0))
            };
            Some(datafusion::logical_expr::when(usable, exponent).end()?)
        }
        _ => None,
    };
    Ok(ValueSpec { value: Some(value), bucket })
}

/// The series key columns of `by(...)` fields.
struct ByColumns {
    /// Per field: its label key and `(type, column)` components.
    fields: Vec<(String, Vec<(&'static str, String)>)>,
}

fn components(t: &Typed) -> Vec<(&'static str, Expr)> {
    let mut out = Vec::new();
    for (name, e) in [
        ("str", &t.str),
        ("int", &t.int),
        ("float", &t.float),
        ("bool", &t.definite_bool()),
        ("duration", &t.duration),
        ("status", &t.status),
        ("kind", &t.kind),
    ] {
        if let Some(e) = e {
            out.push((name, e.clone()));
        }
    }
    out
}

/// Adds the columns the aggregate needs to a frame of selected spans.
fn prepare(
    mut frame: DataFrame,
    grid: &Grid,
    metrics: &MetricsQuery,
    compiler: &mut FieldCompiler,
) -> Result<(DataFrame, ByColumns, bool, bool)> {
    frame = frame.with_column("__interval", grid.interval())?;
    let mut by = ByColumns { fields: Vec::new() };
    for (i, f) in metrics.by.iter().enumerate() {
        let typed = compiler.value(&FieldExpr::Field(f.clone()))?;
        let mut cols = Vec::new();
        for (ty, e) in components(&typed) {
            let name = format!("__by{i}_{ty}");
            frame = frame.with_column(&name, e)?;
            cols.push((ty, name));
        }
        by.fields.push((f.to_string(), cols));
    }
    let spec = value_spec(&metrics.function, compiler)?;
    let has_value = spec.value.is_some();
    if let Some(v) = spec.value {
        frame = frame.with_column("__value", v)?;
    }
    let has_bucket = spec.bucket.is_some();
    if let Some(b) = spec.bucket {
        frame = frame.with_column("__bucket", b)?.filter(ident("__bucket").is_not_null())?;
    }
    Ok((frame, by, has_value, has_bucket))
}

/// The aggregate over prepared spans: one row per interval, series and bucket.
fn aggregate(
    frame: DataFrame,
    by: &ByColumns,
    has_value: bool,
    has_bucket: bool,
    exemplars: bool,
) -> Result<DataFrame> {
    let mut keys = vec![ident("__interval")];
    for (_, cols) in &by.fields {
        keys.extend(cols.iter().map(|(_, n)| ident(n)));
    }
    if has_bucket {
        keys.push(ident("__bucket"));
    }
    // Exemplars: the first span each group sees (every first_value below takes the same row;
    // ordering them would cost a comparison per span).
    let mut aggs = vec![count(lit(1i64)).alias("__count")];
    if exemplars {
        aggs.push(first_value(ident(c::TRACE_ID), vec![]).alias("__ex_trace"));
        aggs.push(first_value(cast(ident(c::START_TIME), DataType::Int64), vec![]).alias("__ex_start"));
    }
    if has_value {
        aggs.extend([
            sum(ident("__value")).alias("__sum"),
            count(ident("__value")).alias("__n"),
            min(ident("__value")).alias("__min"),
            max(ident("__value")).alias("__max"),
        ]);
        if exemplars {
            aggs.push(first_value(ident("__value"), vec![]).alias("__ex_value"));
        }
    }
    Ok(frame.aggregate(keys, aggs)?)
}

/// Merged state of one (series, interval, bucket).
#[derive(Debug, Clone)]
struct Cell {
    count: u64,
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    exemplar: Option<([u8; 16], i64, f64)>,
}

impl Cell {
    fn merge(&mut self, o: &Cell) {
        self.count += o.count;
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if self.exemplar.is_none_or(|(_, _, v)| o.exemplar.is_some_and(|(_, _, w)| w > v)) && o.exemplar.is_some() {
            self.exemplar = o.exemplar;
        }
    }
}

/// A series identity: printed key values, and the labels.
type SeriesKey = String;

/// An exemplar candidate: trace id, span start (ns), value.
type Candidate = ([u8; 16], i64, f64);

struct Collected {
    labels: BTreeMap<SeriesKey, Vec<(String, LabelValue)>>,
    cells: HashMap<(SeriesKey, i64, Option<i64>), Cell>,
    spans: u64,
}

fn label_value(batch: &RecordBatch, cols: &[(&'static str, String)], row: usize) -> Result<Option<AnyValue>> {
    use any_value::Value as V;
    for (ty, name) in cols {
        let a = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("missing {name}")))?;
        if a.is_null(row) {
            continue;
        }
        let v = match (*ty, a.data_type()) {
            ("int", DataType::Int64) => V::IntValue(a.as_primitive::<Int64Type>().value(row)),
            ("float", DataType::Float64) => V::DoubleValue(a.as_primitive::<Float64Type>().value(row)),
            ("bool", DataType::Boolean) => V::BoolValue(a.as_boolean().value(row)),
            ("duration", DataType::Int64) => {
                V::StringValue(spindle_traceql::format_duration(a.as_primitive::<Int64Type>().value(row)))
            }
            (_, DataType::Utf8) => V::StringValue(a.as_string::<i32>().value(row).to_string()),
            _ => continue,
        };
        return Ok(Some(AnyValue { value: Some(v) }));
    }
    Ok(None)
}

fn collect_rows(batches: &[RecordBatch], by: &ByColumns, into: &mut Collected, max_series: usize) -> Result<bool> {
    let options = FormatOptions::default().with_null("\u{0}");
    let mut truncated = false;
    for b in batches {
        let get = |n: &str| b.column_by_name(n).ok_or_else(|| QueryError::Internal(format!("missing {n}")));
        let interval = get("__interval")?.as_primitive::<Int64Type>();
        let counts = get("__count")?.as_primitive::<Int64Type>();
        let bucket = b.column_by_name("__bucket").map(|a| a.as_primitive::<Int64Type>().clone());
        let ex_trace = b.column_by_name("__ex_trace").map(|a| a.as_fixed_size_binary().clone());
        let ex_start = b.column_by_name("__ex_start").map(|a| a.as_primitive::<Int64Type>().clone());
        let ex_value = b.column_by_name("__ex_value").map(|a| a.as_primitive::<Float64Type>().clone());
        let value_cols = match (b.column_by_name("__sum"), b.column_by_name("__n")) {
            (Some(s), Some(n)) => Some((
                s.as_primitive::<Float64Type>().clone(),
                n.as_primitive::<Int64Type>().clone(),
                get("__min")?.as_primitive::<Float64Type>().clone(),
                get("__max")?.as_primitive::<Float64Type>().clone(),
            )),
            _ => None,
        };
        let mut formatters = Vec::new();
        for (_, cols) in &by.fields {
            for (_, n) in cols {
                formatters.push(ArrayFormatter::try_new(get(n)?.as_ref(), &options)?);
            }
        }
        for row in 0..b.num_rows() {
            let mut key = String::new();
            for f in &formatters {
                key.push_str(&f.value(row).to_string());
                key.push('\u{1}');
            }
            if !into.labels.contains_key(&key) {
                if into.labels.len() >= max_series {
                    truncated = true;
                    continue;
                }
                let mut labels = Vec::new();
                for (name, cols) in &by.fields {
                    if let Some(v) = label_value(b, cols, row)? {
                        labels.push((name.clone(), v));
                    }
                }
                into.labels.insert(key.clone(), labels);
            }
            let count = counts.value(row) as u64;
            into.spans += count;
            let mut cell = Cell { count, n: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, exemplar: None };
            let id: Option<[u8; 16]> =
                ex_trace.as_ref().filter(|t| t.is_valid(row)).and_then(|t| t.value(row).try_into().ok());
            if let Some((s, n, mn, mx)) = &value_cols {
                cell.n = n.value(row) as u64;
                if cell.n > 0 {
                    cell.sum = s.value(row);
                    cell.min = mn.value(row);
                    cell.max = mx.value(row);
                }
            }
            if let (Some(id), Some(start)) = (id, &ex_start) {
                // Without a value (rate, count) the exemplar takes its sample's value later.
                let value = match (&value_cols, &ex_value) {
                    (Some(_), Some(ev)) if ev.is_valid(row) => Some(ev.value(row)),
                    (Some(_), _) => None,
                    (None, _) => Some(f64::NAN),
                };
                cell.exemplar = value.map(|v| (id, start.value(row), v));
            }
            let b = bucket.as_ref().map(|b| b.value(row));
            into.cells.entry((key, interval.value(row), b)).and_modify(|c| c.merge(&cell)).or_insert(cell);
        }
    }
    Ok(truncated)
}

impl QueryEngine {
    /// Runs a TraceQL metrics query.
    pub async fn metrics(&self, tenant: &TenantId, request: &MetricsRequest) -> Result<MetricsResult> {
        let metrics = request
            .query
            .metrics
            .as_ref()
            .ok_or_else(|| QueryError::BadRequest("not a metrics query: add e.g. | rate()".into()))?;
        if matches!(metrics.function, MetricsFunction::Compare { .. }) {
            return self.compare(tenant, request).await;
        }
        let grid = Grid::new(request.start_ns, request.end_ns, request.step_ns, request.instant)?;
        let ctx = self.session(tenant)?;
        let mut collected = Collected { labels: BTreeMap::new(), cells: HashMap::new(), spans: 0 };
        let mut truncated = false;
        let mut inspected_traces = 0;
        let plan = CandidatePlan::new(&request.query.spans)?;
        let limit = request.max_series;
        let trace_level = metrics.function.field().into_iter().chain(metrics.by.iter()).any(needs_trace_frame);
        if plan.single_exact_filter && !trace_level {
            let SpansetExpr::Filter(_) = &request.query.spans else { unreachable!("single filter") };
            let frame = ctx.table("spans").await?.filter(grid.span_filter().and(plan.span_filter()))?;
            let mut compiler = FieldCompiler::new(Frame::Spans);
            let (frame, by, has_value, has_bucket) = prepare(frame, &grid, metrics, &mut compiler)?;
            let rows = aggregate(frame, &by, has_value, has_bucket, request.exemplars > 0)?.collect().await?;
            truncated |= collect_rows(&rows, &by, &mut collected, limit)?;
        } else {
            let ids = candidates(&ctx, &plan, &grid).await?;
            for chunk in ids.chunks(CHUNK) {
                inspected_traces += chunk.len() as u64;
                let list: Vec<Expr> = chunk.iter().map(|id| trace_id_literal(*id)).collect();
                let frame = ctx.table("spans").await?.filter(ident(c::TRACE_ID).in_list(list, false))?;
                let also: Vec<spindle_traceql::Field> =
                    metrics.function.field().into_iter().chain(metrics.by.iter()).cloned().collect();
                let eval = evaluate(frame, &request.query.spans, grid.span_filter(), &also)?;
                let frame = eval.frame.filter(ident(&eval.matched))?;
                let mut compiler = FieldCompiler::new(Frame::Traces);
                let (frame, by, has_value, has_bucket) = prepare(frame, &grid, metrics, &mut compiler)?;
                let rows = aggregate(frame, &by, has_value, has_bucket, request.exemplars > 0)?.collect().await?;
                truncated |= collect_rows(&rows, &by, &mut collected, limit)?;
            }
        }
        let mut series = build_series(&collected, metrics, &grid, request);
        for stage in &metrics.stages {
            series = apply_stage(series, stage);
        }
        sort_series(&mut series);
        Ok(MetricsResult {
            series,
            partial: truncated.then(|| {
                format!(
                    "Response exceeds maximum series limit of {limit}, a partial response is returned. Warning: the accuracy of each individual value is not guaranteed."
                )
            }),
            inspected_traces,
            inspected_spans: collected.spans,
        })
    }
}

/// Candidate traces of a query that needs whole traces, in the grid.
pub(super) async fn candidates(ctx: &SessionContext, plan: &CandidatePlan, grid: &Grid) -> Result<Vec<[u8; 16]>> {
    let mut scan = ctx.table("spans").await?.filter(grid.span_filter().and(plan.span_filter()))?;
    let mut flags = Vec::new();
    for (i, leaf) in plan.leaves.iter().enumerate() {
        let name = format!("__leaf{i}");
        scan = scan.with_column(&name, leaf.clone())?;
        flags.push(datafusion::functions_aggregate::expr_fn::bool_or(ident(&name)).alias(&name));
    }
    let requirement = plan.requirement.condition(&|i| ident(format!("__leaf{i}")));
    let frame =
        scan.aggregate(vec![ident(c::TRACE_ID)], flags)?.filter(requirement)?.select(vec![ident(c::TRACE_ID)])?;
    let mut ids = Vec::new();
    for b in frame.collect().await? {
        let a = b.column(0).as_fixed_size_binary();
        for i in 0..b.num_rows() {
            if let Ok(id) = a.value(i).try_into() {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

fn string(s: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s.to_string())) }
}

fn double(v: f64) -> AnyValue {
    AnyValue { value: Some(any_value::Value::DoubleValue(v)) }
}

/// Tempo's `Log2Quantile`: the `q` quantile of power-of-two buckets `(upper bound, count)`.
pub fn log2_quantile(q: f64, buckets: &[(f64, u64)]) -> f64 {
    let mut buckets: Vec<(f64, u64)> = buckets.iter().copied().filter(|(_, n)| *n > 0).collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return 0.0;
    }
    let wanted = ((q * total as f64).ceil() as u64).max(1);
    let mut cumulative = 0;
    for (i, (bound, n)) in buckets.iter().enumerate() {
        let before = cumulative;
        cumulative += n;
        if cumulative == wanted {
            return *bound;
        }
        if cumulative > wanted {
            let max_v = bound.log2();
            let min_v = if i == 0 { max_v - 1.0 } else { buckets[i - 1].0.log2() };
            let interp = (wanted - before) as f64 / *n as f64;
            return 2f64.powf(min_v + (max_v - min_v) * interp);
        }
    }
    buckets.last().map_or(0.0, |b| b.0)
}

fn build_series(collected: &Collected, metrics: &MetricsQuery, grid: &Grid, request: &MetricsRequest) -> Vec<Series> {
    // cells per series
    #[allow(clippy::type_complexity)]
    let mut per_series: BTreeMap<&SeriesKey, Vec<(i64, Option<i64>, &Cell)>> = BTreeMap::new();
    for ((key, interval, bucket), cell) in &collected.cells {
        if *interval >= 0 && *interval < grid.intervals {
            per_series.entry(key).or_default().push((*interval, *bucket, cell));
        }
    }
    let step_s = grid.step as f64 / 1e9;
    let duration_buckets = metrics.function.field().is_some_and(|f| f.value_type() == ValueType::Duration);
    let bound = |e: i64| {
        let b = 2f64.powi(e as i32);
        if duration_buckets {
            b / 1e9
        } else {
            b
        }
    };
    let mut out = Vec::new();
    for (key, cells) in per_series {
        let mut labels = collected.labels.get(key).cloned().unwrap_or_default();
        if labels.is_empty() && !metrics.by.is_empty() {
            labels.push((metrics.by[0].to_string(), string("nil")));
        }
        let by_interval = |f: &dyn Fn(&Cell) -> Option<f64>, zero_fill: bool| -> (Vec<(i64, f64)>, Vec<Candidate>) {
            let mut values: BTreeMap<i64, (f64, Option<Candidate>)> = BTreeMap::new();
            for (i, _, c) in &cells {
                if let Some(v) = f(c) {
                    values.insert(*i, (v, c.exemplar));
                }
            }
            let mut samples = Vec::new();
            let mut exemplars = Vec::new();
            for i in 0..grid.intervals {
                match values.get(&i) {
                    Some((v, ex)) => {
                        samples.push((grid.timestamp_ms(i), *v));
                        if let Some((id, start, ev)) = ex {
                            exemplars.push((*id, *start, if ev.is_nan() { *v } else { *ev }));
                        }
                    }
                    None if zero_fill => samples.push((grid.timestamp_ms(i), 0.0)),
                    None => {}
                }
            }
            (samples, pick_exemplars(exemplars, request.exemplars, grid))
        };
        let name_label = |labels: &mut Vec<(String, LabelValue)>| {
            if metrics.by.is_empty() {
                labels.insert(0, ("__name__".into(), string(metrics.function.name())));
            }
        };
        match &metrics.function {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => {
                let rate = matches!(metrics.function, MetricsFunction::Rate);
                let (samples, ex) =
                    by_interval(&|c| Some(if rate { c.count as f64 / step_s } else { c.count as f64 }), true);
                name_label(&mut labels);
                out.push(with_exemplar_labels(labels, samples, ex));
            }
            MetricsFunction::MinOverTime(_)
            | MetricsFunction::MaxOverTime(_)
            | MetricsFunction::SumOverTime(_)
            | MetricsFunction::AvgOverTime(_) => {
                let f = |c: &Cell| -> Option<f64> {
                    (c.n > 0).then(|| match &metrics.function {
                        MetricsFunction::MinOverTime(_) => c.min,
                        MetricsFunction::MaxOverTime(_) => c.max,
                        MetricsFunction::SumOverTime(_) => c.sum,
                        _ => c.sum / c.n as f64,
                    })
                };
                let (samples, ex) = by_interval(&f, false);
                name_label(&mut labels);
                if !samples.is_empty() {
                    out.push(with_exemplar_labels(labels, samples, ex));
                }
            }
            MetricsFunction::HistogramOverTime(_) => {
                let mut buckets: Vec<i64> = cells.iter().filter_map(|(_, b, _)| *b).collect();
                buckets.sort_unstable();
                buckets.dedup();
                for b in buckets {
                    let mut s = Vec::new();
                    for i in 0..grid.intervals {
                        let n: u64 = cells
                            .iter()
                            .filter(|(ci, cb, _)| *ci == i && *cb == Some(b))
                            .map(|(_, _, c)| c.count)
                            .sum();
                        s.push((grid.timestamp_ms(i), n as f64));
                    }
                    let ex: Vec<([u8; 16], i64, f64)> = cells
                        .iter()
                        .filter(|(_, cb, _)| *cb == Some(b))
                        .filter_map(|(_, _, c)| c.exemplar.map(|(id, t, v)| (id, t, if v.is_nan() { 1.0 } else { v })))
                        .collect();
                    let mut l = labels.clone();
                    l.push(("__bucket".into(), double(bound(b))));
                    out.push(with_exemplar_labels(l, s, pick_exemplars(ex, request.exemplars, grid)));
                }
            }
            MetricsFunction::QuantileOverTime { quantiles, .. } => {
                for q in quantiles {
                    let mut s = Vec::new();
                    for i in 0..grid.intervals {
                        let buckets: Vec<(f64, u64)> = cells
                            .iter()
                            .filter(|(ci, _, _)| *ci == i)
                            .filter_map(|(_, b, c)| b.map(|b| (bound(b), c.count)))
                            .collect();
                        s.push((grid.timestamp_ms(i), log2_quantile(*q, &buckets)));
                    }
                    let mut l = labels.clone();
                    l.push(("p".into(), double(*q)));
                    let ex: Vec<([u8; 16], i64, f64)> = cells.iter().filter_map(|(_, _, c)| c.exemplar).collect();
                    let ex = pick_exemplars(ex, request.exemplars, grid);
                    out.push(with_exemplar_labels(l, s, ex));
                }
            }
            MetricsFunction::Compare { .. } => {}
        }
    }
    out
}

fn with_exemplar_labels(
    labels: Vec<(String, LabelValue)>,
    samples: Vec<(i64, f64)>,
    ex: Vec<([u8; 16], i64, f64)>,
) -> Series {
    let exemplars = ex
        .into_iter()
        .map(|(id, start, value)| {
            let mut l = vec![KeyValue {
                key: "trace:id".into(),
                value: Some(string(&spindle_types::trace_id_hex(&id))),
                ..Default::default()
            }];
            l.extend(labels.iter().filter(|(k, _)| !k.starts_with("__") && k != "p").map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            }));
            Exemplar { labels: l, value, timestamp_ms: start.div_euclid(1_000_000) }
        })
        .collect();
    Series { labels, samples, exemplars }
}

/// At most `limit` exemplars, spread over time: `limit / 2` time buckets with up to two each.
fn pick_exemplars(mut ex: Vec<([u8; 16], i64, f64)>, limit: usize, grid: &Grid) -> Vec<([u8; 16], i64, f64)> {
    if limit == 0 || ex.is_empty() {
        return Vec::new();
    }
    ex.sort_by_key(|e| (e.1, e.0));
    ex.dedup_by_key(|e| e.0);
    let buckets = (limit / 2).max(1) as i64;
    let width = ((grid.intervals * grid.step) / buckets).max(1);
    let mut per: HashMap<i64, usize> = HashMap::new();
    let mut out = Vec::new();
    for e in ex {
        let b = (e.1 - grid.first) / width;
        let n = per.entry(b).or_default();
        if *n < 2 && out.len() < limit {
            *n += 1;
            out.push(e);
        }
    }
    out
}

/// One stage after the metrics function: `topk(n)` / `bottomk(n)` keep at each timestamp only
/// the n highest (lowest) values; a comparison keeps the samples that pass it. Series left
/// without samples are dropped.
fn apply_stage(series: Vec<Series>, stage: &MetricsStage) -> Vec<Series> {
    let (n, top) = match *stage {
        MetricsStage::TopK(n) => (n as usize, true),
        MetricsStage::BottomK(n) => (n as usize, false),
        MetricsStage::Compare { .. } => {
            return series
                .into_iter()
                .filter_map(|mut s| {
                    s.samples.retain(|(_, v)| stage.keeps(*v));
                    (!s.samples.is_empty()).then_some(s)
                })
                .collect();
        }
    };
    if series.len() <= n {
        return series;
    }
    let mut by_time: BTreeMap<i64, Vec<(f64, usize)>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        for (t, v) in &s.samples {
            if !v.is_nan() {
                by_time.entry(*t).or_default().push((*v, i));
            }
        }
    }
    let mut keep: std::collections::HashSet<(usize, i64)> = std::collections::HashSet::new();
    for (t, mut values) in by_time {
        values.sort_by(|a, b| {
            let o = a.0.total_cmp(&b.0);
            let o = if top { o.reverse() } else { o };
            o.then(label_text(&series[a.1]).cmp(&label_text(&series[b.1])))
        });
        for (_, i) in values.into_iter().take(n) {
            keep.insert((i, t));
        }
    }
    series
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut s)| {
            s.samples.retain(|(t, _)| keep.contains(&(i, *t)));
            (!s.samples.is_empty()).then_some(s)
        })
        .collect()
}

fn label_text(s: &Series) -> String {
    s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(",")
}

/// Tempo's order: by number of labels, then each label's key and value.
pub(super) fn sort_series(series: &mut [Series]) {
    series.sort_by(|a, b| {
        a.labels.len().cmp(&b.labels.len()).then_with(|| {
            for (x, y) in a.labels.iter().zip(&b.labels) {
                let o = x.0.cmp(&y.0).then_with(|| format!("{:?}", x.1.value).cmp(&format!("{:?}", y.1.value)));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_as_tempo_interpolates() {
        // 1 ms, 2 ms, 3 ms in one interval: buckets 2^20, 2^21, 2^22 ns.
        let b = [(0.001048576, 1), (0.002097152, 1), (0.004194304, 1)];
        assert_eq!(log2_quantile(0.5, &b), 0.002097152);
        assert_eq!(log2_quantile(0.9, &b), 0.004194304);
        assert_eq!(log2_quantile(0.1, &b), 0.001048576);
        let one = [(4.0, 4)];
        assert!((log2_quantile(0.5, &one) - 4.0 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(log2_quantile(0.5, &[]), 0.0);
    }

    #[test]
    fn grid_aligns_like_tempo() {
        let s = 1_000_000_000i64;
        // 10:00:07 .. 11:00:07, step 60 s -> (09:59:00, 11:01:00], 62 intervals.
        let g = Grid::new(36_007 * s, 39_607 * s, 60 * s, false).unwrap();
        assert_eq!((g.first, g.intervals), (35_940 * s, 62));
        assert_eq!(g.timestamp_ms(0), 36_000_000);
        let i = Grid::new(10 * s, 70 * s, 60 * s, true).unwrap();
        assert_eq!((i.first, i.intervals, i.timestamp_ms(0)), (10 * s, 1, 70_000));
        assert!(Grid::new(0, 100_000 * s, s, false).is_err());
    }
}
