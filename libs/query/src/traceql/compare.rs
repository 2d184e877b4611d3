//! `compare({ selection }, topN, start, end)`: how the attribute values of the spans a
//! selection picks differ from those of the other spans the query selects.
//!
//! Every span attribute, resource attribute and the intrinsics `name`, `status`,
//! `statusMessage` and `kind` are unpivoted into (key, type, value) rows and counted per
//! interval, selection and baseline apart, in one DataFusion aggregate. Per key the `topN`
//! values by total count are returned as series `{__meta_type="selection"|"baseline", key=value}`,
//! and the counts of all values as `{__meta_type="selection_total"|"baseline_total", key=nil}`.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::functions::string::expr_fn::concat;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_nested::expr_fn::{map_keys, map_values};
use datafusion::logical_expr::{cast, when};
use datafusion::prelude::{ident, lit, Expr};
use spindle_otlp::otlp::common::v1::{any_value, AnyValue};
use spindle_schema::{attr_map_column, col as c, AttrScope, AttrType, DEDICATED_COLUMNS};
use spindle_storage::TenantId;
use spindle_traceql::MetricsFunction;

use super::fields::{needs_trace_frame, FieldCompiler, Frame};
use super::metrics::{candidates, sort_series, Grid, MetricsRequest, MetricsResult, Series, CHUNK};
use super::plan::{evaluate, CandidatePlan};
use crate::filter::trace_id_literal;
use crate::hints::time_filter;
use crate::{QueryEngine, QueryError, Result};

fn type_name(ty: AttrType) -> &'static str {
    match ty {
        AttrType::Str => "string",
        AttrType::Int => "int",
        AttrType::Float => "float",
        AttrType::Bool => "bool",
        AttrType::Other => "other",
    }
}

fn prefix(scope: AttrScope) -> &'static str {
    match scope {
        AttrScope::Resource => "resource.",
        AttrScope::Span => "span.",
    }
}

/// Unpivots a frame with `__interval` and `__sel` into `(__interval, __sel, __key, __type,
/// __value)` rows, one per attribute or intrinsic of each span.
fn attribute_rows(frame: &DataFrame) -> Result<DataFrame> {
    let row = |key: Expr, ty: &str, value: Expr| {
        vec![
            ident("__interval"),
            ident("__sel"),
            key.alias("__key"),
            lit(ty.to_string()).alias("__type"),
            cast(value, DataType::Utf8).alias("__value"),
        ]
    };
    let mut parts: Vec<DataFrame> = Vec::new();
    for d in DEDICATED_COLUMNS {
        let key = format!("{}{}", prefix(d.scope), d.key);
        parts.push(frame.clone().select(row(lit(key), type_name(d.ty), ident(d.column)))?);
    }
    for scope in [AttrScope::Resource, AttrScope::Span] {
        for ty in [AttrType::Str, AttrType::Int, AttrType::Float, AttrType::Bool] {
            // (`map_entries` panics on maps whose entries are not named key/value, as ours are.)
            let map = ident(attr_map_column(scope, ty));
            let entries = frame
                .clone()
                .select(vec![
                    ident("__interval"),
                    ident("__sel"),
                    map_keys(map.clone()).alias("__k"),
                    map_values(map).alias("__v"),
                ])?
                .unnest_columns(&["__k", "__v"])?;
            let key = concat(vec![lit(prefix(scope)), ident("__k")]);
            parts.push(entries.select(row(key, type_name(ty), ident("__v")))?);
        }
    }
    for (name, column) in
        [("name", c::NAME), ("status", c::STATUS_CODE), ("statusMessage", c::STATUS_MESSAGE), ("kind", c::KIND)]
    {
        parts.push(frame.clone().select(row(lit(name), "string", ident(column)))?);
    }
    let mut all = parts.remove(0);
    for p in parts {
        all = all.union(p)?;
    }
    Ok(all.filter(ident("__value").is_not_null())?)
}

type Counts = HashMap<(String, String, String, bool, i64), u64>;

impl QueryEngine {
    /// Runs a `compare()` metrics query.
    pub(super) async fn compare(&self, tenant: &TenantId, request: &MetricsRequest) -> Result<MetricsResult> {
        let metrics =
            request.query.metrics.as_ref().ok_or_else(|| QueryError::BadRequest("not a metrics query".into()))?;
        let MetricsFunction::Compare { selection, top_n, start, end } = &metrics.function else {
            return Err(QueryError::Internal("compare() called for another function".into()));
        };
        let grid = Grid::new(request.start_ns, request.end_ns, request.step_ns, request.instant)?;
        let ctx = self.session(tenant)?;
        let plan = CandidatePlan::new(&request.query.spans)?;
        let mut frames = Vec::new();
        let mut inspected_traces = 0;
        // Fields of the selection that need whole traces (a parent's, the root's) are read
        // after the trace-complete evaluation.
        let also: Vec<spindle_traceql::Field> =
            selection.fields().into_iter().filter(|f| needs_trace_frame(f)).cloned().collect();
        if plan.single_exact_filter && also.is_empty() {
            frames.push((ctx.table("spans").await?.filter(grid.span_filter().and(plan.span_filter()))?, Frame::Spans));
        } else {
            let ids = candidates(&ctx, &plan, &grid).await?;
            for chunk in ids.chunks(CHUNK) {
                inspected_traces += chunk.len() as u64;
                let list: Vec<Expr> = chunk.iter().map(|id| trace_id_literal(*id)).collect();
                let frame = ctx.table("spans").await?.filter(ident(c::TRACE_ID).in_list(list, false))?;
                let eval = evaluate(frame, &request.query.spans, grid.span_filter(), &also)?;
                frames.push((eval.frame.filter(ident(&eval.matched))?, Frame::Traces));
            }
        }
        let mut counts: Counts = HashMap::new();
        let mut spans = 0;
        for (frame, kind) in frames {
            let mut sel = FieldCompiler::new(kind).condition(selection)?.condition();
            if *start > 0 && *end > 0 {
                sel = sel.and(time_filter(start.saturating_add(1), *end));
            }
            let frame = frame
                .with_column("__interval", grid.interval())?
                // True or null (null = baseline): a nullable column, as the union's physical plan
                // will have it, so DataFusion 55's schema check agrees with the logical plan.
                .with_column("__sel", when(sel, lit(true)).end()?)?;
            let keys = vec![ident("__key"), ident("__type"), ident("__value"), ident("__sel"), ident("__interval")];
            let rows = attribute_rows(&frame)?.aggregate(keys, vec![count(lit(1i64)).alias("__n")])?.collect().await?;
            for b in rows {
                let (k, t, v) =
                    (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>(), b.column(2).as_string::<i32>());
                let sel = b.column(3).as_boolean();
                let interval = b.column(4).as_primitive::<Int64Type>();
                let n = b.column(5).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    let selected = sel.is_valid(i) && sel.value(i);
                    let key = (
                        k.value(i).to_string(),
                        t.value(i).to_string(),
                        v.value(i).to_string(),
                        selected,
                        interval.value(i),
                    );
                    *counts.entry(key).or_default() += n.value(i) as u64;
                    if k.value(i) == "name" {
                        spans += n.value(i) as u64;
                    }
                }
            }
        }
        let mut series = build(&counts, &grid, *top_n as usize);
        sort_series(&mut series);
        Ok(MetricsResult { series, partial: None, inspected_traces, inspected_spans: spans })
    }
}

fn typed(ty: &str, value: &str) -> AnyValue {
    use any_value::Value as V;
    let v = match ty {
        "int" => value.parse().map(V::IntValue).unwrap_or_else(|_| V::StringValue(value.into())),
        "float" => value.parse().map(V::DoubleValue).unwrap_or_else(|_| V::StringValue(value.into())),
        "bool" => V::BoolValue(value == "true"),
        _ => V::StringValue(value.into()),
    };
    AnyValue { value: Some(v) }
}

fn text(s: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s.into())) }
}

/// Counts per interval of each (type, value) of one attribute, for the baseline and the selection.
type Sides<'a> = [BTreeMap<(&'a str, &'a str), BTreeMap<i64, u64>>; 2];

fn build(counts: &Counts, grid: &Grid, top_n: usize) -> Vec<Series> {
    // key -> selection? -> (type, value) -> interval -> count
    let mut by_key: BTreeMap<&str, Sides<'_>> = BTreeMap::new();
    for ((k, t, v, sel, i), n) in counts {
        if *i < 0 || *i >= grid.intervals {
            continue;
        }
        let e = by_key.entry(k).or_default();
        *e[usize::from(*sel)].entry((t, v)).or_default().entry(*i).or_default() += n;
    }
    let samples = |per: &BTreeMap<i64, u64>| -> Vec<(i64, f64)> {
        (0..grid.intervals).map(|i| (grid.timestamp_ms(i), per.get(&i).copied().unwrap_or(0) as f64)).collect()
    };
    let mut out = Vec::new();
    for (key, sides) in by_key {
        for (side, values) in sides.iter().enumerate() {
            if values.is_empty() {
                continue;
            }
            let meta = if side == 1 { "selection" } else { "baseline" };
            let mut ranked: Vec<(&(&str, &str), u64)> = values.iter().map(|(v, per)| (v, per.values().sum())).collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for ((t, v), _) in ranked.into_iter().take(top_n) {
                out.push(Series {
                    labels: vec![("__meta_type".into(), text(meta)), (key.to_string(), typed(t, v))],
                    samples: samples(&values[&(*t, *v)]),
                    exemplars: Vec::new(),
                });
            }
            let mut total: BTreeMap<i64, u64> = BTreeMap::new();
            for per in values.values() {
                for (i, n) in per {
                    *total.entry(*i).or_default() += n;
                }
            }
            out.push(Series {
                labels: vec![("__meta_type".into(), text(&format!("{meta}_total"))), (key.to_string(), text("nil"))],
                samples: samples(&total),
                exemplars: Vec::new(),
            });
        }
    }
    out
}
