//! The writer thread: group commit, segment rotation with checkpoints, and freeing space.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};

use crate::format::{self, Record, BATCH_HEADER, FILE_HEADER};
use crate::index::Loc;
use crate::recover::segment_path;
use crate::{GroupId, Request, Shared, WalError};

/// A group's live entries to copy forward: where each is, and the file it is in.
type Copy = (GroupId, Vec<(Loc, Arc<File>)>);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: u64,
    file: Arc<File>,
    tail: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// A writer appending to segment `tail.0` from offset `tail.1`, or to a new first segment.
    pub fn new(shared: Arc<Shared>, tail: Option<(u64, u64)>) -> Result<Self, WalError> {
        let existing = tail.and_then(|(seq, len)| shared.lock().segments.get(&seq).cloned().map(|f| (seq, f, len)));
        let (active, file, tail) = match existing {
            Some(found) => found,
            None => {
                let (seq, file) = create_segment(&shared, 1)?;
                (seq, file, FILE_HEADER as u64)
            }
        };
        Ok(Self { shared, active, file, tail, buf: Vec::new() })
    }

    /// Serves requests until every handle is dropped.
    pub fn run(&mut self, queue: mpsc::Receiver<Request>) {
        let max = self.shared.options.max_batch_bytes;
        while let Ok(first) = queue.recv() {
            let mut bytes: usize = first.records.iter().map(Record::encoded_len).sum();
            let mut batch = vec![first];
            while bytes < max {
                match queue.try_recv() {
                    Ok(r) => {
                        bytes += r.records.iter().map(Record::encoded_len).sum::<usize>();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            let sync = batch.iter().any(|r| r.sync);
            let result = self.write(batch.iter().flat_map(|r| &r.records), bytes, sync);
            let ok = result.is_ok();
            for r in batch {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(WalError::Failed(e.clone())),
                };
                let _ = r.done.send(answer);
            }
            if ok {
                self.collect_garbage();
            }
        }
    }

    /// Writes one batch (starting a new segment first when the active one is full) and
    /// applies it to the index. A failure poisons the log.
    fn write<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record> + Clone,
        bytes: usize,
        sync: bool,
    ) -> Result<(), Arc<WalError>> {
        if let Some(failed) = self.shared.lock().failed.clone() {
            return Err(failed);
        }
        let result = self.try_write(records, bytes, sync);
        result.map_err(|e| {
            tracing::error!(error = %e, "write-ahead log write failed; the log takes no more writes until restart");
            let e = Arc::new(e);
            self.shared.lock().failed = Some(e.clone());
            e
        })
    }

    fn try_write<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record> + Clone,
        bytes: usize,
        sync: bool,
    ) -> Result<(), WalError> {
        if self.tail > FILE_HEADER as u64
            && self.tail + (bytes + BATCH_HEADER) as u64 > self.shared.options.segment_bytes
        {
            self.rotate()?;
        }
        self.append(records, sync)
    }

    /// Writes records as one batch at the tail of the active segment.
    fn append<'a>(&mut self, records: impl Iterator<Item = &'a Record> + Clone, sync: bool) -> Result<(), WalError> {
        let path = || segment_path(&self.shared.dir, self.active);
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; BATCH_HEADER]);
        let mut placed = Vec::new();
        for r in records.clone() {
            let offset = self.tail + self.buf.len() as u64;
            let before = self.buf.len();
            r.encode(&mut self.buf);
            placed.push((offset, (self.buf.len() - before) as u32));
        }
        let body = u32::try_from(self.buf.len() - BATCH_HEADER).map_err(|_| WalError::Io {
            path: path(),
            source: std::io::Error::other("a write batch larger than 4 GiB"),
        })?;
        self.buf[..BATCH_HEADER].copy_from_slice(&format::batch_header(body));
        self.file.write_all_at(&self.buf, self.tail).map_err(|source| WalError::Io { path: path(), source })?;
        let synced = sync && self.shared.options.fsync;
        if synced {
            self.file.sync_data().map_err(|source| WalError::Io { path: path(), source })?;
        }
        self.tail += self.buf.len() as u64;
        if self.buf.capacity() > 4 * self.shared.options.max_batch_bytes.max(1 << 20) {
            self.buf = Vec::new();
        }
        let mut state = self.shared.lock();
        state.stats.batches += 1;
        state.stats.syncs += u64::from(synced);
        for (r, (offset, len)) in records.zip(placed) {
            state.stats.entries += u64::from(matches!(r, Record::Entry { .. }));
            state.index.apply(r, self.active, offset, len).map_err(|reason| WalError::Corrupt {
                path: segment_path(&self.shared.dir, self.active),
                offset,
                reason: format!("the writer was asked for something the log cannot hold: {reason}"),
            })?;
        }
        Ok(())
    }

    /// Starts the next segment with a checkpoint of every group's small values.
    fn rotate(&mut self) -> Result<(), WalError> {
        let (seq, file) = create_segment(&self.shared, self.active + 1)?;
        self.active = seq;
        self.file = file;
        self.tail = FILE_HEADER as u64;
        let checkpoint = self.shared.lock().index.checkpoint();
        if !checkpoint.is_empty() {
            self.append(checkpoint.iter(), true)?;
        }
        Ok(())
    }

    /// Deletes segments no live entry needs (oldest first), after copying the live entries
    /// of small groups that keep an old segment alive to the end of the log.
    fn collect_garbage(&mut self) {
        let mut budget = self.shared.options.rewrite_limit;
        loop {
            let (delete, rewrite) = self.plan_garbage(&mut budget);
            for seq in delete {
                let path = segment_path(&self.shared.dir, seq);
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(segment = %path.display(), "deleted write-ahead log segment"),
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "could not delete a write-ahead log segment")
                    }
                }
            }
            if rewrite.is_empty() {
                return;
            }
            let records = match self.read_back(&rewrite) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "could not copy live entries forward; the old segment stays");
                    return;
                }
            };
            let bytes = records.iter().map(Record::encoded_len).sum();
            // Synced before the old segment goes: the copies must be on disk first.
            if self.write(records.iter(), bytes, true).is_err() {
                return;
            }
        }
    }

    /// Segments to delete now, and the small groups to copy forward (within `budget` bytes).
    fn plan_garbage(&self, budget: &mut u64) -> (Vec<u64>, Vec<Copy>) {
        let mut state = self.shared.lock();
        let oldest_live = state.index.oldest_live_segment().unwrap_or(self.active).min(self.active);
        let delete: Vec<u64> = state.segments.range(..oldest_live).map(|(s, _)| *s).collect();
        for s in &delete {
            state.segments.remove(s);
        }
        let mut rewrite = Vec::new();
        if state.segments.len() > self.shared.options.compact_after_segments && oldest_live < self.active {
            for (group, g) in &state.index.groups {
                if g.locs.front().is_some_and(|l| l.segment == oldest_live) && g.bytes <= *budget {
                    *budget -= g.bytes;
                    let locs = g
                        .locs
                        .iter()
                        .filter_map(|l| state.segments.get(&l.segment).map(|f| (*l, f.clone())))
                        .collect::<Vec<_>>();
                    if locs.len() == g.locs.len() {
                        rewrite.push((*group, locs));
                    }
                }
            }
        }
        (delete, rewrite)
    }

    /// The records of the entries at `groups`' locations, read back from disk.
    fn read_back(&self, groups: &[Copy]) -> Result<Vec<Record>, WalError> {
        let mut out = Vec::new();
        for (group, locs) in groups {
            for (loc, file) in locs {
                out.push(loc.read(file, &segment_path(&self.shared.dir, loc.segment), *group)?);
            }
        }
        Ok(out)
    }
}

/// Creates segment `seq` with its header, durably (the file and its directory entry).
fn create_segment(shared: &Shared, seq: u64) -> Result<(u64, Arc<File>), WalError> {
    let path = segment_path(&shared.dir, seq);
    let io = |source| WalError::Io { path: path.clone(), source };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io)?;
    file.write_all_at(&format::file_header(seq), 0).map_err(io)?;
    if shared.options.fsync {
        file.sync_all().map_err(io)?;
        File::open(&shared.dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    let file = Arc::new(file);
    shared.lock().segments.insert(seq, file.clone());
    Ok((seq, file))
}
