//! Map-attribute equalities prune row groups by the blocks' Bloom filters.

mod support;

use datafusion::prelude::{ident, lit};
use spindle_query::prune::{access_plan, map_value_filters};
use spindle_storage::BlockOptions;
use support::data;

/// One block of `traces` plus `needle`, in row groups of 64 spans, in memory.
async fn block_of(
    traces: &[Vec<data::TSpan>],
    needle: &data::TSpan,
) -> (std::sync::Arc<dyn object_store::ObjectStore>, spindle_storage::BlockMeta) {
    let mut spans: Vec<&data::TSpan> = traces.iter().flatten().collect();
    spans.push(needle);
    let store: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(object_store::memory::InMemory::new());
    let tenant = spindle_storage::TenantId::default_tenant();
    let options = BlockOptions { row_group_rows: 64, page_rows: 16, ..BlockOptions::default() };
    let block =
        spindle_storage::write_block(store.clone(), &tenant, "c", 0, (1, 2), vec![data::batch(&spans)], &options)
            .await
            .unwrap()
            .unwrap();
    (store, block)
}

#[tokio::test]
async fn a_rare_value_reads_only_its_row_groups() {
    let traces = data::traces(11, 300);
    let mut needle = traces[5][0].clone();
    needle.span_id = [9; 8];
    needle.attrs.push(("user.id".into(), data::Val::Str("needle".into())));
    let (store, block) = block_of(&traces, &needle).await;
    let filter = datafusion::functions::core::expr_fn::get_field(ident("span_attrs_str"), "user.id").eq(lit("needle"));
    let filters = map_value_filters(&[filter.and(ident("name").eq(lit("x")))]);
    assert_eq!(filters.len(), 1);
    let plan = access_plan(store.clone(), &block, &filters).await.expect("a plan");
    let scanned = plan.row_group_indexes().len();
    assert!(plan.len() > 10, "{} row groups", plan.len());
    assert!((1..=2).contains(&scanned), "scans {scanned} of {} row groups", plan.len());
    let none =
        map_value_filters(&[
            datafusion::functions::core::expr_fn::get_field(ident("span_attrs_str"), "user.id").eq(lit("nobody"))
        ]);
    let plan = access_plan(store, &block, &none).await.expect("a plan");
    assert!(plan.row_group_indexes().len() <= 1, "a value nowhere reads (almost) nothing");
}

/// `{ span.user.id = "v" }` also matches `v` inside an array under `user.id` (Tempo 3.0): the
/// Bloom filter of the string values cannot see it, so a row group is skipped only when the
/// statistics of the `other` map's keys show no such key.
#[tokio::test]
async fn a_value_inside_an_array_is_not_pruned_away() {
    let traces = data::traces(12, 300);
    let mut needle = traces[5][0].clone();
    needle.span_id = [9; 8];
    needle.attrs.retain(|(k, _)| k != "user.id");
    needle.attrs.push(("user.id".into(), data::Val::Array(vec![data::Val::Str("in-array".into())])));
    let (store, block) = block_of(&traces, &needle).await;
    let get = datafusion::functions::core::expr_fn::get_field;
    let condition = |value: &str| {
        get(ident("span_attrs_str"), "user.id")
            .eq(lit(value))
            .or(spindle_query::traceql::udf::array_compare(spindle_traceql::BinaryOp::Eq)
                .call(vec![get(ident("span_attrs_other"), "user.id"), lit(value)]))
    };
    let filters = map_value_filters(&[condition("in-array")]);
    assert_eq!(filters.len(), 1, "the OR with the array comparison is recognised");
    let plan = access_plan(store.clone(), &block, &filters).await.expect("a plan");
    // The row group holding the array under user.id is read (the other maps' keys elsewhere,
    // such as the generated `arr`, leave the rest prunable) ...
    let scanned = plan.row_group_indexes();
    assert!(plan.len() > 10 && !scanned.is_empty() && scanned.len() <= 2, "scans {scanned:?} of {}", plan.len());
    // ... where the string equality alone would skip every row group.
    let plain = map_value_filters(&[get(ident("span_attrs_str"), "user.id").eq(lit("in-array"))]);
    let plan = access_plan(store, &block, &plain).await.expect("a plan");
    assert!(plan.row_group_indexes().len() < scanned.len(), "{:?}", plan.row_group_indexes());
}

/// Array keys that sort around the wanted one (so the keys' min/max cannot rule it out) leave the
/// pruning working: the keys' Bloom filter shows `user.id` holds no array in those row groups.
#[tokio::test]
async fn array_keys_around_the_wanted_one_keep_the_pruning() {
    let mut traces = data::traces(13, 300);
    for span in traces.iter_mut().flatten() {
        span.attrs.push(("a.first".into(), data::Val::Array(vec![data::Val::Int(1)])));
        span.attrs.push(("z.last".into(), data::Val::Array(vec![data::Val::Int(2)])));
    }
    let mut needle = traces[5][0].clone();
    needle.span_id = [9; 8];
    needle.attrs.push(("user.id".into(), data::Val::Str("needle".into())));
    let (store, block) = block_of(&traces, &needle).await;
    let get = datafusion::functions::core::expr_fn::get_field;
    let condition = get(ident("span_attrs_str"), "user.id")
        .eq(lit("needle"))
        .or(spindle_query::traceql::udf::array_compare(spindle_traceql::BinaryOp::Eq)
            .call(vec![get(ident("span_attrs_other"), "user.id"), lit("needle")]));
    let filters = map_value_filters(&[condition]);
    let plan = access_plan(store, &block, &filters).await.expect("a plan");
    let scanned = plan.row_group_indexes().len();
    assert!(plan.len() > 10 && (1..=2).contains(&scanned), "scans {scanned} of {}", plan.len());
}
