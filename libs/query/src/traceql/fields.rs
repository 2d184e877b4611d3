//! TraceQL field expressions as DataFusion expressions over the span schema.
//!
//! An attribute has no static type (the same key can hold a string in one span and an integer
//! in another), so a value compiles to a [`Typed`]: one expression per type it may take, at
//! most one non-null per row. Comparisons pair the components of matching types (numbers of
//! any kind compare numerically), so `span.x = 1` matches an integer 1 and a float 1.0.
//! Semantics (Spindle's, documented in `docs/traceql.md`): a missing value makes every
//! comparison false; `!` is "not true", so `!(.a = 1)` holds for spans without `.a`; `.x` is
//! the span's attribute if the span has the key, else the resource's; event and link
//! conditions hold when one event (link) satisfies all of the conditions on it together.

use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::{coalesce, get_field, named_struct};
use datafusion::functions::math::expr_fn::power;
use datafusion::logical_expr::{binary_expr, case, cast, when, Expr, Operator};
use datafusion::prelude::{ident, lit};
use spindle_schema::{attr_map_column, col as c, dedicated_column, event_fields, link_fields, AttrScope, AttrType};
use spindle_traceql::{Attribute, AttributeScope, BinaryOp, Field, FieldExpr, Intrinsic, Static, UnaryOp};

use super::udf::{any_element, any_value_as, array_compare, hex_id, Elements};
use crate::{QueryError, Result};

/// Columns a trace-complete frame adds for trace-level intrinsics (see `plan.rs`).
pub mod tree_col {
    pub const CHILD_COUNT: &str = "__child_count";
    pub const NESTED_LEFT: &str = "__nested_left";
    pub const NESTED_RIGHT: &str = "__nested_right";
    pub const NESTED_PARENT: &str = "__nested_parent";
    pub const ROOT_NAME: &str = "__root_name";
    pub const ROOT_SERVICE: &str = "__root_service";
    pub const TRACE_DURATION: &str = "__trace_duration";
}

/// The tree column an intrinsic reads, for intrinsics that need the whole trace.
pub fn trace_level_column(i: Intrinsic) -> Option<&'static str> {
    Some(match i {
        Intrinsic::ChildCount => tree_col::CHILD_COUNT,
        Intrinsic::NestedSetLeft => tree_col::NESTED_LEFT,
        Intrinsic::NestedSetRight => tree_col::NESTED_RIGHT,
        Intrinsic::NestedSetParent => tree_col::NESTED_PARENT,
        Intrinsic::RootName => tree_col::ROOT_NAME,
        Intrinsic::RootServiceName => tree_col::ROOT_SERVICE,
        Intrinsic::TraceDuration => tree_col::TRACE_DURATION,
        _ => return None,
    })
}

/// Whether reading `f` needs whole traces (a trace-level intrinsic or a `parent.` field).
pub fn needs_trace_frame(f: &Field) -> bool {
    match f {
        Field::Intrinsic(i) => trace_level_column(*i).is_some(),
        Field::Attribute(a) => a.parent,
    }
}

/// The column a trace-complete frame holds for a `parent.` field, and what goes into it: the
/// field's components on the span itself as one struct (`str`, `int`, ... as named by
/// [`Typed`]), which `plan.rs` moves to each span's children with
/// [`super::tree::TreeFunction::ParentValue`] (one tree walk for all of them); the compiler
/// reads the components back from that column.
pub fn parent_column(a: &Attribute) -> Result<(String, Vec<&'static str>, Expr)> {
    let own = FieldCompiler::new(Frame::Traces).field(&a.on_span())?;
    let components = own.named_components();
    let names = components.iter().map(|(name, _)| *name).collect();
    let args = components.into_iter().flat_map(|(name, e)| [lit(name), e.clone()]).collect();
    Ok((format!("__parent:{}:{}", a.scope.name(), a.name), names, named_struct(args)))
}

/// A value: one expression per type it may have in a row.
#[derive(Debug, Clone, Default)]
pub struct Typed {
    /// Utf8.
    pub str: Option<Expr>,
    /// Int64.
    pub int: Option<Expr>,
    /// Float64.
    pub float: Option<Expr>,
    /// Boolean (may be null where a comparison had a missing operand: treat as false).
    pub bool: Option<Expr>,
    /// `bool` is the result of a comparison or logic (null there means false), not a stored
    /// boolean attribute (null there means missing).
    pub bool_is_result: bool,
    /// Int64 nanoseconds.
    pub duration: Option<Expr>,
    /// Utf8 status keyword.
    pub status: Option<Expr>,
    /// Utf8 kind keyword.
    pub kind: Option<Expr>,
    /// A protobuf-encoded OTLP value that may be an `ArrayValue` (an attribute's entry in the
    /// `*_attrs_other` map, or an encoded attribute): compared element by element.
    pub array: Option<Expr>,
    /// False when the value depends on something this frame does not have (a trace-level
    /// intrinsic while searching candidates): then `bool` is `true`, an over-approximation.
    pub exact: bool,
}

impl Typed {
    fn exact() -> Self {
        Typed { exact: true, ..Default::default() }
    }

    fn unknown() -> Self {
        Typed { bool: Some(lit(true)), exact: false, ..Default::default() }
    }

    fn str(e: Expr) -> Self {
        Typed { str: Some(e), ..Self::exact() }
    }

    fn int(e: Expr) -> Self {
        Typed { int: Some(e), ..Self::exact() }
    }

    fn duration(e: Expr) -> Self {
        Typed { duration: Some(e), ..Self::exact() }
    }

    fn boolean(e: Expr, exact: bool) -> Self {
        Typed { bool: Some(e), bool_is_result: true, exact, ..Default::default() }
    }

    /// The boolean component as a definite value (false where a result is null), for group
    /// keys and comparisons of booleans.
    pub fn definite_bool(&self) -> Option<Expr> {
        self.bool.as_ref().map(|b| if self.bool_is_result { definite(b) } else { b.clone() })
    }

    /// The components with their Arrow types.
    fn components(&self) -> Vec<(&'static str, &Expr, arrow::datatypes::DataType)> {
        use arrow::datatypes::DataType as D;
        let all = [
            ("str", &self.str, D::Utf8),
            ("int", &self.int, D::Int64),
            ("float", &self.float, D::Float64),
            ("bool", &self.bool, D::Boolean),
            ("duration", &self.duration, D::Int64),
            ("status", &self.status, D::Utf8),
            ("kind", &self.kind, D::Utf8),
        ];
        all.into_iter().filter_map(|(n, e, t)| e.as_ref().map(|e| (n, e, t))).collect()
    }

    /// Every component by name, the encoded `array` included.
    fn named_components(&self) -> Vec<(&'static str, &Expr)> {
        let mut out: Vec<(&'static str, &Expr)> = self.components().into_iter().map(|(n, e, _)| (n, e)).collect();
        if let Some(a) = &self.array {
            out.push(("array", a));
        }
        out
    }

    /// The component called `name` (see [`Typed::named_components`]).
    fn component_mut(&mut self, name: &str) -> &mut Option<Expr> {
        match name {
            "str" => &mut self.str,
            "int" => &mut self.int,
            "float" => &mut self.float,
            "bool" => &mut self.bool,
            "duration" => &mut self.duration,
            "status" => &mut self.status,
            "kind" => &mut self.kind,
            _ => &mut self.array,
        }
    }

    /// As a condition: the boolean component, false when there is none.
    pub fn condition(&self) -> Expr {
        self.bool.clone().unwrap_or_else(|| lit(false))
    }

    /// True where the value exists (is not nil), arrays and other encoded values included.
    pub fn exists(&self) -> Expr {
        self.components()
            .into_iter()
            .map(|(_, e, _)| e)
            .chain(self.array.as_ref())
            .map(|e| e.clone().is_not_null())
            .reduce(Expr::or)
            .unwrap_or(lit(false))
    }

    /// The literal this value is, if it is one plain literal (what arrays compare with).
    fn literal(&self) -> Option<Expr> {
        let parts = self.components();
        match parts.as_slice() {
            [(name, e @ Expr::Literal(..), _)] if matches!(*name, "str" | "int" | "float" | "bool" | "duration") => {
                Some((*e).clone())
            }
            _ => None,
        }
    }

    /// Integer-like components (int, duration) and all numeric ones.
    fn numbers(&self) -> Vec<(bool, Expr)> {
        let mut v = Vec::new();
        if let Some(e) = &self.int {
            v.push((true, e.clone()));
        }
        if let Some(e) = &self.duration {
            v.push((true, e.clone()));
        }
        if let Some(e) = &self.float {
            v.push((false, e.clone()));
        }
        v
    }

    /// The value as Float64 (int, float or duration in ns), for aggregates and metrics.
    pub fn number(&self) -> Option<Expr> {
        let parts: Vec<Expr> = self.numbers().into_iter().map(|(_, e)| to_float(e)).collect();
        match parts.len() {
            0 => None,
            1 => parts.into_iter().next(),
            _ => Some(coalesce(parts)),
        }
    }
}

fn to_float(e: Expr) -> Expr {
    cast(e, arrow::datatypes::DataType::Float64)
}

fn operator(op: BinaryOp) -> Operator {
    match op {
        BinaryOp::Add => Operator::Plus,
        BinaryOp::Sub => Operator::Minus,
        BinaryOp::Mul => Operator::Multiply,
        BinaryOp::Div => Operator::Divide,
        BinaryOp::Mod => Operator::Modulo,
        BinaryOp::Pow => Operator::Multiply, // handled separately
        BinaryOp::Eq => Operator::Eq,
        BinaryOp::Ne => Operator::NotEq,
        BinaryOp::Lt => Operator::Lt,
        BinaryOp::Le => Operator::LtEq,
        BinaryOp::Gt => Operator::Gt,
        BinaryOp::Ge => Operator::GtEq,
        BinaryOp::Regex => Operator::RegexMatch,
        BinaryOp::NotRegex => Operator::RegexNotMatch,
        BinaryOp::And => Operator::And,
        BinaryOp::Or => Operator::Or,
    }
}

/// What a frame holds, which decides how fields read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Stored span columns only: trace-level intrinsics are unknown.
    Spans,
    /// Whole traces with the tree columns of [`tree_col`].
    Traces,
}

/// Compiles field expressions for one frame.
pub struct FieldCompiler {
    frame: Frame,
    /// Inside an event or link condition: the element kind and the span values it reads.
    element: Option<(Elements, Vec<(Expr, arrow::datatypes::DataType)>)>,
}

/// Whether the expression reads events or links anywhere.
fn reads_elements(e: &FieldExpr) -> bool {
    e.fields().iter().any(|f| {
        matches!(
            f,
            Field::Attribute(Attribute { scope: AttributeScope::Event | AttributeScope::Link, .. })
                | Field::Intrinsic(
                    Intrinsic::EventName
                        | Intrinsic::EventTimeSinceStart
                        | Intrinsic::LinkTraceId
                        | Intrinsic::LinkSpanId
                )
        )
    })
}

/// The one element kind `e` reads, if it reads exactly one kind.
fn only_elements(e: &FieldExpr) -> Option<Elements> {
    let mut kinds = e.fields().into_iter().filter_map(|f| match f {
        Field::Attribute(Attribute { scope: AttributeScope::Event, .. })
        | Field::Intrinsic(Intrinsic::EventName | Intrinsic::EventTimeSinceStart) => Some(Elements::Events),
        Field::Attribute(Attribute { scope: AttributeScope::Link, .. })
        | Field::Intrinsic(Intrinsic::LinkTraceId | Intrinsic::LinkSpanId) => Some(Elements::Links),
        _ => None,
    });
    let first = kinds.next()?;
    kinds.all(|k| k == first).then_some(first)
}

impl FieldCompiler {
    /// A compiler for `frame`.
    pub fn new(frame: Frame) -> Self {
        Self { frame, element: None }
    }

    /// A spanset filter's condition. Over a [`Frame::Spans`] frame the result may be an
    /// over-approximation (`exact == false`).
    #[recursive::recursive]
    pub fn condition(&mut self, e: &FieldExpr) -> Result<Typed> {
        if self.element.is_none() && reads_elements(e) {
            return self.nested_condition(e);
        }
        let v = self.value(e)?;
        Ok(Typed::boolean(v.condition(), v.exact))
    }

    /// A spanset filter's condition over stored spans, for finding candidate traces: as
    /// [`Self::condition`], except that a comparison of `parent.` fields in the filter's
    /// top-level disjunction becomes the same comparison on the span itself. A comparison with
    /// a missing value is false, so a span matching it has a parent in the trace, and that
    /// parent matches the rewritten one: the trace is a candidate. (Under `&&` or `!` the
    /// rewrite would mix two spans' fields in one row, so there the parent field stays unknown.)
    #[recursive::recursive]
    pub fn candidate_condition(&mut self, e: &FieldExpr) -> Result<Typed> {
        let reads_parent = || e.fields().iter().any(|f| matches!(f, Field::Attribute(a) if a.parent));
        if self.frame == Frame::Spans && self.element.is_none() && reads_parent() {
            if let Some(own) = on_parent(e) {
                let v = self.condition(&own)?;
                return Ok(Typed::boolean(v.condition(), false));
            }
            if let FieldExpr::Binary { op: BinaryOp::Or, lhs, rhs } = e {
                let (l, r) = (self.candidate_condition(lhs)?, self.candidate_condition(rhs)?);
                return Ok(Typed::boolean(l.condition().or(r.condition()), l.exact && r.exact));
            }
        }
        self.condition(e)
    }

    /// A condition that reads events or links: the largest subexpressions reading one kind of
    /// element are evaluated per element ("some event satisfies ..."); `!` stays outside.
    #[recursive::recursive]
    fn nested_condition(&mut self, e: &FieldExpr) -> Result<Typed> {
        if !reads_elements(e) {
            return self.condition(e);
        }
        match e {
            FieldExpr::Binary { op: op @ (BinaryOp::And | BinaryOp::Or), lhs, rhs } => {
                let same = match (only_elements(lhs), only_elements(rhs)) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                if !same {
                    let l = self.nested_condition(lhs)?;
                    let r = self.nested_condition(rhs)?;
                    let expr = binary_expr(l.condition(), operator(*op), r.condition());
                    return Ok(Typed::boolean(expr, l.exact && r.exact));
                }
            }
            FieldExpr::Unary { op: UnaryOp::Not, expr } => {
                let inner = self.nested_condition(expr)?;
                if !inner.exact {
                    return Ok(Typed::unknown());
                }
                return Ok(Typed::boolean(not_true(inner.condition()), true));
            }
            _ => {}
        }
        let Some(kind) = only_elements(e) else {
            return Err(QueryError::BadRequest(format!(
                "a comparison cannot read both event and link attributes: {e}"
            )));
        };
        self.element = Some((kind, Vec::new()));
        let value = self.value(e);
        let (_, span_values) = self.element.take().expect("set above");
        let value = value?;
        if !value.exact {
            return Ok(Typed::unknown());
        }
        let (list, fields) = match kind {
            Elements::Events => (ident(c::EVENTS), event_fields()),
            Elements::Links => (ident(c::LINKS), link_fields()),
        };
        let expr = any_element(list, &fields, value.condition(), span_values)?;
        Ok(Typed::boolean(expr, true))
    }

    /// The value of a field expression.
    #[recursive::recursive]
    pub fn value(&mut self, e: &FieldExpr) -> Result<Typed> {
        if self.element.is_none() {
            if let FieldExpr::Field(f) = e {
                if is_element_field(f) {
                    return Err(QueryError::BadRequest(format!(
                        "{f} can only be used in a spanset filter's conditions"
                    )));
                }
            }
        }
        match e {
            FieldExpr::Static(s) => Ok(static_value(s)),
            FieldExpr::Field(f) => self.field(f),
            FieldExpr::Unary { op, expr } => {
                if *op == UnaryOp::Not && self.element.is_none() && reads_elements(expr) {
                    return self.nested_condition(e);
                }
                if let (UnaryOp::Neg, FieldExpr::Static(s)) = (op, expr.as_ref()) {
                    // A negative literal stays a literal (arrays compare with literals).
                    let negated = match s {
                        Static::Int(v) => v.checked_neg().map(Static::Int),
                        Static::Float(v) => Some(Static::Float(-v)),
                        Static::Duration(v) => v.checked_neg().map(Static::Duration),
                        _ => None,
                    };
                    if let Some(n) = negated {
                        return Ok(static_value(&n));
                    }
                }
                let v = self.value(expr)?;
                if !v.exact {
                    return Ok(Typed::unknown());
                }
                Ok(match op {
                    UnaryOp::Exists => Typed::boolean(v.exists(), true),
                    UnaryOp::Missing => Typed::boolean(!v.exists(), true),
                    UnaryOp::Not => Typed::boolean(not_true(v.condition()), true),
                    UnaryOp::Neg => Typed {
                        int: v.int.map(|e| lit(0i64) - e),
                        float: v.float.map(|e| lit(0f64) - e),
                        duration: v.duration.map(|e| lit(0i64) - e),
                        ..Typed::exact()
                    },
                })
            }
            FieldExpr::Binary { op, lhs, rhs } => {
                if matches!(op, BinaryOp::And | BinaryOp::Or) {
                    if self.element.is_none() && reads_elements(e) {
                        return self.nested_condition(e);
                    }
                    let l = self.value(lhs)?;
                    let r = self.value(rhs)?;
                    let expr = binary_expr(l.condition(), operator(*op), r.condition());
                    return Ok(Typed::boolean(expr, l.exact && r.exact));
                }
                if let Some(id) = self.id_comparison(*op, lhs, rhs) {
                    return Ok(Typed::boolean(id, true));
                }
                let l = self.value(lhs)?;
                let r = self.value(rhs)?;
                if !l.exact || !r.exact {
                    return Ok(Typed::unknown());
                }
                if op.is_arithmetic() {
                    Ok(arithmetic(*op, &l, &r))
                } else {
                    Ok(Typed::boolean(compare(*op, &l, &r)?, true))
                }
            }
        }
    }

    /// `trace:id`, `span:id` and `span:parentID` compared with a hex literal, as a comparison
    /// of bytes (which Parquet statistics and Bloom filters can prune on).
    fn id_comparison(&self, op: BinaryOp, lhs: &FieldExpr, rhs: &FieldExpr) -> Option<Expr> {
        if self.element.is_some() || !matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            return None;
        }
        let (field, text) = match (lhs, rhs) {
            // (trace ids: the literal may have leading zeros and any case, as Tempo allows)
            (FieldExpr::Field(Field::Intrinsic(i)), FieldExpr::Static(Static::Str(s)))
            | (FieldExpr::Static(Static::Str(s)), FieldExpr::Field(Field::Intrinsic(i))) => (*i, s),
            _ => return None,
        };
        let (column, width) = match field {
            Intrinsic::TraceId => (c::TRACE_ID, 16),
            Intrinsic::SpanId => (c::SPAN_ID, 8),
            Intrinsic::ParentId => (c::PARENT_SPAN_ID, 8),
            _ => return None,
        };
        let digits = text.trim().to_ascii_lowercase();
        let digits = digits.trim_start_matches('0');
        let eq = op == BinaryOp::Eq;
        if field == Intrinsic::ParentId && digits.is_empty() {
            // A root's parent id reads as zeros.
            let is_root = ident(column).is_null();
            return Some(if eq { is_root } else { !is_root });
        }
        let bytes = (digits.len() <= width * 2)
            .then(|| format!("{digits:0>w$}", w = width * 2))
            .and_then(|h| hex::decode(h).ok());
        Some(match bytes {
            Some(b) => {
                let value = lit(ScalarValue::FixedSizeBinary(width as i32, Some(b)));
                match (eq, field) {
                    (true, _) => ident(column).eq(value),
                    // A root's parent id reads as zeros, which differ from any other id.
                    (false, Intrinsic::ParentId) => ident(column).is_null().or(ident(column).not_eq(value)),
                    (false, _) => ident(column).not_eq(value),
                }
            }
            // No id can be written that way.
            None => lit(!eq),
        })
    }

    fn field(&mut self, f: &Field) -> Result<Typed> {
        if self.element.is_some() && !is_element_field(f) {
            // A span value inside an element condition: passed to the element function.
            let saved = self.element.take();
            let v = self.field(f);
            self.element = saved;
            let v = v?;
            if !v.exact {
                return Ok(Typed::unknown());
            }
            let (_, values) = self.element.as_mut().expect("restored");
            let mut out = Typed::exact();
            let typed = v.components().into_iter();
            for (name, e, ty) in typed.chain(v.array.as_ref().map(|a| ("array", a, arrow::datatypes::DataType::Binary)))
            {
                let i = values.len();
                values.push((e.clone(), ty));
                *out.component_mut(name) = Some(ident(format!("__span_{i}")));
            }
            return Ok(out);
        }
        match f {
            Field::Intrinsic(i) => self.intrinsic(*i),
            Field::Attribute(a) if a.parent => {
                if self.frame == Frame::Spans {
                    return Ok(Typed::unknown());
                }
                let (column, names, _) = parent_column(a)?;
                let mut out = Typed::exact();
                for name in names {
                    *out.component_mut(name) = Some(get_field(ident(&column), name));
                }
                Ok(out)
            }
            Field::Attribute(a) => Ok(self.attribute(a)),
        }
    }

    fn intrinsic(&mut self, i: Intrinsic) -> Result<Typed> {
        if let Some(column) = trace_level_column(i) {
            if self.frame == Frame::Spans {
                return Ok(Typed::unknown());
            }
            let e = ident(column);
            return Ok(match spindle_traceql::Intrinsic::value_type(i) {
                spindle_traceql::ValueType::Str => Typed::str(e),
                spindle_traceql::ValueType::Duration => Typed::duration(e),
                _ => Typed::int(e),
            });
        }
        Ok(match i {
            Intrinsic::Duration => Typed::duration(ident(c::DURATION_NS)),
            Intrinsic::Name => Typed::str(ident(c::NAME)),
            Intrinsic::StatusMessage => Typed::str(ident(c::STATUS_MESSAGE)),
            Intrinsic::Status => Typed { status: Some(ident(c::STATUS_CODE)), ..Typed::exact() },
            Intrinsic::Kind => Typed { kind: Some(ident(c::KIND)), ..Typed::exact() },
            Intrinsic::TraceId => Typed::str(hex_id(true).call(vec![ident(c::TRACE_ID)])),
            Intrinsic::SpanId => Typed::str(hex_id(false).call(vec![ident(c::SPAN_ID)])),
            Intrinsic::ParentId => {
                Typed::str(coalesce(vec![hex_id(false).call(vec![ident(c::PARENT_SPAN_ID)]), lit("0000000000000000")]))
            }
            Intrinsic::InstrumentationName => Typed::str(ident(c::SCOPE_NAME)),
            Intrinsic::InstrumentationVersion => Typed::str(ident(c::SCOPE_VERSION)),
            Intrinsic::EventName => Typed::str(ident("name")),
            Intrinsic::EventTimeSinceStart => {
                let start = self.span_value(cast(ident(c::START_TIME), arrow::datatypes::DataType::Int64));
                Typed::duration(cast(ident("time"), arrow::datatypes::DataType::Int64) - start)
            }
            Intrinsic::LinkTraceId => Typed::str(hex_id(true).call(vec![ident("trace_id")])),
            Intrinsic::LinkSpanId => Typed::str(hex_id(false).call(vec![ident("span_id")])),
            // Only compared with nil (validation): a root span has no parent id.
            Intrinsic::Parent => Typed::str(hex_id(false).call(vec![ident(c::PARENT_SPAN_ID)])),
            _ => return Err(QueryError::Internal(format!("intrinsic {} has no column", i.name()))),
        })
    }

    /// A span-level Int64 value used inside an element condition.
    fn span_value(&mut self, e: Expr) -> Expr {
        match self.element.as_mut() {
            Some((_, values)) => {
                let i = values.len();
                values.push((e, arrow::datatypes::DataType::Int64));
                ident(format!("__span_{i}"))
            }
            None => e,
        }
    }

    fn attribute(&self, a: &Attribute) -> Typed {
        match a.scope {
            AttributeScope::Span => stored_attribute(AttrScope::Span, &a.name),
            AttributeScope::Resource => stored_attribute(AttrScope::Resource, &a.name),
            AttributeScope::Unscoped => {
                let span = stored_attribute(AttrScope::Span, &a.name);
                let resource = stored_attribute(AttrScope::Resource, &a.name);
                let other = get_field(ident(attr_map_column(AttrScope::Span, AttrType::Other)), a.name.as_str());
                let span_has = span.exists().or(other.is_not_null());
                let pick = |s: &Option<Expr>, r: &Option<Expr>| match (s, r) {
                    (Some(s), Some(r)) => {
                        Some(when(span_has.clone(), s.clone()).otherwise(r.clone()).unwrap_or(s.clone()))
                    }
                    (Some(s), None) => Some(s.clone()),
                    (None, r) => r.clone(),
                };
                Typed {
                    str: pick(&span.str, &resource.str),
                    int: pick(&span.int, &resource.int),
                    float: pick(&span.float, &resource.float),
                    bool: pick(&span.bool, &resource.bool),
                    array: pick(&span.array, &resource.array),
                    ..Typed::exact()
                }
            }
            AttributeScope::Instrumentation => encoded_attribute(ident(c::SCOPE_ATTRS), &a.name),
            AttributeScope::Event | AttributeScope::Link => encoded_attribute(ident("attrs"), &a.name),
        }
    }
}

/// A comparison that reads only `parent.` fields (and literals, through arithmetic), rewritten
/// to read the same fields on the span itself; `None` for anything else.
fn on_parent(e: &FieldExpr) -> Option<FieldExpr> {
    #[recursive::recursive]
    fn rewrite(e: &FieldExpr) -> Option<FieldExpr> {
        Some(match e {
            FieldExpr::Static(_) => e.clone(),
            FieldExpr::Field(Field::Attribute(a)) if a.parent && a.parent_intrinsic() != Some(Intrinsic::Parent) => {
                FieldExpr::Field(a.on_span())
            }
            FieldExpr::Binary { op, lhs, rhs } if op.is_arithmetic() => {
                FieldExpr::Binary { op: *op, lhs: Box::new(rewrite(lhs)?), rhs: Box::new(rewrite(rhs)?) }
            }
            FieldExpr::Unary { op: UnaryOp::Neg, expr } => {
                FieldExpr::Unary { op: UnaryOp::Neg, expr: Box::new(rewrite(expr)?) }
            }
            _ => return None,
        })
    }
    match e {
        FieldExpr::Binary { op, lhs, rhs } if !op.is_arithmetic() && !matches!(op, BinaryOp::And | BinaryOp::Or) => {
            let (l, r) = (rewrite(lhs)?, rewrite(rhs)?);
            (!e.fields().is_empty()).then(|| FieldExpr::Binary { op: *op, lhs: Box::new(l), rhs: Box::new(r) })
        }
        _ => None,
    }
}

fn is_element_field(f: &Field) -> bool {
    matches!(
        f,
        Field::Attribute(Attribute { scope: AttributeScope::Event | AttributeScope::Link, .. })
            | Field::Intrinsic(
                Intrinsic::EventName | Intrinsic::EventTimeSinceStart | Intrinsic::LinkTraceId | Intrinsic::LinkSpanId
            )
    )
}

/// A span or resource attribute: its dedicated column or typed map entry per type.
pub fn stored_attribute(scope: AttrScope, key: &str) -> Typed {
    let read = |ty: AttrType| match dedicated_column(scope, key) {
        Some(d) if d.ty == ty => ident(d.column),
        _ => get_field(ident(attr_map_column(scope, ty)), key),
    };
    Typed {
        str: Some(read(AttrType::Str)),
        int: Some(read(AttrType::Int)),
        float: Some(read(AttrType::Float)),
        bool: Some(read(AttrType::Bool)),
        array: Some(encoded_value(get_field(ident(attr_map_column(scope, AttrType::Other)), key))),
        ..Typed::exact()
    }
}

/// An encoded value, null where it is empty (an attribute sent without a value has no value).
fn encoded_value(raw: Expr) -> Expr {
    datafusion::functions::core::expr_fn::nullif(raw, lit(ScalarValue::Binary(Some(Vec::new()))))
}

/// An attribute in a map of protobuf-encoded values (scope, event and link attributes).
fn encoded_attribute(map: Expr, key: &str) -> Typed {
    let raw = get_field(map, key);
    Typed {
        str: Some(any_value_as(AttrType::Str).call(vec![raw.clone()])),
        int: Some(any_value_as(AttrType::Int).call(vec![raw.clone()])),
        float: Some(any_value_as(AttrType::Float).call(vec![raw.clone()])),
        bool: Some(any_value_as(AttrType::Bool).call(vec![raw.clone()])),
        array: Some(encoded_value(raw)),
        ..Typed::exact()
    }
}

/// A literal.
pub fn static_value(s: &Static) -> Typed {
    match s {
        Static::Str(v) => Typed::str(lit(v.clone())),
        Static::Int(v) => Typed::int(lit(*v)),
        Static::Float(v) => Typed { float: Some(lit(*v)), ..Typed::exact() },
        Static::Bool(v) => Typed::boolean(lit(*v), true),
        Static::Duration(v) => Typed::duration(lit(*v)),
        Static::Status(v) => Typed { status: Some(lit(v.name())), ..Typed::exact() },
        Static::Kind(v) => Typed { kind: Some(lit(v.name())), ..Typed::exact() },
        Static::Nil => Typed::exact(),
    }
}

/// `!x`: true where `x` is not true (false or null). Written as a `CASE`: DataFusion 55
/// plans `IS NOT TRUE` with a nullability that its own schema check then refuses.
fn not_true(x: Expr) -> Expr {
    when(x, lit(false)).otherwise(lit(true)).unwrap_or_else(|_| lit(true))
}

/// A boolean used as a value compares as false where it is null.
fn definite(e: &Expr) -> Expr {
    coalesce(vec![e.clone(), lit(false)])
}

/// `l op r` for a comparison operator: true where some pair of same-typed components compares,
/// or, for an array attribute compared with a literal, as Tempo 3.0 compares arrays (see
/// [`array_compare`]).
fn compare(op: BinaryOp, l: &Typed, r: &Typed) -> Result<Expr> {
    let mut parts: Vec<Expr> = Vec::new();
    let o = operator(op);
    let array = match (&l.array, r.literal(), &r.array, l.literal()) {
        (Some(a), Some(v), _, _) => Some(array_compare(op).call(vec![a.clone(), v])),
        (_, _, Some(a), Some(v)) => op.swapped().map(|f| array_compare(f).call(vec![a.clone(), v])),
        _ => None,
    };
    if let (Some(a), Some(b)) = (&l.str, &r.str) {
        parts.push(match op {
            BinaryOp::Regex | BinaryOp::NotRegex => {
                let Expr::Literal(ScalarValue::Utf8(Some(pattern)), _) = b else {
                    return Err(QueryError::BadRequest("the right side of =~ and !~ must be a string".into()));
                };
                binary_expr(a.clone(), o, lit(format!("^(?s:{pattern})$")))
            }
            _ => binary_expr(a.clone(), o, b.clone()),
        });
    }
    if matches!(op, BinaryOp::Regex | BinaryOp::NotRegex) {
        return Ok(parts.into_iter().chain(array).reduce(Expr::or).unwrap_or(lit(false)));
    }
    for (li, a) in l.numbers() {
        for (ri, b) in r.numbers() {
            parts.push(if li && ri {
                binary_expr(a.clone(), o, b.clone())
            } else {
                binary_expr(to_float(a.clone()), o, to_float(b))
            });
        }
    }
    if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
        if let (Some(a), Some(b)) = (l.definite_bool(), r.definite_bool()) {
            parts.push(binary_expr(a, o, b));
        }
        for (a, b) in [(&l.status, &r.status), (&l.kind, &r.kind)] {
            if let (Some(a), Some(b)) = (a, b) {
                parts.push(binary_expr(a.clone(), o, b.clone()));
            }
        }
    }
    Ok(parts.into_iter().chain(array).reduce(Expr::or).unwrap_or(lit(false)))
}

/// `l op r` for an arithmetic operator. Two integers stay integers (division truncates, by zero
/// gives no value); anything else is computed as Float64, durations in nanoseconds.
fn arithmetic(op: BinaryOp, l: &Typed, r: &Typed) -> Typed {
    let mut out = Typed::exact();
    let mut floats = Vec::new();
    let apply = |a: Expr, b: Expr, integers: bool| -> Expr {
        match op {
            BinaryOp::Pow => power(to_float(a), to_float(b)),
            // Integer division by zero has no value (DataFusion would fail the query).
            BinaryOp::Div | BinaryOp::Mod if integers => {
                binary_expr(a, operator(op), datafusion::functions::core::expr_fn::nullif(b, lit(0i64)))
            }
            _ => binary_expr(a, operator(op), b),
        }
    };
    if let (Some(a), Some(b)) = (&l.int, &r.int) {
        if op == BinaryOp::Pow {
            floats.push(apply(a.clone(), b.clone(), true));
        } else {
            out.int = Some(apply(a.clone(), b.clone(), true));
        }
    }
    for (li, a) in l.numbers() {
        for (ri, b) in r.numbers() {
            let both_int = li && ri && l.int.as_ref() == Some(&a) && r.int.as_ref() == Some(&b);
            if both_int {
                continue;
            }
            floats.push(apply(to_float(a.clone()), to_float(b), false));
        }
    }
    out.float = match floats.len() {
        0 => None,
        1 => floats.pop(),
        _ => Some(coalesce(floats)),
    };
    out
}

/// `CASE` helper re-exported for the planner.
pub fn case_when(condition: Expr, then: Expr, otherwise: Expr) -> Expr {
    case(lit(true)).when(condition, then).otherwise(otherwise).unwrap_or(lit(ScalarValue::Null))
}
