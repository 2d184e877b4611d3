//! Arrow IPC stream encoding of span batches: the wire format between ingesters, storage
//! nodes and queriers, and the payload format of the Raft log.

use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::ipc::CompressionType;
use arrow::record_batch::RecordBatch;

/// Encodes batches as one Arrow IPC stream (LZ4-compressed buffers).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
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
