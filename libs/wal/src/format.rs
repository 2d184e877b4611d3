//! The bytes on disk.
//!
//! A segment file `<seq>.wal` starts with a header (magic, format version, sequence number,
//! CRC) and holds write batches. A batch is what the writer wrote at once:
//!
//! ```text
//! batch:  [magic u32][body length u32][crc32 of the previous 8 bytes u32][body]
//! body:   records, back to back
//! record: [length u32][crc32 of the record body u32][record body]
//! body:   [kind u8][group u32][fields of the kind...]
//! ```
//!
//! All integers are little-endian. The batch header tells a torn tail (a batch cut short by a
//! crash: the last one in the last segment) from damage in the middle of the log (a bad batch
//! followed by a good one), which recovery refuses.

use bytes::{BufMut, Bytes};

use crate::{EntryId, GroupId};

/// First bytes of every segment file.
pub const FILE_MAGIC: &[u8; 8] = b"SPNDLWAL";
/// Version of the segment format.
pub const FORMAT_VERSION: u32 = 1;
/// Size of a segment's file header.
pub const FILE_HEADER: usize = 8 + 4 + 8 + 4;
/// First bytes of every batch.
pub const BATCH_MAGIC: u32 = 0x4257_4C53;
/// Size of a batch header.
pub const BATCH_HEADER: usize = 12;
/// Size of a record header (length and CRC).
pub const RECORD_HEADER: usize = 8;
/// Largest record (an entry of a few MiB is normal; this bounds what recovery allocates).
pub const MAX_RECORD: usize = 1 << 30;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const STATE: u8 = 4;
const DROP: u8 = 5;

/// Size of an entry record's fixed part: kind, group, index, term, node.
pub const ENTRY_FIXED: usize = 1 + 4 + 8 + 8 + 8;

/// One change to the log, as written in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A log entry (its bytes are opaque to the log).
    Entry {
        /// The group.
        group: GroupId,
        /// Its id.
        id: EntryId,
        /// Its bytes.
        payload: Bytes,
    },
    /// Every entry of the group from `from` on is void.
    Truncate {
        /// The group.
        group: GroupId,
        /// First void index.
        from: u64,
    },
    /// Every entry of the group up to `upto` is no longer needed.
    Purge {
        /// The group.
        group: GroupId,
        /// Last purged entry.
        upto: EntryId,
    },
    /// A small named value of the group (its vote, its committed id), replacing the last one.
    State {
        /// The group.
        group: GroupId,
        /// Which value.
        key: u8,
        /// The value.
        value: Bytes,
    },
    /// The group is gone from this node: everything of it before this record is void.
    Drop {
        /// The group.
        group: GroupId,
    },
}

impl Record {
    /// The group the record belongs to.
    pub fn group(&self) -> GroupId {
        match self {
            Record::Entry { group, .. }
            | Record::Truncate { group, .. }
            | Record::Purge { group, .. }
            | Record::State { group, .. }
            | Record::Drop { group } => *group,
        }
    }

    /// Bytes the record takes on disk.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER
            + match self {
                Record::Entry { payload, .. } => ENTRY_FIXED + payload.len(),
                Record::Truncate { .. } => 1 + 4 + 8,
                Record::Purge { .. } => 1 + 4 + 24,
                Record::State { value, .. } => 1 + 4 + 1 + value.len(),
                Record::Drop { .. } => 1 + 4,
            }
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u32_le(0);
        match self {
            Record::Entry { group, id, payload } => {
                out.put_u8(ENTRY);
                out.put_u32_le(*group);
                put_id(out, id);
                out.extend_from_slice(payload);
            }
            Record::Truncate { group, from } => {
                out.put_u8(TRUNCATE);
                out.put_u32_le(*group);
                out.put_u64_le(*from);
            }
            Record::Purge { group, upto } => {
                out.put_u8(PURGE);
                out.put_u32_le(*group);
                put_id(out, upto);
            }
            Record::State { group, key, value } => {
                out.put_u8(STATE);
                out.put_u32_le(*group);
                out.put_u8(*key);
                out.extend_from_slice(value);
            }
            Record::Drop { group } => {
                out.put_u8(DROP);
                out.put_u32_le(*group);
            }
        }
        let body = start + RECORD_HEADER;
        let len = (out.len() - body) as u32;
        let crc = crc32fast::hash(&out[body..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a record body (after its length and CRC were checked). Entry payloads are
    /// slices of `body`, not copies.
    pub fn decode(body: &Bytes) -> Result<Record, String> {
        let mut r = Reader { bytes: body, at: 0 };
        let kind = r.u8()?;
        let group = r.u32()?;
        let record = match kind {
            ENTRY => Record::Entry { group, id: r.id()?, payload: body.slice(r.at..) },
            TRUNCATE => Record::Truncate { group, from: r.u64()? },
            PURGE => Record::Purge { group, upto: r.id()? },
            STATE => Record::State { group, key: r.u8()?, value: body.slice(r.at..) },
            DROP => Record::Drop { group },
            other => return Err(format!("unknown record kind {other}")),
        };
        Ok(record)
    }
}

fn put_id(out: &mut Vec<u8>, id: &EntryId) {
    out.put_u64_le(id.index);
    out.put_u64_le(id.term);
    out.put_u64_le(id.node);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let slice = self.bytes.get(self.at..self.at + N).ok_or("record too short")?;
        self.at += N;
        slice.try_into().map_err(|_| "record too short".to_string())
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn id(&mut self) -> Result<EntryId, String> {
        Ok(EntryId { index: self.u64()?, term: self.u64()?, node: self.u64()? })
    }
}

/// A segment's file header.
pub fn file_header(seq: u64) -> [u8; FILE_HEADER] {
    let mut out = [0u8; FILE_HEADER];
    out[..8].copy_from_slice(FILE_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..20]);
    out[20..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment's file header; the sequence number it names.
pub fn check_file_header(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < FILE_HEADER || &bytes[..8] != FILE_MAGIC {
        return Err("not a Spindle write-ahead log segment".into());
    }
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if crc32fast::hash(&bytes[..20]) != crc {
        return Err("segment header fails its checksum".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(format!("segment format version {version}, this build reads {FORMAT_VERSION}"));
    }
    Ok(u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| "short header")?))
}

/// A batch header for a body of `len` bytes.
pub fn batch_header(len: u32) -> [u8; BATCH_HEADER] {
    let mut out = [0u8; BATCH_HEADER];
    out[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The body length a batch header announces, if it is a valid header.
pub fn parse_batch_header(bytes: &[u8]) -> Option<u32> {
    let header: &[u8; BATCH_HEADER] = bytes.get(..BATCH_HEADER)?.try_into().ok()?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    (magic == BATCH_MAGIC && crc32fast::hash(&header[..8]) == crc)
        .then(|| u32::from_le_bytes([header[4], header[5], header[6], header[7]]))
}

/// Splits a batch body into record bodies (each checked against its CRC); `Err` names the
/// offset within the body of the first bad record.
pub fn split_records(body: &Bytes) -> Result<Vec<(usize, Bytes)>, (usize, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let header = body.get(at..at + RECORD_HEADER).ok_or((at, "record header cut short".to_string()))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + RECORD_HEADER;
        if len > MAX_RECORD || start + len > body.len() {
            return Err((at, format!("record of {len} bytes runs past its batch")));
        }
        let record = body.slice(start..start + len);
        if crc32fast::hash(&record) != crc {
            return Err((at, "record fails its checksum".into()));
        }
        out.push((at, record));
        at = start + len;
    }
    Ok(out)
}

/// Checks one record read back on its own (`bytes` = header and body); its body.
pub fn check_record(bytes: Bytes) -> Result<Bytes, String> {
    let header = bytes.get(..RECORD_HEADER).ok_or("record cut short")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if bytes.len() != RECORD_HEADER + len {
        return Err(format!("record length {len} does not match its place in the log"));
    }
    let body = bytes.slice(RECORD_HEADER..);
    if crc32fast::hash(&body) != crc {
        return Err("record fails its checksum".into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let id = EntryId { index: 7, term: 3, node: 2 };
        let records = vec![
            Record::Entry { group: 4, id, payload: Bytes::from_static(b"hello") },
            Record::Truncate { group: 4, from: 9 },
            Record::Purge { group: u32::MAX, upto: id },
            Record::State { group: 1, key: 2, value: Bytes::from_static(b"vote") },
            Record::Drop { group: 9 },
        ];
        let mut body = Vec::new();
        for r in &records {
            let before = body.len();
            r.encode(&mut body);
            assert_eq!(body.len() - before, r.encoded_len());
        }
        let body = Bytes::from(body);
        let decoded: Vec<Record> =
            split_records(&body).unwrap().into_iter().map(|(_, b)| Record::decode(&b).unwrap()).collect();
        assert_eq!(decoded, records);
        let mut damaged = body.to_vec();
        damaged[RECORD_HEADER + 3] ^= 1;
        assert_eq!(split_records(&Bytes::from(damaged)).unwrap_err().0, 0);
    }

    #[test]
    fn headers_check_themselves() {
        assert_eq!(check_file_header(&file_header(42)), Ok(42));
        let mut bad = file_header(42);
        bad[13] ^= 1;
        assert!(check_file_header(&bad).is_err());
        assert_eq!(parse_batch_header(&batch_header(99)), Some(99));
        let mut bad = batch_header(99);
        bad[5] ^= 1;
        assert_eq!(parse_batch_header(&bad), None);
    }
}
