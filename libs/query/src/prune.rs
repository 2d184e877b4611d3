//! Row-group pruning DataFusion cannot do by itself: an equality on a map attribute
//! (`span_attrs_str['user.id'] = 'u-42'`, what `{ span.user.id = "u-42" }` becomes) is checked
//! against the Parquet Bloom filter of the map's value column in each row group, so a search for
//! a rare value reads only the row groups that may hold it. TraceQL also matches the value
//! inside an array attribute (`... OR tql_array_eq(span_attrs_other['user.id'], 'u-42')`):
//! then a row group is skipped only when, besides the Bloom filter, the statistics of the
//! `other` map's keys show it holds no encoded value under that key.

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
    /// When an array under the same key may match too: the `other` map column and the key,
    /// which must be absent from a row group for it to be skipped.
    pub or_array: Option<(String, String)>,
}

/// `get_field(<column>, '<key>')`: the column and the key.
fn map_entry(e: &Expr) -> Option<(&str, &str)> {
    let Expr::ScalarFunction(f) = e else { return None };
    if f.func.name() != "get_field" {
        return None;
    }
    match (f.args.first(), f.args.get(1)) {
        (Some(Expr::Column(c)), Some(Expr::Literal(ScalarValue::Utf8(Some(key)), _))) => Some((&c.name, key)),
        _ => None,
    }
}

/// `map['key'] = 'value'` on a string map: (map, key, value).
fn string_equality<'a>(e: &'a Expr, maps: &[String]) -> Option<(&'a str, &'a str, &'a str)> {
    let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = e else { return None };
    let Expr::Literal(ScalarValue::Utf8(Some(value)), _) = right.as_ref() else { return None };
    let (column, key) = map_entry(left)?;
    maps.iter().any(|m| m == column).then_some((column, key, value.as_str()))
}

/// A string equality and an array equality (each `(map, key, value)`), as `a OR b`.
type EqualityPair<'a> = ((&'a str, &'a str, &'a str), (&'a str, &'a str, &'a str));

fn or_array_pair<'a>(a: &'a Expr, b: &'a Expr, maps: &[String]) -> Option<EqualityPair<'a>> {
    Some((string_equality(a, maps)?, array_equality(b)?))
}

/// `tql_array_eq(other_map['key'], 'value')`: (other map, key, value).
fn array_equality(e: &Expr) -> Option<(&str, &str, &str)> {
    let Expr::ScalarFunction(f) = e else { return None };
    if f.func.name() != "tql_array_eq" {
        return None;
    }
    let (column, key) = map_entry(f.args.first()?)?;
    match f.args.get(1) {
        Some(Expr::Literal(ScalarValue::Utf8(Some(value)), _)) => Some((column, key, value.as_str())),
        _ => None,
    }
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
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, .. })
                if matches!(left.as_ref(), Expr::ScalarFunction(_)) =>
            {
                if let Some((column, _, value)) = string_equality(e, &maps) {
                    out.push(MapValueFilter { column: column.into(), values: vec![value.into()], or_array: None });
                }
            }
            // `str = v OR tql_array_eq(other[k], v)`, in either order, on the same key and value.
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
                let found = or_array_pair(left, right, &maps).or_else(|| or_array_pair(right, left, &maps));
                if let Some(((column, key, value), (other, other_key, other_value))) = found {
                    if key == other_key && value == other_value {
                        out.push(MapValueFilter {
                            column: column.into(),
                            values: vec![value.into()],
                            or_array: Some((other.into(), key.into())),
                        });
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
    let leaf = |path: String| (0..columns.num_columns()).find(|&i| columns.column(i).path().string() == path);
    // (values leaf, filter, keys leaf of the `other` map when arrays may match too)
    let leaves: Vec<(usize, &MapValueFilter, Option<usize>)> = filters
        .iter()
        .filter_map(|f| {
            let values = leaf(format!("{}.entries.values", f.column))?;
            match &f.or_array {
                None => Some((values, f, None)),
                Some((other, _)) => Some((values, f, Some(leaf(format!("{other}.entries.keys"))?))),
            }
        })
        .collect();
    if leaves.is_empty() {
        return None;
    }
    let mut plan = ParquetAccessPlan::new_all(metadata.num_row_groups());
    for rg in 0..metadata.num_row_groups() {
        for (leaf, f, keys_leaf) in &leaves {
            if let (Some(keys), Some((_, key))) = (keys_leaf, &f.or_array) {
                let chunk = metadata.row_group(rg).column(*keys);
                let by_bloom = match builder.get_row_group_column_bloom_filter(rg, *keys).await {
                    Ok(Some(bloom)) => !bloom.check(&key.as_str()),
                    _ => false,
                };
                if !by_bloom && !key_absent(chunk.statistics(), chunk.num_values(), key) {
                    continue;
                }
            }
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

/// Whether a map's key column statistics prove `key` absent from the row group: every key slot
/// null (no map has an entry), or `key` outside the keys' range. Without statistics nothing is
/// proven. (Blocks written since the keys have a Bloom filter are checked with it first.)
fn key_absent(stats: Option<&datafusion::parquet::file::statistics::Statistics>, values: i64, key: &str) -> bool {
    use datafusion::parquet::file::statistics::Statistics;
    let Some(Statistics::ByteArray(s)) = stats else {
        return false;
    };
    if s.null_count_opt().is_some_and(|nulls| nulls as i64 == values) {
        return true;
    }
    match (s.min_opt(), s.max_opt()) {
        (Some(min), Some(max)) => key.as_bytes() < min.data() || key.as_bytes() > max.data(),
        _ => false,
    }
}
