//! Tag names and tag values for Grafana's autocomplete.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{col, Expr};
use futures::StreamExt;
use spindle_schema::{attr_map_column, col as c, AttrScope, AttrType, DEDICATED_COLUMNS};
use spindle_storage::TenantId;
use spindle_traceql::Intrinsic;

use crate::filter::value_column;
use crate::hints::time_filter;
use crate::{QueryEngine, Result};

/// Intrinsic tag names, as Tempo lists them.
pub const INTRINSIC_TAGS: [&str; 8] =
    ["duration", "kind", "name", "rootName", "rootServiceName", "status", "statusMessage", "traceDuration"];

/// Attribute names found, per scope.
#[derive(Debug, Default, Clone)]
pub struct TagNames {
    /// Resource attribute names.
    pub resource: BTreeSet<String>,
    /// Span attribute names.
    pub span: BTreeSet<String>,
}

/// A tag whose values are wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagRef {
    /// An attribute; `None` scope means span or resource.
    Attr(Option<AttrScope>, String),
    /// An intrinsic.
    Intrinsic(Intrinsic),
}

/// One distinct value and its TraceQL type (`string`, `int`, `float`, `bool`, `keyword`, `duration`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagValue {
    /// Type name.
    pub ty: &'static str,
    /// The value as text.
    pub value: String,
}

impl QueryEngine {
    /// Attribute names seen in spans starting within `range`, at most `limit` per scope.
    pub async fn tag_names(&self, tenant: &TenantId, range: (i64, i64), limit: usize) -> Result<TagNames> {
        let mut columns: Vec<Expr> = DEDICATED_COLUMNS.iter().map(|d| col(d.column)).collect();
        for scope in [AttrScope::Resource, AttrScope::Span] {
            for ty in AttrType::ALL {
                columns.push(col(attr_map_column(scope, ty)));
            }
        }
        let ctx = self.session(tenant)?;
        let mut stream =
            ctx.table("spans").await?.filter(time_filter(range.0, range.1))?.select(columns)?.execute_stream().await?;
        let mut names = TagNames::default();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            collect_names(&batch, &mut names);
            if names.resource.len() >= limit && names.span.len() >= limit {
                break;
            }
        }
        names.resource = names.resource.into_iter().take(limit).collect();
        names.span = names.span.into_iter().take(limit).collect();
        Ok(names)
    }

    /// Distinct values of a tag in spans starting within `range`, at most `limit`.
    pub async fn tag_values(
        &self,
        tenant: &TenantId,
        tag: &TagRef,
        range: (i64, i64),
        limit: usize,
    ) -> Result<Vec<TagValue>> {
        let exprs: Vec<(Expr, &'static str)> = match tag {
            TagRef::Intrinsic(i) => match i {
                Intrinsic::Name => vec![(col(c::NAME), "string")],
                Intrinsic::StatusMessage => vec![(col(c::STATUS_MESSAGE), "string")],
                Intrinsic::Status => vec![(col(c::STATUS_CODE), "keyword")],
                Intrinsic::Kind => vec![(col(c::KIND), "keyword")],
                Intrinsic::Duration => vec![(col(c::DURATION_NS), "duration")],
                _ => return Ok(Vec::new()),
            },
            TagRef::Attr(scope, key) => {
                let scopes = match scope {
                    Some(s) => vec![*s],
                    None => vec![AttrScope::Span, AttrScope::Resource],
                };
                let mut v = Vec::new();
                for s in scopes {
                    for (ty, name) in [
                        (AttrType::Str, "string"),
                        (AttrType::Int, "int"),
                        (AttrType::Float, "float"),
                        (AttrType::Bool, "bool"),
                    ] {
                        v.push((value_column(s, key, ty), name));
                    }
                }
                v
            }
        };
        let select: Vec<Expr> = exprs.iter().enumerate().map(|(i, (e, _))| e.clone().alias(format!("v{i}"))).collect();
        let ctx = self.session(tenant)?;
        let mut stream =
            ctx.table("spans").await?.filter(time_filter(range.0, range.1))?.select(select)?.execute_stream().await?;
        let mut values = BTreeSet::new();
        'outer: while let Some(batch) = stream.next().await {
            let batch = batch?;
            for (i, (_, ty)) in exprs.iter().enumerate() {
                collect_values(batch.column(i).as_ref(), ty, &mut values);
                if values.len() >= limit {
                    break 'outer;
                }
            }
        }
        Ok(values.into_iter().take(limit).collect())
    }
}

fn collect_names(batch: &RecordBatch, names: &mut TagNames) {
    for d in DEDICATED_COLUMNS {
        if let Some(column) = batch.column_by_name(d.column) {
            if column.null_count() < column.len() {
                let set = if d.scope == AttrScope::Resource { &mut names.resource } else { &mut names.span };
                set.insert(d.key.to_string());
            }
        }
    }
    for scope in [AttrScope::Resource, AttrScope::Span] {
        let set = if scope == AttrScope::Resource { &mut names.resource } else { &mut names.span };
        for ty in AttrType::ALL {
            let Some(column) = batch.column_by_name(&attr_map_column(scope, ty)) else {
                continue;
            };
            let Some(map) = column.as_map_opt() else {
                continue;
            };
            let keys = map.keys().as_string::<i32>();
            for i in 0..keys.len() {
                if !set.contains(keys.value(i)) {
                    set.insert(keys.value(i).to_string());
                }
            }
        }
    }
}

fn collect_values(column: &dyn Array, ty: &'static str, out: &mut BTreeSet<TagValue>) {
    for i in 0..column.len() {
        if column.is_null(i) {
            continue;
        }
        let value = match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().value(i).to_string(),
            DataType::Utf8View => column.as_string_view().value(i).to_string(),
            DataType::Int64 if ty == "duration" => {
                format!("{}ns", column.as_primitive::<Int64Type>().value(i))
            }
            DataType::Int64 => column.as_primitive::<Int64Type>().value(i).to_string(),
            DataType::Float64 => column.as_primitive::<Float64Type>().value(i).to_string(),
            DataType::Boolean => column.as_boolean().value(i).to_string(),
            _ => continue,
        };
        out.insert(TagValue { ty, value });
    }
}
