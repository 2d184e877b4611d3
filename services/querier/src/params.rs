//! Parsing of request parameters shared by the endpoints.

use axum::http::HeaderMap;
use spindle_storage::TenantId;

use crate::ApiError;

/// The tenants named by `X-Scope-OrgID` (`a|b` for several), or the default tenant. Behind
/// `spindle_auth::http::protect`, the header holds the tenants the caller's key allows.
pub fn tenants(headers: &HeaderMap) -> Result<Vec<TenantId>, ApiError> {
    let value = headers
        .get(spindle_auth::http::TENANT_HEADER)
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request("X-Scope-OrgID is not valid text")))
        .transpose()?;
    let tenants = spindle_auth::parse_tenant_header(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(tenants.unwrap_or_else(|| vec![TenantId::default_tenant()]))
}

/// Refuses a query string whose percent-decoded bytes are not UTF-8 (decoders would otherwise
/// replace them and search for something the client never sent).
pub fn check_query_utf8(query: Option<&str>) -> Result<(), ApiError> {
    let Some(query) = query else { return Ok(()) };
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded)
        .map(|_| ())
        .map_err(|_| ApiError::bad_request("the query string is not UTF-8 once percent-decoded"))
}

/// Parses a trace id given in hex (1-32 digits, left-padded with zeros).
pub fn trace_id(text: &str) -> Result<[u8; 16], ApiError> {
    let t = text.trim();
    if t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "invalid trace id {:?}: expected 1-32 hexadecimal digits",
            t.chars().take(64).collect::<String>()
        )));
    }
    let padded = format!("{t:0>32}");
    let mut id = [0u8; 16];
    hex::decode_to_slice(&padded, &mut id).map_err(|e| ApiError::bad_request(format!("invalid trace id: {e}")))?;
    Ok(id)
}

/// Parses a time parameter: unix seconds (integer or float), unix nanoseconds, or RFC 3339.
pub fn unix_nanos(name: &str, text: &str) -> Result<i64, ApiError> {
    let t = text.trim();
    if let Ok(v) = t.parse::<i64>() {
        // Seconds unless the number is clearly in nanoseconds (after 2001 in ns is > 1e18).
        return Ok(if v.abs() >= 100_000_000_000_000_000 { v } else { v.saturating_mul(1_000_000_000) });
    }
    if let Ok(v) = t.parse::<f64>() {
        if v.is_finite() && v.abs() < 1e11 {
            return Ok((v * 1e9) as i64);
        }
    }
    if let Ok(ns) = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(t) {
        return Ok(ns);
    }
    Err(ApiError::bad_request(format!("invalid {name} {t:?}: expected unix seconds or nanoseconds, or RFC 3339")))
}

/// Parses an optional `[start, end]` pair; both or neither, `end > start`.
pub fn time_range(start: Option<&str>, end: Option<&str>) -> Result<Option<(i64, i64)>, ApiError> {
    match (start, end) {
        (None, None) => Ok(None),
        (Some(s), Some(e)) => {
            let (s, e) = (unix_nanos("start", s)?, unix_nanos("end", e)?);
            if e <= s {
                return Err(ApiError::bad_request("invalid time range: end must be after start"));
            }
            // `end` in seconds names the whole last second.
            Ok(Some((s, e)))
        }
        (Some(s), None) => Ok(Some((unix_nanos("start", s)?, i64::MAX))),
        (None, Some(e)) => Ok(Some((i64::MIN, unix_nanos("end", e)?))),
    }
}

/// Parses a Go duration parameter into nanoseconds.
pub fn duration(name: &str, text: &str) -> Result<i64, ApiError> {
    spindle_traceql::parse_duration(text).ok_or_else(|| {
        ApiError::bad_request(format!("invalid {name} {text:?}: expected a duration like 100ms or 1.5s"))
    })
}

/// A positive integer parameter, `default` when absent or empty.
pub fn positive(name: &str, text: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match text.map(str::trim) {
        None | Some("") => Ok(default),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ApiError::bad_request(format!("invalid {name} {t:?}: expected a positive integer"))),
    }
}

/// Parses and validates a TraceQL query; errors (with their position) are 400s.
pub fn traceql(q: &str) -> Result<spindle_traceql::Query, ApiError> {
    spindle_traceql::compile(q).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A JSON response of a typed body.
pub fn json_response<T: serde::Serialize>(body: &T) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::to_vec(body) {
        Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            ApiError { status: axum::http::StatusCode::INTERNAL_SERVER_ERROR, message: e.to_string() }.into_response()
        }
    }
}

/// Most `key=value` pairs one `tags` search may hold (each adds a level to the filter tree).
pub const MAX_TAGS: usize = 64;

/// Parses logfmt (`a=b c="d e"`) into key/value pairs, at most [`MAX_TAGS`] of them.
pub fn logfmt(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let bad = |m: &str| ApiError::bad_request(format!("invalid tags {text:?}: {m}"));
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if key.is_empty() {
            return Err(bad("empty tag name"));
        }
        if out.len() == MAX_TAGS {
            return Err(ApiError::bad_request(format!("at most {MAX_TAGS} tags may be searched for at once")));
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(bad(&format!("tag {key:?} has no value")));
        }
        i += 1;
        let mut value = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(bad("unterminated quoted value")),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        assert_eq!(trace_id("1").unwrap()[15], 1);
        assert_eq!(trace_id("2f3e0cee77ae5dc9c17ade3689eb2e54").unwrap()[0], 0x2f);
        assert!(trace_id("xyz").is_err());
        assert!(trace_id("").is_err());
        assert!(trace_id(&"a".repeat(33)).is_err());
    }

    #[test]
    fn logfmt_parsing() {
        let t = logfmt(r#"service.name=api http.status_code=500 msg="a b""#).unwrap();
        assert_eq!(
            t,
            vec![
                ("service.name".into(), "api".into()),
                ("http.status_code".into(), "500".into()),
                ("msg".into(), "a b".into())
            ]
        );
        assert!(logfmt("novalue").is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}=v")).collect();
        assert!(logfmt(&many[..MAX_TAGS].join(" ")).is_ok());
        assert!(logfmt(&many.join(" ")).is_err());
        assert!(logfmt(r#"a="x"#).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(unix_nanos("start", "1700000000").unwrap(), 1_700_000_000_000_000_000);
        assert!(time_range(Some("10"), Some("5")).is_err());
        assert!(unix_nanos("start", "yesterday").is_err());
    }
}
