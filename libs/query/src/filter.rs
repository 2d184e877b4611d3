//! Filters shared by the queries: trace id literals, attribute columns, and Tempo's legacy tag
//! search as a TraceQL spanset filter.

use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{ident, lit};
use spindle_schema::{attr_map_column, dedicated_column, AttrScope, AttrType};
use spindle_traceql::{Attribute, AttributeScope, BinaryOp, Field, FieldExpr, Intrinsic, SpansetExpr, Static, Status};

/// The expression reading attribute `key` of type `ty`: its dedicated column, or its typed map.
pub fn value_column(scope: AttrScope, key: &str, ty: AttrType) -> Expr {
    match dedicated_column(scope, key) {
        Some(d) if d.ty == ty => ident(d.column),
        _ => get_field(ident(attr_map_column(scope, ty)), key),
    }
}

/// `value` as a DataFusion literal of a trace id.
pub fn trace_id_literal(id: [u8; 16]) -> Expr {
    lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))
}

/// Tempo's legacy `tags` search (`service.name=api http.status_code=500`) as a spanset filter:
/// every pair must hold on one span, where the key is a span or resource attribute equal to the
/// text or, when it reads as one, the number or boolean; `name` and `status` also match the
/// intrinsics.
pub fn tags_to_traceql(tags: &[(String, String)]) -> SpansetExpr {
    SpansetExpr::Filter(tags_condition(tags))
}

/// The condition of [`tags_to_traceql`], for callers that add their own (true for no tags).
pub fn tags_condition(tags: &[(String, String)]) -> FieldExpr {
    let eq = |field: Field, value: Static| FieldExpr::Binary {
        op: BinaryOp::Eq,
        lhs: Box::new(FieldExpr::Field(field)),
        rhs: Box::new(FieldExpr::Static(value)),
    };
    let either =
        |a: FieldExpr, b: FieldExpr| FieldExpr::Binary { op: BinaryOp::Or, lhs: Box::new(a), rhs: Box::new(b) };
    let mut all: Option<FieldExpr> = None;
    for (key, value) in tags {
        let mut literals = vec![Static::Str(value.clone())];
        if let Ok(i) = value.parse::<i64>() {
            literals.push(Static::Int(i));
        } else if let Ok(f) = value.parse::<f64>() {
            literals.push(Static::Float(f));
        }
        if let Ok(b) = value.parse::<bool>() {
            literals.push(Static::Bool(b));
        }
        let mut any: Option<FieldExpr> = None;
        for scope in [AttributeScope::Span, AttributeScope::Resource] {
            for l in &literals {
                let field = Field::Attribute(Attribute { scope, parent: false, name: key.clone() });
                let cmp = eq(field, l.clone());
                any = Some(match any {
                    None => cmp,
                    Some(prev) => either(prev, cmp),
                });
            }
        }
        let intrinsic = match (key.as_str(), value.to_ascii_lowercase().as_str()) {
            ("name", _) => Some(eq(Field::Intrinsic(Intrinsic::Name), Static::Str(value.clone()))),
            ("status" | "status.code", "error") => {
                Some(eq(Field::Intrinsic(Intrinsic::Status), Static::Status(Status::Error)))
            }
            ("status" | "status.code", "ok") => {
                Some(eq(Field::Intrinsic(Intrinsic::Status), Static::Status(Status::Ok)))
            }
            ("status" | "status.code", "unset") => {
                Some(eq(Field::Intrinsic(Intrinsic::Status), Static::Status(Status::Unset)))
            }
            _ => None,
        };
        let mut cond = any.expect("two scopes");
        if let Some(i) = intrinsic {
            cond = either(cond, i);
        }
        all = Some(match all {
            None => cond,
            Some(prev) => FieldExpr::Binary { op: BinaryOp::And, lhs: Box::new(prev), rhs: Box::new(cond) },
        });
    }
    all.unwrap_or(FieldExpr::Static(Static::Bool(true)))
}
