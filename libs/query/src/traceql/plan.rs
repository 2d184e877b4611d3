//! TraceQL spanset expressions as DataFusion plans, in two steps.
//!
//! 1. **Candidates** ([`CandidatePlan`]): one aggregate over the stored spans finds the traces
//!    that can match. Every spanset filter `{ ... }` becomes a *leaf* condition pushed into the
//!    scan (projection, statistics and Bloom filter pruning); the traces are grouped by id and
//!    kept when the leaves they need are non-empty (`{a} && {b}` needs both, `{a} || {b}`
//!    either, `{a} !> {b}` only `b`).
//! 2. **Evaluation** ([`evaluate`]): over the whole of each candidate trace, the expression
//!    becomes columns: a boolean per span saying whether it is in the result (`__m`), the
//!    group keys of `by()`, and the values of aggregates. `&&` and aggregates are window
//!    aggregates partitioned by trace (and group); structural operators and trace-level
//!    intrinsics are window functions over the trace's span tree ([`super::tree`]).

use std::sync::Arc;

use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::average::avg_udaf;
use datafusion::functions_aggregate::bool_and_or::bool_or_udaf;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{binary_expr, cast, when, AggregateUDF, Expr, ExprFunctionExt, Operator, WindowUDF};
use datafusion::prelude::{ident, lit};
use spindle_schema::col as c;
use spindle_traceql::{
    Aggregate, AggregateFn, BinaryOp, Field, FieldExpr, Intrinsic, Relation, RelationMode, ScalarExpr, ScalarFilter,
    SpansetExpr, SpansetOp, Stage, ValueType,
};

use super::fields::{needs_trace_frame, parent_column, trace_level_column, tree_col, FieldCompiler, Frame, Typed};
use super::tree::TreeFunction;
use crate::{QueryError, Result};

/// Which leaves a trace needs to possibly match.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// Nothing beyond having a span in the time range.
    Any,
    /// Leaf `i` matches a span.
    Leaf(usize),
    /// All of these.
    All(Vec<Requirement>),
    /// One of these.
    Either(Vec<Requirement>),
}

impl Requirement {
    fn all(parts: Vec<Requirement>) -> Requirement {
        let parts: Vec<_> = parts.into_iter().filter(|p| *p != Requirement::Any).collect();
        match parts.len() {
            0 => Requirement::Any,
            1 => parts.into_iter().next().expect("one"),
            _ => Requirement::All(parts),
        }
    }

    fn either(parts: Vec<Requirement>) -> Requirement {
        if parts.contains(&Requirement::Any) {
            return Requirement::Any;
        }
        Requirement::Either(parts)
    }

    /// The condition over per-trace leaf flags (`flag(i)` is "leaf i matched a span").
    pub fn condition(&self, flag: &impl Fn(usize) -> Expr) -> Expr {
        match self {
            Requirement::Any => lit(true),
            Requirement::Leaf(i) => flag(*i),
            Requirement::All(parts) => parts.iter().map(|p| p.condition(flag)).reduce(Expr::and).unwrap_or(lit(true)),
            Requirement::Either(parts) => {
                parts.iter().map(|p| p.condition(flag)).reduce(Expr::or).unwrap_or(lit(false))
            }
        }
    }
}

/// How to find the traces a query may match.
pub struct CandidatePlan {
    /// The leaf conditions, over stored span columns (over-approximations where a leaf reads a
    /// trace-level intrinsic).
    pub leaves: Vec<Expr>,
    /// Which leaves a matching trace needs.
    pub requirement: Requirement,
    /// The query is one spanset filter whose leaf is exact: every candidate matches, and the
    /// leaf's spans are the result.
    pub single_exact_filter: bool,
}

impl CandidatePlan {
    /// The plan for `expr`.
    pub fn new(expr: &SpansetExpr) -> Result<Self> {
        let mut compiler = FieldCompiler::new(Frame::Spans);
        let mut leaves = Vec::new();
        let mut exact = Vec::new();
        let requirement = requirement(expr, &mut compiler, &mut leaves, &mut exact)?;
        let single_exact_filter = matches!(expr, SpansetExpr::Filter(_)) && exact == [true];
        Ok(Self { leaves, requirement, single_exact_filter })
    }

    /// The scan filter: a span can matter only if some leaf holds for it.
    pub fn span_filter(&self) -> Expr {
        self.leaves.iter().cloned().reduce(Expr::or).unwrap_or(lit(true))
    }
}

fn requirement(
    expr: &SpansetExpr,
    compiler: &mut FieldCompiler,
    leaves: &mut Vec<Expr>,
    exact: &mut Vec<bool>,
) -> Result<Requirement> {
    Ok(match expr {
        SpansetExpr::Filter(e) => {
            let cond = compiler.candidate_condition(e)?;
            leaves.push(cond.condition());
            exact.push(cond.exact);
            Requirement::Leaf(leaves.len() - 1)
        }
        SpansetExpr::Op { op, lhs, rhs } => {
            let l = requirement(lhs, compiler, leaves, exact)?;
            let r = requirement(rhs, compiler, leaves, exact)?;
            match (op, op.mode()) {
                (SpansetOp::Or, _) => Requirement::either(vec![l, r]),
                (_, Some(RelationMode::Negated)) => r,
                _ => Requirement::all(vec![l, r]),
            }
        }
        SpansetExpr::Pipeline(stages) => {
            // Every spanset stage narrows the spans further: each must find some.
            let mut parts = Vec::new();
            for stage in stages {
                if let Stage::Spanset(s) = stage {
                    parts.push(requirement(s, compiler, leaves, exact)?);
                }
            }
            Requirement::all(parts)
        }
    })
}

/// A spanset attribute of the result (`by(...)` values, aggregate values).
#[derive(Debug, Clone)]
pub struct SpansetAttribute {
    /// The key, as Tempo prints it (`by(resource.service.name)`, `count()`).
    pub key: String,
    /// The column holding the value's components (see [`ValueColumns`]).
    pub value: ValueColumns,
}

/// The columns of a value's typed components (str, int, float, bool, duration, status, kind).
#[derive(Debug, Clone, Default)]
pub struct ValueColumns {
    /// `(type, column)` pairs; type is one of the names of [`Typed`]'s components.
    pub columns: Vec<(&'static str, String)>,
}

/// The result of evaluating a query over whole traces.
pub struct Evaluation {
    /// The frame: every span of the traces, with the columns below.
    pub frame: DataFrame,
    /// Boolean column: the span is in a result spanset.
    pub matched: String,
    /// The group-key columns of `by()` (a spanset is a trace id plus these).
    pub groups: Vec<String>,
    /// Attributes of each spanset.
    pub attributes: Vec<SpansetAttribute>,
    /// Fields `select()` asked for.
    pub selected: Vec<Field>,
}

/// The fields a query reads that need whole traces (see [`needs_trace_frame`]).
fn trace_level_fields(expr: &SpansetExpr, out: &mut Vec<Field>) {
    fn add(fields: Vec<&Field>, out: &mut Vec<Field>) {
        for f in fields {
            if needs_trace_frame(f) && !out.contains(f) {
                out.push(f.clone());
            }
        }
    }
    fn scalar(s: &ScalarExpr, out: &mut Vec<Field>) {
        match s {
            ScalarExpr::Aggregate(Aggregate { expr: Some(e), .. }) => add(e.fields(), out),
            ScalarExpr::Op { lhs, rhs, .. } => {
                scalar(lhs, out);
                scalar(rhs, out);
            }
            _ => {}
        }
    }
    match expr {
        SpansetExpr::Filter(e) => add(e.fields(), out),
        SpansetExpr::Op { lhs, rhs, .. } => {
            trace_level_fields(lhs, out);
            trace_level_fields(rhs, out);
        }
        SpansetExpr::Pipeline(stages) => {
            for s in stages {
                match s {
                    Stage::Spanset(x) => trace_level_fields(x, out),
                    Stage::By(e) => add(e.fields(), out),
                    Stage::ScalarFilter(f) => {
                        scalar(&f.lhs, out);
                        scalar(&f.rhs, out);
                    }
                    Stage::Select(fields) => add(fields.iter().collect(), out),
                    Stage::Coalesce => {}
                }
            }
        }
    }
}

fn window_udf(f: Arc<WindowUDF>, args: Vec<Expr>, partition: Vec<Expr>) -> Result<Expr> {
    Ok(Expr::from(WindowFunction::new(f, args)).partition_by(partition).build()?)
}

fn window_agg(f: Arc<AggregateUDF>, args: Vec<Expr>, partition: Vec<Expr>) -> Result<Expr> {
    Ok(Expr::from(WindowFunction::new(f, args)).partition_by(partition).build()?)
}

fn tree_args(extra: Expr) -> Vec<Expr> {
    vec![ident(c::SPAN_ID), ident(c::PARENT_SPAN_ID), ident(c::START_TIME), extra]
}

/// Adds the columns `fields` need to a frame of whole traces: the tree columns of trace-level
/// intrinsics, then each `parent.` field's values at the span's parent.
pub fn add_trace_columns(frame: DataFrame, fields: &[Field]) -> Result<DataFrame> {
    let mut intrinsics = Vec::new();
    let mut parents = Vec::new();
    for f in fields {
        let own = match f {
            Field::Attribute(a) if a.parent => {
                parents.push(a);
                a.on_span()
            }
            other => other.clone(),
        };
        if let Field::Intrinsic(i) = own {
            if trace_level_column(i).is_some() && !intrinsics.contains(&i) {
                intrinsics.push(i);
            }
        }
    }
    let mut frame = add_tree_columns(frame, &intrinsics)?;
    let mut windows = Vec::new();
    for a in parents {
        let (column, _, own) = parent_column(a)?;
        if !windows.iter().any(|(c, _)| *c == column) {
            let value = window_udf(TreeFunction::ParentValue.udwf(), tree_args(own), vec![ident(c::TRACE_ID)])?;
            windows.push((column, value));
        }
    }
    if !windows.is_empty() {
        frame = frame.window(windows.into_iter().map(|(column, value)| value.alias(column)).collect())?;
    }
    Ok(frame)
}

/// Adds the tree columns the intrinsics need to a frame of whole traces.
fn add_tree_columns(mut frame: DataFrame, intrinsics: &[Intrinsic]) -> Result<DataFrame> {
    let trace = || vec![ident(c::TRACE_ID)];
    for i in intrinsics {
        let (name, expr) = match i {
            Intrinsic::ChildCount => {
                (tree_col::CHILD_COUNT, window_udf(TreeFunction::ChildCount.udwf(), tree_args(lit(true)), trace())?)
            }
            Intrinsic::NestedSetLeft => {
                (tree_col::NESTED_LEFT, window_udf(TreeFunction::NestedSetLeft.udwf(), tree_args(lit(true)), trace())?)
            }
            Intrinsic::NestedSetRight => (
                tree_col::NESTED_RIGHT,
                window_udf(TreeFunction::NestedSetRight.udwf(), tree_args(lit(true)), trace())?,
            ),
            Intrinsic::NestedSetParent => (
                tree_col::NESTED_PARENT,
                window_udf(TreeFunction::NestedSetParent.udwf(), tree_args(lit(true)), trace())?,
            ),
            Intrinsic::RootName => (tree_col::ROOT_NAME, root_value(ident(c::NAME))?),
            Intrinsic::RootServiceName => (tree_col::ROOT_SERVICE, root_value(ident(c::SERVICE_NAME))?),
            Intrinsic::TraceDuration => {
                let start = cast(ident(c::START_TIME), arrow::datatypes::DataType::Int64);
                let end = start.clone() + ident(c::DURATION_NS);
                let max_end = window_agg(max_udaf(), vec![end], trace())?;
                let min_start = window_agg(min_udaf(), vec![start], trace())?;
                frame = frame.window(vec![max_end.alias("__trace_max_end"), min_start.alias("__trace_min_start")])?;
                (tree_col::TRACE_DURATION, ident("__trace_max_end") - ident("__trace_min_start"))
            }
            _ => continue,
        };
        frame = match expr {
            Expr::WindowFunction(_) => frame.window(vec![expr.alias(name)])?,
            other => frame.with_column(name, other)?,
        };
    }
    Ok(frame)
}

/// The value at the trace's root span ("" without a root, as Tempo has it).
fn root_value(value: Expr) -> Result<Expr> {
    let w = window_udf(TreeFunction::RootValue.udwf(), tree_args(value), vec![ident(c::TRACE_ID)])?;
    Ok(w)
}

/// Evaluates `expr` over `frame` (every span of some traces), where `in_range` says which spans
/// may be selected (their start is in the query's time range). `also` are trace-level
/// intrinsics read after the evaluation (by metrics functions, say).
pub fn evaluate(frame: DataFrame, expr: &SpansetExpr, in_range: Expr, also: &[Field]) -> Result<Evaluation> {
    let mut fields = Vec::new();
    trace_level_fields(expr, &mut fields);
    for f in also {
        if needs_trace_frame(f) && !fields.contains(f) {
            fields.push(f.clone());
        }
    }
    let frame = add_trace_columns(frame, &fields)?;
    let mut e =
        Evaluator { frame: Some(frame), next: 0, compiler: FieldCompiler::new(Frame::Traces), selected: Vec::new() };
    let input = e.column(in_range)?;
    let (matched, groups, attributes) = match expr {
        SpansetExpr::Pipeline(stages) => e.pipeline(stages, input, &[], true)?,
        other => (e.spanset(other, input, &[])?, Vec::new(), Vec::new()),
    };
    let matched = match e.column(matched)? {
        Expr::Column(c) => c.name,
        _ => unreachable!("column() returns a column"),
    };
    Ok(Evaluation {
        frame: e.frame.take().expect("frame is always put back"),
        matched,
        groups: groups.iter().map(|g: &Expr| g.schema_name().to_string()).collect(),
        attributes,
        selected: e.selected,
    })
}

struct Evaluator {
    /// Always `Some` between steps (taken while a step replaces it).
    frame: Option<DataFrame>,
    next: usize,
    compiler: FieldCompiler,
    selected: Vec<Field>,
}

impl Evaluator {
    /// Materialises `expr` as a new column and returns a reference to it.
    fn column(&mut self, expr: Expr) -> Result<Expr> {
        let name = format!("__c{}", self.next);
        self.next += 1;
        let frame = self.frame.take().expect("frame is always put back");
        self.frame = Some(match expr {
            // `with_column` over a window expression leaves an ambiguous column behind.
            Expr::WindowFunction(_) => frame.window(vec![expr.alias(&name)])?,
            other => frame.with_column(&name, other)?,
        });
        Ok(ident(name))
    }

    fn partition(groups: &[Expr]) -> Vec<Expr> {
        let mut p = vec![ident(c::TRACE_ID)];
        p.extend(groups.iter().cloned());
        p
    }

    /// Whether some span of the spanset (trace and group) is selected.
    fn any(&mut self, mask: Expr, groups: &[Expr]) -> Result<Expr> {
        let w = window_agg(bool_or_udaf(), vec![mask], Self::partition(groups))?;
        self.column(w)
    }

    #[recursive::recursive]
    fn spanset(&mut self, expr: &SpansetExpr, input: Expr, groups: &[Expr]) -> Result<Expr> {
        match expr {
            SpansetExpr::Filter(f) => {
                let cond = self.compiler.condition(f)?;
                self.column(input.and(cond.condition()))
            }
            SpansetExpr::Pipeline(stages) => Ok(self.pipeline(stages, input, groups, false)?.0),
            SpansetExpr::Op { op, lhs, rhs } => {
                if op.relation().is_some() && (opens_groups(lhs) || opens_groups(rhs)) {
                    return Err(QueryError::BadRequest(format!(
                        "structural operator {} needs one spanset per trace on each side; end the by() pipeline with | coalesce()",
                        op.symbol()
                    )));
                }
                let l = self.spanset(lhs, input.clone(), groups)?;
                let r = self.spanset(rhs, input, groups)?;
                let (Some(relation), Some(mode)) = (op.relation(), op.mode()) else {
                    return match op {
                        SpansetOp::And => {
                            let any_l = self.any(l.clone(), groups)?;
                            let any_r = self.any(r.clone(), groups)?;
                            self.column(l.or(r).and(any_l).and(any_r))
                        }
                        _ => self.column(l.or(r)),
                    };
                };
                let related = |e: &mut Self, relation: Relation, mask: Expr| -> Result<Expr> {
                    let w =
                        window_udf(TreeFunction::RelatedTo(relation).udwf(), tree_args(mask), Self::partition(groups))?;
                    e.column(w)
                };
                let r_to_l = related(self, relation, l.clone())?;
                match mode {
                    RelationMode::Match => self.column(r.and(r_to_l)),
                    RelationMode::Negated => self.column(r.and(!r_to_l)),
                    RelationMode::Union => {
                        let l_to_r = related(self, inverse(relation), r.clone())?;
                        self.column(r.and(r_to_l).or(l.and(l_to_r)))
                    }
                }
            }
        }
    }

    /// A pipeline; at the top level also its groups and spanset attributes.
    fn pipeline(
        &mut self,
        stages: &[Stage],
        input: Expr,
        outer_groups: &[Expr],
        top: bool,
    ) -> Result<(Expr, Vec<Expr>, Vec<SpansetAttribute>)> {
        let mut mask = input;
        let mut groups = outer_groups.to_vec();
        let mut attributes = Vec::new();
        for stage in stages {
            match stage {
                Stage::Spanset(s) => mask = self.spanset(s, mask, &groups)?,
                Stage::ScalarFilter(f) => mask = self.scalar_filter(f, mask, &groups, &mut attributes, top)?,
                Stage::By(e) => {
                    let value = self.compiler.value(e)?;
                    let mut columns = Vec::new();
                    let mut key = ValueColumns::default();
                    let mut value = value;
                    value.bool = value.definite_bool();
                    for (ty, expr) in components(&value) {
                        let col = self.column(expr)?;
                        if let Expr::Column(c) = &col {
                            key.columns.push((ty, c.name.clone()));
                        }
                        columns.push(col);
                    }
                    groups.extend(columns);
                    if top {
                        attributes.push(SpansetAttribute { key: format!("by({})", by_name(e)), value: key });
                    }
                }
                Stage::Coalesce => {
                    groups = outer_groups.to_vec();
                    attributes.clear();
                }
                Stage::Select(fields) => self.selected.extend(fields.iter().cloned()),
            }
        }
        Ok((mask, groups, attributes))
    }

    fn scalar_filter(
        &mut self,
        f: &ScalarFilter,
        mask: Expr,
        groups: &[Expr],
        attributes: &mut Vec<SpansetAttribute>,
        top: bool,
    ) -> Result<Expr> {
        let mut aggregates = Vec::new();
        let lhs = self.scalar(&f.lhs, &mask, groups, &mut aggregates)?;
        let rhs = self.scalar(&f.rhs, &mask, groups, &mut aggregates)?;
        let op = match f.op {
            BinaryOp::Eq => Operator::Eq,
            BinaryOp::Ne => Operator::NotEq,
            BinaryOp::Lt => Operator::Lt,
            BinaryOp::Le => Operator::LtEq,
            BinaryOp::Gt => Operator::Gt,
            BinaryOp::Ge => Operator::GtEq,
            other => return Err(QueryError::BadRequest(format!("{} is not a comparison", other.symbol()))),
        };
        if top {
            for (aggregate, column) in aggregates {
                let ty = match (aggregate.func, aggregate.expr.as_ref().map(FieldExpr::value_type)) {
                    (AggregateFn::Count, _) => "int",
                    (_, Some(ValueType::Duration)) => "duration",
                    (AggregateFn::Avg, _) => "float",
                    (_, Some(ValueType::Int)) => "int",
                    _ => "float",
                };
                attributes.retain(|a| a.key != aggregate.to_string());
                attributes.push(SpansetAttribute {
                    key: aggregate.to_string(),
                    value: ValueColumns { columns: vec![(ty, column)] },
                });
            }
        }
        self.column(mask.and(binary_expr(lhs, op, rhs)))
    }

    /// A scalar expression as a Float64 column expression; aggregates are window aggregates over
    /// the selected spans of each spanset.
    #[recursive::recursive]
    fn scalar(
        &mut self,
        s: &ScalarExpr,
        mask: &Expr,
        groups: &[Expr],
        aggregates: &mut Vec<(Aggregate, String)>,
    ) -> Result<Expr> {
        let float = |e: Expr| cast(e, arrow::datatypes::DataType::Float64);
        Ok(match s {
            ScalarExpr::Static(v) => match super::fields::static_value(v).number() {
                Some(n) => n,
                None => return Err(QueryError::BadRequest(format!("{v} is not a number"))),
            },
            ScalarExpr::Op { op, lhs, rhs } => {
                let l = self.scalar(lhs, mask, groups, aggregates)?;
                let r = self.scalar(rhs, mask, groups, aggregates)?;
                match op {
                    BinaryOp::Pow => datafusion::functions::math::expr_fn::power(l, r),
                    BinaryOp::Add => l + r,
                    BinaryOp::Sub => l - r,
                    BinaryOp::Mul => l * r,
                    BinaryOp::Div => l / r,
                    BinaryOp::Mod => l % r,
                    other => return Err(QueryError::BadRequest(format!("{} between aggregates", other.symbol()))),
                }
            }
            ScalarExpr::Pipeline { .. } => {
                return Err(QueryError::BadRequest(
                    "comparing the aggregates of several pipelines is not supported".into(),
                ))
            }
            ScalarExpr::Aggregate(a) => {
                let partition = Self::partition(groups);
                let w = match (&a.func, &a.expr) {
                    (AggregateFn::Count, _) => {
                        window_agg(count_udaf(), vec![when(mask.clone(), lit(1i64)).end()?], partition)?
                    }
                    (func, Some(e)) => {
                        let value = self.compiler.value(e)?;
                        let Some(number) = value.number() else {
                            return Err(QueryError::BadRequest(format!("{a} aggregates numbers, and {e} is not one")));
                        };
                        let masked = when(mask.clone(), number).end()?;
                        let udaf = match func {
                            AggregateFn::Sum => sum_udaf(),
                            AggregateFn::Avg => avg_udaf(),
                            AggregateFn::Min => min_udaf(),
                            _ => max_udaf(),
                        };
                        window_agg(udaf, vec![masked], partition)?
                    }
                    (_, None) => return Err(QueryError::BadRequest(format!("{a} needs a value"))),
                };
                let w = self.column(w)?;
                let col = self.column(float(w))?;
                if let Expr::Column(c) = &col {
                    aggregates.push((a.clone(), c.name.clone()));
                }
                col
            }
        })
    }
}

/// The expression as `by()` prints it: binary operations without their outer parentheses.
fn by_name(e: &FieldExpr) -> String {
    let s = e.to_string();
    match e {
        FieldExpr::Binary { .. } if s.starts_with('(') && s.ends_with(')') => s[1..s.len() - 1].to_string(),
        _ => s,
    }
}

/// The typed components of a value with their type names.
fn components(v: &Typed) -> Vec<(&'static str, Expr)> {
    let mut out = Vec::new();
    for (name, e) in [
        ("str", &v.str),
        ("int", &v.int),
        ("float", &v.float),
        ("bool", &v.bool),
        ("duration", &v.duration),
        ("status", &v.status),
        ("kind", &v.kind),
    ] {
        if let Some(e) = e {
            out.push((name, e.clone()));
        }
    }
    out
}

fn inverse(r: Relation) -> Relation {
    match r {
        Relation::Child => Relation::Parent,
        Relation::Parent => Relation::Child,
        Relation::Descendant => Relation::Ancestor,
        Relation::Ancestor => Relation::Descendant,
        Relation::Sibling => Relation::Sibling,
    }
}

/// Whether evaluating `expr` leaves several spansets per trace (a `by()` not followed by
/// `coalesce()`).
fn opens_groups(expr: &SpansetExpr) -> bool {
    match expr {
        SpansetExpr::Pipeline(stages) => {
            let mut open = false;
            for s in stages {
                match s {
                    Stage::By(_) => open = true,
                    Stage::Coalesce => open = false,
                    Stage::Spanset(x) if opens_groups(x) => open = true,
                    _ => {}
                }
            }
            open
        }
        SpansetExpr::Op { lhs, rhs, .. } => opens_groups(lhs) || opens_groups(rhs),
        SpansetExpr::Filter(_) => false,
    }
}
