//! TraceQL, the query language of Grafana Tempo (as of 3.0.3): lexer, parser and validator.
//!
//! [`parse`] turns a query into a [`Query`] tree with Tempo's grammar and precedences (spanset
//! filters, every scope and intrinsic, field and spanset operators including the structural,
//! negated and union forms, pipelines with aggregates, `by`, `select` and `coalesce`, metrics
//! functions with `by` and `topk`/`bottomk`, and `with(...)` hints). [`Query::validate`] checks
//! types as Tempo does. [`compile`] does both. The query engine (`spindle-query`) plans the tree
//! onto DataFusion.
//!
//! Every error carries the line and column it refers to. Input is bounded: at most
//! [`MAX_QUERY_BYTES`] bytes, [`MAX_NESTING`] levels of nesting and [`MAX_OPERATORS`]
//! operators, so no query can exhaust the stack of the code that walks it.
//!
//! ## Unsupported
//! These parse but fail validation with [`ValidationError::Unsupported`]: comparisons between
//! whole pipelines (`({ .a } | count()) > ({ .b } | count())`).
//!
//! From Tempo 3.0 (array-aware comparisons are the query engine's, `libs/query`): comparisons after metrics functions and `topk`/`bottomk`
//! ([`MetricsStage::Compare`]), `x = nil` ([`UnaryOp::Missing`]), and the hints `sample`,
//! `span_sample`, `trace_sample`, `most_recent`, `exemplars` (values checked).
//!
//! Beyond Tempo, these run: the `parent.` scope (`{ parent.span.a = 1 }`, `parent.duration`:
//! the field read on the span's parent, nil where the span has none in the trace) and `parent`
//! compared with nil (`{ parent = nil }`: root spans); other uses of a bare `parent`
//! (`{ parent }`, `{ 1 >= parent }`) are invalid, as Tempo's corpus says they will be; `childCount`, scalar filters comparing aggregates with
//! aggregates or arithmetic (`min(.field) < max(duration)`, `count() + count() = 2`), and
//! constant scalar filters (`3 = 2`).

mod ast;
mod lexer;
mod parser;
mod validate;

pub use ast::*;
pub use parser::{parse, MAX_NESTING, MAX_OPERATORS, MAX_QUERY_BYTES};
pub use spindle_types::{format_duration, parse_duration};
pub use validate::ValueType;

/// Why a query could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line {line}, column {column}: {message}")]
pub struct ParseError {
    /// Byte offset in the query.
    pub pos: usize,
    /// Line of the offset, from 1.
    pub line: usize,
    /// Column of the offset, in characters, from 1.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

impl ParseError {
    /// An error at byte `pos` of `input`.
    pub(crate) fn at(input: &str, pos: usize, message: impl Into<String>) -> Self {
        let pos = pos.min(input.len());
        let before = input.get(..pos).unwrap_or(input);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ParseError { pos, line, column, message: message.into() }
    }
}

/// Why a parsed query cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The query is wrong (types do not match, a regular expression does not compile, ...).
    #[error("invalid TraceQL: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// The query uses a part of TraceQL Spindle does not run.
    #[error("unsupported TraceQL: {feature} is not supported")]
    Unsupported {
        /// The part of the language.
        feature: String,
    },
}

/// A query that could not be parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Syntax error.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Type or support error.
    #[error(transparent)]
    Validation(#[from] ValidationError),
}

/// Parses and validates a query.
pub fn compile(input: &str) -> Result<Query, Error> {
    let query = parse(input)?;
    query.validate()?;
    Ok(query)
}

/// The condition Grafana's autocomplete narrows tags by, from the query being typed: a
/// query's spanset filter (the first stage's, for a pipeline), or, for a query that does not
/// parse yet, every complete `field op value` comparison in it, joined with `&&` (as Tempo
/// extracts matchers). `None` when there is nothing to narrow by.
pub fn autocomplete_filter(q: &str) -> Option<FieldExpr> {
    fn useful(e: FieldExpr) -> Option<FieldExpr> {
        (e != FieldExpr::Static(Static::Bool(true))).then_some(e)
    }
    if let Ok(query) = compile(q) {
        return match query.spans {
            SpansetExpr::Filter(e) => useful(e),
            SpansetExpr::Pipeline(stages) => match stages.into_iter().next() {
                Some(Stage::Spanset(SpansetExpr::Filter(e))) => useful(e),
                _ => None,
            },
            SpansetExpr::Op { .. } => None,
        };
    }
    let mut found: Option<FieldExpr> = None;
    for text in parser::comparisons(q) {
        let Ok(query) = compile(&format!("{{ {text} }}")) else { continue };
        let SpansetExpr::Filter(e) = query.spans else { continue };
        found = Some(match found {
            None => e,
            Some(prev) => FieldExpr::Binary { op: BinaryOp::And, lhs: Box::new(prev), rhs: Box::new(e) },
        });
    }
    found
}
