//! Row-group pruning DataFusion cannot do by itself: an equality on a map attribute
//! (`span_attrs_str['user.id'] = 'u-42'`, what `{ span.user.id = "u-42" }` becomes) is checked
//! against the Parquet Bloom filter of the map's value column in each row group, so a search for
//! a rare value reads only the row groups that may hold it.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use object_store::ObjectStore;
use spindle_schema::{attr_map_column, AttrScope, AttrType};
use spindle_storage::reader::BlockReader;
use spindle_storage::BlockMeta;

/// A map column and the string values one of its entries must equal.
#[derive(Debug, Clone, PartialEq)]
pub struct MapValueFilter {
    /// The map column (`span_attrs_str`, `resource_attrs_str`).
    pub column: String,
    /// The wanted values (any of them).
    pub values: Vec<String>,
}

/// The map-value equalities among the conjuncts of `filters`.
pub fn map_value_filters(filters: &[Expr]) -> Vec<MapValueFilter> {
    let maps = [attr_map_column(AttrScope::Span, AttrType::Str), attr_map_column(AttrScope::Resource, AttrType::Str)];
    let mut out = Vec::new();
    let mut visit: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = visit.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                visit.push(left);
                visit.push(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
                let (Expr::ScalarFunction(f), Expr::Literal(ScalarValue::Utf8(Some(value)), _)) =
                    (left.as_ref(), right.as_ref())
                else {
                    continue;
                };
                if f.func.name() != "get_field" {
                    continue;
                }
                if let Some(Expr::Column(c)) = f.args.first() {
                    if maps.contains(&c.name) {
                        out.push(MapValueFilter { column: c.name.clone(), values: vec![value.clone()] });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Which row groups of `block` to read under `filters`: `None` reads all; a plan with every row
/// group skipped means the block holds no match. Errors read all (pruning is an optimisation).
pub async fn access_plan(
    store: Arc<dyn ObjectStore>,
    block: &BlockMeta,
    filters: &[MapValueFilter],
) -> Option<ParquetAccessPlan> {
    if filters.is_empty() {
        return None;
    }
    let reader = BlockReader::new(store, object_store::path::Path::from(block.path.as_str()), block.bytes);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await.ok()?;
    let metadata = builder.metadata().clone();
    let columns = metadata.file_metadata().schema_descr();
    let leaves: Vec<(usize, &MapValueFilter)> = filters
        .iter()
        .filter_map(|f| {
            let path = format!("{}.entries.values", f.column);
            (0..columns.num_columns()).find(|&i| columns.column(i).path().string() == path).map(|i| (i, f))
        })
        .collect();
    if leaves.is_empty() {
        return None;
    }
    let mut plan = ParquetAccessPlan::new_all(metadata.num_row_groups());
    for rg in 0..metadata.num_row_groups() {
        for (leaf, f) in &leaves {
            if let Ok(Some(bloom)) = builder.get_row_group_column_bloom_filter(rg, *leaf).await {
                if !f.values.iter().any(|v| bloom.check(&v.as_str())) {
                    plan.skip(rg);
                    break;
                }
            }
        }
    }
    Some(plan)
}
