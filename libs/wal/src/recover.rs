//! Reading the log back at start: every segment in order, every record applied to the index,
//! no payload decoded. A batch cut short at the very end of the log (a crash in the middle of
//! a write) is cut off; damage anywhere else stops the start with the file and offset.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::format::{self, Record, BATCH_HEADER, FILE_HEADER};
use crate::index::Index;
use crate::WalError;

/// A segment file found on disk.
pub(crate) struct Found {
    pub seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<Found>, WalError> {
    let io = |source| WalError::Io { path: dir.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse().ok()) else {
            continue;
        };
        found.push(Found { seq, path: entry.path() });
    }
    found.sort_by_key(|f| f.seq);
    Ok(found)
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// What recovery found of the last segment: where the next batch goes.
pub(crate) struct Tail {
    pub seq: u64,
    pub len: u64,
}

/// Replays every segment into `index`; the tail of the last one, if any.
pub(crate) fn replay(segments: &[Found], index: &mut Index) -> Result<Option<Tail>, WalError> {
    let mut tail = None;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let corrupt = |offset: u64, reason: String| WalError::Corrupt { path: segment.path.clone(), offset, reason };
        let data =
            Bytes::from(fs::read(&segment.path).map_err(|source| WalError::Io { path: segment.path.clone(), source })?);
        if data.len() < FILE_HEADER && last {
            // Created but its header not written yet when the node stopped.
            tracing::warn!(segment = %segment.path.display(), "write-ahead log segment without a header; starting it again");
            rewrite_header(&segment.path, segment.seq)?;
            tail = Some(Tail { seq: segment.seq, len: FILE_HEADER as u64 });
            continue;
        }
        let seq = format::check_file_header(&data).map_err(|e| corrupt(0, e))?;
        if seq != segment.seq {
            return Err(corrupt(0, format!("the header names segment {seq}")));
        }
        let mut at = FILE_HEADER;
        while at < data.len() {
            match read_batch(&data, at) {
                Ok((end, records)) => {
                    for (offset, len, record) in records {
                        index.apply(&record, seq, offset as u64, len).map_err(|e| corrupt(offset as u64, e))?;
                    }
                    at = end;
                }
                Err(reason) => {
                    if !last || valid_batch_after(&data, at) {
                        return Err(corrupt(at as u64, format!("{reason}; valid data follows, so this is not a write cut short by a crash: refusing to start rather than lose entries of other groups")));
                    }
                    tracing::warn!(
                        segment = %segment.path.display(),
                        offset = at,
                        dropped = data.len() - at,
                        "cutting a write batch cut short by a crash off the end of the write-ahead log ({reason})"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&segment.path)
                        .map_err(|source| WalError::Io { path: segment.path.clone(), source })?;
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(|source| WalError::Io { path: segment.path.clone(), source })?;
                    break;
                }
            }
        }
        if last {
            tail = Some(Tail { seq, len: at.min(data.len()) as u64 });
        }
    }
    Ok(tail)
}

fn rewrite_header(path: &Path, seq: u64) -> Result<(), WalError> {
    let io = |source| WalError::Io { path: path.to_path_buf(), source };
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    std::os::unix::fs::FileExt::write_all_at(&file, &format::file_header(seq), 0).map_err(io)?;
    file.set_len(FILE_HEADER as u64).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A record of a batch: its offset in the segment, its length with its header, and itself.
type Found3 = (usize, u32, Record);

/// The batch at `at`: where it ends and its records.
fn read_batch(data: &Bytes, at: usize) -> Result<(usize, Vec<Found3>), String> {
    let len = format::parse_batch_header(&data[at..]).ok_or("no valid batch header")? as usize;
    let start = at + BATCH_HEADER;
    let end = start.checked_add(len).filter(|e| *e <= data.len()).ok_or("the batch runs past the end of the file")?;
    let body = data.slice(start..end);
    let records = format::split_records(&body).map_err(|(offset, e)| format!("{e} (at {})", start + offset))?;
    let mut out = Vec::with_capacity(records.len());
    for (offset, record_body) in records {
        let record = Record::decode(&record_body).map_err(|e| format!("{e} (at {})", start + offset))?;
        out.push((start + offset, (format::RECORD_HEADER + record_body.len()) as u32, record));
    }
    Ok((end, out))
}

/// Whether a whole valid batch starts anywhere after `at` (then the bad batch at `at` is
/// damage, not a torn tail).
fn valid_batch_after(data: &Bytes, at: usize) -> bool {
    let magic = format::BATCH_MAGIC.to_le_bytes();
    let mut from = at + 1;
    while let Some(pos) = data.get(from..).and_then(|rest| rest.windows(4).position(|w| w == magic)) {
        let candidate = from + pos;
        if read_batch(data, candidate).is_ok() {
            return true;
        }
        from = candidate + 1;
    }
    false
}
