//! Span batches on the wire between ingesters, storage nodes and queriers, and in the Raft log.
//!
//! A batch travels as one Arrow IPC stream (buffers not compressed one by one), compressed as a
//! whole into one LZ4 block behind a small header:
//!
//! ```text
//! [magic "SPZ" 0x01][rows u32 LE][IPC stream length u32 LE][LZ4 block of the IPC stream]
//! ```
//!
//! One block compresses better than LZ4 per Arrow buffer (about 2.3x smaller for realistic
//! spans) and costs far less (hundreds of buffers of a few bytes each made LZ4 frames expensive),
//! the span schema's message is encoded once per process and, when a stream starts with it,
//! not parsed again (a push of a few dozen spans spent a tenth of its encode and decode on it),
//! and the header tells a replica what a batch holds without decoding it. Decoding also reads a
//! plain Arrow IPC stream (earlier versions wrote LZ4 per buffer).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{read_record_batch, StreamReader};
use arrow::ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, StreamWriter,
};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

/// First bytes of a compressed batch.
const MAGIC: [u8; 4] = *b"SPZ\x01";
const HEADER: usize = 12;
/// Largest IPC stream a compressed batch may claim to hold.
pub const MAX_DECODED_BYTES: usize = 256 * 1024 * 1024;

/// Encodes batches as one Arrow IPC stream compressed into one LZ4 block (see the module doc).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let capacity = batches.iter().map(crate::batch_bytes).sum::<usize>() + 1024;
    let ipc = if batches.iter().all(|b| is_span_schema(b.schema_ref())) {
        // The span schema's message is encoded once per process, not once per batch.
        let mut ipc = Vec::with_capacity(capacity + span_schema_message().len());
        ipc.extend_from_slice(span_schema_message());
        let generator = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(false);
        let options = IpcWriteOptions::default();
        WRITE_CONTEXT.with_borrow_mut(|context| -> Result<(), ArrowError> {
            for b in batches {
                let (dictionaries, batch) = generator.encode(b, &mut tracker, &options, context)?;
                for d in dictionaries {
                    write_message(&mut ipc, d, &options)?;
                }
                write_message(&mut ipc, batch, &options)?;
            }
            Ok(())
        })?;
        ipc.extend_from_slice(&END_OF_STREAM);
        ipc
    } else {
        encode_plain(batches)?
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let too_big = |what: &str| ArrowError::IpcError(format!("span batch {what} exceeds 4 GiB"));
    let rows = u32::try_from(rows).map_err(|_| too_big("row count"))?;
    let len = u32::try_from(ipc.len()).map_err(|_| too_big("size"))?;
    let block = lz4_flex::block::compress(&ipc);
    let mut out = Vec::with_capacity(HEADER + block.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&block);
    Ok(out)
}

/// Encodes batches as a plain Arrow IPC stream, not compressed: what every earlier version of
/// Spindle reads (used while a cluster runs mixed versions, and for a shard's unflushed spans
/// streamed to queriers).
pub fn encode_plain(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(batches.iter().map(crate::batch_bytes).sum::<usize>() + 1024);
    let mut writer = StreamWriter::try_new(&mut out, first.schema_ref())?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Whether `bytes` are a batch as [`encode`] makes it (not a plain IPC stream).
pub fn is_compressed(bytes: &[u8]) -> bool {
    header(bytes).is_some()
}

/// The header of a compressed batch: rows and IPC stream length.
fn header(bytes: &[u8]) -> Option<(usize, usize)> {
    let h = bytes.get(..HEADER).filter(|h| h[..4] == MAGIC)?;
    let rows = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    Some((rows, len))
}

/// Decodes bytes produced by [`encode`] (or a plain Arrow IPC stream). An empty buffer decodes
/// to no batches.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let Some((_, len)) = header(bytes) else {
        return read_stream(bytes);
    };
    if len > MAX_DECODED_BYTES {
        return Err(ArrowError::IpcError(format!("a span batch claims {len} bytes (at most {MAX_DECODED_BYTES})")));
    }
    // Decompressed into fresh capacity, not a zeroed buffer (zeroing cost a page fault per
    // page); the decoder checks every write against `len` and fails on more.
    let ipc = lz4_flex::block::decompress(&bytes[HEADER..], len)
        .map_err(|e| ArrowError::IpcError(format!("decompressing spans: {e}")))?;
    if ipc.len() != len {
        return Err(ArrowError::IpcError(format!("a span batch holds {} bytes, its header says {len}", ipc.len())));
    }
    if ipc.starts_with(span_schema_message()) {
        return read_span_messages(Buffer::from_vec(ipc));
    }
    read_stream(&ipc)
}

fn read_stream(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    reader.collect()
}

thread_local! {
    /// The flatbuffer builder and scratch space of IPC encoding, kept per thread.
    static WRITE_CONTEXT: std::cell::RefCell<IpcWriteContext> = std::cell::RefCell::default();
}

/// The end of an IPC stream: a continuation marker and a zero length.
const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

fn is_span_schema(schema: &SchemaRef) -> bool {
    let span = crate::span_schema();
    Arc::ptr_eq(schema, &span) || schema.fields() == span.fields()
}

/// The IPC message of the span schema, as a stream writer starts a stream with it.
fn span_schema_message() -> &'static [u8] {
    static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();
    MESSAGE.get_or_init(|| {
        let mut out = Vec::new();
        // Writing a schema to a Vec cannot fail for the span schema; an empty message would
        // only turn the fast paths off.
        if let Ok(writer) = StreamWriter::try_new(&mut out, &crate::span_schema()) {
            drop(writer);
        }
        out
    })
}

/// Reads the record batches of a stream that starts with the span schema's message, with the
/// span schema known (not parsed again) and the buffers sliced from `stream`, not copied.
fn read_span_messages(stream: Buffer) -> Result<Vec<RecordBatch>, ArrowError> {
    let short = || ArrowError::IpcError("IPC stream cut short".into());
    let schema = crate::span_schema();
    let no_dictionaries = HashMap::new();
    let mut out = Vec::new();
    let mut at = span_schema_message().len();
    loop {
        let word = |at: usize| -> Result<i32, ArrowError> {
            let b = stream.get(at..at + 4).ok_or_else(short)?;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut len = word(at)?;
        at += 4;
        if len == -1 {
            len = word(at)?;
            at += 4;
        }
        if len == 0 {
            return Ok(out);
        }
        let len = usize::try_from(len).map_err(|_| ArrowError::IpcError("negative IPC message length".into()))?;
        let meta = stream.get(at..at + len).ok_or_else(short)?;
        let message = arrow::ipc::root_as_message(meta)
            .map_err(|e| ArrowError::IpcError(format!("unreadable IPC message header: {e}")))?;
        at += len;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| ArrowError::IpcError("negative IPC body length".into()))?;
        if at + body_len > stream.len() {
            return Err(short());
        }
        let body = stream.slice_with_length(at, body_len);
        at += body_len;
        let batch = message
            .header_as_record_batch()
            .ok_or_else(|| ArrowError::IpcError("a span batch holds a message other than a record batch".into()))?;
        out.push(read_record_batch(&body, batch, schema.clone(), &no_dictionaries, None, &message.version())?);
    }
}

/// What an IPC stream holds, read from its message headers without decoding any data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcSummary {
    /// Rows in all its record batches.
    pub rows: usize,
    /// Bytes its buffers take once decompressed (about what the decoded batches take).
    pub data_bytes: usize,
}

/// The row count and decoded size of bytes produced by [`encode`], from the header alone (a
/// replica that only keeps the bytes learns what it holds this way); a plain Arrow IPC stream is
/// read from its message headers (no buffer decompressed or validated).
pub fn summary(bytes: &[u8]) -> Result<IpcSummary, ArrowError> {
    if let Some((rows, len)) = header(bytes) {
        return Ok(IpcSummary { rows, data_bytes: len });
    }
    stream_summary(bytes)
}

fn stream_summary(bytes: &[u8]) -> Result<IpcSummary, ArrowError> {
    let short = || ArrowError::IpcError("IPC stream cut short".into());
    let i32_at = |at: usize| -> Result<i32, ArrowError> {
        let b = bytes.get(at..at + 4).ok_or_else(short)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = IpcSummary::default();
    let mut at = 0;
    while at < bytes.len() {
        let mut len = i32_at(at)?;
        at += 4;
        if len == -1 {
            len = i32_at(at)?;
            at += 4;
        }
        if len == 0 {
            break;
        }
        let len = usize::try_from(len).map_err(|_| ArrowError::IpcError("negative IPC message length".into()))?;
        let meta = bytes.get(at..at + len).ok_or_else(short)?;
        at += len;
        let message = arrow::ipc::root_as_message(meta)
            .map_err(|e| ArrowError::IpcError(format!("unreadable IPC message header: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| ArrowError::IpcError("negative IPC body length".into()))?;
        let body = bytes.get(at..at + body_len).ok_or_else(short)?;
        at += body_len;
        let batch = match message.header_type() {
            arrow::ipc::MessageHeader::RecordBatch => message.header_as_record_batch(),
            arrow::ipc::MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
            _ => None,
        };
        let Some(batch) = batch else { continue };
        if message.header_type() == arrow::ipc::MessageHeader::RecordBatch {
            out.rows += usize::try_from(batch.length()).unwrap_or(0);
        }
        let compressed = batch.compression().is_some();
        for buffer in batch.buffers().iter().flat_map(|b| b.iter()) {
            let (offset, length) = (buffer.offset() as usize, buffer.length() as usize);
            let data = body.get(offset..offset + length).ok_or_else(short)?;
            out.data_bytes += match data.get(..8).filter(|_| compressed) {
                Some(prefix) => match i64::from_le_bytes(prefix.try_into().unwrap_or([0; 8])) {
                    -1 => length - 8,
                    n => usize::try_from(n).unwrap_or(0),
                },
                None => length,
            };
        }
    }
    Ok(out)
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

    /// The same spans as a plain IPC stream (see [`encode_plain`]): for a peer of an earlier
    /// version.
    pub fn to_plain(&self) -> Result<Self, ArrowError> {
        if !is_compressed(&self.ipc) {
            return Ok(self.clone());
        }
        let ipc = Bytes::from(encode_plain(std::slice::from_ref(&self.batch))?);
        Ok(Self { ipc, batch: self.batch.clone() })
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
        assert_eq!(summary(empty.ipc()).unwrap().rows, 0);
    }

    #[test]
    fn hostile_batch_headers_are_refused() {
        let batch = RecordBatch::new_empty(crate::span_schema());
        let good = encode(&[batch]).unwrap();
        assert_eq!(decode(&good).unwrap().len(), 1);
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        let mut wrong = good.clone();
        wrong[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert!(decode(&wrong).is_err());
        assert!(decode(&good[..good.len() - 3]).is_err());
        assert!(decode(&good[..5]).is_err());
    }

    #[test]
    fn a_summary_counts_rows_and_decoded_bytes_without_decoding() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let batch = |rows: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(0..rows)),
                    Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("value {}", i % 7)))),
                ],
            )
            .unwrap()
        };
        let (a, b) = (batch(1000), batch(24));
        assert_eq!(summary(&encode(&[a.clone(), b.clone()]).unwrap()).unwrap().rows, 1024);
        // A plain stream of an earlier version, with LZ4 per buffer: read from its headers.
        let mut bytes = Vec::new();
        {
            let options = arrow::ipc::writer::IpcWriteOptions::default()
                .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
                .unwrap();
            let mut w = StreamWriter::try_new_with_options(&mut bytes, &schema, options).unwrap();
            w.write(&a).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(decode(&bytes).unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 1024);
        let s = summary(&bytes).unwrap();
        assert_eq!(s.rows, 1024);
        let decoded: usize =
            [a, b].iter().flat_map(|b| b.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap())).sum();
        // Close to what the decoded arrays take.
        assert!(s.data_bytes.abs_diff(decoded) * 10 < decoded, "{} vs {decoded}", s.data_bytes);
        assert!(summary(&bytes[..bytes.len() / 2]).is_err());
    }
}
