//! Streaming uploads: an encoder writing on a blocking thread, its bytes uploaded as they come
//! (multipart once they pass one part), so a block is never held whole in memory twice.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::{Result, StorageError};

/// Bytes handed from the encoder to the uploader at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Size of each multipart part (S3's minimum is 5 MiB). Smaller objects are one PUT.
const PART_BYTES: usize = 8 << 20;

/// A [`Write`] that passes its bytes, a chunk at a time, to the uploading task.
pub struct ChunkSender {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    written: u64,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        self.tx.blocking_send(chunk).map_err(|_| io::Error::other("the upload stopped"))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `encode` on a blocking thread and uploads what it writes to `path`. The object appears
/// only if `encode` succeeds and every part is uploaded (a failed upload is aborted, so no
/// partial object is left behind). Returns `encode`'s result and the object's size.
pub async fn upload_streaming<T, F>(store: Arc<dyn ObjectStore>, path: &Path, encode: F) -> Result<(T, u64)>
where
    T: Send + 'static,
    F: FnOnce(&mut ChunkSender) -> Result<T> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let encoder = tokio::task::spawn_blocking(move || {
        let mut w = ChunkSender { tx, buf: Vec::with_capacity(CHUNK_BYTES), written: 0 };
        let out = encode(&mut w)?;
        w.send()?;
        Ok::<_, StorageError>((out, w.written))
    });
    let mut writer = BufWriter::with_capacity(store, path.clone(), PART_BYTES);
    let mut upload_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.put(chunk).await {
            upload_error = Some(e);
            break;
        }
    }
    drop(rx);
    let encoded = encoder.await.map_err(|e| io::Error::other(format!("block encoder panicked: {e}")))?;
    let failure = match (upload_error, encoded) {
        (Some(e), _) => StorageError::from(e),
        (None, Err(e)) => e,
        // A writer whose shutdown failed has aborted (or never started) its multipart upload
        // itself, and must not be aborted again.
        (None, Ok(done)) => return writer.shutdown().await.map(|()| done).map_err(io_to_storage),
    };
    if let Err(e) = writer.abort().await {
        tracing::debug!(path = %path, error = %e, "could not abort a failed upload");
    }
    Err(failure)
}

/// An upload's I/O error, keeping the object store's error when that is what it wraps.
fn io_to_storage(e: io::Error) -> StorageError {
    match e.downcast::<object_store::Error>() {
        Ok(inner) => StorageError::ObjectStore(inner),
        Err(e) => StorageError::Io(e),
    }
}
