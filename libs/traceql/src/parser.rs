//! Recursive-descent (precedence climbing) parser with Tempo's grammar and precedences.
//!
//! Precedence, lowest first, as in Tempo: `|`; `&& ||` (one level, left to right); comparisons
//! and structural operators; `+ -`; prefix `!`; `* / %`; `^` (right to left). Prefix `-` binds
//! like `+ -`. Outside braces the same operators combine spansets (`&&`, `>>`, ...) and
//! scalars (`count() > 2`, `avg(duration) * 2`); which meaning applies follows from the operands.

use crate::ast::*;
use crate::lexer::{lex, Tok};
use crate::ParseError;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest nesting accepted (parentheses, prefix operators, `^` chains and pipelines inside
/// parentheses all count).
pub const MAX_NESTING: usize = 64;
/// Most operators (binary, unary and spanset operators, pipeline stages) one query may hold.
pub const MAX_OPERATORS: usize = 256;

/// Parses a TraceQL query (syntax only: [`Query::validate`] checks types and support). Queries
/// longer than [`MAX_QUERY_BYTES`], nested deeper than [`MAX_NESTING`] or with more than
/// [`MAX_OPERATORS`] operators are refused, so no input can exhaust the stack of the code that
/// walks the tree.
pub fn parse(input: &str) -> Result<Query, ParseError> {
    if input.len() > MAX_QUERY_BYTES {
        return Err(ParseError {
            pos: MAX_QUERY_BYTES,
            line: 1,
            column: 1,
            message: format!("the query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted", input.len()),
        });
    }
    let tokens = lex(input)?;
    let mut p = Parser { input, tokens, pos: 0, depth: 0, operators: 0 };
    p.root()
}

/// What a part of a pipeline turned out to be, before it is placed in the tree.
enum Node {
    Spanset(SpansetExpr),
    /// Aggregates, numbers and arithmetic over them.
    Scalar(ScalarExpr),
    /// `({ ... } | count())` and arithmetic over such.
    ScalarPipeline(ScalarExpr),
    /// A comparison of scalars: a pipeline stage.
    ScalarFilter(ScalarFilter),
    /// A comparison of scalar pipelines: only a whole query.
    PipelineFilter(ScalarFilter),
    /// `by(...)`, `select(...)`, `coalesce()`.
    Stage(Stage),
}

const LOGIC: u8 = 1;
const COMPARE: u8 = 2;
const ADDITIVE: u8 = 3;
const NOT: u8 = 4;
const MULTIPLICATIVE: u8 = 5;
const POWER: u8 = 6;

/// Precedence of a binary operator token, and whether it groups right to left.
fn level(tok: &Tok) -> Option<(u8, bool)> {
    Some(match tok {
        Tok::And | Tok::Or => (LOGIC, false),
        Tok::Eq
        | Tok::Ne
        | Tok::Lt
        | Tok::Le
        | Tok::Gt
        | Tok::Ge
        | Tok::Re
        | Tok::Nre
        | Tok::Desc
        | Tok::Ance
        | Tok::Sibl
        | Tok::NotChild
        | Tok::NotParent
        | Tok::NotDesc
        | Tok::NotAnce
        | Tok::UnionChild
        | Tok::UnionParent
        | Tok::UnionDesc
        | Tok::UnionAnce
        | Tok::UnionSibl => (COMPARE, false),
        Tok::Add | Tok::Sub => (ADDITIVE, false),
        Tok::Mul | Tok::Div | Tok::Mod => (MULTIPLICATIVE, false),
        Tok::Pow => (POWER, true),
        _ => return None,
    })
}

fn binary_op(tok: &Tok) -> Option<BinaryOp> {
    Some(match tok {
        Tok::Add => BinaryOp::Add,
        Tok::Sub => BinaryOp::Sub,
        Tok::Mul => BinaryOp::Mul,
        Tok::Div => BinaryOp::Div,
        Tok::Mod => BinaryOp::Mod,
        Tok::Pow => BinaryOp::Pow,
        Tok::Eq => BinaryOp::Eq,
        Tok::Ne => BinaryOp::Ne,
        Tok::Lt => BinaryOp::Lt,
        Tok::Le => BinaryOp::Le,
        Tok::Gt => BinaryOp::Gt,
        Tok::Ge => BinaryOp::Ge,
        Tok::Re => BinaryOp::Regex,
        Tok::Nre => BinaryOp::NotRegex,
        Tok::And => BinaryOp::And,
        Tok::Or => BinaryOp::Or,
        _ => return None,
    })
}

fn spanset_op(tok: &Tok) -> Option<SpansetOp> {
    Some(match tok {
        Tok::And => SpansetOp::And,
        Tok::Or => SpansetOp::Or,
        Tok::Gt => SpansetOp::Child,
        Tok::Lt => SpansetOp::Parent,
        Tok::Desc => SpansetOp::Descendant,
        Tok::Ance => SpansetOp::Ancestor,
        Tok::Sibl => SpansetOp::Sibling,
        Tok::NotChild => SpansetOp::NotChild,
        Tok::NotParent => SpansetOp::NotParent,
        Tok::NotDesc => SpansetOp::NotDescendant,
        Tok::NotAnce => SpansetOp::NotAncestor,
        Tok::Nre => SpansetOp::NotSibling,
        Tok::UnionChild => SpansetOp::UnionChild,
        Tok::UnionParent => SpansetOp::UnionParent,
        Tok::UnionDesc => SpansetOp::UnionDescendant,
        Tok::UnionAnce => SpansetOp::UnionAncestor,
        Tok::UnionSibl => SpansetOp::UnionSibling,
        _ => return None,
    })
}

const METRICS_FUNCTIONS: [&str; 9] = [
    "rate",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "quantile_over_time",
    "histogram_over_time",
    "compare",
];

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    operators: usize,
}

type Res<T> = Result<T, ParseError>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn peek_is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }

    fn here(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.input.len(), |(p, _)| *p)
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.input, pos, message)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.here(), message)
    }

    /// "unexpected X" for the current token, with what was expected.
    fn unexpected(&self, expected: &str) -> ParseError {
        match self.peek() {
            Some(t) => self.error(format!("unexpected {}, expected {expected}", t.describe())),
            None => self.error(format!("unexpected end of query, expected {expected}")),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Res<()> {
        if self.eat(&tok) {
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn enter(&mut self) -> Res<()> {
        // Up to MAX_NESTING parentheses, plus the levels every query has (pipeline, element,
        // `{ }` body) and the right-hand sides of the operators inside the innermost ones.
        if self.depth >= MAX_NESTING + 6 {
            return Err(self.error(format!("the query is nested more than {MAX_NESTING} levels deep")));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn count_operator(&mut self) -> Res<()> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(self.error(format!("the query has more than {MAX_OPERATORS} operators")));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- the whole query

    fn root(&mut self) -> Res<Query> {
        if self.tokens.is_empty() {
            return Err(self.error("the query is empty; {} matches every span"));
        }
        let start = self.here();
        let (node, metrics) = self.pipeline(false)?;
        let mut hints = Vec::new();
        while self.peek_is_word("with") {
            self.pos += 1;
            hints.extend(self.hints()?);
        }
        if self.peek().is_some() {
            return Err(self.unexpected("'|', an operator or the end of the query"));
        }
        let spans = match node {
            Node::Spanset(s) => s,
            Node::ScalarFilter(f) | Node::PipelineFilter(f) => SpansetExpr::Pipeline(vec![Stage::ScalarFilter(f)]),
            Node::Stage(Stage::Coalesce) => return Err(self.error_at(start, "a pipeline cannot start with coalesce()")),
            Node::Stage(s) => SpansetExpr::Pipeline(vec![s]),
            Node::Scalar(_) | Node::ScalarPipeline(_) => {
                return Err(self.error_at(
                    start,
                    "an aggregate must be compared with something, e.g. { } | count() > 2 or avg(duration) > 1s",
                ))
            }
        };
        Ok(Query { spans, metrics, hints })
    }

    /// Elements separated by `|`; at the top level the last one may be a metrics function.
    fn pipeline(&mut self, in_parens: bool) -> Res<(Node, Option<MetricsQuery>)> {
        self.enter()?;
        let mut elements = vec![(self.here(), self.node(0)?)];
        let mut metrics = None;
        while self.eat(&Tok::Pipe) {
            if let Some(Tok::Ident(w)) = self.peek() {
                if METRICS_FUNCTIONS.contains(&w.as_str()) {
                    if in_parens {
                        return Err(self.error(format!("{w}() cannot be used inside parentheses")));
                    }
                    metrics = Some(self.metrics()?);
                    break;
                }
            }
            self.count_operator()?;
            elements.push((self.here(), self.node(0)?));
        }
        self.leave();
        if elements.len() == 1 {
            let (_, node) = elements.pop().expect("one element");
            return Ok((node, metrics));
        }
        let last = elements.len() - 1;
        let mut stages = Vec::with_capacity(elements.len());
        for (i, (at, node)) in elements.into_iter().enumerate() {
            stages.push(match node {
                Node::Spanset(s) => Stage::Spanset(s),
                Node::ScalarFilter(f) => Stage::ScalarFilter(f),
                Node::Stage(Stage::Coalesce) if i == 0 => {
                    return Err(self.error_at(at, "a pipeline cannot start with coalesce()"))
                }
                Node::Stage(s) => s,
                Node::Scalar(ScalarExpr::Aggregate(aggregate)) if i == last && in_parens => {
                    return Ok((Node::ScalarPipeline(ScalarExpr::Pipeline { stages, aggregate }), None));
                }
                Node::Scalar(_) => {
                    return Err(self.error_at(
                        at,
                        "an aggregate in a pipeline must be compared with something, e.g. | count() > 2",
                    ))
                }
                Node::ScalarPipeline(_) | Node::PipelineFilter(_) => {
                    return Err(self.error_at(at, "a comparison of pipelines cannot be a pipeline stage"))
                }
            });
        }
        Ok((Node::Spanset(SpansetExpr::Pipeline(stages)), metrics))
    }

    /// One pipeline element: spansets, scalars and stages combined by operators.
    fn node(&mut self, min: u8) -> Res<Node> {
        self.enter()?;
        let mut lhs = self.node_operand()?;
        while let Some((lvl, right)) = self.peek().and_then(level) {
            if lvl < min {
                break;
            }
            let at = self.here();
            let tok = self.next().expect("peeked");
            self.count_operator()?;
            let rhs = self.node(if right { lvl } else { lvl + 1 })?;
            lhs = self.combine(at, &tok, lhs, rhs)?;
        }
        self.leave();
        Ok(lhs)
    }

    fn combine(&self, at: usize, tok: &Tok, lhs: Node, rhs: Node) -> Res<Node> {
        let err = |m: &str| Err(self.error_at(at, m));
        let is_spanset = |n: &Node| matches!(n, Node::Spanset(_));
        if is_spanset(&lhs) || is_spanset(&rhs) {
            let (Node::Spanset(l), Node::Spanset(r)) = (lhs, rhs) else {
                return err("spansets ({ ... }) can only be combined with other spansets");
            };
            let Some(op) = spanset_op(tok) else {
                return err("spansets are combined with && || > < >> << ~ and their negated (!>) and union (&>) forms");
            };
            return Ok(Node::Spanset(SpansetExpr::Op { op, lhs: Box::new(l), rhs: Box::new(r) }));
        }
        let Some(op) = binary_op(tok).filter(|op| op.is_arithmetic() || op.is_comparison()) else {
            return err(match tok {
                Tok::And | Tok::Or => {
                    "&& and || combine spansets; a scalar filter is a pipeline stage of its own: { ... } | count() > 2"
                }
                _ => "this operator combines spansets, not numbers",
            });
        };
        match (lhs, rhs) {
            (Node::Scalar(l), Node::Scalar(r)) if op.is_comparison() => {
                Ok(Node::ScalarFilter(ScalarFilter { op, lhs: l, rhs: r }))
            }
            (Node::Scalar(l), Node::Scalar(r)) => {
                Ok(Node::Scalar(ScalarExpr::Op { op, lhs: Box::new(l), rhs: Box::new(r) }))
            }
            (Node::ScalarPipeline(l), Node::ScalarPipeline(r)) if op.is_comparison() => {
                Ok(Node::PipelineFilter(ScalarFilter { op, lhs: l, rhs: r }))
            }
            (Node::ScalarPipeline(l), Node::Scalar(r @ ScalarExpr::Static(_))) if op.is_comparison() => {
                Ok(Node::PipelineFilter(ScalarFilter { op, lhs: l, rhs: r }))
            }
            (Node::ScalarPipeline(l), Node::ScalarPipeline(r)) => {
                Ok(Node::ScalarPipeline(ScalarExpr::Op { op, lhs: Box::new(l), rhs: Box::new(r) }))
            }
            (Node::Scalar(_), Node::ScalarPipeline(_)) => {
                err("a pipeline's aggregate must come first and a single number last, e.g. ({ } | count()) > 2")
            }
            (Node::ScalarPipeline(_), _) => err("a pipeline's aggregate can only be compared with a single number"),
            _ => err("a comparison of aggregates is a pipeline stage of its own and cannot be combined further"),
        }
    }

    fn node_operand(&mut self) -> Res<Node> {
        let at = self.here();
        match self.next() {
            Some(Tok::LBrace) => Ok(Node::Spanset(SpansetExpr::Filter(self.spanset_filter_body()?))),
            Some(Tok::LParen) => {
                let (node, _) = self.pipeline(true)?;
                self.expect(Tok::RParen, "')'")?;
                Ok(node)
            }
            Some(Tok::Int(i)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Int(i)))),
            Some(Tok::Float(f)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Float(f)))),
            Some(Tok::Duration(d)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Duration(d)))),
            Some(Tok::Sub) => match self.next() {
                Some(Tok::Int(i)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Int(-i)))),
                Some(Tok::Float(f)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Float(-f)))),
                Some(Tok::Duration(d)) => Ok(Node::Scalar(ScalarExpr::Static(Static::Duration(-d)))),
                _ => Err(self.error_at(at, "'-' outside { } can only make a negative number")),
            },
            Some(Tok::Ident(word)) => self.word_operand(at, &word),
            Some(Tok::Attribute(a)) => {
                Err(self.error_at(at, format!("conditions on {a} go inside a spanset filter: {{ {a} = ... }}")))
            }
            Some(Tok::Str(_)) => Err(self.error_at(at, "a string outside { } has no meaning here")),
            _ => {
                self.pos = at_index(&self.tokens, at);
                Err(self.unexpected("a spanset { ... }, an aggregate such as count(), or a pipeline stage"))
            }
        }
    }

    fn word_operand(&mut self, at: usize, word: &str) -> Res<Node> {
        if let Some(func) = AggregateFn::from_name(word) {
            self.expect(Tok::LParen, &format!("'(' after {word}: {word}()"))?;
            if func == AggregateFn::Count {
                self.expect(Tok::RParen, "')': count() takes no argument")?;
                return Ok(Node::Scalar(ScalarExpr::Aggregate(Aggregate { func, expr: None })));
            }
            if self.peek() == Some(&Tok::RParen) {
                return Err(self.error(format!("{word}() needs a value to aggregate, e.g. {word}(duration)")));
            }
            let expr = self.field_expr(0)?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(Node::Scalar(ScalarExpr::Aggregate(Aggregate { func, expr: Some(expr) })));
        }
        match word {
            "by" => {
                self.expect(Tok::LParen, "'(' after by")?;
                if self.peek() == Some(&Tok::RParen) {
                    return Err(self.error("by() needs a value to group by, e.g. by(resource.service.name)"));
                }
                let expr = self.field_expr(0)?;
                self.expect(Tok::RParen, "')'")?;
                Ok(Node::Stage(Stage::By(expr)))
            }
            "coalesce" => {
                self.expect(Tok::LParen, "'(' after coalesce")?;
                self.expect(Tok::RParen, "')': coalesce() takes no argument")?;
                Ok(Node::Stage(Stage::Coalesce))
            }
            "select" => {
                self.expect(Tok::LParen, "'(' after select")?;
                let fields = self.field_list()?;
                self.expect(Tok::RParen, "')' or ','")?;
                Ok(Node::Stage(Stage::Select(fields)))
            }
            "topk" | "bottomk" => Err(self.error_at(at, format!("{word}() must follow a metrics function: {{ }} | rate() | {word}(5)"))),
            w if METRICS_FUNCTIONS.contains(&w) => {
                Err(self.error_at(at, format!("{w}() must follow a spanset: {{ ... }} | {w}(...)")))
            }
            _ => Err(self.error_at(
                at,
                format!("unexpected '{word}', expected a spanset {{ ... }}, an aggregate such as count(), or a pipeline stage"),
            )),
        }
    }

    /// `{ expr }` after the opening brace.
    fn spanset_filter_body(&mut self) -> Res<FieldExpr> {
        if self.eat(&Tok::RBrace) {
            return Ok(FieldExpr::Static(Static::Bool(true)));
        }
        let e = self.field_expr(0)?;
        self.expect(Tok::RBrace, "'}' or an operator")?;
        Ok(e)
    }

    // ---------------------------------------------------------------- field expressions

    fn field_expr(&mut self, min: u8) -> Res<FieldExpr> {
        self.enter()?;
        let mut lhs = self.field_operand()?;
        while let Some(tok) = self.peek() {
            let Some((lvl, right)) = level(tok) else {
                break;
            };
            if lvl < min {
                break;
            }
            let at = self.here();
            let tok = tok.clone();
            let Some(op) = binary_op(&tok) else {
                return Err(
                    self.error_at(at, format!("{} combines spansets and cannot be used inside {{ }}", tok.describe()))
                );
            };
            self.pos += 1;
            self.count_operator()?;
            if op == BinaryOp::Ne && self.peek_is_word("nil") {
                self.pos += 1;
                lhs = FieldExpr::Unary { op: UnaryOp::Exists, expr: Box::new(lhs) };
                continue;
            }
            if op == BinaryOp::Eq && self.peek_is_word("nil") {
                // `x = nil`: the value is missing (Tempo 3.0).
                self.pos += 1;
                lhs = FieldExpr::Unary { op: UnaryOp::Missing, expr: Box::new(lhs) };
                continue;
            }
            if self.peek_is_word("nil") {
                return Err(self.error("nil can only be compared with = or !=: { span.foo != nil } (the value exists)"));
            }
            let rhs = self.field_expr(if right { lvl } else { lvl + 1 })?;
            lhs = FieldExpr::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) };
        }
        self.leave();
        Ok(lhs)
    }

    fn field_operand(&mut self) -> Res<FieldExpr> {
        let at = self.here();
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.field_expr(0)?;
                self.expect(Tok::RParen, "')' or an operator")?;
                Ok(e)
            }
            Some(Tok::Sub) => {
                self.count_operator()?;
                let e = self.field_expr(ADDITIVE + 1)?;
                Ok(FieldExpr::Unary { op: UnaryOp::Neg, expr: Box::new(e) })
            }
            Some(Tok::Not) => {
                self.count_operator()?;
                let e = self.field_expr(NOT + 1)?;
                Ok(FieldExpr::Unary { op: UnaryOp::Not, expr: Box::new(e) })
            }
            Some(Tok::Str(s)) => Ok(FieldExpr::Static(Static::Str(s))),
            Some(Tok::Int(i)) => Ok(FieldExpr::Static(Static::Int(i))),
            Some(Tok::Float(f)) => Ok(FieldExpr::Static(Static::Float(f))),
            Some(Tok::Duration(d)) => Ok(FieldExpr::Static(Static::Duration(d))),
            Some(Tok::Attribute(a)) => Ok(FieldExpr::Field(Field::Attribute(a))),
            Some(Tok::Colon(scope)) => Ok(FieldExpr::Field(Field::Intrinsic(self.scoped_intrinsic(at, &scope)?))),
            Some(Tok::Ident(word)) => {
                if let Some(s) = static_word(&word) {
                    return Ok(FieldExpr::Static(s));
                }
                if word == "nil" {
                    return self.nil_comparison(at);
                }
                if let Some(i) = Intrinsic::unscoped(&word) {
                    return Ok(FieldExpr::Field(Field::Intrinsic(i)));
                }
                Err(self.error_at(
                    at,
                    format!(
                        "unknown identifier '{word}': attributes need a scope (.{word}, span.{word}, resource.{word}), strings need quotes"
                    ),
                ))
            }
            Some(_) => {
                self.pos -= 1;
                Err(self.unexpected("a value, an attribute or an intrinsic"))
            }
            None => Err(self.unexpected("a value, an attribute or an intrinsic")),
        }
    }

    /// `nil != x`, `nil != nil`, `nil = nil` (after `nil`).
    fn nil_comparison(&mut self, at: usize) -> Res<FieldExpr> {
        let ne = match self.peek() {
            Some(Tok::Ne) => true,
            Some(Tok::Eq) => false,
            _ => return Err(self.error_at(at, "nil can only be compared: { span.foo != nil }")),
        };
        self.pos += 1;
        self.count_operator()?;
        if self.peek_is_word("nil") {
            self.pos += 1;
            return Ok(FieldExpr::Static(Static::Bool(false)));
        }
        if !ne {
            let e = self.field_expr(COMPARE + 1)?;
            return Ok(FieldExpr::Unary { op: UnaryOp::Missing, expr: Box::new(e) });
        }
        let e = self.field_expr(COMPARE + 1)?;
        Ok(FieldExpr::Unary { op: UnaryOp::Exists, expr: Box::new(e) })
    }

    fn scoped_intrinsic(&mut self, at: usize, scope: &str) -> Res<Intrinsic> {
        let name = match self.next() {
            Some(Tok::Ident(name)) => name,
            _ => return Err(self.error_at(at, format!("expected an intrinsic after '{scope}:'"))),
        };
        Intrinsic::scoped(scope, &name).ok_or_else(|| {
            let known: Vec<&str> = Intrinsic::ALL
                .iter()
                .map(|i| i.name())
                .chain([
                    "span:duration",
                    "span:name",
                    "span:kind",
                    "span:status",
                    "span:statusMessage",
                    "span:childCount",
                    "trace:duration",
                    "trace:rootName",
                    "trace:rootService",
                ])
                .filter(|n| n.starts_with(&format!("{scope}:")))
                .collect();
            self.error_at(at, format!("unknown intrinsic {scope}:{name}; {scope}: has {}", known.join(", ")))
        })
    }

    /// One attribute or intrinsic (in `select`, `by (...)` of metrics, metrics functions).
    fn field(&mut self) -> Res<Field> {
        let at = self.here();
        match self.next() {
            Some(Tok::Attribute(a)) => Ok(Field::Attribute(a)),
            Some(Tok::Colon(scope)) => Ok(Field::Intrinsic(self.scoped_intrinsic(at, &scope)?)),
            Some(Tok::Ident(w)) if Intrinsic::unscoped(&w).is_some() => {
                Ok(Field::Intrinsic(Intrinsic::unscoped(&w).expect("checked")))
            }
            _ => {
                self.pos = at_index(&self.tokens, at);
                Err(self.unexpected("an attribute (span.x, resource.x, .x) or an intrinsic (name, duration, ...)"))
            }
        }
    }

    fn field_list(&mut self) -> Res<Vec<Field>> {
        let mut fields = vec![self.field()?];
        while self.eat(&Tok::Comma) {
            fields.push(self.field()?);
        }
        Ok(fields)
    }

    // ---------------------------------------------------------------- metrics and hints

    fn metrics(&mut self) -> Res<MetricsQuery> {
        let at = self.here();
        let Some(Tok::Ident(name)) = self.next() else {
            return Err(self.error_at(at, "expected a metrics function"));
        };
        self.expect(Tok::LParen, &format!("'(' after {name}"))?;
        let function = match name.as_str() {
            "rate" | "count_over_time" => {
                self.expect(Tok::RParen, &format!("')': {name}() takes no argument"))?;
                if name == "rate" {
                    MetricsFunction::Rate
                } else {
                    MetricsFunction::CountOverTime
                }
            }
            "quantile_over_time" => {
                let field = self.field()?;
                let mut quantiles = Vec::new();
                while self.eat(&Tok::Comma) {
                    quantiles.push(match self.next() {
                        Some(Tok::Int(i)) => i as f64,
                        Some(Tok::Float(f)) => f,
                        _ => return Err(self.error("expected a quantile between 0 and 1, e.g. .99")),
                    });
                }
                if quantiles.is_empty() {
                    return Err(self.error("quantile_over_time needs quantiles: quantile_over_time(duration, .5, .99)"));
                }
                self.expect(Tok::RParen, "')'")?;
                MetricsFunction::QuantileOverTime { field, quantiles }
            }
            "compare" => {
                self.expect(Tok::LBrace, "a spanset filter: compare({ status = error })")?;
                let selection = self.spanset_filter_body()?;
                let mut numbers = Vec::new();
                while self.eat(&Tok::Comma) {
                    match self.next() {
                        Some(Tok::Int(i)) => numbers.push(i),
                        _ => return Err(self.error("expected an integer")),
                    }
                }
                let (top_n, start, end) = match numbers[..] {
                    [] => (10, 0, 0),
                    [n] => (n, 0, 0),
                    [n, s, e] => (n, s, e),
                    _ => return Err(self.error_at(at, "compare takes a filter, then topN, or topN, start and end")),
                };
                self.expect(Tok::RParen, "')'")?;
                MetricsFunction::Compare { selection, top_n, start, end }
            }
            other => {
                let field = self.field()?;
                self.expect(Tok::RParen, "')'")?;
                match other {
                    "min_over_time" => MetricsFunction::MinOverTime(field),
                    "max_over_time" => MetricsFunction::MaxOverTime(field),
                    "avg_over_time" => MetricsFunction::AvgOverTime(field),
                    "sum_over_time" => MetricsFunction::SumOverTime(field),
                    _ => MetricsFunction::HistogramOverTime(field),
                }
            }
        };
        let mut by = Vec::new();
        if self.peek_is_word("by") {
            self.pos += 1;
            self.expect(Tok::LParen, "'(' after by")?;
            by = self.field_list()?;
            self.expect(Tok::RParen, "')' or ','")?;
        }
        // Then, in any order and number: `| topk(n)`, `| bottomk(n)`, each stage optionally
        // followed by one comparison with a number (Tempo 3.0).
        let mut stages = Vec::new();
        if let Some(compare) = self.metrics_comparison()? {
            stages.push(compare);
        }
        while self.eat(&Tok::Pipe) {
            let at = self.here();
            let k = match self.next() {
                Some(Tok::Ident(w)) if w == "topk" || w == "bottomk" => w,
                _ => return Err(self.error_at(at, "after a metrics function only topk(n) or bottomk(n) may follow")),
            };
            self.expect(Tok::LParen, "'('")?;
            let n = match self.next() {
                Some(Tok::Int(n)) => n,
                _ => return Err(self.error(format!("{k}() takes a positive integer"))),
            };
            self.expect(Tok::RParen, "')'")?;
            stages.push(if k == "topk" { MetricsStage::TopK(n) } else { MetricsStage::BottomK(n) });
            if let Some(compare) = self.metrics_comparison()? {
                stages.push(compare);
            }
        }
        Ok(MetricsQuery { function, by, stages })
    }

    /// `> 10`, `!= 0`, `<= -3.5` after a metrics stage, if one follows.
    fn metrics_comparison(&mut self) -> Res<Option<MetricsStage>> {
        let op = match self.peek() {
            Some(Tok::Eq) => BinaryOp::Eq,
            Some(Tok::Ne) => BinaryOp::Ne,
            Some(Tok::Gt) => BinaryOp::Gt,
            Some(Tok::Ge) => BinaryOp::Ge,
            Some(Tok::Lt) => BinaryOp::Lt,
            Some(Tok::Le) => BinaryOp::Le,
            _ => return Ok(None),
        };
        self.pos += 1;
        let negative = self.eat(&Tok::Sub);
        let value = match self.next() {
            Some(Tok::Int(i)) => i as f64,
            Some(Tok::Float(f)) => f,
            _ => return Err(self.error("expected a number to compare the series' values with")),
        };
        Ok(Some(MetricsStage::Compare { op, value: if negative { -value } else { value } }))
    }

    /// `with(name = value, ...)` after `with`.
    fn hints(&mut self) -> Res<Vec<Hint>> {
        self.expect(Tok::LParen, "'(' after with")?;
        let mut hints = Vec::new();
        loop {
            let Some(Tok::Ident(name)) = self.next() else {
                self.pos -= 1;
                return Err(self.unexpected("a hint name, e.g. with(exemplars=true)"));
            };
            self.expect(Tok::Eq, "'=' after the hint name")?;
            let at = self.here();
            let value = match self.next() {
                Some(Tok::Str(s)) => Static::Str(s),
                Some(Tok::Int(i)) => Static::Int(i),
                Some(Tok::Float(f)) => Static::Float(f),
                Some(Tok::Duration(d)) => Static::Duration(d),
                Some(Tok::Ident(w)) => {
                    static_word(&w).ok_or_else(|| self.error_at(at, format!("invalid hint value '{w}'")))?
                }
                _ => return Err(self.error_at(at, "expected a hint value")),
            };
            hints.push(Hint { name, value });
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(Tok::RParen, "')' or ','")?;
        Ok(hints)
    }
}

/// The complete `field op value` comparisons in a query that may be unfinished, as text.
pub(crate) fn comparisons(q: &str) -> Vec<String> {
    if q.len() > MAX_QUERY_BYTES {
        return Vec::new();
    }
    // Lex as far as the text goes: an unfinished string at the end is simply dropped.
    let mut end = q.len();
    let tokens = loop {
        match lex(&q[..end]) {
            Ok(t) => break t,
            Err(e) if e.pos < end && q.is_char_boundary(e.pos) => end = e.pos,
            Err(_) => return Vec::new(),
        }
    };
    let is_field = |t: &Tok| match t {
        Tok::Attribute(_) => true,
        Tok::Ident(w) => Intrinsic::unscoped(w).is_some(),
        _ => false,
    };
    let is_op = |t: &Tok| matches!(t, Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge | Tok::Re | Tok::Nre);
    let is_value = |t: &Tok| match t {
        Tok::Str(_) | Tok::Int(_) | Tok::Float(_) | Tok::Duration(_) => true,
        Tok::Ident(w) => static_word(w).is_some(),
        _ => false,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // `scope:` + intrinsic counts as one field token.
        let (field_end, field_ok) = match &tokens[i].1 {
            Tok::Colon(_) => (i + 2, matches!(tokens.get(i + 1), Some((_, Tok::Ident(_))))),
            t => (i + 1, is_field(t)),
        };
        if field_ok
            && tokens.get(field_end).is_some_and(|(_, t)| is_op(t))
            && tokens.get(field_end + 1).is_some_and(|(_, t)| is_value(t))
        {
            let start = tokens[i].0;
            let stop = tokens.get(field_end + 2).map_or(end, |(p, _)| *p);
            out.push(q[start..stop].trim().trim_end_matches(['&', '|', '}', ')']).trim().to_string());
            i = field_end + 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Keywords that are literals.
fn static_word(word: &str) -> Option<Static> {
    Some(match word {
        "true" => Static::Bool(true),
        "false" => Static::Bool(false),
        "ok" => Static::Status(Status::Ok),
        "error" => Static::Status(Status::Error),
        "unset" => Static::Status(Status::Unset),
        w => Static::Kind(Kind::from_name(w)?),
    })
}

/// The index of the token starting at byte `pos`.
fn at_index(tokens: &[(usize, Tok)], pos: usize) -> usize {
    tokens.iter().position(|(p, _)| *p == pos).unwrap_or(tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(q: &str) -> FieldExpr {
        match parse(q).unwrap().spans {
            SpansetExpr::Filter(e) => e,
            other => panic!("not a filter: {other:?}"),
        }
    }

    #[test]
    fn empty_filter_is_true() {
        assert_eq!(filter("{}"), FieldExpr::Static(Static::Bool(true)));
        assert_eq!(filter(" { } "), FieldExpr::Static(Static::Bool(true)));
    }

    #[test]
    fn and_or_share_a_level_as_in_tempo() {
        // Tempo groups `a || b && c` as `(a || b) && c`.
        let e = filter("{ .a = 1 || .b = 2 && .c = 3 }");
        let FieldExpr::Binary { op: BinaryOp::And, lhs, .. } = e else { panic!("{e:?}") };
        assert!(matches!(*lhs, FieldExpr::Binary { op: BinaryOp::Or, .. }));
    }

    #[test]
    fn arithmetic_precedence() {
        assert_eq!(filter("{ 1 + 2 * 3 = 7 }").to_string(), "((1 + (2 * 3)) = 7)");
        assert_eq!(filter("{ 2 ^ 3 ^ 2 = 1 }").to_string(), "((2 ^ (3 ^ 2)) = 1)");
        assert_eq!(filter("{ -.a * 2 = 1 }").to_string(), "(-(.a * 2) = 1)");
        assert_eq!(filter("{ !.a = true }").to_string(), "(!.a = true)");
    }

    #[test]
    fn attributes_and_intrinsics() {
        assert_eq!(filter("{ resource.service.name = \"x\" }").to_string(), "(resource.service.name = `x`)");
        assert_eq!(filter("{ span.\"http url\" = \"x\" }").to_string(), "(span.http url = `x`)");
        assert_eq!(filter("{ parent.span.a = 1 }").to_string(), "(parent.span.a = 1)");
        assert_eq!(filter("{ trace:rootService = \"a\" }").to_string(), "(rootServiceName = `a`)");
        assert_eq!(filter("{ event:name = \"e\" }").to_string(), "(event:name = `e`)");
        assert_eq!(filter("{ .foo != nil }").to_string(), "(.foo != nil)");
        assert_eq!(filter("{ duration > 1.5s }").to_string(), "(duration > 1.5s)");
    }

    #[test]
    fn spanset_operators_and_pipelines() {
        let q = parse("{ .a } >> { .b } && { .c } | count() > 2 | by(name) | select(span.x)").unwrap();
        let SpansetExpr::Pipeline(stages) = q.spans else { panic!() };
        assert_eq!(stages.len(), 4);
        assert!(matches!(&stages[0], Stage::Spanset(SpansetExpr::Op { op: SpansetOp::And, .. })));
        assert!(matches!(&stages[1], Stage::ScalarFilter(_)));
        assert!(matches!(&stages[2], Stage::By(_)));
        assert!(matches!(&stages[3], Stage::Select(_)));
    }

    #[test]
    fn metrics() {
        let q = parse(
            "{ } | quantile_over_time(duration, .5, 0.99) by (resource.service.name) | topk(3) with(exemplars=true)",
        )
        .unwrap();
        let m = q.metrics.unwrap();
        assert_eq!(
            m.function,
            MetricsFunction::QuantileOverTime {
                field: Field::Intrinsic(Intrinsic::Duration),
                quantiles: vec![0.5, 0.99]
            }
        );
        assert_eq!(m.by.len(), 1);
        assert_eq!(m.stages, vec![MetricsStage::TopK(3)]);
        assert_eq!(q.hints[0].value, Static::Bool(true));
    }

    #[test]
    fn metrics_comparisons() {
        let q = parse("{ } | rate() by (name) > 0 | topk(5) <= -2.5 | bottomk(2) with(sample=0.1)").unwrap();
        let m = q.metrics.unwrap();
        assert_eq!(
            m.stages,
            vec![
                MetricsStage::Compare { op: BinaryOp::Gt, value: 0.0 },
                MetricsStage::TopK(5),
                MetricsStage::Compare { op: BinaryOp::Le, value: -2.5 },
                MetricsStage::BottomK(2),
            ]
        );
        for bad in ["{ } | rate() == 4", "{ } | rate() > ", "{ } | rate() > 1 > 2", "{ } | rate() > \"a\"", "{ } > 10"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(MetricsStage::Compare { op: BinaryOp::Ne, value: 1.0 }.keeps(2.0));
        assert!(!MetricsStage::Compare { op: BinaryOp::Gt, value: 1.0 }.keeps(f64::NAN));
    }

    #[test]
    fn errors_name_the_position() {
        let e = parse("{ .a = 1 }\n| cnt() > 2").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        for bad in ["", "{", "{ .a = }", "{ a = 1 }", "{ .a = b }", r#"{ .a = "x }"#, "{ .a } = { .b }", "{ .a ~ 1 }"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_nesting_length_and_operators() {
        let nested = |n: usize| format!("{{ {}name = \"x\"{} }}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_NESTING)).is_ok());
        assert!(parse(&nested(MAX_NESTING + 8)).is_err());
        let e = parse(&nested(3_000)).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e}");
        let e = parse(&format!("{{ {}true }}", "!".repeat(3_000))).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e}");

        let chain = |n: usize| format!("{{ {} }}", vec![".a = 1"; n].join(" && "));
        assert!(parse(&chain(MAX_OPERATORS / 2)).is_ok());
        let e = parse(&chain(MAX_OPERATORS)).unwrap_err();
        assert!(e.message.contains("more than"), "{e}");

        let long = format!("{{ .a = \"{}\" }}", "x".repeat(MAX_QUERY_BYTES));
        assert!(parse(&long).unwrap_err().message.contains("bytes long"));
    }

    #[test]
    fn autocomplete_filters_from_unfinished_queries() {
        let f = crate::autocomplete_filter(r#"{ resource.service.name = "api" && span.http.method = "#).unwrap();
        assert_eq!(f.to_string(), "(resource.service.name = `api`)");
        let f = crate::autocomplete_filter(r#"{ .a = 1 && status = error && span:name =~ "GET" "#).unwrap();
        assert_eq!(f.to_string(), "(((.a = 1) && (status = error)) && (name =~ `GET`))");
        assert!(crate::autocomplete_filter("{ }").is_none());
        assert!(crate::autocomplete_filter("{ .a = \"unfinished").is_none());
        assert_eq!(crate::autocomplete_filter("{ kind = server }").unwrap().to_string(), "(kind = server)");
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let alphabet: Vec<char> = "{}()&|=!~<>\"`\\ .-_:,+*/%^0123456789abcnrstuvwxyzé€😀\n\t".chars().collect();
        let words =
            ["count()", "by(", "rate()", "span.", "resource.", "nil", "| ", "with(", "select(", "trace:id", "1s"];
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..30_000 {
            let mut q = String::new();
            let len = (next() % 24) as usize;
            for _ in 0..len {
                if next() % 4 == 0 {
                    q.push_str(words[(next() % words.len() as u64) as usize]);
                } else {
                    q.push(alphabet[(next() % alphabet.len() as u64) as usize]);
                }
            }
            for candidate in [q.clone(), format!("{{ .a = {q} }}"), format!("{{ }} | {q}")] {
                if let Ok(query) = parse(&candidate) {
                    let _ = query.validate();
                    let _ = query.spans.to_string();
                }
            }
        }
    }
}
