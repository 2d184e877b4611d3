//! Trace by id without DataFusion: the point read behind `GET /api/v2/traces/{id}`.
//!
//! A lookup touches one trace in a few blocks, so planning a query costs more than the read. This
//! reads each block the catalog and Bloom filters leave directly: the row groups whose `trace_id`
//! statistics span the id, within them only the pages whose page-index range holds it (the rows
//! are sorted by trace id, so that is the whole trace and little else), and only the columns that
//! hold a value there. A column whose every value in those row groups is null or empty (the
//! statistics say so) is not read but filled in; each column read costs a page decompression and,
//! in the Parquet crate, a zstd context. Parents are rebuilt as in every other read
//! ([`spindle_storage::parent`]): the pages selected hold every row of the trace.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, FixedSizeBinaryArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
use futures::TryStreamExt;
use spindle_schema::{block_schema, col};
use spindle_storage::parent::ParentRebuilder;
use spindle_storage::BlockMeta;

use crate::block_reader::PageIndexedReaderFactory;
use crate::{QueryError, Result};

/// Rows per decoded batch (a trace's selected pages are a few thousand rows).
const BATCH_ROWS: usize = 8192;

fn read_error(block: &BlockMeta, e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(format!("reading block {}: {e}", block.path))
}

/// The spans of trace `id` in `block` (span schema, parents rebuilt), starting within `range`
/// when given, at most `max_spans` of them.
pub async fn read_trace(
    factory: &PageIndexedReaderFactory,
    block: &BlockMeta,
    id: &[u8; 16],
    range: Option<(i64, i64)>,
    max_spans: usize,
) -> Result<Vec<RecordBatch>> {
    let file = PartitionedFile::new(block.path.clone(), block.bytes);
    let mut reader = factory.open(file).map_err(|e| read_error(block, e))?;
    let metadata = reader.get_metadata(None).await.map_err(|e| read_error(block, e))?;
    let Some(plan) = plan_read(&metadata, id) else {
        return Ok(Vec::new());
    };
    let arrow_metadata =
        ArrowReaderMetadata::try_new(metadata.clone(), ArrowReaderOptions::new()).map_err(|e| read_error(block, e))?;
    let file_schema = arrow_metadata.schema().clone();
    let roots = columns_with_values(&metadata, &plan.row_groups);
    let mask = ProjectionMask::roots(metadata.file_metadata().schema_descr(), roots.iter().copied());
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_metadata)
        .with_row_groups(plan.row_groups)
        .with_row_selection(RowSelection::from_consecutive_ranges(plan.rows.into_iter(), plan.total_rows))
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| read_error(block, e))?;
    let read_schema: SchemaRef = Arc::new(file_schema.project(&roots).map_err(|e| read_error(block, e))?);
    let mut parents = ParentRebuilder::new();
    let mut out = Vec::new();
    let mut spans = 0;
    let mut stream = std::pin::pin!(stream);
    while let Some(batch) = stream.try_next().await.map_err(|e| read_error(block, e))? {
        let batch = only_trace(&batch, id)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = parents.to_spans(&complete(&batch, &read_schema)?).map_err(|e| read_error(block, e))?;
        let batch = match range {
            Some((start, end)) => starting_within(&batch, start, end)?,
            None => batch,
        };
        let keep = batch.num_rows().min(max_spans - spans);
        spans += keep;
        out.push(batch.slice(0, keep));
        if spans >= max_spans {
            break;
        }
    }
    Ok(out)
}

/// What to read of a block for one trace.
#[derive(Debug, PartialEq)]
struct ReadPlan {
    row_groups: Vec<usize>,
    /// Row ranges to read, counted over the chosen row groups one after another.
    rows: Vec<Range<usize>>,
    total_rows: usize,
}

/// The row groups and pages of `metadata` whose `trace_id` range holds `id` (all of a row group
/// or page without statistics); `None` when none can.
fn plan_read(metadata: &ParquetMetaData, id: &[u8; 16]) -> Option<ReadPlan> {
    let columns = metadata.file_metadata().schema_descr();
    let leaf = (0..columns.num_columns()).find(|&i| columns.column(i).path().string() == col::TRACE_ID)?;
    let holds = |min: Option<&[u8]>, max: Option<&[u8]>| {
        min.is_none_or(|m| m <= id.as_slice()) && max.is_none_or(|m| id.as_slice() <= m)
    };
    let mut plan = ReadPlan { row_groups: Vec::new(), rows: Vec::new(), total_rows: 0 };
    for (rg, group) in metadata.row_groups().iter().enumerate() {
        let stats = group.column(leaf).statistics();
        if !holds(stats.and_then(|s| s.min_bytes_opt()), stats.and_then(|s| s.max_bytes_opt())) {
            continue;
        }
        let rows = group.num_rows() as usize;
        let pages = metadata.offset_index().and_then(|o| o.get(rg)).and_then(|o| o.get(leaf));
        let index = metadata.column_index().and_then(|c| c.get(rg)).and_then(|c| c.get(leaf));
        let base = plan.total_rows;
        match (pages, index) {
            (Some(pages), Some(ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(index))) => {
                let locations = pages.page_locations();
                for (page, location) in locations.iter().enumerate() {
                    if !holds(index.min_value(page), index.max_value(page)) {
                        continue;
                    }
                    let start = location.first_row_index as usize;
                    let end = locations.get(page + 1).map_or(rows, |next| next.first_row_index as usize);
                    push_range(&mut plan.rows, base + start..base + end.min(rows));
                }
            }
            _ => push_range(&mut plan.rows, base..base + rows),
        }
        plan.row_groups.push(rg);
        plan.total_rows += rows;
    }
    (!plan.rows.is_empty()).then_some(plan)
}

fn push_range(ranges: &mut Vec<Range<usize>>, range: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ if range.is_empty() => {}
        _ => ranges.push(range),
    }
}

/// Top-level columns (by index) with a value in any of `row_groups`: a column is left out only
/// when the statistics of all its leaves say every value there is null (or an empty list/map).
fn columns_with_values(metadata: &ParquetMetaData, row_groups: &[usize]) -> Vec<usize> {
    let columns = metadata.file_metadata().schema_descr();
    let roots = columns.root_schema().get_fields().len();
    let mut has_values = vec![false; roots];
    for leaf in 0..columns.num_columns() {
        let root = columns.get_column_root_idx(leaf);
        if has_values[root] {
            continue;
        }
        has_values[root] = row_groups.iter().any(|&rg| {
            let chunk = metadata.row_group(rg).column(leaf);
            chunk.statistics().and_then(|s| s.null_count_opt()) != Some(chunk.num_values() as u64)
        });
    }
    let fields = columns.root_schema().get_fields();
    (0..roots).filter(|&r| has_values[r] || fields[r].name() == col::TRACE_ID).collect()
}

/// The rows of `batch` in trace `id`.
pub(crate) fn only_trace(batch: &RecordBatch, id: &[u8; 16]) -> Result<RecordBatch> {
    let traces = batch
        .column_by_name(col::TRACE_ID)
        .and_then(|c| c.as_fixed_size_binary_opt())
        .ok_or_else(|| QueryError::Internal("a block batch has no 16-byte trace_id column".into()))?;
    if traces.iter().all(|t| t == Some(id.as_slice())) {
        return Ok(batch.clone());
    }
    let wanted = FixedSizeBinaryArray::new_scalar(id);
    let mask = arrow::compute::kernels::cmp::eq(traces, &wanted)?;
    Ok(filter_record_batch(batch, &mask)?)
}

/// `batch` (the columns read, as `read` names them) in the block schema: the columns not read
/// are filled in as null or empty, columns stored with another type are cast.
fn complete(batch: &RecordBatch, read: &SchemaRef) -> Result<RecordBatch> {
    let schema = block_schema();
    let rows = batch.num_rows();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match read.index_of(field.name()) {
            Ok(i) if batch.column(i).data_type() == field.data_type() => batch.column(i).clone(),
            Ok(i) => cast(batch.column(i), field.data_type())?,
            Err(_) => absent(field, rows)?,
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A column of `rows` values that hold nothing: nulls, or empty lists and maps where the field
/// cannot be null.
fn absent(field: &Field, rows: usize) -> Result<ArrayRef> {
    let nulls = new_null_array(field.data_type(), rows);
    if field.is_nullable() {
        return Ok(nulls);
    }
    match field.data_type() {
        DataType::List(_) | DataType::LargeList(_) | DataType::Map(..) => {
            let data = nulls.into_data().into_builder().nulls(None).build()?;
            Ok(arrow::array::make_array(data))
        }
        other => Err(QueryError::Internal(format!(
            "block column {} ({other}) cannot be left out: it holds a value in every row",
            field.name()
        ))),
    }
}

/// The rows of `batch` whose span starts within `[start, end]` (unix ns).
pub(crate) fn starting_within(batch: &RecordBatch, start: i64, end: i64) -> Result<RecordBatch> {
    let starts = batch
        .column_by_name(col::START_TIME)
        .filter(|c| matches!(c.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, _)))
        .map(|c| c.as_primitive::<arrow::datatypes::TimestampNanosecondType>())
        .ok_or_else(|| QueryError::Internal("a span batch has no nanosecond start_time column".into()))?;
    let mask: BooleanArray = starts.iter().map(|t| Some(t.is_some_and(|t| t >= start && t <= end))).collect();
    Ok(filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_adjacent() {
        let mut r = Vec::new();
        push_range(&mut r, 0..10);
        push_range(&mut r, 10..20);
        push_range(&mut r, 30..30);
        push_range(&mut r, 40..50);
        assert_eq!(r, vec![0..20, 40..50]);
    }

    #[test]
    fn a_column_that_cannot_be_null_is_filled_with_empty_maps() {
        let schema = block_schema();
        let attrs = schema.field_with_name(col::SCOPE_ATTRS).unwrap();
        let filled = absent(attrs, 3).unwrap();
        assert_eq!((filled.len(), filled.null_count()), (3, 0));
        assert_eq!(filled.as_map().value_offsets(), &[0, 0, 0, 0]);
        assert!(absent(schema.field_with_name(col::SPAN_ID).unwrap(), 1).is_err());
    }
}
