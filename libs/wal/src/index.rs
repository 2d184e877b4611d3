//! Where every group's live entries are, and its small values: the one in-memory picture of
//! the log, built by recovery and kept up to date by the writer with the same rules.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::format::Record;
use crate::{EntryId, GroupId};

/// Where one entry's record is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub id: EntryId,
    pub segment: u64,
    /// Offset of the record header in the segment.
    pub offset: u64,
    /// Length of the record, header included.
    pub len: u32,
}

impl Loc {
    /// Reads this entry's record back from `file` (segment `path`), checked against its CRC
    /// and against what the index says it is.
    pub fn read(
        &self,
        file: &std::fs::File,
        path: &std::path::Path,
        group: GroupId,
    ) -> Result<Record, crate::WalError> {
        use std::os::unix::fs::FileExt;
        let corrupt =
            |reason: String| crate::WalError::Corrupt { path: path.to_path_buf(), offset: self.offset, reason };
        let mut buf = vec![0u8; self.len as usize];
        file.read_exact_at(&mut buf, self.offset)
            .map_err(|source| crate::WalError::Io { path: path.to_path_buf(), source })?;
        let body = crate::format::check_record(Bytes::from(buf)).map_err(corrupt)?;
        match Record::decode(&body) {
            Ok(r @ Record::Entry { id, .. }) if r.group() == group && id == self.id => Ok(r),
            _ => Err(corrupt(format!("expected entry {} of group {group} here", self.id.index))),
        }
    }
}

/// One group's part of the log.
#[derive(Debug, Default, Clone)]
pub(crate) struct GroupIndex {
    /// Live entries, contiguous by index.
    pub locs: VecDeque<Loc>,
    /// Entries up to this one are purged.
    pub purged: Option<EntryId>,
    /// Small named values (vote, committed id).
    pub state: BTreeMap<u8, Bytes>,
    /// Bytes of the live entries' records.
    pub bytes: u64,
}

impl GroupIndex {
    fn truncate_from(&mut self, index: u64) {
        while self.locs.back().is_some_and(|l| l.id.index >= index) {
            if let Some(l) = self.locs.pop_back() {
                self.bytes -= u64::from(l.len);
            }
        }
    }

    fn purge_through(&mut self, index: u64) {
        while self.locs.front().is_some_and(|l| l.id.index <= index) {
            if let Some(l) = self.locs.pop_front() {
                self.bytes -= u64::from(l.len);
            }
        }
    }

    /// The location of entry `index`, if live.
    pub fn loc(&self, index: u64) -> Option<&Loc> {
        let first = self.locs.front()?.id.index;
        index.checked_sub(first).and_then(|i| self.locs.get(i as usize))
    }
}

/// Every group's part of the log.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub groups: BTreeMap<GroupId, GroupIndex>,
}

impl Index {
    /// Applies one record found at `segment`/`offset` (`len` bytes with its header). An entry
    /// that would leave a hole in its group's log is refused: the log is damaged (or its
    /// writer broke the rules), and nothing may be guessed.
    pub fn apply(&mut self, record: &Record, segment: u64, offset: u64, len: u32) -> Result<(), String> {
        match record {
            Record::Entry { group, id, .. } => {
                let g = self.groups.entry(*group).or_default();
                if g.purged.is_some_and(|p| id.index <= p.index) {
                    return Ok(());
                }
                match (g.locs.back(), g.purged) {
                    (Some(last), _) if id.index <= last.id.index => g.truncate_from(id.index),
                    (Some(last), _) if id.index > last.id.index + 1 => {
                        return Err(format!(
                            "group {group}: entry {} follows entry {}: a hole in the log",
                            id.index, last.id.index
                        ))
                    }
                    (None, Some(p)) if id.index > p.index + 1 => {
                        return Err(format!(
                            "group {group}: entry {} follows the purge point {}: a hole in the log",
                            id.index, p.index
                        ))
                    }
                    _ => {}
                }
                g.locs.push_back(Loc { id: *id, segment, offset, len });
                g.bytes += u64::from(len);
            }
            Record::Truncate { group, from } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.truncate_from(*from);
                }
            }
            Record::Purge { group, upto } => {
                let g = self.groups.entry(*group).or_default();
                if g.purged.is_none_or(|p| p.index < upto.index) {
                    g.purged = Some(*upto);
                }
                g.purge_through(upto.index);
            }
            Record::State { group, key, value } => {
                self.groups.entry(*group).or_default().state.insert(*key, value.clone());
            }
            Record::Drop { group } => {
                self.groups.remove(group);
            }
        }
        Ok(())
    }

    /// The oldest segment a live entry is in.
    pub fn oldest_live_segment(&self) -> Option<u64> {
        self.groups.values().filter_map(|g| g.locs.front().map(|l| l.segment)).min()
    }

    /// Records that restate every group's small values and purge point: written at the start
    /// of each new segment, so older segments can go without losing them.
    pub fn checkpoint(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (group, g) in &self.groups {
            if let Some(upto) = g.purged {
                out.push(Record::Purge { group: *group, upto });
            }
            for (key, value) in &g.state {
                out.push(Record::State { group: *group, key: *key, value: value.clone() });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: GroupId, index: u64, term: u64) -> Record {
        Record::Entry { group, id: EntryId { index, term, node: 1 }, payload: Bytes::new() }
    }

    fn indexes(index: &Index, group: GroupId) -> Vec<(u64, u64)> {
        index.groups[&group].locs.iter().map(|l| (l.id.index, l.id.term)).collect()
    }

    #[test]
    fn entries_truncate_purge_and_holes() {
        let mut ix = Index::default();
        for i in 1..=5 {
            ix.apply(&entry(1, i, 1), 0, i * 100, 10).unwrap();
        }
        // A re-appended index replaces it and everything after it.
        ix.apply(&entry(1, 4, 2), 1, 0, 10).unwrap();
        assert_eq!(indexes(&ix, 1), [(1, 1), (2, 1), (3, 1), (4, 2)]);
        ix.apply(&Record::Truncate { group: 1, from: 3 }, 1, 50, 10).unwrap();
        assert_eq!(indexes(&ix, 1), [(1, 1), (2, 1)]);
        assert!(ix.apply(&entry(1, 4, 2), 1, 60, 10).is_err());
        ix.apply(&Record::Purge { group: 1, upto: EntryId { index: 9, term: 2, node: 1 } }, 1, 70, 10).unwrap();
        assert!(indexes(&ix, 1).is_empty());
        // Entries at or below the purge point are stale; the next one must follow it.
        ix.apply(&entry(1, 8, 2), 1, 80, 10).unwrap();
        assert!(indexes(&ix, 1).is_empty());
        assert!(ix.apply(&entry(1, 11, 2), 1, 90, 10).is_err());
        ix.apply(&entry(1, 10, 2), 1, 90, 10).unwrap();
        assert_eq!(ix.groups[&1].bytes, 10);
        ix.apply(&Record::Drop { group: 1 }, 1, 100, 10).unwrap();
        assert!(!ix.groups.contains_key(&1));
    }
}
