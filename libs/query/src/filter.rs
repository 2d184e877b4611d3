//! TraceQL expressions and Tempo tag searches as DataFusion filters over the span schema.

use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{binary_expr, cast, Expr, Operator};
use datafusion::prelude::{col, lit};
use spindle_schema::{attr_map_column, col as c, dedicated_column, AttrScope, AttrType};
use spindle_traceql::{Attribute, Expr as Tql, Intrinsic, Literal, Op, Scope, Status};

use crate::{QueryError, Result};

/// The DataFusion filter for a TraceQL spanset expression.
pub fn traceql_filter(expr: &Tql) -> Result<Expr> {
    Ok(match expr {
        Tql::And(a, b) => traceql_filter(a)?.and(traceql_filter(b)?),
        Tql::Or(a, b) => traceql_filter(a)?.or(traceql_filter(b)?),
        Tql::Compare { attr, op, value } => compare(attr, *op, value)?,
    })
}

fn operator(op: Op) -> Operator {
    match op {
        Op::Eq => Operator::Eq,
        Op::Ne => Operator::NotEq,
        Op::Gt => Operator::Gt,
        Op::Ge => Operator::GtEq,
        Op::Lt => Operator::Lt,
        Op::Le => Operator::LtEq,
        Op::Regex => Operator::RegexMatch,
        Op::NotRegex => Operator::RegexNotMatch,
    }
}

fn apply(left: Expr, op: Op, right: Expr) -> Expr {
    binary_expr(left, operator(op), right)
}

/// TraceQL regular expressions match the whole value.
fn regex_literal(op: Op, value: &Literal) -> Option<Expr> {
    match (op, value) {
        (Op::Regex | Op::NotRegex, Literal::Str(s)) => Some(lit(format!("^(?:{s})$"))),
        _ => None,
    }
}

fn compare(attr: &Attribute, op: Op, value: &Literal) -> Result<Expr> {
    match attr {
        Attribute::Intrinsic(i) => intrinsic(*i, op, value),
        Attribute::Attr { scope, key } => {
            let scopes: &[AttrScope] = match scope {
                Scope::Resource => &[AttrScope::Resource],
                Scope::Span => &[AttrScope::Span],
                Scope::Unscoped => &[AttrScope::Span, AttrScope::Resource],
            };
            let mut out: Option<Expr> = None;
            for s in scopes {
                for e in attribute_compare(*s, key, op, value) {
                    out = Some(match out {
                        None => e,
                        Some(prev) => prev.or(e),
                    });
                }
            }
            out.ok_or_else(|| QueryError::BadRequest(format!("cannot compare attribute {key:?} with {value:?}")))
        }
    }
}

/// Comparisons of one scope's attribute `key` with a literal: one per column the value may be in.
fn attribute_compare(scope: AttrScope, key: &str, op: Op, value: &Literal) -> Vec<Expr> {
    let (ty, right) = match value {
        Literal::Str(s) => (AttrType::Str, regex_literal(op, value).unwrap_or_else(|| lit(s.clone()))),
        Literal::Int(i) => (AttrType::Int, lit(*i)),
        Literal::Float(f) => (AttrType::Float, lit(*f)),
        Literal::Bool(b) => (AttrType::Bool, lit(*b)),
        Literal::Duration(d) => (AttrType::Int, lit(*d)),
        Literal::Status(s) => (AttrType::Str, lit(status_name(*s))),
        Literal::Kind(k) => (AttrType::Str, lit(*k)),
    };
    let mut out = vec![apply(value_column(scope, key, ty), op, right.clone())];
    // Numbers compare across integer and float attributes, as in TraceQL.
    match value {
        Literal::Int(i) => out.push(apply(value_column(scope, key, AttrType::Float), op, lit(*i as f64))),
        Literal::Float(f) => out.push(apply(
            cast(value_column(scope, key, AttrType::Int), arrow::datatypes::DataType::Float64),
            op,
            lit(*f),
        )),
        _ => {}
    }
    out
}

/// The expression reading attribute `key` of type `ty`: its dedicated column, or its typed map.
pub fn value_column(scope: AttrScope, key: &str, ty: AttrType) -> Expr {
    match dedicated_column(scope, key) {
        Some(d) if d.ty == ty => col(d.column),
        _ => get_field(col(attr_map_column(scope, ty)), key),
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Unset => "unset",
        Status::Ok => "ok",
        Status::Error => "error",
    }
}

fn intrinsic(i: Intrinsic, op: Op, value: &Literal) -> Result<Expr> {
    let mismatch = || QueryError::BadRequest(format!("cannot compare {} with {value:?}", i.name()));
    Ok(match (i, value) {
        (Intrinsic::Name, Literal::Str(s)) => {
            apply(col(c::NAME), op, regex_literal(op, value).unwrap_or_else(|| lit(s.clone())))
        }
        (Intrinsic::StatusMessage, Literal::Str(s)) => {
            apply(col(c::STATUS_MESSAGE), op, regex_literal(op, value).unwrap_or_else(|| lit(s.clone())))
        }
        (Intrinsic::Status, Literal::Status(s)) if matches!(op, Op::Eq | Op::Ne) => {
            apply(col(c::STATUS_CODE), op, lit(status_name(*s)))
        }
        (Intrinsic::Kind, Literal::Kind(k)) if matches!(op, Op::Eq | Op::Ne) => apply(col(c::KIND), op, lit(*k)),
        (Intrinsic::Duration, Literal::Duration(d)) if !matches!(op, Op::Regex | Op::NotRegex) => {
            apply(col(c::DURATION_NS), op, lit(*d))
        }
        _ => return Err(mismatch()),
    })
}

/// The filter for a Tempo `tags` search: every `key=value` must hold on the same span, where
/// `key` is a span or resource attribute, and `value` matches the text or, when it reads as
/// one, the number or boolean.
pub fn tags_filter(tags: &[(String, String)]) -> Option<Expr> {
    let mut out: Option<Expr> = None;
    for (key, value) in tags {
        let mut alternatives: Vec<Expr> = Vec::new();
        let mut literals = vec![Literal::Str(value.clone())];
        if let Ok(i) = value.parse::<i64>() {
            literals.push(Literal::Int(i));
        } else if let Ok(f) = value.parse::<f64>() {
            literals.push(Literal::Float(f));
        }
        if let Ok(b) = value.parse::<bool>() {
            literals.push(Literal::Bool(b));
        }
        for scope in [AttrScope::Span, AttrScope::Resource] {
            for l in &literals {
                alternatives.extend(attribute_compare(scope, key, Op::Eq, l));
            }
        }
        // Tempo also lets tags name a few intrinsics.
        match key.as_str() {
            "name" => alternatives.push(col(c::NAME).eq(lit(value.clone()))),
            "status.code" | "status" => alternatives.push(col(c::STATUS_CODE).eq(lit(value.to_ascii_lowercase()))),
            _ => {}
        }
        let any = alternatives.into_iter().reduce(Expr::or);
        if let Some(any) = any {
            out = Some(match out {
                None => any,
                Some(prev) => prev.and(any),
            });
        }
    }
    out
}

/// `value` as a DataFusion literal of a trace id.
pub fn trace_id_literal(id: [u8; 16]) -> Expr {
    lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))
}
