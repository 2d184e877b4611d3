//! Durations as TraceQL, Tempo's HTTP parameters, Go and Prometheus write them: `150ms`, `1.5s`,
//! `1h30m`, `2d`, `1w`. The one duration grammar of Spindle: queries, flags, config files and
//! loadsim all read durations with it.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration in the grammar of [`parse_duration`] (nor a bare number of seconds).
    #[error("{0:?} is not a duration (e.g. 500ms, 30s, 1.5h, 1h30m, 2d)")]
    Invalid(String),
    /// A negative duration where only non-negative ones make sense.
    #[error("{0:?} is negative")]
    Negative(String),
}

/// Parses a setting's duration: the grammar of [`parse_duration`], or a bare number of seconds
/// (`30`, `0.5`), never negative.
pub fn parse_std_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let bare = !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit() || c == b'.');
    let ns = if bare { parse_duration(&format!("{t}s")) } else { parse_duration(t) }
        .ok_or_else(|| DurationError::Invalid(text.to_string()))?;
    u64::try_from(ns).map(Duration::from_nanos).map_err(|_| DurationError::Negative(text.to_string()))
}

/// Parses a duration into nanoseconds: a sequence of number + unit (`ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h`, and Prometheus' `d`, `w`, `y`), with an optional sign. `0` alone is zero. `None` for
/// anything else, including overflow.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..num_end];
        if number.is_empty() || number == "." {
            return None;
        }
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 7 * 86_400_000_000_000,
            "y" => 365 * 86_400_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole.checked_mul(scale)?;
        if !frac.is_empty() {
            // Exact decimal fraction of the unit, truncated to whole nanoseconds as Go does.
            let digits = frac.len().min(18);
            let f: i128 = frac[..digits].parse().ok()?;
            value += f * scale / 10i128.pow(digits as u32);
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as i128 {
            return None;
        }
    }
    let total = total as i64;
    Some(if negative { -total } else { total })
}

/// Formats nanoseconds as Go's `time.Duration.String` does: `0s`, `1.5ms`, `1m30s`, `1h0m0s`.
pub fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    if u < 1_000_000_000 {
        let (unit, scale) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", decimal(u, scale));
    }
    let hours = u / 3_600_000_000_000;
    let minutes = (u / 60_000_000_000) % 60;
    let seconds = u % 60_000_000_000;
    let mut out = String::from(sign);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&decimal(seconds, 1_000_000_000));
    out.push('s');
    out
}

/// `value / scale` with the fraction's trailing zeros dropped.
fn decimal(value: u64, scale: u64) -> String {
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_and_prometheus_durations() {
        assert_eq!(parse_duration("150ms"), Some(150_000_000));
        assert_eq!(parse_duration("1h2m"), Some(3_720_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_duration("2d"), Some(172_800_000_000_000));
        assert_eq!(parse_duration("1w"), Some(604_800_000_000_000));
        assert_eq!(parse_duration("300µs"), Some(300_000));
        assert_eq!(parse_duration("-1s"), Some(-1_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        for bad in ["10", "5x", "", "s", "1..5s", "99999999999999999999h", "1e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_take_the_same_grammar_and_bare_seconds() {
        assert_eq!(parse_std_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_std_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_std_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_std_duration(" 30 "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_std_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_std_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_std_duration("-1s"), Err(DurationError::Negative("-1s".into())));
        for bad in ["soon", "", "5x", "1..5", "s"] {
            assert_eq!(parse_std_duration(bad), Err(DurationError::Invalid(bad.into())), "{bad}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(1_500_000), "1.5ms");
        assert_eq!(format_duration(100_000), "100µs");
        assert_eq!(format_duration(7), "7ns");
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(format_duration(1_250_000_000), "1.25s");
        assert_eq!(format_duration(-2_000_000_000), "-2s");
    }
}
