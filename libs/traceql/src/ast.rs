//! The syntax tree of a TraceQL query, and how each node prints (as Tempo prints it: the
//! printed forms name the attributes of search results and the labels of metrics series).

use std::fmt;

/// A parsed TraceQL query: what selects spans, then optionally a metrics function, then hints.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Selects spans: a spanset filter, an expression of spansets, or a pipeline.
    pub spans: SpansetExpr,
    /// `| rate() by (...) | topk(5)`: present for TraceQL metrics queries.
    pub metrics: Option<MetricsQuery>,
    /// `with(key = value, ...)`.
    pub hints: Vec<Hint>,
}

impl Query {
    /// The value of hint `name`, if given (the last one wins).
    pub fn hint(&self, name: &str) -> Option<&Static> {
        self.hints.iter().rev().find(|h| h.name == name).map(|h| &h.value)
    }
}

/// An expression whose value, per trace, is a set of spans (or several, after `by`).
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    /// `{ condition }`: the spans for which the condition holds. `{}` is `{ true }`.
    Filter(FieldExpr),
    /// `lhs op rhs`: two spansets combined by a logical or structural operator.
    Op {
        /// The operator.
        op: SpansetOp,
        /// Left side.
        lhs: Box<SpansetExpr>,
        /// Right side.
        rhs: Box<SpansetExpr>,
    },
    /// `a | b | c`: each stage works on what the previous one produced. Never empty.
    Pipeline(Vec<Stage>),
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Keep the spans of each spanset that this spanset expression selects.
    Spanset(SpansetExpr),
    /// Keep the spansets for which a comparison of aggregates holds (`count() > 3`).
    ScalarFilter(ScalarFilter),
    /// `by(expr)`: split each spanset by the value of `expr`.
    By(FieldExpr),
    /// `coalesce()`: merge the spansets of a trace into one.
    Coalesce,
    /// `select(a, b)`: return these fields with each span.
    Select(Vec<Field>),
}

/// `lhs op rhs` over aggregates and numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFilter {
    /// A comparison operator (`= != < <= > >=`).
    pub op: BinaryOp,
    /// Left side.
    pub lhs: ScalarExpr,
    /// Right side.
    pub rhs: ScalarExpr,
}

/// A number computed per spanset.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarExpr {
    /// `count()`, `avg(duration)`, ...
    Aggregate(Aggregate),
    /// A number or duration.
    Static(Static),
    /// Arithmetic (`+ - * / % ^`).
    Op {
        /// The operator.
        op: BinaryOp,
        /// Left side.
        lhs: Box<ScalarExpr>,
        /// Right side.
        rhs: Box<ScalarExpr>,
    },
    /// `({ ... } | count())`: a whole pipeline ending in an aggregate.
    Pipeline {
        /// The stages before the aggregate.
        stages: Vec<Stage>,
        /// The aggregate computed over what the stages produce.
        aggregate: Aggregate,
    },
}

/// An aggregate over the spans of a spanset.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Which aggregate.
    pub func: AggregateFn,
    /// What is aggregated; `None` for `count()`.
    pub expr: Option<FieldExpr>,
}

/// Aggregate functions of pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateFn {
    /// `count()`
    Count,
    /// `avg(x)`
    Avg,
    /// `min(x)`
    Min,
    /// `max(x)`
    Max,
    /// `sum(x)`
    Sum,
}

impl AggregateFn {
    /// The function's TraceQL name.
    pub fn name(self) -> &'static str {
        match self {
            AggregateFn::Count => "count",
            AggregateFn::Avg => "avg",
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
            AggregateFn::Sum => "sum",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "count" => AggregateFn::Count,
            "avg" => AggregateFn::Avg,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "sum" => AggregateFn::Sum,
            _ => return None,
        })
    }
}

/// Operators between spansets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpansetOp {
    /// `&&`: both match in the trace; the spans of both.
    And,
    /// `||`: the spans of either.
    Or,
    /// `>`: right-hand spans that are children of a left-hand span.
    Child,
    /// `<`: right-hand spans that are parents of a left-hand span.
    Parent,
    /// `>>`: right-hand spans that descend from a left-hand span.
    Descendant,
    /// `<<`: right-hand spans that are ancestors of a left-hand span.
    Ancestor,
    /// `~`: right-hand spans that have a left-hand sibling.
    Sibling,
    /// `!>`: right-hand spans that are not children of a left-hand span.
    NotChild,
    /// `!<`: right-hand spans that are not parents of a left-hand span.
    NotParent,
    /// `!>>`: right-hand spans that do not descend from a left-hand span.
    NotDescendant,
    /// `!<<`: right-hand spans that are not ancestors of a left-hand span.
    NotAncestor,
    /// `!~`: right-hand spans without a left-hand sibling.
    NotSibling,
    /// `&>`: parents and children of the relation, from both sides.
    UnionChild,
    /// `&<`: children and parents of the relation, from both sides.
    UnionParent,
    /// `&>>`: ancestors and descendants of the relation, from both sides.
    UnionDescendant,
    /// `&<<`: descendants and ancestors of the relation, from both sides.
    UnionAncestor,
    /// `&~`: siblings of the relation, from both sides.
    UnionSibling,
}

impl SpansetOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            SpansetOp::And => "&&",
            SpansetOp::Or => "||",
            SpansetOp::Child => ">",
            SpansetOp::Parent => "<",
            SpansetOp::Descendant => ">>",
            SpansetOp::Ancestor => "<<",
            SpansetOp::Sibling => "~",
            SpansetOp::NotChild => "!>",
            SpansetOp::NotParent => "!<",
            SpansetOp::NotDescendant => "!>>",
            SpansetOp::NotAncestor => "!<<",
            SpansetOp::NotSibling => "!~",
            SpansetOp::UnionChild => "&>",
            SpansetOp::UnionParent => "&<",
            SpansetOp::UnionDescendant => "&>>",
            SpansetOp::UnionAncestor => "&<<",
            SpansetOp::UnionSibling => "&~",
        }
    }

    /// The tree relation a structural operator tests, `None` for `&&` and `||`.
    pub fn relation(self) -> Option<Relation> {
        use SpansetOp::*;
        Some(match self {
            And | Or => return None,
            Child | NotChild | UnionChild => Relation::Child,
            Parent | NotParent | UnionParent => Relation::Parent,
            Descendant | NotDescendant | UnionDescendant => Relation::Descendant,
            Ancestor | NotAncestor | UnionAncestor => Relation::Ancestor,
            Sibling | NotSibling | UnionSibling => Relation::Sibling,
        })
    }

    /// How a structural operator uses its relation, `None` for `&&` and `||`.
    pub fn mode(self) -> Option<RelationMode> {
        use SpansetOp::*;
        Some(match self {
            And | Or => return None,
            Child | Parent | Descendant | Ancestor | Sibling => RelationMode::Match,
            NotChild | NotParent | NotDescendant | NotAncestor | NotSibling => RelationMode::Negated,
            UnionChild | UnionParent | UnionDescendant | UnionAncestor | UnionSibling => RelationMode::Union,
        })
    }
}

/// The relation a structural operator tests: "a right-hand span is the ... of a left-hand span".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// Child of (`>`).
    Child,
    /// Parent of (`<`).
    Parent,
    /// Descendant of (`>>`).
    Descendant,
    /// Ancestor of (`<<`).
    Ancestor,
    /// Sibling of (`~`).
    Sibling,
}

/// What a structural operator returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelationMode {
    /// The right-hand spans in the relation with some left-hand span.
    Match,
    /// The right-hand spans in the relation with no left-hand span.
    Negated,
    /// Every span of either side that is in the relation with a span of the other side.
    Union,
}

/// A per-span expression: the condition of a spanset filter, a `by` key, an aggregated value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    /// A literal.
    Static(Static),
    /// An attribute or intrinsic of the span.
    Field(Field),
    /// `lhs op rhs`.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left side.
        lhs: Box<FieldExpr>,
        /// Right side.
        rhs: Box<FieldExpr>,
    },
    /// `-x`, `!x`, or `x != nil`.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// The operand.
        expr: Box<FieldExpr>,
    },
}

impl FieldExpr {
    /// Every field the expression reads, in order of appearance (repeats included).
    pub fn fields(&self) -> Vec<&Field> {
        let mut out = Vec::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields<'a>(&'a self, out: &mut Vec<&'a Field>) {
        match self {
            FieldExpr::Static(_) => {}
            FieldExpr::Field(f) => out.push(f),
            FieldExpr::Binary { lhs, rhs, .. } => {
                lhs.collect_fields(out);
                rhs.collect_fields(out);
            }
            FieldExpr::Unary { expr, .. } => expr.collect_fields(out),
        }
    }

    /// Whether the expression reads the span at all (an attribute or intrinsic).
    pub fn references_span(&self) -> bool {
        match self {
            FieldExpr::Static(_) => false,
            FieldExpr::Field(_) => true,
            FieldExpr::Binary { lhs, rhs, .. } => lhs.references_span() || rhs.references_span(),
            FieldExpr::Unary { expr, .. } => expr.references_span(),
        }
    }
}

/// Binary operators of field and scalar expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=~` (the regular expression must match the whole value)
    Regex,
    /// `!~`
    NotRegex,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Pow => "^",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Regex => "=~",
            BinaryOp::NotRegex => "!~",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }

    /// Whether the result is a boolean (comparisons and logic) rather than a number.
    pub fn is_boolean(self) -> bool {
        !self.is_arithmetic()
    }

    /// `+ - * / % ^`.
    pub fn is_arithmetic(self) -> bool {
        matches!(self, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod | BinaryOp::Pow)
    }

    /// `= != < <= > >=`.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`); `None` for regexes, whose
    /// pattern must be on the right.
    pub fn swapped(self) -> Option<BinaryOp> {
        Some(match self {
            BinaryOp::Lt => BinaryOp::Gt,
            BinaryOp::Le => BinaryOp::Ge,
            BinaryOp::Gt => BinaryOp::Lt,
            BinaryOp::Ge => BinaryOp::Le,
            BinaryOp::Regex | BinaryOp::NotRegex => return None,
            other => other,
        })
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `!x`
    Not,
    /// `x != nil`: the value exists.
    Exists,
    /// `x = nil`: the value is missing (Tempo 3.0).
    Missing,
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Static {
    /// `"text"` or `` `text` ``.
    Str(String),
    /// `42`
    Int(i64),
    /// `1.5`
    Float(f64),
    /// `true`, `false`
    Bool(bool),
    /// `150ms`, in nanoseconds.
    Duration(i64),
    /// `ok`, `error`, `unset`
    Status(Status),
    /// `server`, `client`, ...
    Kind(Kind),
    /// `nil`
    Nil,
}

/// Span status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `unset`
    Unset,
    /// `ok`
    Ok,
    /// `error`
    Error,
}

impl Status {
    /// The TraceQL keyword, which is also the value stored in the `status_code` column.
    pub fn name(self) -> &'static str {
        match self {
            Status::Unset => "unset",
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// Span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `unspecified`
    Unspecified,
    /// `internal`
    Internal,
    /// `server`
    Server,
    /// `client`
    Client,
    /// `producer`
    Producer,
    /// `consumer`
    Consumer,
}

impl Kind {
    /// The TraceQL keyword, which is also the value stored in the `kind` column.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Internal => "internal",
            Kind::Server => "server",
            Kind::Client => "client",
            Kind::Producer => "producer",
            Kind::Consumer => "consumer",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "unspecified" => Kind::Unspecified,
            "internal" => Kind::Internal,
            "server" => Kind::Server,
            "client" => Kind::Client,
            "producer" => Kind::Producer,
            "consumer" => Kind::Consumer,
            _ => return None,
        })
    }
}

/// Something of a span an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// An attribute (`span.x`, `resource.x`, `.x`, `event.x`, ...).
    Attribute(Attribute),
    /// A built-in field (`name`, `duration`, `trace:id`, ...).
    Intrinsic(Intrinsic),
}

/// A named attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// Where it is looked up.
    pub scope: AttributeScope,
    /// `parent.`: the attribute of the span's parent.
    pub parent: bool,
    /// The attribute key, e.g. `http.status_code`.
    pub name: String,
}

impl Attribute {
    /// The intrinsic a `parent.` field reads on the parent span (`parent.duration`,
    /// `parent.name`, ...): an unscoped `parent.` name that names an intrinsic, as in Tempo.
    pub fn parent_intrinsic(&self) -> Option<Intrinsic> {
        (self.parent && self.scope == AttributeScope::Unscoped).then(|| Intrinsic::unscoped(&self.name)).flatten()
    }

    /// The same field read on the span itself (without `parent.`).
    pub fn on_span(&self) -> Field {
        match self.parent_intrinsic() {
            Some(i) => Field::Intrinsic(i),
            None => Field::Attribute(Attribute { parent: false, ..self.clone() }),
        }
    }
}

/// Where an attribute is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeScope {
    /// `.x`: the span's attribute, else its resource's.
    Unscoped,
    /// `span.x`
    Span,
    /// `resource.x`
    Resource,
    /// `event.x`: an attribute of one of the span's events.
    Event,
    /// `link.x`: an attribute of one of the span's links.
    Link,
    /// `instrumentation.x`: an attribute of the instrumentation scope.
    Instrumentation,
}

impl AttributeScope {
    /// The scope prefix as written (`span`, `resource`, ...); empty for unscoped.
    pub fn name(self) -> &'static str {
        match self {
            AttributeScope::Unscoped => "",
            AttributeScope::Span => "span",
            AttributeScope::Resource => "resource",
            AttributeScope::Event => "event",
            AttributeScope::Link => "link",
            AttributeScope::Instrumentation => "instrumentation",
        }
    }
}

/// Built-in fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    /// `duration`, `span:duration`
    Duration,
    /// `name`, `span:name`
    Name,
    /// `status`, `span:status`
    Status,
    /// `statusMessage`, `span:statusMessage`
    StatusMessage,
    /// `kind`, `span:kind`
    Kind,
    /// `childCount`, `span:childCount`: how many spans name this one as parent.
    ChildCount,
    /// `parent`: only compared with nil (`parent = nil` holds for root spans, which have no
    /// parent span id); the parent's fields are read with `parent.<field>`.
    Parent,
    /// `rootName`, `trace:rootName`
    RootName,
    /// `rootServiceName`, `trace:rootService`
    RootServiceName,
    /// `traceDuration`, `trace:duration`
    TraceDuration,
    /// `trace:id`
    TraceId,
    /// `span:id`
    SpanId,
    /// `span:parentID`
    ParentId,
    /// `nestedSetLeft`
    NestedSetLeft,
    /// `nestedSetRight`
    NestedSetRight,
    /// `nestedSetParent` (-1 for a root span)
    NestedSetParent,
    /// `event:name`
    EventName,
    /// `event:timeSinceStart`
    EventTimeSinceStart,
    /// `link:traceID`
    LinkTraceId,
    /// `link:spanID`
    LinkSpanId,
    /// `instrumentation:name`
    InstrumentationName,
    /// `instrumentation:version`
    InstrumentationVersion,
}

impl Intrinsic {
    /// Every intrinsic.
    pub const ALL: [Intrinsic; 22] = [
        Intrinsic::Duration,
        Intrinsic::Name,
        Intrinsic::Status,
        Intrinsic::StatusMessage,
        Intrinsic::Kind,
        Intrinsic::ChildCount,
        Intrinsic::Parent,
        Intrinsic::RootName,
        Intrinsic::RootServiceName,
        Intrinsic::TraceDuration,
        Intrinsic::TraceId,
        Intrinsic::SpanId,
        Intrinsic::ParentId,
        Intrinsic::NestedSetLeft,
        Intrinsic::NestedSetRight,
        Intrinsic::NestedSetParent,
        Intrinsic::EventName,
        Intrinsic::EventTimeSinceStart,
        Intrinsic::LinkTraceId,
        Intrinsic::LinkSpanId,
        Intrinsic::InstrumentationName,
        Intrinsic::InstrumentationVersion,
    ];

    /// The canonical name, as Tempo prints it (`name`, `trace:id`, `event:name`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Intrinsic::Duration => "duration",
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::ChildCount => "childCount",
            Intrinsic::Parent => "parent",
            Intrinsic::RootName => "rootName",
            Intrinsic::RootServiceName => "rootServiceName",
            Intrinsic::TraceDuration => "traceDuration",
            Intrinsic::TraceId => "trace:id",
            Intrinsic::SpanId => "span:id",
            Intrinsic::ParentId => "span:parentID",
            Intrinsic::NestedSetLeft => "nestedSetLeft",
            Intrinsic::NestedSetRight => "nestedSetRight",
            Intrinsic::NestedSetParent => "nestedSetParent",
            Intrinsic::EventName => "event:name",
            Intrinsic::EventTimeSinceStart => "event:timeSinceStart",
            Intrinsic::LinkTraceId => "link:traceID",
            Intrinsic::LinkSpanId => "link:spanID",
            Intrinsic::InstrumentationName => "instrumentation:name",
            Intrinsic::InstrumentationVersion => "instrumentation:version",
        }
    }

    /// Looks an intrinsic up by any of its names, scoped (`span:name`) or not (`name`).
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(i) = Self::unscoped(name) {
            return Some(i);
        }
        let (scope, rest) = name.split_once(':')?;
        Self::scoped(scope, rest)
    }

    /// The intrinsics that are written without a scope.
    pub(crate) fn unscoped(name: &str) -> Option<Self> {
        Some(match name {
            "duration" => Intrinsic::Duration,
            "name" => Intrinsic::Name,
            "status" => Intrinsic::Status,
            "statusMessage" => Intrinsic::StatusMessage,
            "kind" => Intrinsic::Kind,
            "childCount" => Intrinsic::ChildCount,
            "parent" => Intrinsic::Parent,
            "rootName" => Intrinsic::RootName,
            "rootServiceName" => Intrinsic::RootServiceName,
            "traceDuration" => Intrinsic::TraceDuration,
            "nestedSetLeft" => Intrinsic::NestedSetLeft,
            "nestedSetRight" => Intrinsic::NestedSetRight,
            "nestedSetParent" => Intrinsic::NestedSetParent,
            _ => return None,
        })
    }

    /// `scope:name` intrinsics.
    pub(crate) fn scoped(scope: &str, name: &str) -> Option<Self> {
        Some(match (scope, name) {
            ("trace", "duration") => Intrinsic::TraceDuration,
            ("trace", "rootName") => Intrinsic::RootName,
            ("trace", "rootService") => Intrinsic::RootServiceName,
            ("trace", "id") => Intrinsic::TraceId,
            ("span", "duration") => Intrinsic::Duration,
            ("span", "name") => Intrinsic::Name,
            ("span", "kind") => Intrinsic::Kind,
            ("span", "status") => Intrinsic::Status,
            ("span", "statusMessage") => Intrinsic::StatusMessage,
            ("span", "id") => Intrinsic::SpanId,
            ("span", "parentID") => Intrinsic::ParentId,
            ("span", "childCount") => Intrinsic::ChildCount,
            ("event", "name") => Intrinsic::EventName,
            ("event", "timeSinceStart") => Intrinsic::EventTimeSinceStart,
            ("link", "traceID") => Intrinsic::LinkTraceId,
            ("link", "spanID") => Intrinsic::LinkSpanId,
            ("instrumentation", "name") => Intrinsic::InstrumentationName,
            ("instrumentation", "version") => Intrinsic::InstrumentationVersion,
            _ => return None,
        })
    }

    /// The intrinsics Tempo lists under the `intrinsic` scope of its tag names.
    pub const TAG_NAMES: [&'static str; 8] =
        ["duration", "kind", "name", "rootName", "rootServiceName", "status", "statusMessage", "traceDuration"];
}

/// `with(name = value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    /// The hint's name.
    pub name: String,
    /// Its value.
    pub value: Static,
}

/// The metrics part of a query: `| fn(...) by (...) > 10 | topk(n) <= 5`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    /// The first-stage function.
    pub function: MetricsFunction,
    /// Series are split by these fields.
    pub by: Vec<Field>,
    /// What is applied to the series, in order: comparisons (Tempo 3.0) and `topk`/`bottomk`.
    pub stages: Vec<MetricsStage>,
}

/// First-stage metrics functions.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    /// `rate()`: matching spans per second.
    Rate,
    /// `count_over_time()`: matching spans per step.
    CountOverTime,
    /// `min_over_time(x)`
    MinOverTime(Field),
    /// `max_over_time(x)`
    MaxOverTime(Field),
    /// `avg_over_time(x)`
    AvgOverTime(Field),
    /// `sum_over_time(x)`
    SumOverTime(Field),
    /// `quantile_over_time(x, q1, q2, ...)`
    QuantileOverTime {
        /// The value whose quantiles are wanted.
        field: Field,
        /// The quantiles, each in `[0, 1]`.
        quantiles: Vec<f64>,
    },
    /// `histogram_over_time(x)`
    HistogramOverTime(Field),
    /// `compare({ selection }, top_n, start, end)`
    Compare {
        /// The spans compared with the rest.
        selection: FieldExpr,
        /// Values kept per attribute.
        top_n: i64,
        /// Start of the selection's time range (unix ns); 0 = the query's.
        start: i64,
        /// End of the selection's time range (unix ns); 0 = the query's.
        end: i64,
    },
}

impl MetricsFunction {
    /// The function's name as written.
    pub fn name(&self) -> &'static str {
        match self {
            MetricsFunction::Rate => "rate",
            MetricsFunction::CountOverTime => "count_over_time",
            MetricsFunction::MinOverTime(_) => "min_over_time",
            MetricsFunction::MaxOverTime(_) => "max_over_time",
            MetricsFunction::AvgOverTime(_) => "avg_over_time",
            MetricsFunction::SumOverTime(_) => "sum_over_time",
            MetricsFunction::QuantileOverTime { .. } => "quantile_over_time",
            MetricsFunction::HistogramOverTime(_) => "histogram_over_time",
            MetricsFunction::Compare { .. } => "compare",
        }
    }

    /// The field the function reads, if any.
    pub fn field(&self) -> Option<&Field> {
        match self {
            MetricsFunction::MinOverTime(f)
            | MetricsFunction::MaxOverTime(f)
            | MetricsFunction::AvgOverTime(f)
            | MetricsFunction::SumOverTime(f)
            | MetricsFunction::HistogramOverTime(f)
            | MetricsFunction::QuantileOverTime { field: f, .. } => Some(f),
            MetricsFunction::Rate | MetricsFunction::CountOverTime | MetricsFunction::Compare { .. } => None,
        }
    }
}

/// What follows a metrics function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricsStage {
    /// `| topk(n)`: at each time, the n series with the highest values.
    TopK(i64),
    /// `| bottomk(n)`: at each time, the n series with the lowest values.
    BottomK(i64),
    /// `> 10`, `= 0`, ...: only the samples whose value compares so (Tempo 3.0).
    Compare {
        /// `=`, `!=`, `>`, `>=`, `<` or `<=`.
        op: BinaryOp,
        /// The number compared with.
        value: f64,
    },
}

impl MetricsStage {
    /// Whether `sample` passes a comparison stage (other stages pass every sample; NaN never
    /// passes a comparison).
    pub fn keeps(&self, sample: f64) -> bool {
        match *self {
            MetricsStage::Compare { op, value } => match op {
                BinaryOp::Eq => sample == value,
                BinaryOp::Ne => !sample.is_nan() && sample != value,
                BinaryOp::Gt => sample > value,
                BinaryOp::Ge => sample >= value,
                BinaryOp::Lt => sample < value,
                BinaryOp::Le => sample <= value,
                _ => false,
            },
            _ => true,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Intrinsic(i) => f.write_str(i.name()),
            Field::Attribute(a) => a.fmt(f),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parent {
            f.write_str("parent.")?;
        }
        match self.scope {
            AttributeScope::Unscoped if !self.parent => f.write_str(".")?,
            AttributeScope::Unscoped => {}
            scope => write!(f, "{}.", scope.name())?,
        }
        f.write_str(&self.name)
    }
}

impl fmt::Display for Static {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Static::Str(s) => write!(f, "`{s}`"),
            Static::Int(i) => write!(f, "{i}"),
            Static::Float(x) => {
                let s = format!("{x}");
                if s.contains(['e', '.', 'N', 'i']) {
                    f.write_str(&s)
                } else {
                    write!(f, "{s}.0")
                }
            }
            Static::Bool(b) => write!(f, "{b}"),
            Static::Duration(ns) => f.write_str(&spindle_types::format_duration(*ns)),
            Static::Status(s) => f.write_str(s.name()),
            Static::Kind(k) => f.write_str(k.name()),
            Static::Nil => f.write_str("nil"),
        }
    }
}

impl fmt::Display for FieldExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::Static(s) => s.fmt(f),
            FieldExpr::Field(x) => x.fmt(f),
            FieldExpr::Binary { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            FieldExpr::Unary { op: UnaryOp::Neg, expr } => write!(f, "-{expr}"),
            FieldExpr::Unary { op: UnaryOp::Not, expr } => write!(f, "!{expr}"),
            FieldExpr::Unary { op: UnaryOp::Exists, expr } => write!(f, "({expr} != nil)"),
            FieldExpr::Unary { op: UnaryOp::Missing, expr } => write!(f, "({expr} = nil)"),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => write!(f, "{}()", self.func.name()),
            Some(e) => write!(f, "{}({e})", self.func.name()),
        }
    }
}

impl fmt::Display for ScalarExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalarExpr::Aggregate(a) => a.fmt(f),
            ScalarExpr::Static(s) => s.fmt(f),
            ScalarExpr::Op { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            ScalarExpr::Pipeline { stages, aggregate } => {
                f.write_str("(")?;
                for s in stages {
                    write!(f, "{s} | ")?;
                }
                write!(f, "{aggregate})")
            }
        }
    }
}

impl fmt::Display for ScalarFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} {} {})", self.lhs, self.op.symbol(), self.rhs)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Spanset(s) => s.fmt(f),
            Stage::ScalarFilter(s) => s.fmt(f),
            Stage::By(e) => write!(f, "by({e})"),
            Stage::Coalesce => f.write_str("coalesce()"),
            Stage::Select(fields) => {
                f.write_str("select(")?;
                for (i, x) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    x.fmt(f)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for SpansetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpansetExpr::Filter(e) => write!(f, "{{ {e} }}"),
            SpansetExpr::Op { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            SpansetExpr::Pipeline(stages) => {
                f.write_str("(")?;
                for (i, s) in stages.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    s.fmt(f)?;
                }
                f.write_str(")")
            }
        }
    }
}
