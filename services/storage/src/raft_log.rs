//! A Raft group's log as openraft sees it, kept in the node's shared write-ahead log
//! (`spindle-wal`): every group of the node appends to the same files, and appends of
//! different groups that arrive together share one write and one `fdatasync`.
//!
//! An entry is stored as `[payload version u8][bincode of openraft's EntryPayload]` under its
//! log id; the vote is a small value of the group (synced before it is used); the committed id
//! is a hint written along with the group's next append (openraft learns it again anyway).
//! The newest entries stay decoded in memory (up to a byte budget): the leader applies and
//! replicates entries right after appending them, and a follower applies them right after,
//! so they are read from there. Older entries are read from disk on a blocking thread.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogReader, RaftTypeConfig, StorageIOError,
    Vote,
};
use spindle_wal::{EntryId, GroupId, Record, Wal};

use crate::raft_types::{LogId, StorageError};

/// Version of the entry payload encoding (the first byte of every stored entry).
pub const PAYLOAD_VERSION: u8 = 1;
const VOTE: u8 = 1;
const COMMITTED: u8 = 2;

/// What a group's log needs of its type configuration (entries are serde-encoded with bincode;
/// openraft's `serde` feature makes every entry serialisable).
pub trait LogTypes:
    RaftTypeConfig<NodeId = u64, Node = openraft::BasicNode, Entry = openraft::Entry<Self>, D: Clone>
{
}

impl<C> LogTypes for C where
    C: RaftTypeConfig<NodeId = u64, Node = openraft::BasicNode, Entry = openraft::Entry<C>, D: Clone>
{
}

/// Tunables of the node's logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `fdatasync` every append before reporting it durable.
    pub fsync: bool,
    /// Bytes of each group's newest entries kept decoded in memory.
    pub cache_bytes: usize,
    /// Most bytes of entries one replication read returns (at least one entry).
    pub max_read_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { fsync: true, cache_bytes: 16 * 1024 * 1024, max_read_bytes: 4 * 1024 * 1024 }
    }
}

/// The decoded tail and the small values of a group.
struct Inner<C: LogTypes> {
    /// The newest entries, a contiguous suffix of the log, with their stored sizes.
    cache: VecDeque<(openraft::Entry<C>, usize)>,
    cache_bytes: usize,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    /// A committed id not yet written (it goes with the next append).
    committed_dirty: bool,
    purged: Option<LogId>,
    last: Option<LogId>,
}

/// One group's log. Cheap to clone: clones share the same state.
pub struct GroupLog<C: LogTypes> {
    wal: Wal,
    group: GroupId,
    options: LogOptions,
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C: LogTypes> Clone for GroupLog<C> {
    fn clone(&self) -> Self {
        Self { wal: self.wal.clone(), group: self.group, options: self.options.clone(), inner: self.inner.clone() }
    }
}

fn to_entry_id(id: &LogId) -> EntryId {
    EntryId { index: id.index, term: id.leader_id.term, node: id.leader_id.node_id }
}

fn to_log_id(id: EntryId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.node), id.index)
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn log_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    err(ErrorSubject::Logs, verb, e)
}

/// Encodes an entry's payload as stored.
pub fn encode_payload<C: LogTypes>(payload: &EntryPayload<C>) -> Result<Bytes, bincode::Error> {
    let mut out = vec![PAYLOAD_VERSION];
    bincode::serialize_into(&mut out, payload)?;
    Ok(Bytes::from(out))
}

/// Decodes a stored entry payload.
pub fn decode_payload<C: LogTypes>(bytes: &[u8]) -> Result<EntryPayload<C>, io::Error> {
    match bytes.split_first() {
        Some((&PAYLOAD_VERSION, rest)) => bincode::deserialize(rest).map_err(io::Error::other),
        Some((v, _)) => Err(io::Error::other(format!(
            "a raft log entry in payload format {v}, this build reads {PAYLOAD_VERSION}: written by a newer version?"
        ))),
        None => Err(io::Error::other("an empty raft log entry")),
    }
}

impl<C: LogTypes> GroupLog<C> {
    /// Group `group`'s log in `wal`, as the log holds it now.
    pub fn open(wal: &Wal, group: GroupId, options: LogOptions) -> io::Result<Self> {
        let info = wal.group(group);
        let vote = match info.state.get(&VOTE) {
            Some(v) => Some(serde_json::from_slice(v).map_err(io::Error::other)?),
            None => None,
        };
        let committed = info.state.get(&COMMITTED).and_then(|v| serde_json::from_slice(v).ok()).flatten();
        let inner = Inner {
            cache: VecDeque::new(),
            cache_bytes: 0,
            vote,
            committed,
            committed_dirty: false,
            purged: info.purged.map(to_log_id),
            last: info.last.map(to_log_id),
        };
        Ok(Self { wal: wal.clone(), group, options, inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes this group's live entries take in the shared log.
    pub fn disk_bytes(&self) -> u64 {
        self.wal.group(self.group).bytes
    }

    /// Entries `start..end` (clipped to the log), at most `max_bytes` of them (at least one).
    async fn entries(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let (cache_first, from_cache) = {
            let inner = self.lock();
            let first_live = inner.purged.map_or(0, |p| p.index + 1);
            let last = match inner.last {
                Some(l) => l.index,
                None => return Ok(Vec::new()),
            };
            let start = start.max(first_live);
            let end = end.min(last + 1);
            if start >= end {
                return Ok(Vec::new());
            }
            let cache_first = inner.cache.front().map_or(u64::MAX, |(e, _)| e.log_id.index);
            if start >= cache_first {
                let mut out = Vec::new();
                let mut bytes = 0;
                for (e, size) in inner.cache.iter().skip((start - cache_first) as usize) {
                    if e.log_id.index >= end || (!out.is_empty() && bytes + size > max_bytes) {
                        break;
                    }
                    bytes += size;
                    out.push(e.clone());
                }
                return Ok(out);
            }
            (cache_first.min(end), (start, end))
        };
        // The older part from disk, on a blocking thread; the rest from the cache after.
        let (start, end) = from_cache;
        let (wal, group) = (self.wal.clone(), self.group);
        let stored = tokio::task::spawn_blocking(move || wal.read(group, start, cache_first, max_bytes))
            .await
            .map_err(|e| log_err(ErrorVerb::Read, io::Error::other(e)))?
            .map_err(|e| log_err(ErrorVerb::Read, e))?;
        let mut out = Vec::with_capacity(stored.len());
        let mut bytes = 0;
        for (id, payload) in stored {
            bytes += payload.len();
            let payload = decode_payload::<C>(&payload).map_err(|e| log_err(ErrorVerb::Read, e))?;
            out.push(openraft::Entry { log_id: to_log_id(id), payload });
        }
        // Go on in the cache if the disk part reached it (or the log has nothing below it).
        let reached = out.last().is_none_or(|e| e.log_id.index + 1 == cache_first);
        if reached && (out.is_empty() || bytes < max_bytes) {
            let inner = self.lock();
            if inner.cache.front().is_some_and(|(e, _)| e.log_id.index == cache_first) {
                for (e, size) in inner.cache.iter() {
                    if e.log_id.index >= end || (!out.is_empty() && bytes + size > max_bytes) {
                        break;
                    }
                    bytes += size;
                    out.push(e.clone());
                }
            }
        }
        Ok(out)
    }

    fn trim_cache(inner: &mut Inner<C>, budget: usize) {
        while inner.cache_bytes > budget && inner.cache.len() > 1 {
            if let Some((_, size)) = inner.cache.pop_front() {
                inner.cache_bytes -= size;
            }
        }
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C: LogTypes> RaftLogReader<C> for GroupLog<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        self.entries(start, end, usize::MAX).await
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        self.entries(start, end, self.options.max_read_bytes).await
    }
}

impl<C: LogTypes> RaftLogStorage<C> for GroupLog<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let inner = self.lock();
        Ok(LogState { last_purged_log_id: inner.purged, last_log_id: inner.last.or(inner.purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let value = serde_json::to_vec(vote).map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // Synced before openraft acts on it: a node must never vote twice in a term.
        self.wal
            .write(vec![Record::State { group: self.group, key: VOTE, value: Bytes::from(value) }], true)
            .await
            .map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.committed != committed {
            inner.committed = committed;
            inner.committed_dirty = true;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<openraft::Entry<C>> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len() + 1);
        let mut sizes = Vec::with_capacity(entries.len());
        for e in &entries {
            let payload = encode_payload(&e.payload).map_err(|e| log_err(ErrorVerb::Write, e))?;
            sizes.push(payload.len());
            records.push(Record::Entry { group: self.group, id: to_entry_id(&e.log_id), payload });
        }
        {
            let mut inner = self.lock();
            if std::mem::take(&mut inner.committed_dirty) {
                let value = serde_json::to_vec(&inner.committed).map_err(|e| log_err(ErrorVerb::Write, e))?;
                records.push(Record::State { group: self.group, key: COMMITTED, value: Bytes::from(value) });
            }
        }
        match self.wal.write(records, true).await {
            Ok(()) => {
                let mut inner = self.lock();
                if let (Some((back, _)), Some(first)) = (inner.cache.back(), entries.first()) {
                    if back.log_id.index + 1 != first.log_id.index {
                        inner.cache.clear();
                        inner.cache_bytes = 0;
                    }
                }
                if let Some(last) = entries.last() {
                    inner.last = Some(last.log_id);
                }
                for (e, size) in entries.into_iter().zip(sizes) {
                    inner.cache_bytes += size;
                    inner.cache.push_back((e, size));
                }
                Self::trim_cache(&mut inner, self.options.cache_bytes);
                drop(inner);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(log_err(ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Not synced on its own: the next append (synced) is written after it.
        self.wal
            .write(vec![Record::Truncate { group: self.group, from: log_id.index }], false)
            .await
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        let mut inner = self.lock();
        while inner.cache.back().is_some_and(|(e, _)| e.log_id.index >= log_id.index) {
            if let Some((_, size)) = inner.cache.pop_back() {
                inner.cache_bytes -= size;
            }
        }
        inner.last = self.wal.group(self.group).last.map(to_log_id);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .write(vec![Record::Purge { group: self.group, upto: to_entry_id(&log_id) }], false)
            .await
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        let mut inner = self.lock();
        while inner.cache.front().is_some_and(|(e, _)| e.log_id.index <= log_id.index) {
            if let Some((_, size)) = inner.cache.pop_front() {
                inner.cache_bytes -= size;
            }
        }
        inner.purged = Some(log_id);
        if inner.last.is_some_and(|l| l.index <= log_id.index) {
            inner.last = None;
        }
        Ok(())
    }
}

impl<C: LogTypes> GroupLog<C> {
    /// Replaces whatever `wal` holds of `group` with the given log (an import from another
    /// layout): synced before it returns.
    pub async fn import(
        wal: &Wal,
        group: GroupId,
        purged: Option<LogId>,
        vote: Option<Vote<u64>>,
        entries: Vec<openraft::Entry<C>>,
    ) -> io::Result<()> {
        let mut records = vec![Record::Drop { group }];
        if let Some(p) = purged {
            records.push(Record::Purge { group, upto: to_entry_id(&p) });
        }
        if let Some(v) = vote {
            records.push(Record::State { group, key: VOTE, value: Bytes::from(serde_json::to_vec(&v)?) });
        }
        for e in entries {
            let payload = encode_payload(&e.payload).map_err(io::Error::other)?;
            records.push(Record::Entry { group, id: to_entry_id(&e.log_id), payload });
        }
        wal.write(records, true).await.map_err(io::Error::other)
    }
}

/// Removes `group` from `wal` (the node no longer hosts it), durably.
pub async fn drop_group(wal: &Wal, group: GroupId) -> io::Result<()> {
    wal.write(vec![Record::Drop { group }], true).await.map_err(io::Error::other)
}
