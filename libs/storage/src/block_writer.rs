//! The one Parquet writer of span blocks, used by flushes and by compaction: takes span-schema
//! batches in block order, stores parents as offsets ([`crate::parent`]), ends row groups at
//! trace boundaries, and adds the tag summary to the footer.

use std::io::Write;

use arrow::array::{AsArray, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use spindle_schema::{block_schema, col, span_schema};

use crate::parent::ParentEncoder;
use crate::tags::{TagSummaryBuilder, TAGS_KEY};
use crate::Result;

/// A row group is cut inside a trace only when one trace alone has this many times the target.
const LONGEST_ROW_GROUP: usize = 4;

/// Writes span batches (sorted by trace id, start time, span id) as one block.
pub struct SpanBlockWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    tags: TagSummaryBuilder,
    parents: ParentEncoder,
    target_rows: usize,
    rows_in_group: usize,
    last_trace: Option<[u8; 16]>,
}

impl<W: Write + Send> SpanBlockWriter<W> {
    /// A writer of row groups of about `row_group_rows` rows (whole traces) to `out`.
    /// `props` come from [`crate::block::writer_properties`].
    pub fn new(out: W, props: WriterProperties, row_group_rows: usize) -> Result<Self> {
        Ok(Self {
            writer: ArrowWriter::try_new(out, block_schema(), Some(props))?,
            tags: TagSummaryBuilder::new(),
            parents: ParentEncoder::new(),
            target_rows: row_group_rows.max(1),
            rows_in_group: 0,
            last_trace: None,
        })
    }

    /// Appends the rows of `batch` (span schema), after those written before.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = batch.clone().with_schema(span_schema())?;
        self.tags.observe(&batch);
        let traces = batch.column_by_name(col::TRACE_ID).map(|c| c.as_fixed_size_binary().clone());
        let Some(traces) = traces else {
            return Err(arrow::error::ArrowError::SchemaError("no trace_id column".into()).into());
        };
        let mut start = 0;
        for row in 0..batch.num_rows() {
            let trace: Option<[u8; 16]> = traces.value(row).try_into().ok();
            let full = self.rows_in_group >= self.target_rows;
            if full && (trace != self.last_trace || self.rows_in_group >= self.target_rows * LONGEST_ROW_GROUP) {
                self.write_rows(&batch.slice(start, row - start))?;
                self.writer.flush()?;
                self.parents.new_row_group();
                self.rows_in_group = 0;
                start = row;
            }
            self.rows_in_group += 1;
            self.last_trace = trace;
        }
        self.write_rows(&batch.slice(start, batch.num_rows() - start))
    }

    fn write_rows(&mut self, rows: &RecordBatch) -> Result<()> {
        if rows.num_rows() > 0 {
            self.writer.write(&self.parents.encode(rows)?)?;
        }
        Ok(())
    }

    /// Writes the footer (with the tag summary) and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.writer.append_key_value_metadata(KeyValue::new(TAGS_KEY.to_string(), self.tags.finish().to_json()));
        Ok(self.writer.into_inner()?)
    }
}
