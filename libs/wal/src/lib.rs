//! One write-ahead log per storage node, shared by every Raft group the node hosts.
//!
//! Entries of many groups go to one stream of segment files. A single writer thread takes
//! every request waiting at the moment, writes them with one `write` and one `fdatasync`
//! (group commit across groups), and then completes them; a request that needs no sync (a
//! committed-id hint, a purge) rides along with the next batch and is ordered with it. Each
//! group's entries are found through an in-memory index built at start by reading the
//! segments back without decoding any payload. A batch cut short by a crash at the end of the
//! log is cut off; damage anywhere else refuses the start, naming the file and offset.
//!
//! Space: a segment is deleted once it and every older segment hold no live entry (purged,
//! truncated or dropped groups). Every new segment starts with a checkpoint of each group's
//! small values and purge point, so old segments take nothing needed with them. A group
//! whose few live entries keep an old segment alive (an idle group) has them copied to the
//! end of the log.
//!
//! The log knows nothing of Raft beyond an entry's index, term and leader node; payloads are
//! the caller's bytes. The format is in [`format`].

pub mod format;
mod index;
mod recover;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bytes::Bytes;

pub use format::Record;

/// A Raft group's id within the node (a shard id, or the metadata group's).
pub type GroupId = u32;

/// An entry's identity in its group's log: its index and the term and node of the leader that
/// made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryId {
    /// Position in the group's log.
    pub index: u64,
    /// Term of the leader that made it.
    pub term: u64,
    /// Node id of that leader.
    pub node: u64,
}

/// Tunables of the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// `fdatasync` a batch that holds a request asking for it (off only for benchmarks: an
    /// acknowledged write may then be lost in a power cut).
    pub fsync: bool,
    /// Size at which a segment is closed and a new one started.
    pub segment_bytes: u64,
    /// Bytes of requests gathered into one write, at most (one request may exceed it alone).
    pub max_batch_bytes: usize,
    /// Live entries of a group that keep an old segment alive are copied forward if they take
    /// at most this many bytes: an idle group's few entries. A busy group's log is purged by
    /// the group itself soon (a shard's after its next flush), and copying it would only write
    /// it twice.
    pub rewrite_limit: u64,
    /// Old segments are freed by copying small groups forward once there are more segments
    /// than this (a busy node rotates segments every few seconds: only a segment that many
    /// rotations old is worth copying out of).
    pub compact_after_segments: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            fsync: true,
            segment_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 32 * 1024 * 1024,
            rewrite_limit: 1024 * 1024,
            compact_after_segments: 4,
        }
    }
}

/// Failures of the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading or writing a file failed.
    #[error("write-ahead log i/o on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The log is damaged in a way a crash cannot explain.
    #[error("write-ahead log {} is damaged at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write failed, so what is on disk is unknown: the log takes nothing more
    /// until the node restarts and reads it back.
    #[error("the write-ahead log failed earlier and takes no more writes (restart the node)")]
    Failed(#[source] Arc<WalError>),
    /// An entry asked for is not in the log (purged, truncated, or never written).
    #[error("group {group} has no entry {index} in the write-ahead log")]
    Missing {
        /// The group.
        group: GroupId,
        /// The entry.
        index: u64,
    },
    /// The writer thread is gone (the node is stopping).
    #[error("the write-ahead log writer has stopped")]
    Stopped,
}

/// What the log holds of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// First live entry.
    pub first: Option<EntryId>,
    /// Last live entry.
    pub last: Option<EntryId>,
    /// Entries up to this one are purged.
    pub purged: Option<EntryId>,
    /// Its small values by key.
    pub state: BTreeMap<u8, Bytes>,
    /// Bytes its live entries take on disk.
    pub bytes: u64,
}

/// Size of the log on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Segment files.
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Entries written since start (copies made to free old segments included).
    pub entries: u64,
    /// Write batches since start.
    pub batches: u64,
    /// `fdatasync` calls since start.
    pub syncs: u64,
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub options: WalOptions,
    pub state: Mutex<State>,
}

/// The index and the open segment files.
pub(crate) struct State {
    pub index: index::Index,
    pub segments: BTreeMap<u64, Arc<File>>,
    pub failed: Option<Arc<WalError>>,
    pub stats: WalStats,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated on valid input;
        // keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request to the writer.
pub(crate) struct Request {
    pub records: Vec<Record>,
    pub sync: bool,
    pub done: tokio::sync::oneshot::Sender<Result<(), WalError>>,
}

/// The node's write-ahead log. Cheap to clone; the writer thread stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`: reads every segment back (blocking; run it on a
    /// blocking thread) and starts the writer thread.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
        let found = recover::list_segments(dir)?;
        let mut index = index::Index::default();
        let tail = recover::replay(&found, &mut index)?;
        let mut segments = BTreeMap::new();
        for f in &found {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&f.path)
                .map_err(|source| WalError::Io { path: f.path.clone(), source })?;
            segments.insert(f.seq, Arc::new(file));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(State { index, segments, failed: None, stats: WalStats::default() }),
        });
        let (requests, queue) = mpsc::channel();
        let mut w = writer::Writer::new(shared.clone(), tail.map(|t| (t.seq, t.len)))?;
        std::thread::Builder::new()
            .name("spindle-wal".into())
            .spawn(move || w.run(queue))
            .map_err(|source| WalError::Io { path: dir.to_path_buf(), source })?;
        Ok(Wal { shared, requests })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Groups with anything in the log.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.lock().index.groups.keys().copied().collect()
    }

    /// What the log holds of `group`.
    pub fn group(&self, group: GroupId) -> GroupInfo {
        let state = self.shared.lock();
        let Some(g) = state.index.groups.get(&group) else { return GroupInfo::default() };
        GroupInfo {
            first: g.locs.front().map(|l| l.id),
            last: g.locs.back().map(|l| l.id),
            purged: g.purged,
            state: g.state.clone(),
            bytes: g.bytes,
        }
    }

    /// Size of the log on disk and work done.
    pub fn stats(&self) -> WalStats {
        let state = self.shared.lock();
        let mut stats = state.stats;
        stats.segments = state.segments.len();
        stats.bytes = state.segments.values().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        stats
    }

    /// Hands `records` to the writer; the receiver answers once they are written (and synced
    /// to disk if `sync`). Records of one caller are written in the order submitted.
    pub fn submit(&self, records: Vec<Record>, sync: bool) -> tokio::sync::oneshot::Receiver<Result<(), WalError>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if let Some(failed) = self.shared.lock().failed.clone() {
            let _ = done.send(Err(WalError::Failed(failed)));
            return answer;
        }
        if let Err(mpsc::SendError(request)) = self.requests.send(Request { records, sync, done }) {
            let _ = request.done.send(Err(WalError::Stopped));
        }
        answer
    }

    /// Writes `records` and waits until they are on disk (synced if `sync`).
    pub async fn write(&self, records: Vec<Record>, sync: bool) -> Result<(), WalError> {
        self.submit(records, sync).await.unwrap_or(Err(WalError::Stopped))
    }

    /// Reads the payloads of `group`'s entries `from..to` (exclusive, clipped to the live
    /// entries), stopping once `max_bytes` are read (at least one entry is returned when the
    /// range holds one). Blocking disk reads: call it on a blocking thread.
    pub fn read(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(EntryId, Bytes)>, WalError> {
        let plan: Vec<(index::Loc, Arc<File>)> = {
            let state = self.shared.lock();
            if let Some(failed) = &state.failed {
                return Err(WalError::Failed(failed.clone()));
            }
            let Some(g) = state.index.groups.get(&group) else { return Ok(Vec::new()) };
            let (Some(first), Some(last)) = (g.locs.front(), g.locs.back()) else { return Ok(Vec::new()) };
            let (from, to) = (from.max(first.id.index), to.min(last.id.index + 1));
            let mut plan = Vec::new();
            let mut bytes = 0usize;
            for i in from..to {
                let Some(loc) = g.loc(i) else {
                    if plan.is_empty() {
                        return Err(WalError::Missing { group, index: i });
                    }
                    break;
                };
                if !plan.is_empty() && bytes + loc.len as usize > max_bytes {
                    break;
                }
                bytes += loc.len as usize;
                let file = state.segments.get(&loc.segment).ok_or(WalError::Missing { group, index: i })?.clone();
                plan.push((*loc, file));
            }
            plan
        };
        let mut out = Vec::with_capacity(plan.len());
        for (loc, file) in plan {
            if let Record::Entry { id, payload, .. } =
                loc.read(&file, &recover::segment_path(&self.shared.dir, loc.segment), group)?
            {
                out.push((id, payload));
            }
        }
        Ok(out)
    }
}
