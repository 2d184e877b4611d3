//! TraceQL: parsing queries into an AST that the query engine turns into DataFusion plans.
//!
//! Supported today: one spanset filter `{ ... }` with `&&`, `||`, parentheses and comparisons
//! (`= != > >= < <= =~ !~`) between a span attribute (`resource.x`, `span.x`, `.x`) or an
//! intrinsic (`name`, `status`, `kind`, `duration`, `statusMessage`) and a literal (string,
//! integer, float, boolean, duration, status or kind). `{}` matches every span. Anything
//! else is refused with a [`ParseError`] that says what is not supported yet. Length, nesting and
//! the number of comparisons are bounded ([`MAX_QUERY_BYTES`], [`MAX_NESTING`], [`MAX_CONDITIONS`]).

mod lexer;
mod parser;

pub use parser::{parse, MAX_CONDITIONS, MAX_NESTING, MAX_QUERY_BYTES};

/// A parsed TraceQL query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The spanset filter; `None` for `{}`.
    pub filter: Option<Expr>,
}

/// A boolean expression over one span.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Both sides hold.
    And(Box<Expr>, Box<Expr>),
    /// Either side holds.
    Or(Box<Expr>, Box<Expr>),
    /// An attribute compared with a literal.
    Compare {
        /// Left side.
        attr: Attribute,
        /// Operator.
        op: Op,
        /// Right side.
        value: Literal,
    },
}

impl Expr {
    /// Every attribute the expression reads, in order of appearance.
    pub fn attributes(&self) -> Vec<&Attribute> {
        let mut out = Vec::new();
        self.collect_attributes(&mut out);
        out
    }

    fn collect_attributes<'a>(&'a self, out: &mut Vec<&'a Attribute>) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect_attributes(out);
                b.collect_attributes(out);
            }
            Expr::Compare { attr, .. } => out.push(attr),
        }
    }
}

/// Where an attribute is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `resource.x`
    Resource,
    /// `span.x`
    Span,
    /// `.x`: span or resource.
    Unscoped,
}

/// Built-in span fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    /// Span name.
    Name,
    /// Status code.
    Status,
    /// Status message.
    StatusMessage,
    /// Span kind.
    Kind,
    /// Span duration.
    Duration,
}

impl Intrinsic {
    /// The intrinsic's TraceQL name.
    pub fn name(self) -> &'static str {
        match self {
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::Duration => "duration",
        }
    }

    /// Looks an intrinsic up by its TraceQL name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "name" => Intrinsic::Name,
            "status" => Intrinsic::Status,
            "statusMessage" => Intrinsic::StatusMessage,
            "kind" => Intrinsic::Kind,
            "duration" => Intrinsic::Duration,
            _ => return None,
        })
    }
}

/// The left side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// A span or resource attribute.
    Attr {
        /// Scope.
        scope: Scope,
        /// Attribute key, e.g. `service.name`.
        key: String,
    },
    /// A built-in field.
    Intrinsic(Intrinsic),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `=~` (regular expression, whole value)
    Regex,
    /// `!~`
    NotRegex,
}

/// Span status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `unset`
    Unset,
    /// `ok`
    Ok,
    /// `error`
    Error,
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `"text"`
    Str(String),
    /// `42`
    Int(i64),
    /// `1.5`
    Float(f64),
    /// `true` / `false`
    Bool(bool),
    /// `150ms` (nanoseconds)
    Duration(i64),
    /// `error`, `ok`, `unset`
    Status(Status),
    /// `server`, `client`, ... (the stored kind name)
    Kind(&'static str),
}

/// Why a query could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TraceQL at position {pos}: {message}")]
pub struct ParseError {
    /// Byte offset in the query.
    pub pos: usize,
    /// What went wrong.
    pub message: String,
}

/// Parses a Go-style duration (`1h2m`, `150ms`, `1.5s`, `300us`, `10ns`) into nanoseconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    (total <= i64::MAX as f64).then_some(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("150ms"), Some(150_000_000));
        assert_eq!(parse_duration("1h2m"), Some(3_720_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
