//! A check of user SQL before DataFusion plans it: expression trees deeper than
//! [`MAX_SQL_EXPR_DEPTH`] are refused. A long flat chain (`1 + 1 + ...`, `a OR b OR ...`) is as
//! deep as it is long, and walking, evaluating or even dropping such a tree recursively would
//! overflow a worker thread's stack and abort the process. The check itself parses and drops the
//! tree on a thread with a stack big enough for the longest SQL text accepted.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::{QueryError, Result};

/// Deepest expression nesting accepted in user SQL.
pub const MAX_SQL_EXPR_DEPTH: usize = 256;

/// Stack of the checking thread: enough to parse and drop a 1 MiB chain of `1+1+...` (only
/// touched pages are backed by memory).
const CHECK_STACK_BYTES: usize = 1024 << 20;

/// Refuses `sql` if it does not parse or nests expressions deeper than [`MAX_SQL_EXPR_DEPTH`].
pub async fn check_sql(sql: &str) -> Result<()> {
    let sql = sql.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sql-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(check(&sql));
        })
        .map_err(|e| QueryError::Internal(format!("starting the SQL check: {e}")))?;
    rx.await.map_err(|_| QueryError::Internal("the SQL check ended without an answer".into()))?
}

fn check(sql: &str) -> Result<()> {
    let statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| QueryError::BadRequest(format!("SQL error: {e}")))?;
    let mut depth = Depth::default();
    if statements.visit(&mut depth).is_break() {
        return Err(QueryError::BadRequest(format!(
            "the SQL nests expressions more than {MAX_SQL_EXPR_DEPTH} levels deep (a chain of AND, OR or + \
             counts one level per operator; write long lists as IN (...))"
        )));
    }
    Ok(())
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
}
