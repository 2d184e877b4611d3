//! Merging blocks: a k-way merge of blocks (each sorted by trace id, start time, span id) into
//! one block in the same order, streamed from the inputs to the upload a batch at a time, so
//! memory stays at a few batches per input plus one row group of output whatever the sizes.
//! A span present twice (same trace id and span id, in one input or across inputs) is kept
//! once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef, TimestampNanosecondType};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use spindle_schema::{col, span_schema};
use tokio::sync::mpsc;

use crate::block::{writer_properties, BlockFacts, BlockMeta, BlockOptions};
use crate::block_writer::SpanBlockWriter;
use crate::bloom::TraceBloom;
use crate::parent::ParentRebuilder;
use crate::reader::BlockReader;
use crate::upload::upload_streaming;
use crate::{Result, StorageError};

/// Rows read per input batch and written per output batch.
const MERGE_BATCH_ROWS: usize = 8192;

/// Column positions of the merge keys in the span schema.
#[derive(Clone, Copy)]
struct Keys {
    trace: usize,
    start: usize,
    span: usize,
    duration: usize,
}

impl Keys {
    fn of(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            trace: schema.index_of(col::TRACE_ID)?,
            start: schema.index_of(col::START_TIME)?,
            span: schema.index_of(col::SPAN_ID)?,
            duration: schema.index_of(col::DURATION_NS)?,
        })
    }

    fn row(&self, batch: &RecordBatch, row: usize) -> Result<Key> {
        let id = |c: usize, len: usize| {
            let v = batch.column(c).as_fixed_size_binary().value(row);
            (v.len() == len).then_some(v).ok_or_else(|| {
                StorageError::Arrow(arrow::error::ArrowError::InvalidArgumentError(format!(
                    "column {c} holds an id of {} bytes",
                    v.len()
                )))
            })
        };
        let mut trace = [0u8; 16];
        trace.copy_from_slice(id(self.trace, 16)?);
        let mut span = [0u8; 8];
        span.copy_from_slice(id(self.span, 8)?);
        let start = batch.column(self.start).as_primitive::<TimestampNanosecondType>().value(row);
        let duration = batch.column(self.duration).as_primitive::<Int64Type>().value(row);
        Ok(Key { trace, start, span, duration })
    }
}

/// Sort key of a row (plus its duration, which is not part of the order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    trace: [u8; 16],
    start: i64,
    span: [u8; 8],
    duration: i64,
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.trace, self.start, self.span).cmp(&(other.trace, other.start, other.span))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

async fn open(
    store: &Arc<dyn ObjectStore>,
    block: &BlockMeta,
    columns: Option<usize>,
) -> Result<ParquetRecordBatchStream<BlockReader>> {
    let reader = BlockReader::new(store.clone(), Path::from(block.path.as_str()), block.bytes);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?.with_batch_size(MERGE_BATCH_ROWS);
    let builder = match columns {
        Some(c) => {
            let mask = ProjectionMask::roots(builder.parquet_schema(), [c]);
            builder.with_projection(mask)
        }
        None => builder,
    };
    Ok(builder.build()?)
}

/// The distinct trace ids of the inputs and their total rows (reads only the trace id column).
async fn distinct_traces(store: &Arc<dyn ObjectStore>, inputs: &[BlockMeta]) -> Result<(HashSet<[u8; 16]>, u64)> {
    let schema = span_schema();
    let trace = schema.index_of(col::TRACE_ID)?;
    let mut ids = HashSet::new();
    let mut rows = 0u64;
    for block in inputs {
        let mut stream = open(store, block, Some(trace)).await?;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows() as u64;
            let col = batch.column(0).as_fixed_size_binary();
            for v in col.iter().flatten() {
                if let Ok(id) = <[u8; 16]>::try_from(v) {
                    ids.insert(id);
                }
            }
        }
    }
    Ok((ids, rows))
}

/// One input being merged: its stream and the batch it is at.
struct Cursor {
    stream: ParquetRecordBatchStream<BlockReader>,
    /// Rebuilds the parent ids of the input's rows, read in order.
    parents: ParentRebuilder,
    /// Position of the current batch in the merge's batch pool.
    pooled: usize,
    row: usize,
    rows: usize,
}

/// Merges `inputs` into one block written to `output`; returns its facts and size, or `None`
/// (and no object) when the inputs hold no rows.
pub async fn merge_blocks(
    store: Arc<dyn ObjectStore>,
    inputs: &[BlockMeta],
    output: &Path,
    options: &BlockOptions,
) -> Result<Option<(BlockFacts, u64)>> {
    let schema = span_schema();
    let keys = Keys::of(&schema)?;
    let (traces, total_rows) = distinct_traces(&store, inputs).await?;
    if total_rows == 0 {
        return Ok(None);
    }
    let mut trace_bloom = TraceBloom::with_capacity(traces.len());
    for id in &traces {
        trace_bloom.insert(id);
    }
    let rows_per_group = (options.row_group_rows as u64).min(total_rows).max(1);
    let bloom_ndv = (traces.len() as u64 * rows_per_group).div_ceil(total_rows).max(1);
    let props = writer_properties(options, bloom_ndv, keys.trace, keys.start)?;
    drop(traces);

    // `None` ends the output; a merge that fails drops the sender without it, and the upload
    // is aborted instead of completing a partial block.
    let (tx, mut rx) = mpsc::channel::<Option<RecordBatch>>(2);
    let row_group_rows = options.row_group_rows;
    let upload = upload_streaming(store.clone(), output, move |w| {
        let mut writer = SpanBlockWriter::new(w, props, row_group_rows)?;
        loop {
            match rx.blocking_recv() {
                Some(Some(batch)) => writer.write(&batch)?,
                Some(None) => break,
                None => return Err(std::io::Error::other("the merge stopped before its end").into()),
            }
        }
        writer.finish()?;
        Ok(())
    });
    let merge = merge_into(store.clone(), inputs, keys, tx);
    let (uploaded, merged) = futures::join!(upload, merge);
    let mut facts = merged?;
    let ((), size) = uploaded?;
    facts.trace_bloom = trace_bloom;
    Ok(Some((facts, size)))
}

/// The merge itself: sends the output batches to `tx` and returns what they hold.
async fn merge_into(
    store: Arc<dyn ObjectStore>,
    inputs: &[BlockMeta],
    keys: Keys,
    tx: mpsc::Sender<Option<RecordBatch>>,
) -> Result<BlockFacts> {
    let mut pool: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::with_capacity(inputs.len());
    let mut heap: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
    for block in inputs {
        let mut stream = open(&store, block, None).await?;
        let mut parents = ParentRebuilder::new();
        if let Some(batch) = next_batch(&mut stream).await? {
            let batch = parents.to_spans(&batch)?;
            heap.push(Reverse((keys.row(&batch, 0)?, cursors.len())));
            cursors.push(Cursor { stream, parents, pooled: pool.len(), row: 0, rows: batch.num_rows() });
            pool.push(batch);
        }
    }
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(MERGE_BATCH_ROWS);
    let mut facts = BlockFacts {
        rows: 0,
        min_time_ns: i64::MAX,
        max_time_ns: i64::MIN,
        min_trace_id: String::new(),
        max_trace_id: String::new(),
        trace_bloom: TraceBloom::with_capacity(1),
    };
    let (mut current_trace, mut seen_spans) = (None::<[u8; 16]>, HashSet::<[u8; 8]>::new());
    let mut last_trace = [0u8; 16];
    while let Some(Reverse((key, i))) = heap.pop() {
        if current_trace != Some(key.trace) {
            current_trace = Some(key.trace);
            seen_spans.clear();
        }
        if seen_spans.insert(key.span) {
            let c = &cursors[i];
            picks.push((c.pooled, c.row));
            if facts.rows == 0 {
                facts.min_trace_id = hex::encode(key.trace);
            }
            facts.rows += 1;
            last_trace = key.trace;
            facts.min_time_ns = facts.min_time_ns.min(key.start);
            facts.max_time_ns = facts.max_time_ns.max(key.start.saturating_add(key.duration.max(0)));
        }
        let c = &mut cursors[i];
        c.row += 1;
        if c.row == c.rows {
            if let Some(batch) = next_batch(&mut c.stream).await? {
                let batch = c.parents.to_spans(&batch)?;
                c.pooled = pool.len();
                c.row = 0;
                c.rows = batch.num_rows();
                pool.push(batch);
            }
        }
        let c = &cursors[i];
        if c.row < c.rows {
            heap.push(Reverse((keys.row(&pool[c.pooled], c.row)?, i)));
        }
        if picks.len() >= MERGE_BATCH_ROWS {
            emit(&mut pool, &mut picks, &mut cursors, &tx).await?;
        }
    }
    emit(&mut pool, &mut picks, &mut cursors, &tx).await?;
    tx.send(None).await.map_err(|_| std::io::Error::other("the block writer stopped"))?;
    facts.max_trace_id = hex::encode(last_trace);
    Ok(facts)
}

async fn next_batch(stream: &mut ParquetRecordBatchStream<BlockReader>) -> Result<Option<RecordBatch>> {
    while let Some(batch) = stream.next().await.transpose()? {
        if batch.num_rows() > 0 {
            return Ok(Some(batch));
        }
    }
    Ok(None)
}

/// Gathers the picked rows into one batch for the writer, then drops the pooled batches no
/// cursor is reading any more.
async fn emit(
    pool: &mut Vec<RecordBatch>,
    picks: &mut Vec<(usize, usize)>,
    cursors: &mut [Cursor],
    tx: &mpsc::Sender<Option<RecordBatch>>,
) -> Result<()> {
    if !picks.is_empty() {
        let refs: Vec<&RecordBatch> = pool.iter().collect();
        let batch = interleave_record_batch(&refs, picks)?;
        picks.clear();
        tx.send(Some(batch)).await.map_err(|_| std::io::Error::other("the block writer stopped"))?;
    }
    let mut kept = Vec::with_capacity(cursors.len());
    for c in cursors.iter_mut().filter(|c| c.row < c.rows) {
        kept.push(pool[c.pooled].clone());
        c.pooled = kept.len() - 1;
    }
    *pool = kept;
    Ok(())
}
