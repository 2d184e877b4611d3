//! Merging blocks: sorted output, duplicates removed, facts and Bloom filter right.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use opentelemetry_proto::tonic::trace::v1::Span;
use spindle_schema::col;
use spindle_storage::block::decode_block;
use spindle_storage::compact::merge_blocks;
use spindle_storage::store::local_store;
use spindle_storage::{write_block, BlockOptions, TenantId};

/// Spans `(trace byte, span byte)`, each starting at `1000 * span byte` ns.
fn batch(spans: &[(u8, u8)]) -> RecordBatch {
    let spans = spans
        .iter()
        .map(|&(t, s)| Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            name: format!("op-{s}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + 1000 * s as u64,
            end_time_unix_nano: 1_700_000_000_000_000_000 + 1000 * s as u64 + 500,
            ..Default::default()
        })
        .collect();
    support::spans_batch(spans)
}

#[tokio::test]
async fn merged_block_is_sorted_and_holds_each_span_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path()).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let options = BlockOptions { row_group_rows: 4, ..BlockOptions::default() };
    let inputs = [
        vec![(3, 1), (1, 1), (1, 2)],
        vec![(2, 5), (1, 3), (3, 1)], // (3, 1) again: a duplicate across blocks
        vec![(9, 9), (2, 4), (2, 4)], // (2, 4) twice in one block (dropped at flush already)
    ];
    let mut blocks = Vec::new();
    for (i, spans) in inputs.iter().enumerate() {
        let range = (i as u64 * 10 + 1, i as u64 * 10 + 5);
        let meta = write_block(store.clone(), &tenant, "c", 0, range, vec![batch(spans)], &options).await.unwrap();
        blocks.push(meta.unwrap());
    }
    let output = Path::from("acme/blocks/c/shard-00000/c-00000000000000000001-job.parquet");
    let (facts, size) = merge_blocks(store.clone(), &blocks, &output, &options).await.unwrap().unwrap();

    let bytes = store.get(&output).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);
    let batches = decode_block(bytes).unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let traces = b.column_by_name(col::TRACE_ID).unwrap().as_fixed_size_binary();
        let spans = b.column_by_name(col::SPAN_ID).unwrap().as_fixed_size_binary();
        let starts = b.column_by_name(col::START_TIME).unwrap().as_primitive::<TimestampNanosecondType>();
        for r in 0..b.num_rows() {
            rows.push((traces.value(r)[0], starts.value(r), spans.value(r)[0]));
        }
    }
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(rows, sorted, "sorted by trace id, start, span id");
    let spans: Vec<(u8, u8)> = rows.iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(spans, vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (3, 1), (9, 9)]);
    assert_eq!(facts.rows, 7);
    assert_eq!(facts.min_trace_id, "01".repeat(16));
    assert_eq!(facts.max_trace_id, "09".repeat(16));
    for t in [1u8, 2, 3, 9] {
        assert!(facts.trace_bloom.may_contain(&[t; 16]));
    }
    let distinct: HashSet<u8> = (10..60).filter(|t| facts.trace_bloom.may_contain(&[*t; 16])).collect();
    assert!(distinct.len() < 5, "the Bloom filter is sized for the merged traces: {distinct:?}");
}

#[tokio::test]
async fn a_failed_merge_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path()).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let options = BlockOptions::default();
    let mut good =
        write_block(store.clone(), &tenant, "c", 0, (1, 2), vec![batch(&[(1, 1)])], &options).await.unwrap().unwrap();
    let mut missing = good.clone();
    missing.path = "acme/blocks/c/shard-00000/gone.parquet".into();
    good.id = "other".into();
    let output = Path::from("acme/out.parquet");
    assert!(merge_blocks(Arc::clone(&store), &[good, missing], &output, &options).await.is_err());
    assert!(store.head(&output).await.is_err(), "no partial block may appear");
}
