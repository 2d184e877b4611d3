//! Trace by id without DataFusion: the point read behind `GET /api/v2/traces/{id}`.
//!
//! A lookup touches one trace in a few blocks, so planning a query costs more than the read. This
//! reads each block the catalog and Bloom filters leave directly: the row groups whose `trace_id`
//! statistics span the id, and within them the pages whose page-index range holds it. Of those
//! pages it reads `trace_id` first, to find the trace's exact rows (rows are sorted by trace id,
//! so they are consecutive), then only those rows of the columns that hold a value in the row
//! group; a column whose every value there is null or empty (the statistics say so) is filled in,
//! not read. Pages are decoded by [`crate::page_read`]. Parents are rebuilt as in every other read
//! ([`spindle_storage::parent`]): the rows read are every row of the trace.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, FixedSizeBinaryArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
use spindle_schema::{block_schema, col};
use spindle_storage::parent::ParentRebuilder;
use spindle_storage::BlockMeta;

use crate::block_reader::PageIndexedReaderFactory;
use crate::page_read::{page_locations, read_rows};
use crate::{QueryError, Result};

fn read_error(block: &BlockMeta, e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(format!("reading block {}: {e}", block.path))
}

/// The spans of trace `id` in `block` (span schema, parents rebuilt), starting within `range`
/// when given, at most `max_spans` of them.
///
/// Two reads per row group: first the `trace_id` column of the candidate pages, which gives the
/// trace's exact rows (a page holds thousands of rows, a trace a few dozen; a Bloom filter false
/// positive ends here), then the other columns of just those rows.
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
    let groups = plan_read(&metadata, id);
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let arrow_metadata =
        ArrowReaderMetadata::try_new(metadata.clone(), ArrowReaderOptions::new()).map_err(|e| read_error(block, e))?;
    let file_schema = arrow_metadata.schema().clone();
    let columns = metadata.file_metadata().schema_descr();
    let Some(trace_root) = columns.root_schema().get_fields().iter().position(|f| f.name() == col::TRACE_ID) else {
        return Err(read_error(block, "the block has no trace_id column"));
    };
    let mut parents = ParentRebuilder::new();
    let mut out = Vec::new();
    let mut spans = 0;
    for group in groups {
        let ids = ProjectionMask::roots(columns, [trace_root]);
        let ids: Vec<RecordBatch> =
            read_rows(&mut reader, &metadata, file_schema.fields(), group.row_group, &group.rows, ids)
                .await
                .and_then(|batches| batches.collect::<std::result::Result<_, _>>().map_err(Into::into))
                .map_err(|e| read_error(block, e))?;
        let mut rows = rows_of_trace(&ids, &group.rows, id).map_err(|e| read_error(block, e))?;
        if range.is_none() {
            // Without a time range every row read is returned: read no more than are wanted.
            keep_first(&mut rows, max_spans - spans);
        }
        if rows.is_empty() {
            continue;
        }
        let roots: Vec<usize> =
            columns_with_values(&metadata, group.row_group).into_iter().filter(|&r| r != trace_root).collect();
        let read_schema: SchemaRef = Arc::new(file_schema.project(&roots).map_err(|e| read_error(block, e))?);
        let mask = ProjectionMask::roots(columns, roots.iter().copied());
        let batches = read_rows(&mut reader, &metadata, file_schema.fields(), group.row_group, &rows, mask)
            .await
            .map_err(|e| read_error(block, e))?;
        for batch in batches {
            let batch = batch.map_err(|e| read_error(block, e))?;
            let batch = parents.to_spans(&complete(&batch, &read_schema, id)?).map_err(|e| read_error(block, e))?;
            let batch = match range {
                Some((start, end)) => starting_within(&batch, start, end)?,
                None => batch,
            };
            let keep = batch.num_rows().min(max_spans - spans);
            spans += keep;
            out.push(batch.slice(0, keep));
            if spans >= max_spans {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The rows among `candidates` (ranges within a row group, in order) whose trace id is `id`,
/// given `ids`, the `trace_id` column read at those rows.
fn rows_of_trace(ids: &[RecordBatch], candidates: &[Range<usize>], id: &[u8; 16]) -> Result<Vec<Range<usize>>> {
    let mut positions = candidates.iter().cloned().flatten();
    let mut rows = Vec::new();
    for batch in ids {
        let column = batch
            .columns()
            .first()
            .and_then(|c| c.as_fixed_size_binary_opt())
            .ok_or_else(|| QueryError::Internal("trace_id is not a 16-byte id column".into()))?;
        for value in column.iter() {
            let row = positions
                .next()
                .ok_or_else(|| QueryError::Internal("the trace_id read holds more rows than asked for".into()))?;
            if value == Some(id.as_slice()) {
                push_range(&mut rows, row..row + 1);
            }
        }
    }
    Ok(rows)
}

/// What to read of one row group for a trace.
#[derive(Debug, PartialEq)]
struct GroupPlan {
    row_group: usize,
    /// Candidate rows (within the row group): the pages whose `trace_id` range holds the id.
    rows: Vec<Range<usize>>,
}

/// The row groups and pages of `metadata` whose `trace_id` range holds `id` (all of a row group
/// or page without statistics).
fn plan_read(metadata: &ParquetMetaData, id: &[u8; 16]) -> Vec<GroupPlan> {
    let columns = metadata.file_metadata().schema_descr();
    let Some(leaf) = (0..columns.num_columns()).find(|&i| columns.column(i).path().string() == col::TRACE_ID) else {
        return Vec::new();
    };
    let holds = |min: Option<&[u8]>, max: Option<&[u8]>| {
        min.is_none_or(|m| m <= id.as_slice()) && max.is_none_or(|m| id.as_slice() <= m)
    };
    let mut plan = Vec::new();
    for (rg, group) in metadata.row_groups().iter().enumerate() {
        let stats = group.column(leaf).statistics();
        if !holds(stats.and_then(|s| s.min_bytes_opt()), stats.and_then(|s| s.max_bytes_opt())) {
            continue;
        }
        let rows = group.num_rows() as usize;
        let pages = page_locations(metadata, rg, leaf);
        let index = metadata.column_index().and_then(|c| c.get(rg)).and_then(|c| c.get(leaf));
        let mut ranges = Vec::new();
        match (pages, index) {
            (Some(locations), Some(ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(index)))
                if index.num_pages() == locations.len() as u64 =>
            {
                for (page, location) in locations.iter().enumerate() {
                    if !holds(index.min_value(page), index.max_value(page)) {
                        continue;
                    }
                    let start = location.first_row_index as usize;
                    let end = locations.get(page + 1).map_or(rows, |next| next.first_row_index as usize);
                    push_range(&mut ranges, start.min(rows)..end.min(rows));
                }
            }
            _ => push_range(&mut ranges, 0..rows),
        }
        if !ranges.is_empty() {
            plan.push(GroupPlan { row_group: rg, rows: ranges });
        }
    }
    plan
}

/// Cuts `ranges` down to their first `n` rows.
fn keep_first(ranges: &mut Vec<Range<usize>>, n: usize) {
    let mut left = n;
    ranges.retain_mut(|r| {
        r.end = r.end.min(r.start + left);
        left -= r.len();
        r.start < r.end
    });
}

fn push_range(ranges: &mut Vec<Range<usize>>, range: Range<usize>) {
    match ranges.last_mut() {
        _ if range.start >= range.end => {}
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    }
}

/// Top-level columns (by index) with a value in `row_group`: a column is left out only when the
/// statistics of all its leaves say every value there is null (or an empty list/map).
fn columns_with_values(metadata: &ParquetMetaData, row_group: usize) -> Vec<usize> {
    let columns = metadata.file_metadata().schema_descr();
    let roots = columns.root_schema().get_fields().len();
    let mut has_values = vec![false; roots];
    for leaf in 0..columns.num_columns() {
        let root = columns.get_column_root_idx(leaf);
        if has_values[root] {
            continue;
        }
        let chunk = metadata.row_group(row_group).column(leaf);
        has_values[root] = chunk.statistics().and_then(|s| s.null_count_opt()) != Some(chunk.num_values() as u64);
    }
    (0..roots).filter(|&r| has_values[r]).collect()
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

/// `batch` (the columns read, as `read` names them, of rows of trace `id`) in the block schema:
/// `trace_id` is `id`, the columns not read are filled in as null or empty, columns stored with
/// another type are cast.
fn complete(batch: &RecordBatch, read: &SchemaRef, id: &[u8; 16]) -> Result<RecordBatch> {
    let schema = block_schema();
    let rows = batch.num_rows();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if field.name() == col::TRACE_ID {
            let ids = FixedSizeBinaryArray::new(16, Buffer::from(id.repeat(rows)), None);
            columns.push(Arc::new(ids) as ArrayRef);
            continue;
        }
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
    fn rows_are_cut_to_the_first_n() {
        let mut r = vec![0..10, 20..30, 40..50];
        keep_first(&mut r, 15);
        assert_eq!(r, vec![0..10, 20..25]);
        keep_first(&mut r, 0);
        assert!(r.is_empty());
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
