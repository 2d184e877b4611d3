//! Parents stored as row offsets (block layout 2): every way a parent can stand to its child
//! comes back as the same id, through whole-file reads, small read batches and compaction,
//! also when a layout-1 block is merged with layout-2 ones.

mod support;

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use opentelemetry_proto::tonic::trace::v1::Span;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use spindle_schema::{col, span_schema};
use spindle_storage::block::{decode_block, encode_block};
use spindle_storage::compact::merge_blocks;
use spindle_storage::parent::ParentRebuilder;
use spindle_storage::store::local_store;
use spindle_storage::{write_block, BlockOptions, TenantId};

/// (trace id, span id, parent id) of one span.
type Triple = ([u8; 16], [u8; 8], Option<[u8; 8]>);

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Traces whose spans stand to their parents in every way a block can meet: roots, parents
/// started before the child (offsets), parents started after it (kept as ids), parents not in
/// the data at all (orphans), deep chains and one trace longer than four row groups.
fn traces(seed: u64, count: usize, trace_base: u8) -> Vec<Span> {
    let mut rng = Rng(seed);
    let mut spans = Vec::new();
    for t in 0..count {
        let mut trace_id = [0u8; 16];
        trace_id[0] = trace_base;
        trace_id[1..9].copy_from_slice(&rng.next().to_be_bytes());
        trace_id[15] = t as u8;
        let len = if t == 3 { 45 } else { 1 + rng.below(12) as usize };
        let mut ids: Vec<[u8; 8]> = Vec::new();
        for i in 0..len {
            let span_id = rng.next().to_be_bytes();
            let parent = match (i, rng.below(10)) {
                (0, _) => None,
                (_, 0) => Some(rng.next().to_be_bytes()), // an orphan
                _ => Some(ids[rng.below(ids.len() as u64) as usize]),
            };
            // Mostly children start after their parents; one in eight starts before.
            let start = if rng.below(8) == 0 { i as u64 } else { 100 + 10 * i as u64 + rng.below(5) };
            ids.push(span_id);
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: format!("op-{i}"),
                start_time_unix_nano: 1_700_000_000_000_000_000 + start,
                end_time_unix_nano: 1_700_000_000_000_000_000 + start + 1_000,
                ..Default::default()
            });
        }
    }
    spans
}

fn triples(batches: &[RecordBatch]) -> BTreeSet<Triple> {
    let mut out = BTreeSet::new();
    for b in batches {
        let traces = b.column_by_name(col::TRACE_ID).unwrap().as_fixed_size_binary();
        let spans = b.column_by_name(col::SPAN_ID).unwrap().as_fixed_size_binary();
        let parents = b.column_by_name(col::PARENT_SPAN_ID).unwrap().as_fixed_size_binary();
        for r in 0..b.num_rows() {
            let parent = parents.is_valid(r).then(|| parents.value(r).try_into().unwrap());
            out.insert((traces.value(r).try_into().unwrap(), spans.value(r).try_into().unwrap(), parent));
        }
    }
    out
}

fn options() -> BlockOptions {
    BlockOptions { row_group_rows: 8, page_rows: 4, ..BlockOptions::default() }
}

#[test]
fn parents_come_back_from_offsets_ids_and_orphans() {
    let input = support::spans_batch(traces(7, 40, 1));
    let want = triples(std::slice::from_ref(&input));
    let encoded = encode_block(std::slice::from_ref(&input), &options()).unwrap().unwrap();
    let file = Bytes::from(encoded.parquet);

    assert_eq!(triples(&decode_block(file.clone()).unwrap()), want);

    // As stored: most parents are offsets, the rest ids; offsets stay inside row groups.
    let builder = ParquetRecordBatchReaderBuilder::try_new(file.clone()).unwrap();
    let groups: Vec<usize> = builder.metadata().row_groups().iter().map(|g| g.num_rows() as usize).collect();
    assert!(groups.len() > 4, "small row groups: {groups:?}");
    assert!(groups.iter().any(|&n| n > 8), "groups end at trace boundaries, past the target: {groups:?}");
    assert!(groups.iter().all(|&n| n <= 32), "a long trace is cut at four times the target: {groups:?}");
    let mut offsets = 0;
    let mut ids = 0;
    let mut row_groups = groups.iter().scan(0usize, |end, n| {
        *end += n;
        Some(*end)
    });
    let mut group_end = row_groups.next().unwrap();
    let mut row = 0usize;
    let mut group_start = 0usize;
    for batch in builder.with_batch_size(5).build().unwrap() {
        let batch = batch.unwrap();
        let stored = batch.column_by_name(col::PARENT_SPAN_ID).unwrap();
        let offset = batch.column_by_name(col::PARENT_OFFSET).unwrap().as_primitive::<Int32Type>();
        for r in 0..batch.num_rows() {
            if row == group_end {
                group_start = group_end;
                group_end = row_groups.next().unwrap();
            }
            let o = offset.value(r) as usize;
            if o > 0 {
                offsets += 1;
                assert!(stored.is_null(r), "an offset replaces the id");
                assert!(row - o >= group_start, "offset {o} at row {row} leaves its row group at {group_start}");
            } else if stored.is_valid(r) {
                ids += 1;
            }
            row += 1;
        }
    }
    assert!(offsets > 2 * ids, "most parents are offsets: {offsets} offsets, {ids} ids");
    assert!(ids > 0, "parents that start after their child and orphans stay ids");

    // Read in small batches: the rebuild carries a trace's rows from batch to batch.
    let mut rebuilder = ParentRebuilder::new();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().with_batch_size(3).build().unwrap();
    let small: Vec<RecordBatch> = reader.map(|b| rebuilder.to_spans(&b.unwrap()).unwrap()).collect();
    assert_eq!(triples(&small), want);
}

#[test]
fn a_scan_that_misses_earlier_rows_of_a_trace_is_an_error_not_a_wrong_parent() {
    let input = support::spans_batch(traces(11, 5, 1));
    let encoded = encode_block(std::slice::from_ref(&input), &BlockOptions::default()).unwrap().unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(encoded.parquet)).unwrap().build().unwrap();
    let whole: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&whole[0].schema(), &whole).unwrap();
    let offsets = batch.column_by_name(col::PARENT_OFFSET).unwrap().as_primitive::<Int32Type>();
    let first_offset = (0..batch.num_rows()).find(|&r| offsets.value(r) > 0).unwrap();
    let tail = batch.slice(first_offset, batch.num_rows() - first_offset);
    let err = ParentRebuilder::new().to_spans(&tail).unwrap_err();
    assert!(err.to_string().contains("earlier rows"), "{err}");
}

/// A layout-1 block (the span schema as is, parents as ids) written beside layout-2 ones.
async fn write_layout_1(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    meta: &mut spindle_storage::BlockMeta,
    batch: &RecordBatch,
) {
    let sorted = decode_block(store.get(&Path::from(meta.path.as_str())).await.unwrap().bytes().await.unwrap());
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, span_schema(), None).unwrap();
    for b in sorted.unwrap() {
        writer.write(&b).unwrap();
    }
    writer.close().unwrap();
    assert_eq!(triples(&decode_block(Bytes::from(out.clone())).unwrap()), triples(std::slice::from_ref(batch)));
    meta.bytes = out.len() as u64;
    store.put(&Path::from(meta.path.as_str()), PutPayload::from(out)).await.unwrap();
}

#[tokio::test]
async fn compaction_keeps_parents_across_layouts_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path()).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let mut all = BTreeSet::new();
    let mut blocks = Vec::new();
    let shared = traces(3, 10, 9); // the same spans in two blocks: duplicates to drop
    for (i, spans) in [traces(1, 30, 1), traces(2, 30, 1), shared.clone(), shared].into_iter().enumerate() {
        let batch = support::spans_batch(spans);
        all.extend(triples(std::slice::from_ref(&batch)));
        let range = (i as u64 * 10 + 1, i as u64 * 10 + 5);
        let mut meta =
            write_block(store.clone(), &tenant, "c", 0, range, vec![batch.clone()], &options()).await.unwrap().unwrap();
        if i == 1 {
            write_layout_1(&store, &mut meta, &batch).await;
        }
        blocks.push(meta);
    }
    let output = Path::from("acme/blocks/c/shard-00000/c-00000000000000000001-job.parquet");
    let (facts, _) = merge_blocks(store.clone(), &blocks, &output, &options()).await.unwrap().unwrap();
    assert_eq!(facts.rows as usize, all.len(), "each span once");
    let merged = decode_block(store.get(&output).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(triples(&merged), all);
}
