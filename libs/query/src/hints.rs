//! What a scan's filters say about time and trace id, used to prune shards and blocks before
//! any Parquet is opened.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::prelude::{col, lit};
use spindle_schema::col as c;

/// Facts extracted from filters. Conservative: unknown shapes leave a field `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanHints {
    /// Spans start within `[start, end]` (unix ns).
    pub time_range: Option<(i64, i64)>,
    /// Spans belong to one of these traces.
    pub trace_ids: Option<Vec<[u8; 16]>>,
}

impl ScanHints {
    /// The one trace id, when exactly one is asked for.
    pub fn single_trace(&self) -> Option<[u8; 16]> {
        match self.trace_ids.as_deref() {
            Some([one]) => Some(*one),
            _ => None,
        }
    }

    /// Extracts hints from the conjunction of `filters`.
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut h = ScanHints::default();
        let mut start = i64::MIN;
        let mut end = i64::MAX;
        let mut visit = Vec::from_iter(filters.iter());
        while let Some(e) = visit.pop() {
            match e {
                Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                    visit.push(left);
                    visit.push(right);
                }
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (Expr::Column(column), Expr::Literal(value, _)) = (left.as_ref(), right.as_ref()) else {
                        continue;
                    };
                    if column.name == c::START_TIME {
                        if let ScalarValue::TimestampNanosecond(Some(v), _) = value {
                            match op {
                                Operator::Gt | Operator::GtEq => start = start.max(*v),
                                Operator::Lt | Operator::LtEq => end = end.min(*v),
                                Operator::Eq => {
                                    start = start.max(*v);
                                    end = end.min(*v);
                                }
                                _ => {}
                            }
                        }
                    } else if column.name == c::TRACE_ID && *op == Operator::Eq {
                        if let Some(id) = trace_id(value) {
                            h.trace_ids = Some(vec![id]);
                        }
                    }
                }
                Expr::InList(list) if !list.negated => {
                    if let Expr::Column(column) = list.expr.as_ref() {
                        if column.name == c::TRACE_ID {
                            let ids: Option<Vec<_>> = list
                                .list
                                .iter()
                                .map(|e| match e {
                                    Expr::Literal(v, _) => trace_id(v),
                                    _ => None,
                                })
                                .collect();
                            if ids.is_some() {
                                h.trace_ids = ids;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if start != i64::MIN || end != i64::MAX {
            h.time_range = Some((start, end));
        }
        h
    }
}

fn trace_id(value: &ScalarValue) -> Option<[u8; 16]> {
    match value {
        ScalarValue::FixedSizeBinary(16, Some(v)) | ScalarValue::Binary(Some(v)) => v.as_slice().try_into().ok(),
        _ => None,
    }
}

/// Filter: span starts within `[start, end]` (unix ns).
pub fn time_filter(start: i64, end: i64) -> Expr {
    let ts = |v| lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())));
    col(c::START_TIME).gt_eq(ts(start)).and(col(c::START_TIME).lt_eq(ts(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_time_and_trace() {
        let id = [7u8; 16];
        let f =
            vec![time_filter(10, 20), col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec()))))];
        let h = ScanHints::from_filters(&f);
        assert_eq!(h.time_range, Some((10, 20)));
        assert_eq!(h.single_trace(), Some(id));
        assert_eq!(ScanHints::from_filters(&[col(c::NAME).eq(lit("x"))]), ScanHints::default());
    }
}
