//! The file holding a group's latest snapshot.
//!
//! openraft builds snapshots in a task of its own, so a build that started before a snapshot
//! was installed can finish after it. The file only ever moves forward: a snapshot older than
//! the one on disk is not written, so a restart never finds a snapshot below the purged log.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};

use crate::raft_types::{LogId, StorageError};
use crate::write_atomic;

/// A snapshot I/O or encoding failure, as openraft wants it.
pub(crate) fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

/// A group's snapshot file. Cheap to clone: clones guard the same file.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotStore {
    path: PathBuf,
    written: Arc<Mutex<Option<LogId>>>,
}

impl SnapshotStore {
    /// The snapshot file at `path`.
    pub(crate) fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), written: Arc::default() }
    }

    /// The file's bytes, if there is one. `last_log_id` of what it holds must be reported with
    /// [`SnapshotStore::loaded`] by the caller, who decodes it.
    pub(crate) fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the last log id of the snapshot read from the file.
    pub(crate) fn loaded(&self, last_log_id: Option<LogId>) {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = last_log_id;
    }

    /// Writes a snapshot unless the file holds a newer one; returns whether it wrote.
    pub(crate) fn save(&self, last_log_id: Option<LogId>, bytes: &[u8]) -> io::Result<bool> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written > last_log_id {
            return Ok(false);
        }
        write_atomic(&self.path, bytes)?;
        *written = last_log_id;
        Ok(true)
    }

    /// [`SnapshotStore::save`] on a blocking thread (it fsyncs); gives the bytes back.
    pub(crate) async fn save_blocking(&self, last_log_id: Option<LogId>, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save(last_log_id, &bytes).map(|_| bytes))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// [`SnapshotStore::read`] on a blocking thread.
    pub(crate) async fn read_blocking(&self) -> io::Result<Option<Vec<u8>>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read()).await.unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}
