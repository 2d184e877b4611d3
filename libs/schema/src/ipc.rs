//! Arrow IPC stream encoding of span batches: the wire format between ingesters, storage
//! nodes and queriers, and the payload format of the Raft log.

use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::ipc::CompressionType;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

/// Encodes batches as one Arrow IPC stream (LZ4-compressed buffers).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let options = IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.get_array_memory_size() / 2).sum());
    {
        let mut writer = StreamWriter::try_new_with_options(&mut out, first.schema_ref(), options)?;
        for b in batches {
            writer.write(b)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

/// Decodes an Arrow IPC stream produced by [`encode`]. An empty buffer decodes to no batches.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    reader.collect()
}

/// One batch of spans in both forms: the IPC bytes that travel and go into the Raft log, and
/// the decoded batch. Whoever makes one pays one encode or one decode, never both, and
/// passes it on without converting again.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    ipc: Bytes,
    batch: RecordBatch,
}

impl EncodedBatch {
    /// Encodes a span batch.
    pub fn encode(batch: RecordBatch) -> Result<Self, ArrowError> {
        let ipc = Bytes::from(encode(std::slice::from_ref(&batch))?);
        Ok(Self { ipc, batch })
    }

    /// Decodes IPC bytes received from elsewhere, checking that they hold spans in the span
    /// schema (several batches in the stream are concatenated).
    pub fn decode(ipc: Bytes) -> Result<Self, ArrowError> {
        let batches = decode(&ipc)?;
        let schema = crate::span_schema();
        if let Some(bad) = batches.iter().find(|b| b.schema().fields() != schema.fields()) {
            return Err(ArrowError::SchemaError(format!(
                "batch is not in the span schema ({} columns, expected {})",
                bad.num_columns(),
                schema.fields().len()
            )));
        }
        let batch = match batches.len() {
            0 => RecordBatch::new_empty(schema),
            1 => batches.into_iter().next().unwrap_or_else(|| RecordBatch::new_empty(crate::span_schema())),
            _ => arrow::compute::concat_batches(&schema, &batches)?,
        };
        Ok(Self { ipc, batch })
    }

    /// The IPC bytes.
    pub fn ipc(&self) -> &Bytes {
        &self.ipc
    }

    /// The decoded batch.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Spans in the batch.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_schemas_are_refused() {
        use arrow::array::Int32Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let other = Schema::new(vec![Field::new("x", DataType::Int32, false)]);
        let batch = RecordBatch::try_new(Arc::new(other), vec![Arc::new(Int32Array::from(vec![1]))]).unwrap();
        let bytes = Bytes::from(encode(&[batch]).unwrap());
        assert!(EncodedBatch::decode(bytes).is_err());
        assert!(EncodedBatch::decode(Bytes::from_static(b"garbage")).is_err());
        let empty = EncodedBatch::encode(RecordBatch::new_empty(crate::span_schema())).unwrap();
        assert_eq!(EncodedBatch::decode(empty.ipc().clone()).unwrap().num_rows(), 0);
    }
}
