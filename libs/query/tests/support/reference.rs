//! A small, direct TraceQL evaluator over in-memory traces, written for the tests from the
//! semantics in `docs/traceql.md`: span by span, trace by trace, no DataFusion. The differential
//! tests compare the engine's answers with it.

use std::collections::{BTreeMap, HashMap};

use spindle_traceql::*;

use super::data::{TSpan, Val};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum RV {
    Nil,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Dur(i64),
    Status(&'static str),
    Kind(&'static str),
    /// An array attribute's elements.
    Array(Vec<RV>),
}

impl RV {
    fn truthy(&self) -> bool {
        *self == RV::Bool(true)
    }

    fn number(&self) -> Option<f64> {
        match self {
            RV::Int(i) | RV::Dur(i) => Some(*i as f64),
            RV::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn int_like(&self) -> Option<i64> {
        match self {
            RV::Int(i) | RV::Dur(i) => Some(*i),
            _ => None,
        }
    }

    /// A group key: type and value.
    pub fn key(&self) -> String {
        format!("{self:?}")
    }
}

fn val(v: &Val) -> RV {
    match v {
        Val::Str(s) => RV::Str(s.clone()),
        Val::Int(i) => RV::Int(*i),
        Val::Float(f) => RV::Float(*f),
        Val::Bool(b) => RV::Bool(*b),
        Val::Array(items) => RV::Array(items.iter().map(val).collect()),
    }
}

fn lookup(attrs: &[(String, Val)], key: &str) -> RV {
    attrs.iter().find(|(k, _)| k == key).map_or(RV::Nil, |(_, v)| val(v))
}

const KINDS: [&str; 6] = ["unspecified", "internal", "server", "client", "producer", "consumer"];
const STATUSES: [&str; 3] = ["unset", "ok", "error"];

/// Tempo prints trace ids without leading zeros.
pub fn trace_hex(id: &[u8]) -> String {
    let h = hex::encode(id);
    let t = h.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

/// One trace's spans restricted to a partition (a by() group), with their tree.
struct Part<'a> {
    spans: Vec<&'a TSpan>,
    parent: Vec<Option<usize>>,
}

impl<'a> Part<'a> {
    fn new(spans: Vec<&'a TSpan>) -> Self {
        let parent = spans
            .iter()
            .enumerate()
            .map(|(i, s)| s.parent.and_then(|p| spans.iter().position(|x| x.span_id == p)).filter(|&j| j != i))
            .collect();
        Part { spans, parent }
    }

    fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut cur = self.parent[i];
        while let Some(p) = cur {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            cur = self.parent[p];
        }
        out
    }

    /// Is row `i` in `rel` to some row where `mask` holds?
    fn related(&self, rel: Relation, mask: &[bool], i: usize) -> bool {
        let n = self.spans.len();
        match rel {
            Relation::Child => self.parent[i].is_some_and(|p| mask[p]),
            Relation::Parent => (0..n).any(|j| self.parent[j] == Some(i) && mask[j]),
            Relation::Descendant => self.ancestors(i).iter().any(|&a| mask[a]),
            Relation::Ancestor => (0..n).any(|j| mask[j] && self.ancestors(j).contains(&i)),
            Relation::Sibling => (0..n).any(|j| j != i && mask[j] && self.spans[j].parent == self.spans[i].parent),
        }
    }
}

/// Trace-level facts, over the whole trace.
struct TraceFacts {
    /// Each span's parent row (the span of the trace with its parent id), if any.
    parent: Vec<Option<usize>>,
    child_count: Vec<i64>,
    nested: Vec<(i64, i64, i64)>,
    root_name: String,
    root_service: String,
    duration: i64,
}

fn order_key(s: &TSpan) -> (i64, [u8; 8]) {
    (s.start, s.span_id)
}

fn trace_facts(spans: &[TSpan]) -> TraceFacts {
    let all: Vec<&TSpan> = spans.iter().collect();
    let part = Part::new(all);
    let n = spans.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        if let Some(p) = part.parent[i] {
            children[p].push(i);
        }
    }
    for c in &mut children {
        c.sort_by_key(|&i| order_key(&spans[i]));
    }
    let mut tops: Vec<usize> = (0..n).filter(|&i| part.parent[i].is_none()).collect();
    tops.sort_by_key(|&i| order_key(&spans[i]));
    let mut nested = vec![(0, 0, -1); n];
    let mut counter = 0;
    fn visit(i: usize, parent_left: i64, children: &[Vec<usize>], counter: &mut i64, out: &mut [(i64, i64, i64)]) {
        *counter += 1;
        out[i].0 = *counter;
        out[i].2 = parent_left;
        for &c in &children[i] {
            visit(c, out[i].0, children, counter, out);
        }
        *counter += 1;
        out[i].1 = *counter;
    }
    for t in tops {
        visit(t, -1, &children, &mut counter, &mut nested);
    }
    let root = spans.iter().filter(|s| s.parent.is_none()).min_by_key(|s| order_key(s));
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.start + s.duration).max().unwrap_or(0);
    TraceFacts {
        parent: part.parent.clone(),
        child_count: children.iter().map(|c| c.len() as i64).collect(),
        nested,
        root_name: root.map(|r| r.name.clone()).unwrap_or_default(),
        root_service: root.map(|r| r.service()).unwrap_or_default(),
        duration: end - start,
    }
}

/// What an element (event or link) of a span is, for element conditions.
enum Element<'a> {
    Event(&'a super::data::TEvent),
    Link(&'a super::data::TLink),
}

fn element_kind(f: &Field) -> Option<u8> {
    match f {
        Field::Attribute(Attribute { scope: AttributeScope::Event, .. })
        | Field::Intrinsic(Intrinsic::EventName | Intrinsic::EventTimeSinceStart) => Some(0),
        Field::Attribute(Attribute { scope: AttributeScope::Link, .. })
        | Field::Intrinsic(Intrinsic::LinkTraceId | Intrinsic::LinkSpanId) => Some(1),
        _ => None,
    }
}

fn only_elements(e: &FieldExpr) -> Option<u8> {
    let kinds: Vec<u8> = e.fields().into_iter().filter_map(element_kind).collect();
    let first = *kinds.first()?;
    kinds.iter().all(|k| *k == first).then_some(first)
}

fn reads_elements(e: &FieldExpr) -> bool {
    e.fields().into_iter().any(|f| element_kind(f).is_some())
}

/// Evaluates field expressions for one span.
struct Ctx<'a> {
    all: &'a [TSpan],
    span: &'a TSpan,
    facts: &'a TraceFacts,
    row: usize,
    element: Option<Element<'a>>,
}

impl Ctx<'_> {
    fn field(&self, f: &Field) -> RV {
        let s = self.span;
        if let Field::Attribute(a) = f {
            if a.parent {
                // The field on the parent span; nil without one.
                return match self.facts.parent[self.row] {
                    Some(p) => Ctx { all: self.all, span: &self.all[p], facts: self.facts, row: p, element: None }
                        .field(&a.on_span()),
                    None => RV::Nil,
                };
            }
        }
        match f {
            Field::Attribute(a) => match a.scope {
                AttributeScope::Span => lookup(&s.attrs, &a.name),
                AttributeScope::Resource => lookup(&s.resource, &a.name),
                AttributeScope::Unscoped => {
                    if s.attrs.iter().any(|(k, _)| *k == a.name) {
                        lookup(&s.attrs, &a.name)
                    } else {
                        lookup(&s.resource, &a.name)
                    }
                }
                AttributeScope::Instrumentation => lookup(&s.scope_attrs, &a.name),
                AttributeScope::Event => match &self.element {
                    Some(Element::Event(e)) => lookup(&e.attrs, &a.name),
                    _ => RV::Nil,
                },
                AttributeScope::Link => match &self.element {
                    Some(Element::Link(l)) => lookup(&l.attrs, &a.name),
                    _ => RV::Nil,
                },
            },
            Field::Intrinsic(i) => match i {
                Intrinsic::Duration => RV::Dur(s.duration),
                Intrinsic::Name => RV::Str(s.name.clone()),
                Intrinsic::Status => RV::Status(STATUSES[s.status as usize]),
                Intrinsic::StatusMessage => RV::Str(s.status_message.clone()),
                Intrinsic::Kind => RV::Kind(KINDS[s.kind as usize]),
                Intrinsic::TraceId => RV::Str(trace_hex(&s.trace_id)),
                Intrinsic::SpanId => RV::Str(hex::encode(s.span_id)),
                Intrinsic::ParentId => RV::Str(s.parent.map_or("0000000000000000".into(), hex::encode)),
                Intrinsic::InstrumentationName => RV::Str(s.scope_name.clone()),
                Intrinsic::InstrumentationVersion => RV::Str(s.scope_version.clone()),
                Intrinsic::ChildCount => RV::Int(self.facts.child_count[self.row]),
                Intrinsic::NestedSetLeft => RV::Int(self.facts.nested[self.row].0),
                Intrinsic::NestedSetRight => RV::Int(self.facts.nested[self.row].1),
                Intrinsic::NestedSetParent => RV::Int(self.facts.nested[self.row].2),
                Intrinsic::RootName => RV::Str(self.facts.root_name.clone()),
                Intrinsic::RootServiceName => RV::Str(self.facts.root_service.clone()),
                Intrinsic::TraceDuration => RV::Dur(self.facts.duration),
                Intrinsic::EventName => match &self.element {
                    Some(Element::Event(e)) => RV::Str(e.name.clone()),
                    _ => RV::Nil,
                },
                Intrinsic::EventTimeSinceStart => match &self.element {
                    Some(Element::Event(e)) => RV::Dur(e.time - s.start),
                    _ => RV::Nil,
                },
                Intrinsic::LinkTraceId => match &self.element {
                    Some(Element::Link(l)) => RV::Str(trace_hex(&l.trace_id)),
                    _ => RV::Nil,
                },
                Intrinsic::LinkSpanId => match &self.element {
                    Some(Element::Link(l)) => RV::Str(hex::encode(l.span_id)),
                    _ => RV::Nil,
                },
                // Compared with nil only: a root span has no parent id.
                Intrinsic::Parent => s.parent.map_or(RV::Nil, |p| RV::Str(hex::encode(p))),
            },
        }
    }

    fn value(&self, e: &FieldExpr) -> RV {
        match e {
            FieldExpr::Static(s) => match s {
                Static::Str(v) => RV::Str(v.clone()),
                Static::Int(v) => RV::Int(*v),
                Static::Float(v) => RV::Float(*v),
                Static::Bool(v) => RV::Bool(*v),
                Static::Duration(v) => RV::Dur(*v),
                Static::Status(v) => RV::Status(v.name()),
                Static::Kind(v) => RV::Kind(v.name()),
                Static::Nil => RV::Nil,
            },
            FieldExpr::Field(f) => self.field(f),
            FieldExpr::Unary { op, expr } => {
                if *op == UnaryOp::Not && self.element.is_none() && reads_elements(expr) {
                    return RV::Bool(!self.nested(expr));
                }
                let v = self.value(expr);
                match op {
                    UnaryOp::Exists => RV::Bool(v != RV::Nil),
                    UnaryOp::Missing => RV::Bool(v == RV::Nil),
                    UnaryOp::Not => RV::Bool(!v.truthy()),
                    UnaryOp::Neg => match v {
                        RV::Int(i) => RV::Int(0i64.wrapping_sub(i)),
                        RV::Dur(i) => RV::Dur(0i64.wrapping_sub(i)),
                        RV::Float(f) => RV::Float(0.0 - f),
                        _ => RV::Nil,
                    },
                }
            }
            FieldExpr::Binary { op, lhs, rhs } => {
                if matches!(op, BinaryOp::And | BinaryOp::Or) {
                    if self.element.is_none() && reads_elements(e) {
                        return RV::Bool(self.nested(e));
                    }
                    let (l, r) = (self.value(lhs).truthy(), self.value(rhs).truthy());
                    return RV::Bool(if *op == BinaryOp::And { l && r } else { l || r });
                }
                if let Some(b) = self.id_comparison(*op, lhs, rhs) {
                    return RV::Bool(b);
                }
                let (l, r) = (self.value(lhs), self.value(rhs));
                if op.is_arithmetic() {
                    arithmetic(*op, &l, &r)
                } else {
                    // Tempo 3.0: an array compares element by element with a literal.
                    // (`-1` is a literal too.)
                    let literal = |e: &FieldExpr| match e {
                        FieldExpr::Static(_) => true,
                        FieldExpr::Unary { op: UnaryOp::Neg, expr } => matches!(expr.as_ref(), FieldExpr::Static(_)),
                        _ => false,
                    };
                    match (&l, &r) {
                        (RV::Array(items), _) if literal(rhs) => RV::Bool(array_compare(*op, items, &r)),
                        (_, RV::Array(items)) if literal(lhs) => {
                            RV::Bool(op.swapped().is_some_and(|f| array_compare(f, items, &l)))
                        }
                        _ => RV::Bool(compare(*op, &l, &r)),
                    }
                }
            }
        }
    }

    fn id_comparison(&self, op: BinaryOp, lhs: &FieldExpr, rhs: &FieldExpr) -> Option<bool> {
        if self.element.is_some() || !matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            return None;
        }
        let (i, text) = match (lhs, rhs) {
            (FieldExpr::Field(Field::Intrinsic(i)), FieldExpr::Static(Static::Str(s)))
            | (FieldExpr::Static(Static::Str(s)), FieldExpr::Field(Field::Intrinsic(i))) => (*i, s),
            _ => return None,
        };
        let actual = match i {
            Intrinsic::TraceId => self.span.trace_id.to_vec(),
            Intrinsic::SpanId => self.span.span_id.to_vec(),
            Intrinsic::ParentId => self.span.parent.map_or(vec![0; 8], |p| p.to_vec()),
            _ => return None,
        };
        let lower = text.trim().to_ascii_lowercase();
        let digits = lower.trim_start_matches('0');
        let have = hex::encode(&actual);
        let same = digits.len() <= have.len()
            && digits.bytes().all(|b| b.is_ascii_hexdigit())
            && have.trim_start_matches('0') == digits;
        Some(if op == BinaryOp::Eq { same } else { !same })
    }

    /// A condition reading events or links (see `fields.rs`).
    fn nested(&self, e: &FieldExpr) -> bool {
        if !reads_elements(e) {
            return self.value(e).truthy();
        }
        match e {
            FieldExpr::Binary { op: op @ (BinaryOp::And | BinaryOp::Or), lhs, rhs } => {
                let same = matches!((only_elements(lhs), only_elements(rhs)), (Some(a), Some(b)) if a == b);
                if !same {
                    let (l, r) = (self.nested(lhs), self.nested(rhs));
                    return if *op == BinaryOp::And { l && r } else { l || r };
                }
            }
            FieldExpr::Unary { op: UnaryOp::Not, expr } => return !self.nested(expr),
            _ => {}
        }
        let kind = only_elements(e).expect("one element kind");
        let elements: Vec<Element> = if kind == 0 {
            self.span.events.iter().map(Element::Event).collect()
        } else {
            self.span.links.iter().map(Element::Link).collect()
        };
        elements.into_iter().any(|el| {
            let ctx = Ctx { all: self.all, span: self.span, facts: self.facts, row: self.row, element: Some(el) };
            ctx.value(e).truthy()
        })
    }

    fn condition(&self, e: &FieldExpr) -> bool {
        if reads_elements(e) {
            self.nested(e)
        } else {
            self.value(e).truthy()
        }
    }
}

/// `array op literal`: one element compares so; for `!=` / `!~`, the array has elements of the
/// literal's kind and none equals (matches) it.
fn array_compare(op: BinaryOp, items: &[RV], literal: &RV) -> bool {
    match op {
        BinaryOp::Ne => {
            let comparable =
                items.iter().any(|e| compare(BinaryOp::Eq, e, literal) || compare(BinaryOp::Ne, e, literal));
            comparable && !items.iter().any(|e| compare(BinaryOp::Eq, e, literal))
        }
        BinaryOp::NotRegex => {
            let strings = matches!(literal, RV::Str(_)) && items.iter().any(|e| matches!(e, RV::Str(_)));
            strings && !items.iter().any(|e| compare(BinaryOp::Regex, e, literal))
        }
        _ => items.iter().any(|e| compare(op, e, literal)),
    }
}

fn compare(op: BinaryOp, l: &RV, r: &RV) -> bool {
    use std::cmp::Ordering;
    let ord = |o: Ordering| match op {
        BinaryOp::Eq => o == Ordering::Equal,
        BinaryOp::Ne => o != Ordering::Equal,
        BinaryOp::Lt => o == Ordering::Less,
        BinaryOp::Le => o != Ordering::Greater,
        BinaryOp::Gt => o == Ordering::Greater,
        BinaryOp::Ge => o != Ordering::Less,
        _ => false,
    };
    match (l, r) {
        (RV::Str(a), RV::Str(b)) => match op {
            BinaryOp::Regex | BinaryOp::NotRegex => {
                let re = regex::Regex::new(&format!("^(?s:{b})$")).expect("validated regex");
                re.is_match(a) == (op == BinaryOp::Regex)
            }
            _ => ord(a.as_bytes().cmp(b.as_bytes())),
        },
        (RV::Bool(a), RV::Bool(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Ne) => ord(a.cmp(b)),
        (RV::Status(a), RV::Status(b)) | (RV::Kind(a), RV::Kind(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Ne) => {
            ord(a.cmp(b))
        }
        _ if matches!(op, BinaryOp::Regex | BinaryOp::NotRegex) => false,
        _ => match (l.int_like(), r.int_like(), l.number(), r.number()) {
            (Some(a), Some(b), _, _) => ord(a.cmp(&b)),
            (_, _, Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(ord),
            _ => false,
        },
    }
}

fn arithmetic(op: BinaryOp, l: &RV, r: &RV) -> RV {
    if let (RV::Int(a), RV::Int(b)) = (l, r) {
        return match op {
            BinaryOp::Add => RV::Int(a.wrapping_add(*b)),
            BinaryOp::Sub => RV::Int(a.wrapping_sub(*b)),
            BinaryOp::Mul => RV::Int(a.wrapping_mul(*b)),
            BinaryOp::Div if *b == 0 => RV::Nil,
            BinaryOp::Mod if *b == 0 => RV::Nil,
            BinaryOp::Div => RV::Int(a.wrapping_div(*b)),
            BinaryOp::Mod => RV::Int(a.wrapping_rem(*b)),
            _ => RV::Float((*a as f64).powf(*b as f64)),
        };
    }
    let (Some(a), Some(b)) = (l.number(), r.number()) else {
        return RV::Nil;
    };
    RV::Float(match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Mod => a % b,
        _ => a.powf(b),
    })
}

/// A spanset of a result.
#[derive(Debug, Clone)]
pub struct RefSpanset {
    pub spans: Vec<usize>,
    pub attributes: Vec<(String, RV, &'static str)>,
}

/// The evaluation of a query over one trace.
#[derive(Debug)]
pub struct RefTrace {
    pub spansets: Vec<RefSpanset>,
    pub selected: Vec<Field>,
}

/// A query error the engine must also report.
#[derive(Debug)]
pub struct RefError(pub String);

struct Eval<'a> {
    spans: &'a [TSpan],
    facts: TraceFacts,
    selected: Vec<Field>,
}

type Groups = Vec<Vec<String>>;

impl<'a> Eval<'a> {
    fn ctx(&self, i: usize) -> Ctx<'_> {
        Ctx { all: self.spans, span: &self.spans[i], facts: &self.facts, row: i, element: None }
    }

    fn partitions(&self, groups: &Groups) -> BTreeMap<Vec<String>, Vec<usize>> {
        let mut p: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            p.entry(g.clone()).or_default().push(i);
        }
        p
    }

    fn spanset(&mut self, e: &SpansetExpr, input: &[bool], groups: &Groups) -> Result<Vec<bool>, RefError> {
        let n = self.spans.len();
        Ok(match e {
            SpansetExpr::Filter(f) => (0..n).map(|i| input[i] && self.ctx(i).condition(f)).collect(),
            SpansetExpr::Pipeline(stages) => self.pipeline(stages, input, groups, None)?.0,
            SpansetExpr::Op { op, lhs, rhs } => {
                if op.relation().is_some() && (opens_groups(lhs) || opens_groups(rhs)) {
                    return Err(RefError("structural operator over several spansets".into()));
                }
                let l = self.spanset(lhs, input, groups)?;
                let r = self.spanset(rhs, input, groups)?;
                let mut out = vec![false; n];
                for rows in self.partitions(groups).values() {
                    let spans: Vec<&TSpan> = rows.iter().map(|&i| &self.spans[i]).collect();
                    let part = Part::new(spans);
                    let lm: Vec<bool> = rows.iter().map(|&i| l[i]).collect();
                    let rm: Vec<bool> = rows.iter().map(|&i| r[i]).collect();
                    for (k, &i) in rows.iter().enumerate() {
                        out[i] = match (op.relation(), op.mode()) {
                            (None, _) if *op == SpansetOp::And => {
                                (l[i] || r[i]) && lm.iter().any(|x| *x) && rm.iter().any(|x| *x)
                            }
                            (None, _) => l[i] || r[i],
                            (Some(rel), Some(RelationMode::Match)) => r[i] && part.related(rel, &lm, k),
                            (Some(rel), Some(RelationMode::Negated)) => r[i] && !part.related(rel, &lm, k),
                            (Some(rel), _) => {
                                (r[i] && part.related(rel, &lm, k)) || (l[i] && part.related(inverse(rel), &rm, k))
                            }
                        };
                    }
                }
                out
            }
        })
    }

    #[allow(clippy::type_complexity)]
    fn pipeline(
        &mut self,
        stages: &[Stage],
        input: &[bool],
        outer: &Groups,
        mut attributes: Option<&mut Vec<(String, Vec<RV>, &'static str)>>,
    ) -> Result<(Vec<bool>, Groups), RefError> {
        let n = self.spans.len();
        let mut mask = input.to_vec();
        let mut groups = outer.clone();
        for stage in stages {
            match stage {
                Stage::Spanset(s) => mask = self.spanset(s, &mask, &groups)?,
                Stage::By(e) => {
                    let values: Vec<RV> = (0..n).map(|i| self.ctx(i).value(e)).collect();
                    for (i, v) in values.iter().enumerate() {
                        groups[i].push(v.key());
                    }
                    if let Some(a) = attributes.as_deref_mut() {
                        a.push((format!("by({})", by_name(e)), values, "value"));
                    }
                }
                Stage::Coalesce => {
                    groups = outer.clone();
                    if let Some(a) = attributes.as_deref_mut() {
                        a.clear();
                    }
                }
                Stage::Select(fields) => self.selected.extend(fields.iter().cloned()),
                Stage::ScalarFilter(f) => {
                    let parts = self.partitions(&groups);
                    let mut found: Vec<(Aggregate, Vec<RV>)> = Vec::new();
                    let mut keep = vec![false; n];
                    for rows in parts.values() {
                        let mut aggs = Vec::new();
                        let l = self.scalar(&f.lhs, &mask, rows, &mut aggs);
                        let r = self.scalar(&f.rhs, &mask, rows, &mut aggs);
                        let pass = match (l, r) {
                            (Some(a), Some(b)) => match f.op {
                                BinaryOp::Eq => a == b,
                                BinaryOp::Ne => a != b,
                                BinaryOp::Lt => a < b,
                                BinaryOp::Le => a <= b,
                                BinaryOp::Gt => a > b,
                                _ => a >= b,
                            },
                            _ => false,
                        };
                        for &i in rows {
                            keep[i] = mask[i] && pass;
                        }
                        for (k, (agg, v)) in aggs.into_iter().enumerate() {
                            if found.len() <= k {
                                found.push((agg.clone(), vec![RV::Nil; n]));
                            }
                            for &i in rows {
                                found[k].1[i] = v.map_or(RV::Nil, RV::Float);
                            }
                        }
                    }
                    mask = keep;
                    if let Some(a) = attributes.as_deref_mut() {
                        for (agg, values) in found {
                            let ty = match (agg.func, agg.expr.as_ref().map(FieldExpr::value_type)) {
                                (AggregateFn::Count, _) => "int",
                                (_, Some(ValueType::Duration)) => "duration",
                                (AggregateFn::Avg, _) => "float",
                                (_, Some(ValueType::Int)) => "int",
                                _ => "float",
                            };
                            let key = agg.to_string();
                            a.retain(|(k, _, _)| *k != key);
                            a.push((key, values, ty));
                        }
                    }
                }
            }
        }
        Ok((mask, groups))
    }

    fn scalar(
        &self,
        s: &ScalarExpr,
        mask: &[bool],
        rows: &[usize],
        aggs: &mut Vec<(Aggregate, Option<f64>)>,
    ) -> Option<f64> {
        match s {
            ScalarExpr::Static(v) => match v {
                Static::Int(i) | Static::Duration(i) => Some(*i as f64),
                Static::Float(f) => Some(*f),
                _ => None,
            },
            ScalarExpr::Op { op, lhs, rhs } => {
                let l = self.scalar(lhs, mask, rows, aggs);
                let r = self.scalar(rhs, mask, rows, aggs);
                let (a, b) = (l?, r?);
                Some(match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Mod => a % b,
                    _ => a.powf(b),
                })
            }
            ScalarExpr::Pipeline { .. } => None,
            ScalarExpr::Aggregate(a) => {
                let selected: Vec<usize> = rows.iter().copied().filter(|&i| mask[i]).collect();
                let v = match (&a.func, &a.expr) {
                    (AggregateFn::Count, _) => Some(selected.len() as f64),
                    (func, Some(e)) => {
                        let nums: Vec<f64> = selected.iter().filter_map(|&i| self.ctx(i).value(e).number()).collect();
                        if nums.is_empty() {
                            None
                        } else {
                            Some(match func {
                                AggregateFn::Sum => nums.iter().sum(),
                                AggregateFn::Avg => nums.iter().sum::<f64>() / nums.len() as f64,
                                AggregateFn::Min => nums.iter().cloned().fold(f64::INFINITY, f64::min),
                                _ => nums.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                            })
                        }
                    }
                    (_, None) => None,
                };
                aggs.push((a.clone(), v));
                v
            }
        }
    }
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

fn by_name(e: &FieldExpr) -> String {
    let s = e.to_string();
    match e {
        FieldExpr::Binary { .. } if s.starts_with('(') && s.ends_with(')') => s[1..s.len() - 1].to_string(),
        _ => s,
    }
}

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

/// Evaluates `expr` over one trace: its result spansets (rows of `spans`).
pub fn evaluate(spans: &[TSpan], expr: &SpansetExpr, range: Option<(i64, i64)>) -> Result<RefTrace, RefError> {
    let mut eval = Eval { spans, facts: trace_facts(spans), selected: Vec::new() };
    let input: Vec<bool> = spans.iter().map(|s| range.is_none_or(|(a, b)| s.start >= a && s.start <= b)).collect();
    let groups: Groups = vec![Vec::new(); spans.len()];
    let mut attrs = Vec::new();
    let (mask, groups) = match expr {
        SpansetExpr::Pipeline(stages) => eval.pipeline(stages, &input, &groups, Some(&mut attrs))?,
        other => (eval.spanset(other, &input, &groups)?, groups),
    };
    let mut sets: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for (i, m) in mask.iter().enumerate() {
        if *m {
            sets.entry(groups[i].clone()).or_default().push(i);
        }
    }
    let spansets = sets
        .into_values()
        .map(|rows| {
            let first = rows[0];
            let attributes = attrs.iter().map(|(k, values, ty)| (k.clone(), values[first].clone(), *ty)).collect();
            RefSpanset { spans: rows, attributes }
        })
        .collect();
    Ok(RefTrace { spansets, selected: eval.selected })
}

/// The facts a search shows about a trace.
pub struct RefSummary {
    pub root_name: Option<String>,
    pub root_service: Option<String>,
    pub start: i64,
    pub duration: i64,
    pub stats: BTreeMap<String, (u64, u64)>,
}

/// Summary of a trace as search shows it.
pub fn summary(spans: &[TSpan]) -> RefSummary {
    let root = spans.iter().filter(|s| s.parent.is_none()).min_by_key(|s| order_key(s));
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.start + s.duration).max().unwrap_or(0);
    let mut stats: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in spans {
        let e = stats.entry(s.service()).or_default();
        e.0 += 1;
        if s.status == 2 {
            e.1 += 1;
        }
    }
    RefSummary {
        root_name: root.map(|r| r.name.clone()),
        root_service: root.map(|r| r.service()),
        start,
        duration: end - start,
        stats,
    }
}

/// The value of `field` on span `row` of a trace (for the attributes search shows).
pub fn field_value(spans: &[TSpan], row: usize, field: &Field) -> RV {
    let facts = trace_facts(spans);
    Ctx { all: spans, span: &spans[row], facts: &facts, row, element: None }.field(field)
}

/// Traces grouped by id.
pub fn by_trace(traces: &[Vec<TSpan>]) -> HashMap<[u8; 16], &Vec<TSpan>> {
    traces.iter().map(|t| (t[0].trace_id, t)).collect()
}
