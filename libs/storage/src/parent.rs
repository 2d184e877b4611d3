//! How blocks store a span's parent: as a row offset when the parent is an earlier row of the
//! same trace in the same row group (nearly always: rows are sorted by trace id and start time,
//! and a parent starts before its children), and as the id in `parent_span_id` otherwise.
//! Random 8-byte ids compress not at all; small offsets compress to a fraction of a byte.
//!
//! Rebuilding the id needs the parent's row, so a reader must see, for every row it rebuilds,
//! every earlier row of that trace in that row group: whole row groups, or rows selected by
//! predicates on `trace_id` alone (which keep or drop whole traces).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int32Array, RecordBatch};
use arrow::datatypes::Int32Type;
use spindle_schema::{block_schema, col, span_schema};

use crate::{Result, StorageError};

fn layout_error(message: String) -> StorageError {
    StorageError::Arrow(arrow::error::ArrowError::InvalidArgumentError(message))
}

fn fixed_ids(batch: &RecordBatch, name: &str, width: i32) -> Result<FixedSizeBinaryArray> {
    let column = batch.column_by_name(name).ok_or_else(|| layout_error(format!("batch has no column {name}")))?;
    let ids = column
        .as_fixed_size_binary_opt()
        .filter(|a| a.value_length() == width)
        .ok_or_else(|| layout_error(format!("column {name} is not {width}-byte ids")))?;
    Ok(ids.clone())
}

/// Writer side: turns each row's parent id into an offset where it can, row by row in block
/// order. Call [`ParentEncoder::new_row_group`] where the writer starts a row group.
#[derive(Debug, Default)]
pub struct ParentEncoder {
    trace: Option<[u8; 16]>,
    /// Row (within the row group) of each span id of the current trace seen so far.
    rows_of_trace: HashMap<[u8; 8], u32>,
    row_in_group: u32,
}

impl ParentEncoder {
    /// A new encoder at the start of a row group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offsets never point across this point.
    pub fn new_row_group(&mut self) {
        self.trace = None;
        self.rows_of_trace.clear();
        self.row_in_group = 0;
    }

    /// Adds the block-only columns to a span-schema batch whose rows follow the previous one's:
    /// `parent_span_id` kept only where no offset stands for it, and `parent_offset`.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let traces = fixed_ids(batch, col::TRACE_ID, 16)?;
        let spans = fixed_ids(batch, col::SPAN_ID, 8)?;
        let parents = fixed_ids(batch, col::PARENT_SPAN_ID, 8)?;
        let mut offsets = Vec::with_capacity(batch.num_rows());
        let mut kept = FixedSizeBinaryBuilder::with_capacity(batch.num_rows(), 8);
        for row in 0..batch.num_rows() {
            let trace: [u8; 16] = traces.value(row).try_into().map_err(|_| layout_error("trace id width".into()))?;
            if self.trace != Some(trace) {
                self.trace = Some(trace);
                self.rows_of_trace.clear();
            }
            let offset = match parents.is_valid(row).then(|| parents.value(row)) {
                Some(parent) => match <[u8; 8]>::try_from(parent).ok().and_then(|p| self.rows_of_trace.get(&p)) {
                    Some(&at) => self.row_in_group - at,
                    None => 0,
                },
                None => 0,
            };
            if offset == 0 && parents.is_valid(row) {
                kept.append_value(parents.value(row))?;
            } else {
                kept.append_null();
            }
            offsets.push(i32::try_from(offset).map_err(|_| layout_error("row group too large".into()))?);
            if let Ok(span) = <[u8; 8]>::try_from(spans.value(row)) {
                // The first row wins: a repeated span id keeps pointing at its first row.
                self.rows_of_trace.entry(span).or_insert(self.row_in_group);
            }
            self.row_in_group += 1;
        }
        let schema = span_schema();
        let parent_idx = schema.index_of(col::PARENT_SPAN_ID)?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[parent_idx] = Arc::new(kept.finish());
        columns.push(Arc::new(Int32Array::from(offsets)));
        Ok(RecordBatch::try_new(block_schema(), columns)?)
    }
}

/// Reader side: rebuilds `parent_span_id` from the stored id and offset, over the rows of one
/// stream in block order (see the module doc for which rows a stream must hold).
#[derive(Debug, Default)]
pub struct ParentRebuilder {
    trace: Option<[u8; 16]>,
    /// Span ids of the current trace's rows so far, in order.
    spans_of_trace: Vec<[u8; 8]>,
}

impl ParentRebuilder {
    /// A rebuilder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The logical `parent_span_id` of the batch's rows. The batch must hold `trace_id`,
    /// `span_id` and `parent_span_id` as stored; `parent_offset` may be absent (layout 1) or
    /// null (layout 1 read with the block schema).
    pub fn rebuild(&mut self, batch: &RecordBatch) -> Result<FixedSizeBinaryArray> {
        let traces = fixed_ids(batch, col::TRACE_ID, 16)?;
        let spans = fixed_ids(batch, col::SPAN_ID, 8)?;
        let stored = fixed_ids(batch, col::PARENT_SPAN_ID, 8)?;
        let offsets = batch.column_by_name(col::PARENT_OFFSET).and_then(|c| c.as_primitive_opt::<Int32Type>().cloned());
        let Some(offsets) = offsets.filter(|o| o.null_count() < o.len()) else {
            self.trace = None;
            self.spans_of_trace.clear();
            return Ok(stored);
        };
        let mut out = FixedSizeBinaryBuilder::with_capacity(batch.num_rows(), 8);
        for row in 0..batch.num_rows() {
            let trace: [u8; 16] = traces.value(row).try_into().map_err(|_| layout_error("trace id width".into()))?;
            if self.trace != Some(trace) {
                self.trace = Some(trace);
                self.spans_of_trace.clear();
            }
            let span: [u8; 8] = spans.value(row).try_into().map_err(|_| layout_error("span id width".into()))?;
            let offset = if offsets.is_valid(row) { offsets.value(row) } else { 0 };
            if offset > 0 {
                let at = self.spans_of_trace.len().checked_sub(offset as usize).ok_or_else(|| {
                    layout_error(format!(
                        "a span's parent is {offset} rows back, but the scan holds {} earlier rows of its trace",
                        self.spans_of_trace.len()
                    ))
                })?;
                out.append_value(self.spans_of_trace[at])?;
            } else if stored.is_valid(row) {
                out.append_value(stored.value(row))?;
            } else {
                out.append_null();
            }
            self.spans_of_trace.push(span);
        }
        Ok(out.finish())
    }

    /// A span-schema batch from a batch of a whole block read with the block schema (or the
    /// span schema, for layout-1 blocks).
    pub fn to_spans(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = span_schema();
        let parents = self.rebuild(batch)?;
        let parents: ArrayRef = Arc::new(parents);
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            if field.name() == col::PARENT_SPAN_ID {
                columns.push(parents.clone());
            } else {
                let column = batch
                    .column_by_name(field.name())
                    .ok_or_else(|| layout_error(format!("block batch has no column {}", field.name())))?;
                columns.push(column.clone());
            }
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}
