//! Tokens of TraceQL.

use crate::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    And,
    Or,
    Op(crate::Op),
    Str(String),
    Number(String),
    /// An identifier or dotted attribute path (`resource.service.name`, `.foo`, `name`).
    Ident(String),
}

pub(crate) fn lex(input: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let bytes = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, message: &str| ParseError { pos, message: message.to_string() };
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' => out.push((start, Tok::LBrace)),
            b'}' => out.push((start, Tok::RBrace)),
            b'(' => out.push((start, Tok::LParen)),
            b')' => out.push((start, Tok::RParen)),
            b'&' if bytes.get(i + 1) == Some(&b'&') => {
                i += 1;
                out.push((start, Tok::And));
            }
            b'|' if bytes.get(i + 1) == Some(&b'|') => {
                i += 1;
                out.push((start, Tok::Or));
            }
            b'=' if bytes.get(i + 1) == Some(&b'~') => {
                i += 1;
                out.push((start, Tok::Op(crate::Op::Regex)));
            }
            b'=' => out.push((start, Tok::Op(crate::Op::Eq))),
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 1;
                out.push((start, Tok::Op(crate::Op::Ne)));
            }
            b'!' if bytes.get(i + 1) == Some(&b'~') => {
                i += 1;
                out.push((start, Tok::Op(crate::Op::NotRegex)));
            }
            b'>' | b'<' => {
                let or_equal = bytes.get(i + 1) == Some(&b'=');
                if or_equal {
                    i += 1;
                }
                let op = match (c, or_equal) {
                    (b'>', false) => crate::Op::Gt,
                    (b'>', true) => crate::Op::Ge,
                    (_, false) => crate::Op::Lt,
                    (_, true) => crate::Op::Le,
                };
                out.push((start, Tok::Op(op)));
            }
            b'"' | b'`' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&ch) = bytes.get(i) else {
                        return Err(err(start, "unterminated string"));
                    };
                    if ch == quote {
                        break;
                    }
                    if ch == b'\\' && quote == b'"' {
                        i += 1;
                        match bytes.get(i) {
                            Some(b'n') => s.push('\n'),
                            Some(b't') => s.push('\t'),
                            Some(b'\\') => s.push('\\'),
                            Some(b'"') => s.push('"'),
                            _ => return Err(err(i, "invalid escape in string")),
                        }
                        i += 1;
                        continue;
                    }
                    // Copy one UTF-8 character.
                    let len = utf8_len(ch);
                    let end = (i + len).min(bytes.len());
                    s.push_str(std::str::from_utf8(&bytes[i..end]).map_err(|_| err(i, "invalid UTF-8"))?);
                    i = end;
                }
                out.push((start, Tok::Str(s)));
            }
            b'0'..=b'9' | b'-' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((start, Tok::Number(input[start..i].to_string())));
                continue;
            }
            c if c == b'.' || c == b'_' || c.is_ascii_alphabetic() => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'.' | b'_' | b'-' | b'/' | b':'))
                {
                    i += 1;
                }
                out.push((start, Tok::Ident(input[start..i].to_string())));
                continue;
            }
            _ => {
                return Err(err(
                    start,
                    &format!("unexpected character {:?}", input[start..].chars().next().unwrap_or('?')),
                ))
            }
        }
        i += 1;
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}
