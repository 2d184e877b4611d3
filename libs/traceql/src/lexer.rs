//! Tokens of TraceQL, split as Tempo's lexer splits them: attributes (`span.http.url`,
//! `."quoted name"`) are one token each and end at whitespace or an operator character;
//! numbers followed by a unit are durations; `//` and `/* */` comments are skipped.

use crate::ast::{Attribute, AttributeScope};
use crate::ParseError;
use spindle_types::parse_duration;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Pipe,
    And,
    Or,
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Re,
    /// `!~`: "does not match" between values, "not sibling" between spansets.
    Nre,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Desc,
    Ance,
    Sibl,
    NotChild,
    NotParent,
    NotDesc,
    NotAnce,
    UnionChild,
    UnionParent,
    UnionDesc,
    UnionAnce,
    UnionSibl,
    Str(String),
    Int(i64),
    Float(f64),
    Duration(i64),
    /// A word: keyword, intrinsic or function name, resolved by the parser.
    Ident(String),
    /// `.x`, `span.x`, `parent.resource.x`, ...
    Attribute(Attribute),
    /// `span:`, `trace:`, ...: the scope of the intrinsic that follows.
    Colon(String),
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Duration(d) => format!("duration {}", spindle_types::format_duration(*d)),
            Tok::Ident(w) => format!("'{w}'"),
            Tok::Attribute(a) => format!("attribute {a}"),
            Tok::Colon(s) => format!("'{s}:'"),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Not => "!",
            Tok::Eq => "=",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Re => "=~",
            Tok::Nre => "!~",
            Tok::Add => "+",
            Tok::Sub => "-",
            Tok::Mul => "*",
            Tok::Div => "/",
            Tok::Mod => "%",
            Tok::Pow => "^",
            Tok::Desc => ">>",
            Tok::Ance => "<<",
            Tok::Sibl => "~",
            Tok::NotChild => "!>",
            Tok::NotParent => "!<",
            Tok::NotDesc => "!>>",
            Tok::NotAnce => "!<<",
            Tok::UnionChild => "&>",
            Tok::UnionParent => "&<",
            Tok::UnionDesc => "&>>",
            Tok::UnionAnce => "&<<",
            Tok::UnionSibl => "&~",
            _ => "?",
        }
    }
}

/// Splits `input` into tokens with their byte offsets.
pub(crate) fn lex(input: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let mut l = Lexer { input, bytes: input.as_bytes(), i: 0, out: Vec::new() };
    l.run()?;
    Ok(l.out)
}

struct Lexer<'a> {
    input: &'a str,
    bytes: &'a [u8],
    i: usize,
    out: Vec<(usize, Tok)>,
}

/// Characters that end an attribute name (besides whitespace).
fn ends_attribute(c: char) -> bool {
    c.is_whitespace() || matches!(c, '{' | '}' | '(' | ')' | '=' | '~' | '!' | '<' | '>' | '&' | '|' | '^' | ',')
}

impl<'a> Lexer<'a> {
    fn err(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.input, pos, message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.bytes.get(self.i + n).copied()
    }

    fn current_char(&self) -> Option<char> {
        self.input[self.i..].chars().next()
    }

    fn push(&mut self, start: usize, tok: Tok) {
        self.out.push((start, tok));
    }

    fn run(&mut self) -> Result<(), ParseError> {
        while let Some(c) = self.current_char() {
            let start = self.i;
            if c.is_whitespace() {
                self.i += c.len_utf8();
                continue;
            }
            match c {
                '/' if self.peek_at(1) == Some(b'/') => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.i += 1;
                    }
                }
                '/' if self.peek_at(1) == Some(b'*') => match self.input[self.i + 2..].find("*/") {
                    Some(end) => self.i += 2 + end + 2,
                    None => return Err(self.err(start, "comment not terminated: missing '*/'")),
                },
                '"' => {
                    let s = self.quoted_string()?;
                    self.push(start, Tok::Str(s));
                }
                '`' => {
                    let s = self.raw_string()?;
                    self.push(start, Tok::Str(s));
                }
                '0'..='9' => self.number()?,
                '.' if self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) => self.number()?,
                '.' => {
                    self.i += 1;
                    self.attribute(start, AttributeScope::Unscoped, false)?;
                }
                c if c == '_' || c.is_alphabetic() => self.word()?,
                _ => self.operator()?,
            }
        }
        Ok(())
    }

    fn operator(&mut self) -> Result<(), ParseError> {
        let start = self.i;
        let rest = &self.bytes[self.i..];
        // Longest operator first.
        const OPS: &[(&str, Tok)] = &[
            ("!>>", Tok::NotDesc),
            ("!<<", Tok::NotAnce),
            ("&>>", Tok::UnionDesc),
            ("&<<", Tok::UnionAnce),
            ("!=", Tok::Ne),
            ("!~", Tok::Nre),
            ("!>", Tok::NotChild),
            ("!<", Tok::NotParent),
            ("&&", Tok::And),
            ("&>", Tok::UnionChild),
            ("&<", Tok::UnionParent),
            ("&~", Tok::UnionSibl),
            ("||", Tok::Or),
            ("=~", Tok::Re),
            (">=", Tok::Ge),
            ("<=", Tok::Le),
            (">>", Tok::Desc),
            ("<<", Tok::Ance),
            ("!", Tok::Not),
            ("|", Tok::Pipe),
            ("=", Tok::Eq),
            (">", Tok::Gt),
            ("<", Tok::Lt),
            ("~", Tok::Sibl),
            ("+", Tok::Add),
            ("-", Tok::Sub),
            ("*", Tok::Mul),
            ("/", Tok::Div),
            ("%", Tok::Mod),
            ("^", Tok::Pow),
            (",", Tok::Comma),
            ("{", Tok::LBrace),
            ("}", Tok::RBrace),
            ("(", Tok::LParen),
            (")", Tok::RParen),
        ];
        for (text, tok) in OPS {
            if rest.starts_with(text.as_bytes()) {
                self.i += text.len();
                self.push(start, tok.clone());
                return Ok(());
            }
        }
        let c = self.current_char().unwrap_or('?');
        let hint = match c {
            '&' => ": did you mean '&&'?",
            '\'' => ": strings are quoted with \" or `",
            _ => "",
        };
        Err(self.err(start, format!("unexpected character {c:?}{hint}")))
    }

    fn word(&mut self) -> Result<(), ParseError> {
        let start = self.i;
        while let Some(c) = self.current_char() {
            if c == '_' || c.is_alphanumeric() {
                self.i += c.len_utf8();
            } else {
                break;
            }
        }
        let word = &self.input[start..self.i];
        match self.peek() {
            Some(b'.') => {
                let scope = match word {
                    "span" => Some((AttributeScope::Span, false)),
                    "resource" => Some((AttributeScope::Resource, false)),
                    "event" => Some((AttributeScope::Event, false)),
                    "link" => Some((AttributeScope::Link, false)),
                    "instrumentation" => Some((AttributeScope::Instrumentation, false)),
                    "parent" => Some((AttributeScope::Unscoped, true)),
                    _ => None,
                };
                if let Some((scope, parent)) = scope {
                    self.i += 1;
                    return self.attribute(start, scope, parent);
                }
            }
            Some(b':') if matches!(word, "trace" | "span" | "event" | "link" | "instrumentation") => {
                self.i += 1;
                self.push(start, Tok::Colon(word.to_string()));
                return Ok(());
            }
            _ => {}
        }
        self.push(start, Tok::Ident(word.to_string()));
        Ok(())
    }

    /// An attribute name after its scope prefix (already consumed).
    fn attribute(&mut self, start: usize, mut scope: AttributeScope, parent: bool) -> Result<(), ParseError> {
        if parent {
            for (prefix, s) in [("span.", AttributeScope::Span), ("resource.", AttributeScope::Resource)] {
                if self.input[self.i..].starts_with(prefix) {
                    self.i += prefix.len();
                    scope = s;
                    break;
                }
            }
        }
        let mut name = String::new();
        while let Some(c) = self.current_char() {
            if c == '"' {
                name.push_str(&self.quoted_attribute()?);
            } else if ends_attribute(c) {
                break;
            } else {
                name.push(c);
                self.i += c.len_utf8();
            }
        }
        if name.is_empty() {
            return Err(self.err(self.i, "expected an attribute name after the scope (e.g. span.http.method, .foo)"));
        }
        self.push(start, Tok::Attribute(Attribute { scope, parent, name }));
        Ok(())
    }

    /// `"..."` inside an attribute name: only `\"` and `\\` are escapes.
    fn quoted_attribute(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.current_char() else {
                return Err(self.err(start, "quoted attribute name not terminated: missing '\"'"));
            };
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => match self.peek() {
                    Some(b'"') | Some(b'\\') => {
                        out.push(self.bytes[self.i] as char);
                        self.i += 1;
                    }
                    _ => return Err(self.err(self.i - 1, "invalid escape in attribute name: only \\\" and \\\\")),
                },
                c => out.push(c),
            }
        }
    }

    fn raw_string(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        match self.input[start + 1..].find('`') {
            Some(len) => {
                self.i = start + 1 + len + 1;
                Ok(self.input[start + 1..start + 1 + len].replace('\r', ""))
            }
            None => Err(self.err(start, "string not terminated: missing '`'")),
        }
    }

    /// A double-quoted string with Go's escapes.
    fn quoted_string(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.current_char() else {
                return Err(self.err(start, "string not terminated: missing '\"'"));
            };
            let at = self.i;
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => return Err(self.err(at, "newline in string")),
                '\\' => {
                    let Some(e) = self.current_char() else {
                        return Err(self.err(at, "string not terminated: missing '\"'"));
                    };
                    self.i += e.len_utf8();
                    match e {
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'v' => out.push('\u{b}'),
                        '\\' => out.push('\\'),
                        '"' => out.push('"'),
                        'x' | 'u' | 'U' => {
                            let len = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex = self.input.get(self.i..self.i + len).unwrap_or("");
                            let code = u32::from_str_radix(hex, 16)
                                .ok()
                                .filter(|_| hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                            let ch =
                                code.and_then(|c| if e == 'x' { Some(c as u8 as char) } else { char::from_u32(c) });
                            match ch {
                                Some(ch) => out.push(ch),
                                None => return Err(self.err(at, format!("invalid \\{e} escape in string"))),
                            }
                            self.i += len;
                        }
                        '0'..='7' => {
                            let oct = self.input.get(self.i - 1..self.i + 2).unwrap_or("");
                            match u32::from_str_radix(oct, 8).ok().filter(|v| oct.len() == 3 && *v < 256) {
                                Some(v) => out.push(v as u8 as char),
                                None => return Err(self.err(at, "invalid octal escape in string")),
                            }
                            self.i += 2;
                        }
                        other => return Err(self.err(at, format!("invalid escape \\{other} in string"))),
                    }
                }
                c => out.push(c),
            }
        }
    }

    /// A number: integer or float, and a duration when a unit follows (`10ms`, `1.5h`, `1h30m`).
    fn number(&mut self) -> Result<(), ParseError> {
        let start = self.i;
        let digits = |l: &mut Self| {
            while l.peek().is_some_and(|b| b.is_ascii_digit() || b == b'_') {
                l.i += 1;
            }
        };
        digits(self);
        let mut is_float = false;
        if self.peek() == Some(b'.') && self.peek_at(1).is_none_or(|b| b.is_ascii_digit() || !b.is_ascii_alphabetic()) {
            is_float = true;
            self.i += 1;
            digits(self);
        }
        if matches!(self.peek(), Some(b'e' | b'E'))
            && (self.peek_at(1).is_some_and(|b| b.is_ascii_digit())
                || (matches!(self.peek_at(1), Some(b'+' | b'-'))
                    && self.peek_at(2).is_some_and(|b| b.is_ascii_digit())))
        {
            is_float = true;
            self.i += 2;
            digits(self);
        }
        let number = &self.input[start..self.i];
        // A duration: the number plus the digits, '.' and unit letters right after it.
        let unit_end = self.input[self.i..]
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || "nsumhµdwy".contains(c)))
            .map_or(self.input.len(), |n| self.i + n);
        if unit_end > self.i {
            if let Some(ns) = parse_duration(&self.input[start..unit_end]) {
                self.i = unit_end;
                self.push(start, Tok::Duration(ns));
                return Ok(());
            }
        }
        let clean = number.replace('_', "");
        let tok = if is_float {
            clean.parse::<f64>().map(Tok::Float).map_err(|_| self.err(start, format!("invalid number {number:?}")))?
        } else {
            clean.parse::<i64>().map(Tok::Int).map_err(|_| {
                self.err(start, format!("invalid integer {number:?} (at most {} is accepted)", i64::MAX))
            })?
        };
        self.push(start, tok);
        Ok(())
    }
}
