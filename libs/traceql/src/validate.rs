//! Type checks and support checks after parsing, with Tempo's rules: operands must have
//! matching types, each operator accepts only some types, spanset filters must be boolean,
//! aggregates and `by` must read the span, regular expressions must compile.

use crate::ast::*;
use crate::ValidationError;

/// The type an expression has before any span is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `nil`
    Nil,
    /// An attribute: its type is known only per span.
    Attribute,
    /// Integer.
    Int,
    /// Float.
    Float,
    /// String.
    Str,
    /// Boolean.
    Bool,
    /// Duration.
    Duration,
    /// Status keyword.
    Status,
    /// Kind keyword.
    Kind,
}

impl ValueType {
    /// Int, float or duration.
    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Int | ValueType::Float | ValueType::Duration)
    }

    fn matches(self, other: ValueType) -> bool {
        use ValueType::*;
        self == Attribute
            || other == Attribute
            || self == other
            || (self.is_numeric() && other.is_numeric())
            || self == Nil
            || other == Nil
    }
}

impl Static {
    /// The literal's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Static::Str(_) => ValueType::Str,
            Static::Int(_) => ValueType::Int,
            Static::Float(_) => ValueType::Float,
            Static::Bool(_) => ValueType::Bool,
            Static::Duration(_) => ValueType::Duration,
            Static::Status(_) => ValueType::Status,
            Static::Kind(_) => ValueType::Kind,
            Static::Nil => ValueType::Nil,
        }
    }
}

impl Intrinsic {
    /// The intrinsic's type.
    pub fn value_type(self) -> ValueType {
        use Intrinsic::*;
        match self {
            Duration | TraceDuration | EventTimeSinceStart => ValueType::Duration,
            ChildCount | NestedSetLeft | NestedSetRight | NestedSetParent => ValueType::Int,
            Name
            | StatusMessage
            | RootName
            | RootServiceName
            | TraceId
            | SpanId
            | ParentId
            | EventName
            | LinkTraceId
            | LinkSpanId
            | InstrumentationName
            | InstrumentationVersion => ValueType::Str,
            Status => ValueType::Status,
            Kind => ValueType::Kind,
            Parent => ValueType::Nil,
        }
    }
}

impl Field {
    /// The field's type (`Attribute` for attributes).
    pub fn value_type(&self) -> ValueType {
        match self {
            Field::Intrinsic(i) => i.value_type(),
            Field::Attribute(a) => a.parent_intrinsic().map_or(ValueType::Attribute, Intrinsic::value_type),
        }
    }
}

impl FieldExpr {
    /// The expression's type, as far as it is known before reading a span.
    pub fn value_type(&self) -> ValueType {
        match self {
            FieldExpr::Static(s) => s.value_type(),
            FieldExpr::Field(f) => f.value_type(),
            FieldExpr::Binary { op, .. } if op.is_boolean() => ValueType::Bool,
            FieldExpr::Binary { lhs, rhs, .. } => match lhs.value_type() {
                ValueType::Attribute => rhs.value_type(),
                t => t,
            },
            FieldExpr::Unary { op: UnaryOp::Exists | UnaryOp::Missing, .. } => ValueType::Bool,
            FieldExpr::Unary { expr, .. } => expr.value_type(),
        }
    }
}

impl ScalarExpr {
    /// The expression's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            ScalarExpr::Aggregate(a) | ScalarExpr::Pipeline { aggregate: a, .. } => a.value_type(),
            ScalarExpr::Static(s) => s.value_type(),
            ScalarExpr::Op { lhs, rhs, .. } => match lhs.value_type() {
                ValueType::Attribute => rhs.value_type(),
                t => t,
            },
        }
    }
}

impl Aggregate {
    /// `count()` is an integer; the others have the type of what they aggregate.
    pub fn value_type(&self) -> ValueType {
        match &self.expr {
            None => ValueType::Int,
            Some(e) => e.value_type(),
        }
    }
}

/// Whether `op` accepts an operand of type `t`.
fn binary_accepts(op: BinaryOp, t: ValueType) -> bool {
    use BinaryOp::*;
    match t {
        ValueType::Attribute => true,
        ValueType::Bool => matches!(op, And | Or | Eq | Ne),
        ValueType::Int | ValueType::Float | ValueType::Duration => {
            matches!(op, Add | Sub | Mul | Div | Mod | Pow | Eq | Ne | Gt | Ge | Lt | Le)
        }
        ValueType::Str => matches!(op, Eq | Ne | Regex | NotRegex | Gt | Ge | Lt | Le),
        ValueType::Nil | ValueType::Status | ValueType::Kind => matches!(op, Eq | Ne),
    }
}

fn invalid(message: String) -> ValidationError {
    ValidationError::Invalid { message }
}

fn unsupported(feature: &str) -> ValidationError {
    ValidationError::Unsupported { feature: feature.to_string() }
}

impl Query {
    /// Checks types and support. `Invalid` errors are mistakes in the query;
    /// `Unsupported` ones name a part of the language Spindle does not run (see the crate docs).
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.spans.validate()?;
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        for hint in &self.hints {
            hint.validate()?;
        }
        Ok(())
    }
}

impl Hint {
    /// Hints Tempo 3.0 defines get values of their kind: `sample` true, false or a fraction,
    /// `span_sample` / `trace_sample` a fraction in (0, 1], `most_recent` and `exemplars`
    /// booleans. Other hints are accepted (Tempo ignores unknown ones too).
    fn validate(&self) -> Result<(), ValidationError> {
        let fraction = |v: &Static| match v {
            Static::Float(f) => *f > 0.0 && *f <= 1.0,
            Static::Int(1) => true,
            _ => false,
        };
        let ok = match self.name.as_str() {
            "sample" => matches!(self.value, Static::Bool(_)) || fraction(&self.value),
            "span_sample" | "trace_sample" => fraction(&self.value),
            "most_recent" | "exemplars" => matches!(self.value, Static::Bool(_)),
            _ => true,
        };
        if !ok {
            return Err(invalid(format!("invalid value for hint {}", self.name)));
        }
        Ok(())
    }
}

/// Most `by()` fields of a metrics query (each multiplies the series).
pub const MAX_METRICS_BY: usize = 10;

impl MetricsQuery {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.by.len() > MAX_METRICS_BY {
            return Err(invalid(format!("by() takes at most {MAX_METRICS_BY} fields, got {}", self.by.len())));
        }
        for f in &self.by {
            f.validate()?;
        }
        match &self.function {
            MetricsFunction::Compare { selection, top_n, .. } => {
                SpansetExpr::Filter(selection.clone()).validate()?;
                if *top_n <= 0 {
                    return Err(invalid(format!("compare() needs a topN greater than 0, got {top_n}")));
                }
                if !self.stages.is_empty() {
                    return Err(invalid(
                        "compare() cannot be followed by topk, bottomk or a comparison of its values".into(),
                    ));
                }
            }
            MetricsFunction::QuantileOverTime { quantiles, .. } => {
                if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
                    return Err(invalid(format!("quantiles must be between 0 and 1, got {q}")));
                }
            }
            _ => {}
        }
        if let Some(field) = self.function.field() {
            field.validate()?;
            let t = field.value_type();
            if t != ValueType::Attribute && !t.is_numeric() {
                return Err(invalid(format!(
                    "{}() needs a numeric value, and {field} is not one",
                    self.function.name()
                )));
            }
        }
        for stage in &self.stages {
            if let MetricsStage::TopK(n) | MetricsStage::BottomK(n) = *stage {
                if n <= 0 {
                    return Err(invalid(format!("topk and bottomk need a limit greater than 0, got {n}")));
                }
            }
        }
        Ok(())
    }
}

impl SpansetExpr {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            SpansetExpr::Filter(e) => {
                e.validate()?;
                let t = e.value_type();
                if t != ValueType::Attribute && t != ValueType::Bool {
                    return Err(invalid(format!("a spanset filter must be a condition (true or false), not {e}")));
                }
                Ok(())
            }
            SpansetExpr::Op { lhs, rhs, .. } => {
                lhs.validate()?;
                rhs.validate()
            }
            SpansetExpr::Pipeline(stages) => stages.iter().try_for_each(Stage::validate),
        }
    }
}

impl Stage {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Stage::Spanset(s) => s.validate(),
            Stage::ScalarFilter(f) => f.validate(),
            Stage::By(e) => {
                if !e.references_span() {
                    return Err(invalid(format!("by() must read the span (an attribute or intrinsic): by({e})")));
                }
                e.validate()
            }
            Stage::Coalesce => Ok(()),
            Stage::Select(fields) => fields.iter().try_for_each(Field::validate),
        }
    }
}

impl ScalarFilter {
    fn validate(&self) -> Result<(), ValidationError> {
        self.lhs.validate()?;
        self.rhs.validate()?;
        let (l, r) = (self.lhs.value_type(), self.rhs.value_type());
        if !l.matches(r) {
            return Err(invalid(format!("both sides of a comparison must have the same type: {self}")));
        }
        if !binary_accepts(self.op, l) || !binary_accepts(self.op, r) {
            return Err(invalid(format!("illegal operation for the given types: {self}")));
        }
        if self.lhs.has_pipeline() || self.rhs.has_pipeline() {
            return Err(unsupported("comparing the aggregates of several pipelines, e.g. ({ } | count()) > 1"));
        }
        Ok(())
    }
}

impl ScalarExpr {
    fn has_pipeline(&self) -> bool {
        match self {
            ScalarExpr::Pipeline { .. } => true,
            ScalarExpr::Op { lhs, rhs, .. } => lhs.has_pipeline() || rhs.has_pipeline(),
            ScalarExpr::Aggregate(_) | ScalarExpr::Static(_) => false,
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            ScalarExpr::Aggregate(a) => a.validate(),
            ScalarExpr::Static(_) => Ok(()),
            ScalarExpr::Op { op, lhs, rhs } => {
                lhs.validate()?;
                rhs.validate()?;
                let (l, r) = (lhs.value_type(), rhs.value_type());
                if !l.matches(r) {
                    return Err(invalid(format!("both sides of {} must have the same type: {self}", op.symbol())));
                }
                if !binary_accepts(*op, l) || !binary_accepts(*op, r) {
                    return Err(invalid(format!("illegal operation for the given types: {self}")));
                }
                Ok(())
            }
            ScalarExpr::Pipeline { stages, aggregate } => {
                stages.iter().try_for_each(Stage::validate)?;
                aggregate.validate()
            }
        }
    }
}

impl Aggregate {
    fn validate(&self) -> Result<(), ValidationError> {
        let Some(e) = &self.expr else {
            return Ok(());
        };
        e.validate()?;
        let t = e.value_type();
        if t != ValueType::Attribute && !t.is_numeric() {
            return Err(invalid(format!("{}() aggregates numbers, and {e} is not one", self.func.name())));
        }
        if !e.references_span() {
            return Err(invalid(format!("{self} must read the span (an attribute or intrinsic)")));
        }
        Ok(())
    }
}

impl Field {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Field::Intrinsic(Intrinsic::Parent) => Err(invalid(
                "parent can only be compared with nil (parent = nil: a root span); read the parent's fields with \
                 parent.<field>, e.g. parent.duration or parent.span.http.route"
                    .into(),
            )),
            Field::Attribute(a) if a.parent => match a.on_span() {
                Field::Intrinsic(Intrinsic::Parent) => Err(invalid(
                    "parent.parent is not a field: compare parent with nil, or use structural operators".into(),
                )),
                on_span => on_span.validate(),
            },
            _ => Ok(()),
        }
    }
}

impl FieldExpr {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            FieldExpr::Static(_) => Ok(()),
            FieldExpr::Field(f) => f.validate(),
            FieldExpr::Binary { op, lhs, rhs } => {
                lhs.validate()?;
                rhs.validate()?;
                let (l, r) = (lhs.value_type(), rhs.value_type());
                if !l.matches(r) {
                    return Err(invalid(format!("both sides of {} must have the same type: {self}", op.symbol())));
                }
                if !binary_accepts(*op, l) || !binary_accepts(*op, r) {
                    return Err(invalid(format!("illegal operation for the given types: {self}")));
                }
                if matches!(op, BinaryOp::Regex | BinaryOp::NotRegex) {
                    let FieldExpr::Static(Static::Str(pattern)) = rhs.as_ref() else {
                        return Err(invalid(format!("the right side of {} must be a string: {self}", op.symbol())));
                    };
                    regex::Regex::new(pattern)
                        .map_err(|e| invalid(format!("invalid regular expression {pattern:?}: {e}")))?;
                }
                Ok(())
            }
            FieldExpr::Unary { op: UnaryOp::Exists | UnaryOp::Missing, expr }
                if matches!(expr.as_ref(), FieldExpr::Field(Field::Intrinsic(Intrinsic::Parent))) =>
            {
                Ok(())
            }
            FieldExpr::Unary { op, expr } => {
                expr.validate()?;
                let t = expr.value_type();
                if *op == UnaryOp::Missing {
                    match expr.as_ref() {
                        FieldExpr::Field(Field::Intrinsic(_)) => {
                            return Err(invalid(format!("intrinsics always have a value and cannot be nil: {self}")));
                        }
                        FieldExpr::Field(Field::Attribute(a))
                            if a.scope == AttributeScope::Resource && a.name == "service.name" =>
                        {
                            return Err(invalid(format!("resource.service.name always has a value: {self}")));
                        }
                        _ => {}
                    }
                }
                let ok = match op {
                    UnaryOp::Exists | UnaryOp::Missing => true,
                    _ if t == ValueType::Attribute => true,
                    UnaryOp::Neg => t.is_numeric(),
                    UnaryOp::Not => t == ValueType::Bool,
                };
                if !ok {
                    return Err(invalid(format!("illegal operation for the given type: {self}")));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{compile, Error};

    fn invalid(q: &str) -> bool {
        matches!(compile(q), Err(Error::Validation(crate::ValidationError::Invalid { .. })))
    }

    #[test]
    fn tempo_3_hints_and_nil() {
        for ok in [
            "{ } | rate() with(sample=true)",
            "{ } | rate() with(sample=0.1)",
            "{ } | rate() with(span_sample=0.5)",
            "{ } | rate() with(trace_sample=1)",
            "{ } with(most_recent=true)",
            "{ } | rate() with(exemplars=false)",
            "{ .foo = nil }",
            "{ nil = span.foo && name != nil }",
            "{ parent.span.a = 1 && parent.duration > 1s }",
            "{ parent = nil }",
            "{ parent != nil && parent.duration = nil }",
            "{ } | rate() by (parent.resource.service.name)",
        ] {
            assert!(compile(ok).is_ok(), "{ok}: {:?}", compile(ok));
        }
        for bad in [
            "{ } | rate() with(sample=2)",
            "{ } | rate() with(span_sample=0)",
            "{ } | rate() with(trace_sample=\"x\")",
            "{ } with(most_recent=1)",
            "{ duration = nil }",
            "{ resource.service.name = nil }",
            "{ } | compare({ status = error }) > 1",
            "{ } | rate() | topk(0) > 1",
            "{ parent }",
            "{ 1 >= parent }",
            "{ parent.duration = \"x\" }",
            "{ parent.parent = nil }",
            "{ } | rate() by (parent)",
        ] {
            assert!(invalid(bad), "{bad}: {:?}", compile(bad));
        }
    }
}
