//! A group's Raft log on local disk: for data shards, the write-ahead log of every acknowledged
//! span.
//!
//! Entries go to segment files (`<first index>.log`) as records `[len u32][crc32 u32][bincode
//! entry]`; a segment is closed at [`SEGMENT_BYTES`] and a new one started. An append is one
//! write and one `fdatasync` for however many entries openraft hands over at once. Purging
//! deletes whole segments. On open, every segment is scanned and a torn record at the tail of
//! the last one (a crash mid-write) is cut off. The vote lives in a small file replaced
//! atomically (and fsynced: it is what keeps a node from voting twice in a term); the committed
//! id is only a hint (openraft learns it again from the leader), so it is written in place
//! without an fsync.
//!
//! The newest entries also stay in memory (up to a byte budget): the leader applies and
//! replicates entries right after appending them, and reads them from there instead of
//! decoding them from disk again. Reads for replication are capped in bytes, so one
//! AppendEntries message stays bounded however large the entries are.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, RaftTypeConfig, StorageIOError, Vote};
use serde::de::DeserializeOwned;

use crate::raft_types::{LogId, StorageError};
use crate::write_atomic;

/// Size at which a segment is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;

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

/// Tunables of a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `fdatasync` every append before reporting it durable.
    pub fsync: bool,
    /// Bytes of the newest entries kept in memory.
    pub cache_bytes: usize,
    /// Most bytes of entries one replication read returns (at least one entry).
    pub max_read_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { fsync: true, cache_bytes: 64 * 1024 * 1024, max_read_bytes: 4 * 1024 * 1024 }
    }
}

/// Where one entry is on disk.
#[derive(Debug, Clone, Copy)]
struct Loc {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: u32,
}

struct Inner<C: LogTypes> {
    dir: PathBuf,
    options: LogOptions,
    /// Segment first index -> open file.
    segments: BTreeMap<u64, Arc<File>>,
    /// Locations of entries `first_index ..`, contiguous.
    locs: VecDeque<Loc>,
    /// End offset of the last segment.
    tail_offset: u64,
    last_purged: Option<LogId>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    committed_file: File,
    /// The newest entries, a contiguous suffix of the log.
    cache: VecDeque<openraft::Entry<C>>,
    cache_bytes: usize,
}

/// A group's Raft log. Cheap to clone: clones share the same files.
pub struct LogStore<C: LogTypes> {
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C: LogTypes> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn log_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

/// Reads a JSON file written by [`write_atomic`]; a missing file is `None`.
fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// Reads the committed-id hint: `[len u32][crc32 u32][json]`; anything unreadable is `None`.
fn read_committed(file: &File) -> Option<LogId> {
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0).ok()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > 4096 {
        return None;
    }
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, HEADER as u64).ok()?;
    (crc32fast::hash(&body) == crc).then(|| serde_json::from_slice(&body).ok()).flatten()
}

impl<C: LogTypes> LogStore<C> {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, options: LogOptions) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let committed_file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("committed"))?;
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            options,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            tail_offset: 0,
            last_purged: read_json(&dir.join("purged.json"))?,
            vote: read_json(&dir.join("vote.json"))?,
            committed: read_committed(&committed_file),
            committed_file,
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let is_last = i + 1 == firsts.len();
            let end = scan_segment::<C>(&mut file, first, &mut inner.locs, is_last)?;
            if is_last {
                let len = file.metadata()?.len();
                if end < len {
                    tracing::warn!(segment = %path.display(), kept = end, dropped = len - end, "cutting torn tail of raft log");
                    file.set_len(end)?;
                    file.sync_all()?;
                }
                inner.tail_offset = end;
            }
            inner.segments.insert(first, Arc::new(file));
        }
        // Entries at or below the purge point may survive in a partly purged segment: skip them.
        if let Some(p) = inner.last_purged {
            while inner.locs.front().is_some_and(|l| l.log_id.index <= p.index) {
                inner.locs.pop_front();
            }
        }
        Ok(Self { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        // A poisoned lock means a panic while writing; the data on disk is still checked by CRC.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the log under its lock on a blocking thread (it fsyncs or deletes files).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner<C>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// Bytes of log entries on disk (live segments).
    pub fn disk_bytes(&self) -> u64 {
        let inner = self.lock();
        inner.segments.values().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
    }
}

/// Reads records of one segment into `locs`; returns the offset after the last good record.
fn scan_segment<C: LogTypes>(file: &mut File, first: u64, locs: &mut VecDeque<Loc>, is_last: bool) -> io::Result<u64> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::new(file);
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    while offset + HEADER as u64 <= len {
        reader.read_exact(&mut header)?;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if offset + (HEADER as u64) + size as u64 > len {
            break;
        }
        let mut payload = vec![0u8; size as usize];
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        let entry = match bincode::deserialize::<openraft::Entry<C>>(&payload) {
            Ok(e) => e,
            Err(_) => break,
        };
        // A truncate may have left entries that no longer continue the log: keep the log contiguous.
        if let Some(prev) = locs.back() {
            if entry.log_id.index > prev.log_id.index + 1 {
                return Err(io::Error::other(format!(
                    "raft log has a gap: entry {} follows entry {} (segment {first}); refusing to start on a damaged log",
                    entry.log_id.index, prev.log_id.index
                )));
            }
            if entry.log_id.index != prev.log_id.index + 1 {
                while locs.back().is_some_and(|l| l.log_id.index >= entry.log_id.index) {
                    locs.pop_back();
                }
            }
        }
        locs.push_back(Loc { log_id: entry.log_id, segment: first, offset, len: size });
        offset += HEADER as u64 + size as u64;
    }
    if offset < len && !is_last {
        tracing::warn!(segment = first, "raft log segment has a bad record before its end");
    }
    Ok(offset)
}

impl<C: LogTypes> Inner<C> {
    fn first_index(&self) -> Option<u64> {
        self.locs.front().map(|l| l.log_id.index)
    }

    fn cache_first(&self) -> Option<u64> {
        self.cache.front().map(|e| e.log_id.index)
    }

    fn read_entry(&self, loc: &Loc) -> io::Result<openraft::Entry<C>> {
        let file = self
            .segments
            .get(&loc.segment)
            .ok_or_else(|| io::Error::other(format!("raft log segment {} is missing", loc.segment)))?;
        let mut buf = vec![0u8; HEADER + loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        let payload = &buf[HEADER..];
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if crc32fast::hash(payload) != crc {
            return Err(io::Error::other(format!("raft log entry {} fails its checksum", loc.log_id.index)));
        }
        bincode::deserialize(payload).map_err(io::Error::other)
    }

    /// Entries `start..end_exclusive` (clipped to the log), stopping after `max_bytes` (but
    /// always returning at least one entry when the range is not empty).
    fn entries(&self, start: u64, end_exclusive: u64, max_bytes: usize) -> io::Result<Vec<openraft::Entry<C>>> {
        let Some(first) = self.first_index() else {
            return Ok(Vec::new());
        };
        let from = start.max(first);
        let to = end_exclusive.min(first + self.locs.len() as u64);
        let cache_first = self.cache_first().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in from..to {
            let loc = &self.locs[(i - first) as usize];
            if !out.is_empty() && bytes + loc.len as usize > max_bytes {
                break;
            }
            bytes += loc.len as usize;
            if i >= cache_first {
                out.push(self.cache[(i - cache_first) as usize].clone());
            } else {
                out.push(self.read_entry(loc)?);
            }
        }
        Ok(out)
    }

    /// Where the next records go: the active segment (a new one when the active one is full)
    /// and the offset in it. Called with the lock held; the write itself happens without it.
    fn reserve(&mut self, first_index: u64) -> io::Result<(u64, Arc<File>, u64)> {
        if self.segments.is_empty() || self.tail_offset >= SEGMENT_BYTES {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(segment_path(&self.dir, first_index))?;
            self.segments.insert(first_index, Arc::new(file));
            self.tail_offset = 0;
            if self.options.fsync {
                File::open(&self.dir)?.sync_all()?;
            }
        }
        let (&segment, file) = self.segments.last_key_value().ok_or_else(|| io::Error::other("no active segment"))?;
        Ok((segment, file.clone(), self.tail_offset))
    }

    /// Makes records written at the reserved place readable: their locations, and the entries
    /// in the in-memory tail.
    fn commit_append(&mut self, entries: Vec<openraft::Entry<C>>, new_locs: Vec<Loc>, written: u64) {
        self.tail_offset += written;
        if let (Some(back), Some(first)) = (self.cache.back(), entries.first()) {
            if back.log_id.index + 1 != first.log_id.index {
                self.cache.clear();
                self.cache_bytes = 0;
            }
        }
        for (entry, loc) in entries.into_iter().zip(&new_locs) {
            self.cache_bytes += loc.len as usize;
            self.cache.push_back(entry);
        }
        self.locs.extend(new_locs);
        self.trim_cache();
    }

    fn trim_cache(&mut self) {
        while self.cache_bytes > self.options.cache_bytes && self.cache.len() > 1 {
            let Some(front) = self.cache.pop_front() else {
                break;
            };
            let size = self.loc_of(front.log_id.index).map_or(0, |l| l.len as usize);
            self.cache_bytes = self.cache_bytes.saturating_sub(size);
        }
    }

    fn loc_of(&self, index: u64) -> Option<&Loc> {
        let first = self.first_index()?;
        index.checked_sub(first).and_then(|i| self.locs.get(i as usize))
    }

    fn drop_cache_from(&mut self, index: u64) {
        while self.cache.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                let size = self.loc_of(e.log_id.index).map_or(0, |l| l.len as usize);
                self.cache_bytes = self.cache_bytes.saturating_sub(size);
            }
        }
    }

    fn truncate(&mut self, index: u64) -> io::Result<()> {
        self.drop_cache_from(index);
        let Some(first) = self.first_index() else {
            return Ok(());
        };
        if index < first {
            self.locs.clear();
        } else {
            let keep = (index - first) as usize;
            if keep >= self.locs.len() {
                return Ok(());
            }
            self.locs.truncate(keep);
        }
        // Cut the segment holding `index` and delete every later one.
        let (cut_segment, cut_offset) = match self.locs.back() {
            Some(l) => (l.segment, l.offset + HEADER as u64 + l.len as u64),
            None => (self.segments.keys().next().copied().unwrap_or(0), 0),
        };
        let later: Vec<u64> = self.segments.range(cut_segment + 1..).map(|(k, _)| *k).collect();
        let removed_any = !later.is_empty();
        for s in later {
            self.segments.remove(&s);
            fs::remove_file(segment_path(&self.dir, s))?;
        }
        if removed_any {
            // A removed segment must not come back after a crash and outrank newer entries.
            File::open(&self.dir)?.sync_all()?;
        }
        if let Some(file) = self.segments.get(&cut_segment) {
            file.set_len(cut_offset)?;
            file.sync_all()?;
        }
        self.tail_offset = cut_offset;
        Ok(())
    }

    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        write_atomic(&self.dir.join("purged.json"), &serde_json::to_vec(&Some(log_id)).map_err(io::Error::other)?)?;
        self.last_purged = Some(log_id);
        while self.cache.front().is_some_and(|e| e.log_id.index <= log_id.index) {
            if let Some(e) = self.cache.pop_front() {
                let size = self.loc_of(e.log_id.index).map_or(0, |l| l.len as usize);
                self.cache_bytes = self.cache_bytes.saturating_sub(size);
            }
        }
        while self.locs.front().is_some_and(|l| l.log_id.index <= log_id.index) {
            self.locs.pop_front();
        }
        // A segment can go once the next segment starts at or before the first kept entry.
        let keep_from = self.locs.front().map(|l| l.segment);
        let removable: Vec<u64> = match keep_from {
            Some(seg) => self.segments.range(..seg).map(|(k, _)| *k).collect(),
            None => {
                // Nothing left: drop all but the active segment, which we empty.
                let active = self.segments.keys().last().copied();
                self.segments.keys().copied().filter(|k| Some(*k) != active).collect()
            }
        };
        for s in removable {
            self.segments.remove(&s);
            fs::remove_file(segment_path(&self.dir, s))?;
        }
        if self.locs.is_empty() {
            // Start the next append in a fresh segment named after its first index.
            if let Some(active) = self.segments.keys().last().copied() {
                self.segments.remove(&active);
                fs::remove_file(segment_path(&self.dir, active))?;
            }
            self.tail_offset = 0;
        }
        Ok(())
    }

    fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let body = serde_json::to_vec(&committed).map_err(io::Error::other)?;
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        self.committed_file.write_all_at(&record, 0)?;
        self.committed = committed;
        Ok(())
    }
}

/// Appends entries: encodes them, reserves their place, writes and fsyncs them, then makes
/// them readable. Only the reservation and the final step hold the lock, so readers (apply,
/// replication) are not held up by the disk; openraft never appends, truncates or purges a log
/// concurrently, so nothing moves the tail in between.
fn write_entries<C: LogTypes>(inner: &Mutex<Inner<C>>, entries: Vec<openraft::Entry<C>>) -> io::Result<()> {
    let Some(first) = entries.first().map(|e| e.log_id.index) else { return Ok(()) };
    let mut buf = Vec::new();
    let mut records = Vec::with_capacity(entries.len());
    for entry in &entries {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; HEADER]);
        bincode::serialize_into(&mut buf, entry).map_err(io::Error::other)?;
        let len = u32::try_from(buf.len() - start - HEADER)
            .map_err(|_| io::Error::other("raft log entry larger than 4 GiB"))?;
        let crc = crc32fast::hash(&buf[start + HEADER..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        records.push((entry.log_id, start as u64, len));
    }
    let (segment, file, offset, fsync) = {
        let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
        let (segment, file, offset) = guard.reserve(first)?;
        (segment, file, offset, guard.options.fsync)
    };
    file.write_all_at(&buf, offset)?;
    if fsync {
        file.sync_data()?;
    }
    let locs =
        records.into_iter().map(|(log_id, start, len)| Loc { log_id, segment, offset: offset + start, len }).collect();
    inner.lock().unwrap_or_else(|e| e.into_inner()).commit_append(entries, locs, buf.len() as u64);
    Ok(())
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

impl<C: LogTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        self.lock().entries(start, end, usize::MAX).map_err(|e| log_err(ErrorVerb::Read, e))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<openraft::Entry<C>>, StorageError> {
        let inner = self.lock();
        let max = inner.options.max_read_bytes;
        inner.entries(start, end, max).map_err(|e| log_err(ErrorVerb::Read, e))
    }
}

impl<C: LogTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let inner = self.lock();
        let last_purged_log_id = inner.last_purged;
        let last_log_id = inner.locs.back().map(|l| l.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        write_atomic(&inner.dir.join("vote.json"), &bytes)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.committed != committed {
            inner.save_committed(committed).map_err(|e| log_err(ErrorVerb::Write, e))?;
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
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || write_entries::<C>(&inner, entries))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(log_err(ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| inner.truncate(log_id.index)).await.map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| inner.purge(log_id)).await.map_err(|e| log_err(ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_hint_round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.path().join("c")).unwrap();
        assert_eq!(read_committed(&file), None);
        file.write_all_at(b"\xff\xff\xff\xffgarbage", 0).unwrap();
        assert_eq!(read_committed(&file), None);
    }
}
