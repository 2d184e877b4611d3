//! The shared write-ahead log: what is written comes back after a restart, a torn tail is cut,
//! damage in the middle refuses the start, and space is freed without losing anything live.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use spindle_wal::{EntryId, Record, Wal, WalError, WalOptions};

fn id(index: u64, term: u64) -> EntryId {
    EntryId { index, term, node: 1 }
}

fn entry(group: u32, index: u64, term: u64, payload: &[u8]) -> Record {
    Record::Entry { group, id: id(index, term), payload: Bytes::copy_from_slice(payload) }
}

fn payloads(wal: &Wal, group: u32, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
    wal.read(group, from, to, usize::MAX).unwrap().into_iter().map(|(id, p)| (id.index, p.to_vec())).collect()
}

fn small() -> WalOptions {
    WalOptions { segment_bytes: 4096, rewrite_limit: 1 << 20, compact_after_segments: 2, ..WalOptions::default() }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn groups_come_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.write((1..=5).map(|i| entry(1, i, 1, format!("a{i}").as_bytes())).collect(), true).await.unwrap();
        wal.write((1..=3).map(|i| entry(2, i, 1, format!("b{i}").as_bytes())).collect(), true).await.unwrap();
        wal.write(vec![Record::State { group: 2, key: 1, value: Bytes::from_static(b"vote") }], true).await.unwrap();
        // Entry 4 of group 1 replaced (a new leader's entry), 5 with it.
        wal.write(vec![entry(1, 4, 2, b"a4'")], true).await.unwrap();
        wal.write(vec![Record::Truncate { group: 2, from: 3 }], true).await.unwrap();
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        payloads(&wal, 1, 1, 10),
        [(1, b"a1".to_vec()), (2, b"a2".to_vec()), (3, b"a3".to_vec()), (4, b"a4'".to_vec())]
    );
    assert_eq!(wal.group(1).last, Some(id(4, 2)));
    assert_eq!(payloads(&wal, 2, 1, 10), [(1, b"b1".to_vec()), (2, b"b2".to_vec())]);
    assert_eq!(wal.group(2).state.get(&1).map(|v| v.to_vec()), Some(b"vote".to_vec()));
    assert!(wal.read(3, 1, 2, usize::MAX).unwrap().is_empty());
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.write((1..=3).map(|i| entry(7, i, 1, b"x")).collect(), true).await.unwrap();
    }
    // A crash in the middle of the next batch: its header and part of its body.
    let segment = segments(dir.path()).pop().unwrap();
    let mut partial = spindle_wal::format::batch_header(500).to_vec();
    partial.extend_from_slice(&[1, 2, 3, 4, 5]);
    OpenOptions::new().append(true).open(&segment).unwrap().write_all(&partial).unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.group(7).last, Some(id(3, 1)));
    wal.write(vec![entry(7, 4, 1, b"y")], true).await.unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&wal, 7, 1, 10).len(), 4);
}

#[tokio::test]
async fn damage_before_valid_data_refuses_to_start_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.write(vec![entry(1, 1, 1, b"first group entry")], true).await.unwrap();
        wal.write(vec![entry(2, 1, 1, b"another group's entry")], true).await.unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // Flip a byte of the first batch's record (after the file and batch headers).
    let at = spindle_wal::format::FILE_HEADER + spindle_wal::format::BATCH_HEADER + 20;
    bytes[at] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, spindle_wal::format::FILE_HEADER as u64);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a damaged log must not open"),
    }
    // Nothing was cut: the file is as it was.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

#[tokio::test]
async fn purged_space_is_freed_and_idle_groups_are_copied_forward() {
    let dir = tempfile::tempdir().unwrap();
    let payload = vec![7u8; 300];
    {
        let wal = Wal::open(dir.path(), small()).unwrap();
        // An idle group with two entries and a vote, written first.
        wal.write(vec![entry(9, 1, 1, b"idle-1"), entry(9, 2, 1, b"idle-2")], true).await.unwrap();
        wal.write(vec![Record::State { group: 9, key: 1, value: Bytes::from_static(b"v9") }], true).await.unwrap();
        // A busy group that writes many segments' worth and purges behind itself.
        for i in 1..=200u64 {
            wal.write(vec![entry(1, i, 1, &payload)], true).await.unwrap();
            if i % 10 == 0 {
                wal.write(vec![Record::Purge { group: 1, upto: id(i - 5, 1) }], false).await.unwrap();
            }
        }
        let stats = wal.stats();
        assert!(stats.segments <= 4, "old segments were not freed: {stats:?}");
        assert!(segments(dir.path())[0].file_name().unwrap().to_str().unwrap() != "00000000000000000001.wal");
    }
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(payloads(&wal, 9, 1, 3), [(1, b"idle-1".to_vec()), (2, b"idle-2".to_vec())]);
    assert_eq!(wal.group(9).state.get(&1).map(|v| v.to_vec()), Some(b"v9".to_vec()));
    let busy = wal.group(1);
    assert_eq!(busy.purged, Some(id(195, 1)));
    assert_eq!((busy.first.map(|f| f.index), busy.last.map(|l| l.index)), (Some(196), Some(200)));
    assert_eq!(payloads(&wal, 1, 196, 201).len(), 5);
}

#[tokio::test]
async fn a_dropped_group_is_gone_and_can_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.write((1..=3).map(|i| entry(4, i, 1, b"old")).collect(), true).await.unwrap();
        wal.write(vec![Record::Drop { group: 4 }], true).await.unwrap();
        wal.write(vec![entry(4, 10, 3, b"new")], true).await.unwrap();
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&wal, 4, 0, 20), [(10, b"new".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_groups_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let tasks: Vec<_> = (0..16u32)
        .map(|group| {
            let wal = wal.clone();
            tokio::spawn(async move {
                for i in 1..=50 {
                    wal.write(vec![entry(group, i, 1, &[group as u8; 100])], true).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = wal.stats();
    assert!(stats.syncs < 16 * 50, "every write synced on its own: {stats:?}");
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for group in 0..16 {
        assert_eq!(payloads(&wal, group, 1, 51).len(), 50);
    }
}

/// One slow group (a write of 48 MiB) holds the others up by at most the batch it is in: a
/// small write of another group submitted right after it is done by the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_write_of_one_group_delays_the_others_by_one_batch_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let before = wal.stats().batches;
    let big = wal.submit(vec![entry(1, 1, 1, &vec![5u8; 48 << 20])], true);
    let small = wal.write(vec![entry(2, 1, 1, b"small")], true).await;
    small.unwrap();
    let batches_when_small_done = wal.stats().batches - before;
    assert!(batches_when_small_done <= 2, "the small write waited {batches_when_small_done} batches");
    big.await.unwrap().unwrap();
    assert_eq!(payloads(&wal, 2, 1, 2), [(1, b"small".to_vec())]);
}
