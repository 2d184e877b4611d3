//! Writing one Parquet block from buffered span batches.

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat, interleave_record_batch, lexsort_to_indices, SortColumn};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use spindle_schema::{col, span_schema};

use crate::block_writer::SpanBlockWriter;
use crate::bloom::TraceBloom;
use crate::tenant::TenantId;
use crate::upload::upload_streaming;
use crate::Result;

/// Version of the block layout written by this code (the block schema plus writer settings).
/// 1: the span schema as is. 2: [`spindle_schema::block_schema`], parents as row offsets
/// ([`crate::parent`]), row groups ending at trace boundaries.
pub const BLOCK_LAYOUT_VERSION: u32 = 2;

/// Everything a querier needs to decide whether to open a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Unique block id: cluster, shard and log range (`<cluster>-<shard>-<first>-<last>`).
    pub id: String,
    /// Shard that wrote the block.
    pub shard: u32,
    /// First Raft log index whose spans the block holds (0 in blocks of older layouts).
    #[serde(default)]
    pub first_index: u64,
    /// Last Raft log index whose spans the block holds.
    #[serde(default)]
    pub last_index: u64,
    /// Object path of the Parquet file.
    pub path: String,
    /// Earliest span start, unix nanoseconds.
    pub min_time_ns: i64,
    /// Latest span end, unix nanoseconds.
    pub max_time_ns: i64,
    /// Smallest trace id, hex.
    pub min_trace_id: String,
    /// Largest trace id, hex.
    pub max_trace_id: String,
    /// Number of spans.
    pub rows: u64,
    /// Size of the Parquet file in bytes.
    pub bytes: u64,
    /// When the block was written, unix milliseconds.
    pub created_unix_ms: u64,
    /// Layout version ([`BLOCK_LAYOUT_VERSION`]).
    pub layout: u32,
    /// Bloom filter of the block's trace ids (absent in blocks written before it existed, and
    /// in shard catalogs, which leave it to the object-store index). Always serialised: the
    /// Raft log's encoding is not self-describing.
    #[serde(default)]
    pub trace_bloom: Option<TraceBloom>,
}

impl BlockMeta {
    /// Whether the block may hold spans overlapping `[start_ns, end_ns]`.
    pub fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.min_time_ns <= end_ns && self.max_time_ns >= start_ns
    }

    /// Whether the block may hold spans of `trace_id`: inside its id range and its Bloom filter.
    pub fn may_contain_trace(&self, trace_id: &[u8; 16]) -> bool {
        let hex_id = hex::encode(trace_id);
        let in_range = self.min_trace_id.as_str() <= hex_id.as_str() && hex_id.as_str() <= self.max_trace_id.as_str();
        in_range && self.trace_bloom.as_ref().is_none_or(|b| b.may_contain(trace_id))
    }
}

/// Tunables for block writing.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// Rows per Parquet row group (about: groups end at trace boundaries).
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Rows per data page, at most. Blocks are sorted by trace id and carry page indexes, so a
    /// trace-by-id lookup decodes one page per column: small pages keep that cheap.
    pub page_rows: usize,
    /// Largest dictionary page of a column chunk (bytes); a column with more distinct values
    /// falls back to plain encoding. A lookup decompresses the dictionary page of every column
    /// it reads, so this bounds the cost of a point read in high-cardinality columns.
    pub dictionary_page_bytes: usize,
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self { row_group_rows: 256 * 1024, zstd_level: 3, page_rows: 4096, dictionary_page_bytes: 64 * 1024 }
    }
}

/// Where a shard writes a tenant's blocks (one folder per cluster and shard).
pub fn block_dir(tenant: &TenantId, cluster: &str, shard: u32) -> Path {
    Path::from(format!("{}/blocks/{cluster}/shard-{shard:05}", tenant.as_str()))
}

/// Object path of the block holding a shard's appends of log range `[first, last]`. Derived
/// from the range, so writing the same range again (a retried flush) overwrites the same
/// object instead of leaving a second copy.
pub fn block_path(tenant: &TenantId, cluster: &str, shard: u32, first: u64, last: u64) -> Path {
    Path::from(format!("{}/{first:020}-{last:020}.parquet", block_dir(tenant, cluster, shard)))
}

/// Object path of the block a compaction job merges into. The name carries the end of the
/// job's lease: once that has passed, an output the catalog does not name can never be
/// committed and may be deleted.
pub fn compacted_block_path(tenant: &TenantId, cluster: &str, shard: u32, lease_until_ms: u64, job: &str) -> Path {
    Path::from(format!("{}/c-{lease_until_ms:020}-{job}.parquet", block_dir(tenant, cluster, shard)))
}

/// The lease end in a file name written by [`compacted_block_path`].
pub fn parse_compacted_file_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("c-")?.strip_suffix(".parquet")?;
    rest.split_once('-')?.0.parse().ok()
}

/// The log range in a block file name written by [`block_path`].
pub fn parse_block_file_name(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(".parquet")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Sorts `batches` by trace id, start time and span id, drops repeated spans, and writes them
/// as the block of log range `range` of `shard`, streaming the upload while a blocking thread
/// encodes. Returns `None` when there are no rows.
pub async fn write_block(
    store: Arc<dyn ObjectStore>,
    tenant: &TenantId,
    cluster: &str,
    shard: u32,
    range: (u64, u64),
    batches: Vec<RecordBatch>,
    options: &BlockOptions,
) -> Result<Option<BlockMeta>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let options = options.clone();
    let (first_index, last_index) = range;
    let path = block_path(tenant, cluster, shard, first_index, last_index);
    let (facts, size) = upload_streaming(store, &path, move |w| encode_block_into(&batches, &options, w)).await?;
    let Some(facts) = facts else {
        return Ok(None);
    };
    let id = format!("{cluster}-{shard}-{first_index}-{last_index}");
    Ok(Some(facts.into_meta(id, shard, range, &path, size)))
}

/// What writing a block learnt about its rows.
#[derive(Debug, Clone)]
pub struct BlockFacts {
    /// Rows.
    pub rows: u64,
    /// Earliest span start.
    pub min_time_ns: i64,
    /// Latest span end.
    pub max_time_ns: i64,
    /// Smallest trace id, hex.
    pub min_trace_id: String,
    /// Largest trace id, hex.
    pub max_trace_id: String,
    /// Bloom filter of the trace ids.
    pub trace_bloom: TraceBloom,
}

impl BlockFacts {
    /// The catalog entry of the block these facts describe.
    pub fn into_meta(self, id: String, shard: u32, range: (u64, u64), path: &Path, bytes: u64) -> BlockMeta {
        BlockMeta {
            id,
            shard,
            first_index: range.0,
            last_index: range.1,
            path: path.to_string(),
            min_time_ns: self.min_time_ns,
            max_time_ns: self.max_time_ns,
            min_trace_id: self.min_trace_id,
            max_trace_id: self.max_trace_id,
            rows: self.rows,
            bytes,
            created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            layout: BLOCK_LAYOUT_VERSION,
            trace_bloom: Some(self.trace_bloom),
        }
    }
}

/// A block encoded in memory, with its facts.
pub struct EncodedBlock {
    /// The Parquet file.
    pub parquet: Vec<u8>,
    /// What the block holds.
    pub facts: BlockFacts,
}

/// Sorts and encodes span batches as a Parquet file in memory. `None` when there are no rows.
pub fn encode_block(batches: &[RecordBatch], options: &BlockOptions) -> Result<Option<EncodedBlock>> {
    let mut parquet = Vec::new();
    Ok(encode_block_into(batches, options, &mut parquet)?.map(|facts| EncodedBlock { parquet, facts }))
}

/// Rows materialised at a time while writing a block.
const WRITE_CHUNK_ROWS: usize = 32 * 1024;

/// Sorts and encodes span batches as a Parquet file written to `out`. `None` (and nothing
/// written) when there are no rows.
///
/// Only the sort keys (trace id, start time, span id) are concatenated; rows are then gathered
/// in sorted order a chunk at a time, so writing a block needs little memory beyond its input.
/// A span that appears twice (same trace id, start time and span id: a client that sent a
/// batch again) is written once.
pub fn encode_block_into<W: Write + Send>(
    batches: &[RecordBatch],
    options: &BlockOptions,
    out: W,
) -> Result<Option<BlockFacts>> {
    let schema = span_schema();
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Ok(None);
    }
    let trace_idx = schema.index_of(col::TRACE_ID)?;
    let start_idx = schema.index_of(col::START_TIME)?;
    let span_idx = schema.index_of(col::SPAN_ID)?;
    let duration_idx = schema.index_of(col::DURATION_NS)?;
    let column = |i: usize| concat(&batches.iter().map(|b| b.column(i).as_ref()).collect::<Vec<_>>());
    let (trace_col, start_col, span_col) = (column(trace_idx)?, column(start_idx)?, column(span_idx)?);
    let indices = lexsort_to_indices(
        &[
            SortColumn { values: trace_col.clone(), options: None },
            SortColumn { values: start_col.clone(), options: None },
            SortColumn { values: span_col.clone(), options: None },
        ],
        None,
    )?;
    let trace_ids = trace_col.as_fixed_size_binary();
    let (starts, span_ids) = (start_col.as_primitive::<TimestampNanosecondType>(), span_col.as_fixed_size_binary());
    let same = |a: usize, b: usize| {
        trace_ids.value(a) == trace_ids.value(b)
            && starts.value(a) == starts.value(b)
            && span_ids.value(a) == span_ids.value(b)
    };
    let mut order: Vec<u32> = Vec::with_capacity(indices.len());
    for &i in indices.values() {
        if order.last().is_none_or(|&prev| !same(prev as usize, i as usize)) {
            order.push(i);
        }
    }
    let rows = order.len();
    let distinct_traces =
        1 + order.windows(2).filter(|w| trace_ids.value(w[0] as usize) != trace_ids.value(w[1] as usize)).count();
    let mut trace_bloom = TraceBloom::with_capacity(distinct_traces);
    for &i in &order {
        trace_bloom.insert(trace_ids.value(i as usize));
    }

    let (mut min_time_ns, mut max_time_ns) = (i64::MAX, i64::MIN);
    for b in &batches {
        let starts = b.column(start_idx).as_primitive::<TimestampNanosecondType>();
        let durations = b.column(duration_idx).as_primitive::<Int64Type>();
        for (s, d) in starts.values().iter().zip(durations.values().iter()) {
            min_time_ns = min_time_ns.min(*s);
            max_time_ns = max_time_ns.max(s.saturating_add((*d).max(0)));
        }
    }

    // Global row number -> (batch, row in batch).
    let mut starts_at = Vec::with_capacity(batches.len());
    let mut total = 0;
    for b in &batches {
        starts_at.push(total);
        total += b.num_rows();
    }
    let locate = |g: usize| {
        let b = starts_at.partition_point(|&s| s <= g) - 1;
        (b, g - starts_at[b])
    };

    let props = writer_properties(options, distinct_traces.min(options.row_group_rows) as u64, trace_idx, start_idx)?;
    let mut w = SpanBlockWriter::new(out, props, options.row_group_rows)?;
    for chunk in order.chunks(WRITE_CHUNK_ROWS) {
        let picks: Vec<(usize, usize)> = chunk.iter().map(|&g| locate(g as usize)).collect();
        w.write(&interleave_record_batch(&batches, &picks)?)?;
    }
    w.finish()?;
    let first = order[0] as usize;
    let last = order[order.len() - 1] as usize;
    Ok(Some(BlockFacts {
        rows: rows as u64,
        min_time_ns,
        max_time_ns,
        min_trace_id: hex::encode(trace_ids.value(first)),
        max_trace_id: hex::encode(trace_ids.value(last)),
        trace_bloom,
    }))
}

/// All spans of a whole block file (any layout), in block order, in the span schema with
/// parents rebuilt. For tools and tests; queries read blocks through DataFusion.
pub fn decode_block(parquet: bytes::Bytes) -> Result<Vec<RecordBatch>> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)?.build()?;
    let mut parents = crate::parent::ParentRebuilder::new();
    reader.map(|batch| parents.to_spans(&batch?)).collect()
}

/// The Parquet leaf of the values of `span_attrs_str`.
pub fn span_map_values() -> ColumnPath {
    ColumnPath::new(vec![
        spindle_schema::attr_map_column(spindle_schema::AttrScope::Span, spindle_schema::AttrType::Str),
        "entries".into(),
        "values".into(),
    ])
}

/// The keys of the span attributes held encoded (arrays, maps, bytes): their Bloom filter tells
/// the query pruning which row groups hold no array under a key.
pub fn span_encoded_keys() -> ColumnPath {
    ColumnPath::new(vec![
        spindle_schema::attr_map_column(spindle_schema::AttrScope::Span, spindle_schema::AttrType::Other),
        "entries".into(),
        "keys".into(),
    ])
}

pub(crate) fn writer_properties(
    options: &BlockOptions,
    bloom_ndv: u64,
    trace_idx: usize,
    start_idx: usize,
) -> Result<WriterProperties> {
    // Ids and times are (nearly) unique: a dictionary of them only costs space, and every point
    // read of a row group would decompress its dictionary page.
    let no_dictionary = [col::TRACE_ID, col::SPAN_ID, col::PARENT_SPAN_ID, col::START_TIME, col::DURATION_NS];
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(options.zstd_level)?))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Row groups are cut by `SpanBlockWriter`, at trace boundaries.
        .set_max_row_group_row_count(None)
        .set_data_page_row_count_limit(options.page_rows.max(1))
        .set_dictionary_page_size_limit(options.dictionary_page_bytes.max(1))
        .set_write_batch_size(options.page_rows.clamp(1, 1024))
        .set_column_bloom_filter_enabled(ColumnPath::from(col::TRACE_ID), true)
        .set_column_bloom_filter_fpp(ColumnPath::from(col::TRACE_ID), 0.01)
        .set_column_bloom_filter_max_ndv(ColumnPath::from(col::TRACE_ID), bloom_ndv.max(1))
        // Values of the residual string span attributes (`user.id`, order ids, ...): a search for
        // one value reads only the row groups whose filter may hold it (`spindle-query` prunes
        // with it; DataFusion cannot see into maps). Sized for about two values per trace.
        .set_column_bloom_filter_enabled(span_map_values(), true)
        .set_column_bloom_filter_fpp(span_map_values(), 0.01)
        .set_column_bloom_filter_max_ndv(
            span_map_values(),
            (bloom_ndv * 2).clamp(1, options.row_group_rows.max(1) as u64),
        )
        // Keys of array (and other encoded) attributes: few distinct names per row group.
        .set_column_bloom_filter_enabled(span_encoded_keys(), true)
        .set_column_bloom_filter_fpp(span_encoded_keys(), 0.01)
        .set_column_bloom_filter_max_ndv(span_encoded_keys(), 256)
        .set_sorting_columns(Some(vec![
            SortingColumn { column_idx: trace_idx as i32, descending: false, nulls_first: false },
            SortingColumn { column_idx: start_idx as i32, descending: false, nulls_first: false },
        ]))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "spindle.block_layout".to_string(),
            BLOCK_LAYOUT_VERSION.to_string(),
        )]));
    for c in no_dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    // Random bytes, and small columns that are nearly always constant or empty, gain nothing
    // (or lose a little) from zstd; left uncompressed, a point read need not set up a zstd
    // context for each of them.
    let uncompressed = [
        col::SPAN_ID,
        col::TRACE_STATE,
        col::FLAGS,
        col::STATUS_CODE,
        col::STATUS_MESSAGE,
        col::DROPPED_ATTRIBUTES_COUNT,
        col::DROPPED_EVENTS_COUNT,
        col::DROPPED_LINKS_COUNT,
        col::RESOURCE_DROPPED_ATTRIBUTES_COUNT,
        col::RESOURCE_SCHEMA_URL,
        col::SCOPE_NAME,
        col::SCOPE_VERSION,
        col::SCOPE_DROPPED_ATTRIBUTES_COUNT,
        col::SCOPE_SCHEMA_URL,
    ];
    for c in uncompressed {
        b = b.set_column_compression(ColumnPath::from(c), Compression::UNCOMPRESSED);
    }
    Ok(b.build())
}
