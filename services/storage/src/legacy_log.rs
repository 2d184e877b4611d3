//! Reads a group's Raft log in the layout of earlier versions (one directory per group:
//! segment files `<first index>.log` of records `[len u32][crc32 u32][bincode entry]`, the
//! vote in `vote.json`, the purge point in `purged.json`) and moves it into the node's shared
//! write-ahead log, once, when a node of an earlier version starts with this one.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::Path;

use openraft::Vote;
use serde::de::DeserializeOwned;
use spindle_wal::{GroupId, Wal};

use crate::raft_log::{GroupLog, LogTypes};
use crate::raft_types::LogId;

/// What an old-layout log holds.
struct OldLog<C: LogTypes> {
    entries: Vec<openraft::Entry<C>>,
    purged: Option<LogId>,
    vote: Option<Vote<u64>>,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the old log in `dir` (a torn record at the end of the last segment ends it).
fn read_old<C: LogTypes>(dir: &Path) -> io::Result<OldLog<C>> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    firsts.sort_unstable();
    let mut entries: VecDeque<openraft::Entry<C>> = VecDeque::new();
    for first in firsts {
        let mut reader = BufReader::new(File::open(dir.join(format!("{first:020}.log")))?);
        let mut header = [0u8; 8];
        loop {
            if reader.read_exact(&mut header).is_err() {
                break;
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                break;
            }
            let Ok(entry) = bincode::deserialize::<openraft::Entry<C>>(&payload) else { break };
            // A later record for an index replaces it and everything after it (a truncation).
            while entries.back().is_some_and(|e| e.log_id.index >= entry.log_id.index) {
                entries.pop_back();
            }
            entries.push_back(entry);
        }
    }
    let purged: Option<LogId> = read_json::<Option<LogId>>(&dir.join("purged.json"))?.flatten();
    if let Some(p) = purged {
        while entries.front().is_some_and(|e| e.log_id.index <= p.index) {
            entries.pop_front();
        }
    }
    Ok(OldLog { entries: entries.into(), purged, vote: read_json(&dir.join("vote.json"))? })
}

/// Moves the old-layout log in `dir`, if there is one, into `wal` as group `group`, then
/// deletes `dir`. A crash half-way leaves `dir` in place and the next start does it again
/// (the group is dropped from the shared log first). Returns whether there was one.
pub async fn import<C: LogTypes>(dir: &Path, wal: &Wal, group: GroupId) -> io::Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let path = dir.to_path_buf();
    let old = tokio::task::spawn_blocking(move || read_old::<C>(&path)).await.map_err(io::Error::other)??;
    let count = old.entries.len();
    GroupLog::<C>::import(wal, group, old.purged, old.vote, old.entries).await?;
    let path = dir.to_path_buf();
    tokio::task::spawn_blocking(move || fs::remove_dir_all(path)).await.map_err(io::Error::other)??;
    tracing::info!(group, entries = count, from = %dir.display(), "moved a raft log of the earlier layout into the node's write-ahead log");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
    use spindle_wal::WalOptions;

    use super::*;
    use crate::raft_log::LogOptions;
    use crate::raft_types::ShardTypes;

    fn blank(term: u64, index: u64) -> openraft::Entry<ShardTypes> {
        openraft::Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    /// Writes a log the way earlier versions did.
    fn write_old(dir: &Path, entries: &[openraft::Entry<ShardTypes>], purged: Option<LogId>, vote: Vote<u64>) {
        fs::create_dir_all(dir).unwrap();
        let mut f = File::create(dir.join(format!("{:020}.log", 1))).unwrap();
        for e in entries {
            let body = bincode::serialize(e).unwrap();
            f.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&crc32fast::hash(&body).to_le_bytes()).unwrap();
            f.write_all(&body).unwrap();
        }
        f.write_all(&[9, 0, 0]).unwrap(); // a torn record
        fs::write(dir.join("purged.json"), serde_json::to_vec(&purged).unwrap()).unwrap();
        fs::write(dir.join("vote.json"), serde_json::to_vec(&vote).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn an_old_log_moves_into_the_shared_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("shard-00003").join("log");
        // Entries 1-5, then 4 again in term 2 (a truncation), purged through 1.
        let mut entries: Vec<_> = (1..=5).map(|i| blank(1, i)).collect();
        entries.push(blank(2, 4));
        let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), 1));
        write_old(&old, &entries, purged, Vote::new(2, 1));
        let wal = Wal::open(&dir.path().join("wal"), WalOptions::default()).unwrap();
        assert!(import::<ShardTypes>(&old, &wal, 3).await.unwrap());
        assert!(!old.exists());
        assert!(!import::<ShardTypes>(&old, &wal, 3).await.unwrap());
        drop(wal);
        let wal = Wal::open(&dir.path().join("wal"), WalOptions::default()).unwrap();
        let mut log = GroupLog::<ShardTypes>::open(&wal, 3, LogOptions::default()).unwrap();
        let got: Vec<_> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        assert_eq!(got, [(1, 2), (1, 3), (2, 4)]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, purged);
    }
}
