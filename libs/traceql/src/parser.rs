//! Recursive-descent parser for spanset filters.

use crate::lexer::{lex, Tok};
use crate::{parse_duration, Attribute, Expr, Intrinsic, Literal, Op, ParseError, Query, Scope, Status};

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest nesting of parentheses accepted.
pub const MAX_NESTING: usize = 64;
/// Most comparisons one query may hold (each is a node of the expression tree, and a long
/// `&&` chain is as deep as it is long).
pub const MAX_CONDITIONS: usize = 128;

/// Parses a TraceQL query. Queries longer than [`MAX_QUERY_BYTES`], nested deeper than
/// [`MAX_NESTING`] or with more than [`MAX_CONDITIONS`] comparisons are refused, so no input can
/// exhaust the stack of the code that walks the tree.
pub fn parse(input: &str) -> Result<Query, ParseError> {
    if input.len() > MAX_QUERY_BYTES {
        return Err(ParseError {
            pos: MAX_QUERY_BYTES,
            message: format!("the query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted", input.len()),
        });
    }
    let tokens = lex(input)?;
    let mut p = Parser { tokens, pos: 0, end: input.len(), depth: 0, conditions: 0 };
    p.expect(Tok::LBrace, "a query starts with '{'")?;
    let filter = if p.peek() == Some(&Tok::RBrace) { None } else { Some(p.or_expr()?) };
    p.expect(Tok::RBrace, "expected '}'")?;
    if p.pos < p.tokens.len() {
        return Err(
            p.error("only a single spanset filter { ... } is supported yet (no pipelines or spanset operators)")
        );
    }
    Ok(Query { filter })
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    /// Parentheses open at the current position.
    depth: usize,
    /// Comparisons parsed so far.
    conditions: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn here(&self) -> usize {
        self.tokens.get(self.pos).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError { pos: self.here(), message: message.to_string() }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn expect(&mut self, tok: Tok, message: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(message))
        }
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and_expr()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.primary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some(&Tok::LParen) {
            if self.depth == MAX_NESTING {
                return Err(self.error(&format!("parentheses are nested more than {MAX_NESTING} levels deep")));
            }
            self.pos += 1;
            self.depth += 1;
            let e = self.or_expr()?;
            self.depth -= 1;
            self.expect(Tok::RParen, "expected ')'")?;
            return Ok(e);
        }
        if self.conditions == MAX_CONDITIONS {
            return Err(self.error(&format!("a query may hold at most {MAX_CONDITIONS} comparisons")));
        }
        self.conditions += 1;
        let attr = self.attribute()?;
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a comparison operator (= != > >= < <= =~ !~)"));
            }
        };
        let value = self.literal(&attr)?;
        if matches!(op, Op::Regex | Op::NotRegex) && !matches!(value, Literal::Str(_)) {
            return Err(self.error("a regular expression must be a string"));
        }
        Ok(Expr::Compare { attr, op, value })
    }

    fn attribute(&mut self) -> Result<Attribute, ParseError> {
        let Some(Tok::Ident(name)) = self.next() else {
            self.pos -= 1;
            return Err(self.error("expected an attribute or intrinsic"));
        };
        let scoped = |scope, key: &str| {
            if key.is_empty() {
                Err(ParseError { pos: 0, message: "empty attribute name".into() })
            } else {
                Ok(Attribute::Attr { scope, key: key.to_string() })
            }
        };
        if let Some(key) = name.strip_prefix("resource.") {
            return scoped(Scope::Resource, key);
        }
        if let Some(key) = name.strip_prefix("span.") {
            return scoped(Scope::Span, key);
        }
        if let Some(key) = name.strip_prefix('.') {
            return scoped(Scope::Unscoped, key);
        }
        if let Some(i) = Intrinsic::from_name(&name) {
            return Ok(Attribute::Intrinsic(i));
        }
        self.pos -= 1;
        Err(self.error(&format!("unknown or unsupported intrinsic {name:?}; attributes need a scope: span.{name}, resource.{name} or .{name}")))
    }

    fn literal(&mut self, attr: &Attribute) -> Result<Literal, ParseError> {
        let here = self.here();
        let err = |message: String| ParseError { pos: here, message };
        match self.next() {
            Some(Tok::Str(s)) => Ok(Literal::Str(s)),
            Some(Tok::Number(n)) => {
                if let Ok(i) = n.parse::<i64>() {
                    return Ok(if *attr == Attribute::Intrinsic(Intrinsic::Duration) && i == 0 {
                        Literal::Duration(0)
                    } else {
                        Literal::Int(i)
                    });
                }
                if let Ok(f) = n.parse::<f64>() {
                    return Ok(Literal::Float(f));
                }
                parse_duration(n.trim_start_matches('-'))
                    .map(|d| Literal::Duration(if n.starts_with('-') { -d } else { d }))
                    .ok_or_else(|| err(format!("invalid number or duration {n:?}")))
            }
            Some(Tok::Ident(word)) => match word.as_str() {
                "true" => Ok(Literal::Bool(true)),
                "false" => Ok(Literal::Bool(false)),
                "error" => Ok(Literal::Status(Status::Error)),
                "ok" => Ok(Literal::Status(Status::Ok)),
                "unset" => Ok(Literal::Status(Status::Unset)),
                "unspecified" | "internal" | "server" | "client" | "producer" | "consumer" => {
                    let kind = spindle_kind(&word);
                    Ok(Literal::Kind(kind))
                }
                other => Err(err(format!("unexpected {other:?}; strings must be quoted"))),
            },
            _ => Err(err("expected a value".into())),
        }
    }
}

fn spindle_kind(word: &str) -> &'static str {
    match word {
        "internal" => "internal",
        "server" => "server",
        "client" => "client",
        "producer" => "producer",
        "consumer" => "consumer",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filter() {
        assert_eq!(parse("{}").unwrap(), Query { filter: None });
        assert_eq!(parse(" { } ").unwrap(), Query { filter: None });
    }

    #[test]
    fn service_name() {
        let q = parse(r#"{ resource.service.name = "shop-api" }"#).unwrap();
        assert_eq!(
            q.filter,
            Some(Expr::Compare {
                attr: Attribute::Attr { scope: Scope::Resource, key: "service.name".into() },
                op: Op::Eq,
                value: Literal::Str("shop-api".into())
            })
        );
    }

    #[test]
    fn combined() {
        let q = parse(r#"{ (.http.status_code >= 500 || status = error) && duration > 1.5s && kind = server && name =~ "GET.*" }"#)
            .unwrap();
        let attrs = q.filter.as_ref().unwrap().attributes();
        assert_eq!(attrs.len(), 5);
        assert!(matches!(q.filter, Some(Expr::And(..))));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "{",
            "{ .a = }",
            "{ a = 1 }",
            "{ .a = b }",
            "{ .a = 1 } | count() > 1",
            r#"{ .a =~ 3 }"#,
            r#"{ .a = "x }"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_nesting_length_and_conditions() {
        let nested = |n: usize| format!("{{ {}name = \"x\"{} }}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_NESTING)).is_ok());
        let e = parse(&nested(3_000)).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e}");

        let chain = |n: usize| format!("{{ {} }}", vec![".a = 1"; n].join(" && "));
        assert!(parse(&chain(MAX_CONDITIONS)).is_ok());
        let e = parse(&chain(MAX_CONDITIONS + 1)).unwrap_err();
        assert!(e.message.contains("at most"), "{e}");

        let long = format!("{{ .a = \"{}\" }}", "x".repeat(MAX_QUERY_BYTES));
        assert!(parse(&long).unwrap_err().message.contains("bytes long"));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let alphabet: Vec<char> = "{}()&|=!~<>\"`\\ .-_0123456789abcnrstuvwxyzé€😀\n\t".chars().collect();
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..20_000 {
            let mut q = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                q.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&q);
            let _ = parse(&format!("{{ .a = {q} }}"));
        }
    }
}
