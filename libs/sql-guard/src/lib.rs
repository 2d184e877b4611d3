//! A check of user SQL before it is planned: expression trees deeper than
//! [`MAX_SQL_EXPR_DEPTH`] are refused. A long flat chain (`1 + 1 + ...`, `a OR b OR ...`) is as
//! deep as it is long, and walking, evaluating or even dropping such a tree recursively would
//! overflow a worker thread's stack and abort the process. The check itself parses and drops the
//! tree on a thread with a stack big enough for the longest SQL text accepted. The parse itself
//! is bounded: brackets nest at most [`MAX_SQL_BRACKET_DEPTH`] deep, and the parser may start
//! at most [`PREFIX_BUDGET_BASE`] + [`PREFIX_BUDGET_PER_BYTE`] per byte of text prefix
//! expressions, retries included (see `budget.rs`), so no text makes it backtrack for long.

mod budget;

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Visit, Visitor};
use sqlparser::parser::{Parser, ParserError};

use crate::budget::Budgeted;

/// Why SQL was refused.
#[derive(Debug, thiserror::Error)]
pub enum SqlGuardError {
    /// The text is not SQL.
    #[error("SQL error: {0}")]
    Syntax(#[from] ParserError),
    /// Brackets nest deeper than [`MAX_SQL_BRACKET_DEPTH`].
    #[error("the SQL nests brackets more than {MAX_SQL_BRACKET_DEPTH} levels deep")]
    TooManyBrackets,
    /// Parsing the text would take more than its budget of work.
    #[error(
        "the SQL is too complex to parse (more than {PREFIX_BUDGET_BASE} + {PREFIX_BUDGET_PER_BYTE} per byte \
         expression starts; nested CASE, NOT or INTERVAL without their closing parts make the parser retry)"
    )]
    TooComplex,
    /// Expressions nest deeper than [`MAX_SQL_EXPR_DEPTH`].
    #[error(
        "the SQL nests expressions more than {MAX_SQL_EXPR_DEPTH} levels deep (a chain of AND, OR or + \
         counts one level per operator; write long lists as IN (...))"
    )]
    TooDeep,
    /// The checking thread could not run.
    #[error("running the SQL check: {0}")]
    Thread(#[source] std::io::Error),
    /// The checking thread ended without an answer.
    #[error("the SQL check ended without an answer")]
    NoAnswer,
}

impl SqlGuardError {
    /// Whether the SQL text is at fault (a client error), not the check.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, SqlGuardError::Thread(_) | SqlGuardError::NoAnswer)
    }
}

/// Result alias for this crate.
pub type Result<T, E = SqlGuardError> = std::result::Result<T, E>;

/// Deepest expression nesting accepted in user SQL.
pub const MAX_SQL_EXPR_DEPTH: usize = 256;

/// Deepest nesting of brackets (`(` and `[`) accepted. sqlparser backtracks at some brackets
/// (`CAST((`, `ARRAY[`), doubling its work with each level: found by fuzzing, 20 levels of
/// `CAST((` took 38 s; 16 levels stay well under a second.
pub const MAX_SQL_BRACKET_DEPTH: usize = 16;

/// Prefix expressions the parser may start (retries included) for any text...
pub const PREFIX_BUDGET_BASE: usize = 10_000;

/// ...plus this many per byte of text. Real queries start one per operand: 0.1-0.25 per byte
/// measured on typical queries, 0.5 for `1+1+...`; the doubling retries of nested `NOT +`
/// pass millions within 150 bytes.
pub const PREFIX_BUDGET_PER_BYTE: usize = 4;

/// Stack of the checking thread: enough to parse and drop a 1 MiB chain of `1+1+...` (only
/// touched pages are backed by memory).
const CHECK_STACK_BYTES: usize = 1024 << 20;

/// Refuses `sql` if it does not parse (within its budget) or nests expressions deeper than
/// [`MAX_SQL_EXPR_DEPTH`].
pub async fn check_sql(sql: &str) -> Result<()> {
    let sql = sql.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sql-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(check(&sql));
        })
        .map_err(SqlGuardError::Thread)?;
    rx.await.map_err(|_| SqlGuardError::NoAnswer)?
}

/// The check itself, on the caller's stack: callers with untrusted input longer than a few
/// KiB use [`check_sql`], which runs it on a thread with a big stack.
pub fn check(sql: &str) -> Result<()> {
    if bracket_depth(sql) > MAX_SQL_BRACKET_DEPTH {
        return Err(SqlGuardError::TooManyBrackets);
    }
    let dialect = Budgeted::new(PREFIX_BUDGET_BASE.saturating_add(PREFIX_BUDGET_PER_BYTE.saturating_mul(sql.len())));
    let parsed = Parser::parse_sql(&dialect, sql);
    if dialect.exhausted() {
        return Err(SqlGuardError::TooComplex);
    }
    let statements = parsed?;
    let mut depth = Depth::default();
    if statements.visit(&mut depth).is_break() {
        return Err(SqlGuardError::TooDeep);
    }
    Ok(())
}

/// The deepest nesting of `(` and `[` outside string literals, quoted identifiers and comments.
fn bracket_depth(sql: &str) -> usize {
    let b = sql.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    // Skips to just past the next `end` at or after `from` (or to the end).
    let skip_to = |from: usize, end: &[u8]| {
        b[from..].windows(end.len()).position(|w| w == end).map(|p| from + p + end.len()).unwrap_or(b.len())
    };
    while i < b.len() {
        match b[i] {
            // A doubled quote inside a literal ends it and starts the next: both are skipped alike.
            b'\'' => i = skip_to(i + 1, b"'"),
            b'"' => i = skip_to(i + 1, b"\""),
            b'`' => i = skip_to(i + 1, b"`"),
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_to(i + 2, b"\n"),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_to(i + 2, b"*/"),
            b'(' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
            }
            b')' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    deepest
}

#[derive(Default)]
struct Depth {
    current: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.current += 1;
        if self.current > MAX_SQL_EXPR_DEPTH {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_deep_expressions_and_survives_huge_ones() {
        assert!(check_sql("SELECT 1 + 2 AS x FROM spans WHERE name = 'a' OR name = 'b'").await.is_ok());
        let chain = |n: usize| format!("SELECT {} AS x", vec!["1"; n].join("+"));
        assert!(check_sql(&chain(100)).await.is_ok());
        let e = check_sql(&chain(1000)).await.unwrap_err();
        assert!(e.to_string().contains("levels deep"), "{e}");
        // The longest text the API accepts (1 MiB) as one flat chain.
        let e = check_sql(&chain(512 * 1024)).await.unwrap_err();
        assert!(e.to_string().contains("levels deep"), "{e}");
        let e = check_sql(&format!("{} +", chain(200_000))).await.unwrap_err();
        assert!(e.to_string().contains("SQL error"), "{e}");
    }

    #[test]
    fn refuses_deep_brackets_before_the_parser_backtracks_on_them() {
        for opener in ["CAST((", "ARRAY[", "(CAST("] {
            let deep = format!("SELECT * FROM t WHERE {}", opener.repeat(45));
            assert!(matches!(check(&deep), Err(SqlGuardError::TooManyBrackets)), "{opener}");
        }
        let ok = format!("SELECT {}1{} AS x", "(".repeat(MAX_SQL_BRACKET_DEPTH), ")".repeat(MAX_SQL_BRACKET_DEPTH));
        assert!(check(&ok).is_ok());
        // Brackets in literals, quoted names and comments do not count.
        let quoted = format!("SELECT '{0}' AS \"{0}\" -- {0}\n /* {0} */", "(".repeat(100));
        assert!(check(&quoted).is_ok(), "{:?}", check(&quoted));
        assert_eq!(bracket_depth("a ) ) (( b"), 2);
    }

    #[test]
    fn refuses_text_that_makes_the_parser_retry_exponentially() {
        // Each of these took seconds to hours before the budget (16 levels: 1-2 s, 22: minutes).
        for pattern in ["NOT + ", "CASE + ", "CASE - ", "INTERVAL + ", "CASE  CASE++E++  "] {
            let sql = format!("SELECT {}", pattern.repeat(40));
            let started = std::time::Instant::now();
            let e = check(&sql).unwrap_err();
            assert!(matches!(e, SqlGuardError::TooComplex), "{pattern}: {e}");
            // Not a timing assertion on the happy path: a regression takes minutes, not this.
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{pattern}");
        }
    }

    #[test]
    fn the_budget_leaves_real_queries_alone_and_parses_as_datafusion_does() {
        let queries = [
            "SELECT service_name, count(*) AS n, approx_percentile_cont(duration_nano, 0.99) FROM spans \
             WHERE start_time_unix_nano > now() - INTERVAL '1 hour' AND NOT (status_code = 2 OR kind IN (1, 2, 3)) \
             GROUP BY service_name HAVING count(*) > 10 ORDER BY n DESC LIMIT 20",
            "WITH t AS (SELECT trace_id, CASE WHEN status_code = 2 THEN 1 ELSE 0 END AS e FROM spans) \
             SELECT trace_id, sum(e) FROM t GROUP BY trace_id",
            "SELECT CASE WHEN a THEN CASE WHEN b THEN 1 ELSE 2 END ELSE -3 END, NOT NOT x, +1 - -2 FROM t",
            "SELECT a FROM t WHERE x IS NOT NULL AND y NOT LIKE '%z' AND CAST(d AS BIGINT) > 3 UNION ALL SELECT 1",
        ];
        for sql in queries {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let ours = Parser::parse_sql(&Budgeted::new(PREFIX_BUDGET_BASE), sql).unwrap();
            let generic = Parser::parse_sql(&sqlparser::dialect::GenericDialect {}, sql).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{generic:?}"), "{sql}");
        }
        // A long but ordinary query: an IN list of 100,000 values, far under its budget.
        let list = (0..100_000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        check(&format!("SELECT * FROM spans WHERE kind IN ({list})")).unwrap();
    }
}
