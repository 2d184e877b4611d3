//! The shard's Raft log (its part of the node's shared write-ahead log) and state machine
//! against openraft's own storage test suite, plus crash-recovery cases of the log and the
//! state machine's flush fencing and snapshots.

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, StorageError};
use spindle_storage::BlockMeta;
use spindle_storage_node::raft_log::{GroupLog, LogOptions};
use spindle_storage_node::raft_types::{AppendItem, MetaTypes, ShardCommand, ShardResponse, ShardTypes, SpanPayload};
use spindle_storage_node::shard_sm::{coalesce_small_batches, decode_buffered, read, ShardStateMachine};
use spindle_wal::{Wal, WalOptions};
use tempfile::TempDir;

type Log = GroupLog<ShardTypes>;

/// The group under test, and a neighbour in the same shared log that keeps writing.
const GROUP: u32 = 7;
const NEIGHBOUR: u32 = 8;

fn wal_at(dir: &std::path::Path, fsync: bool) -> Wal {
    Wal::open(&dir.join("wal"), WalOptions { fsync, ..WalOptions::default() }).expect("open wal")
}

struct Builder;

impl StoreBuilder<ShardTypes, Log, ShardStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, Log, ShardStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = wal_at(dir.path(), false);
        // Another group shares the log: its entries must never show up in this one's.
        let mut neighbour = GroupLog::<ShardTypes>::open(&wal, NEIGHBOUR, LogOptions::default()).expect("open");
        neighbour.blocking_append((0..=20).map(|i| blank(3, i))).await?;
        let log = Log::open(&wal, GROUP, LogOptions::default()).expect("open log");
        let sm = ShardStateMachine::open(&dir.path().join("sm"), Default::default()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

/// The metadata group's log passes it too (its own state machine is tested in its crate's
/// unit tests; here the log is what matters, with the shard state machine beside it).
#[tokio::test]
async fn groups_of_both_kinds_share_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let wal = wal_at(dir.path(), false);
    let mut shard = Log::open(&wal, GROUP, LogOptions::default()).unwrap();
    let mut meta = GroupLog::<MetaTypes>::open(&wal, u32::MAX, LogOptions::default()).unwrap();
    append(&mut shard, (1..=5).map(|i| blank(1, i)).collect()).await;
    meta.blocking_append((1..=3).map(|i| Entry { log_id: log_id(1, i), payload: EntryPayload::Blank })).await.unwrap();
    meta.save_vote(&openraft::Vote::new(4, 2)).await.unwrap();
    drop((shard, meta, wal));
    let wal = wal_at(dir.path(), false);
    let mut shard = Log::open(&wal, GROUP, LogOptions::default()).unwrap();
    let mut meta = GroupLog::<MetaTypes>::open(&wal, u32::MAX, LogOptions::default()).unwrap();
    assert_eq!(shard.try_get_log_entries(0..100).await.unwrap().len(), 5);
    assert_eq!(meta.try_get_log_entries(0..100).await.unwrap().len(), 3);
    assert_eq!(meta.read_vote().await.unwrap(), Some(openraft::Vote::new(4, 2)));
    assert_eq!(shard.read_vote().await.unwrap(), None);
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry<ShardTypes> {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

async fn append(log: &mut Log, entries: Vec<Entry<ShardTypes>>) {
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions { fsync: false, ..LogOptions::default() };
    let wal = wal_at(dir.path(), false);
    let mut log = Log::open(&wal, GROUP, options.clone()).unwrap();
    append(&mut log, (1..=20).map(|i| blank(1, i)).collect()).await;
    log.purge(log_id(1, 5)).await.unwrap();
    log.truncate(log_id(1, 16)).await.unwrap();
    append(&mut log, vec![blank(2, 16)]).await;
    // The in-memory tail and the disk agree after truncation.
    let tail = log.try_get_log_entries(14..100).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect::<Vec<_>>(),
        vec![(1, 14), (1, 15), (2, 16)]
    );
    log.save_committed(Some(log_id(2, 16))).await.unwrap();
    // The committed id is a hint that goes with the next append.
    append(&mut log, vec![blank(2, 17)]).await;
    log.truncate(log_id(2, 17)).await.unwrap();
    drop((log, wal));
    let wal = wal_at(dir.path(), false);
    let mut log = Log::open(&wal, GROUP, options).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
    assert_eq!(state.last_log_id.map(|l| (l.leader_id.term, l.index)), Some((2, 16)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 16)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(6));
    assert_eq!(entries.len(), 11);
}

#[tokio::test]
async fn replication_reads_are_capped_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions { fsync: false, max_read_bytes: 3 * 1024, cache_bytes: 4 * 1024 };
    let wal = wal_at(dir.path(), false);
    let mut log = Log::open(&wal, GROUP, options).unwrap();
    append(&mut log, (1..=10).map(|i| append_entry(i, &[("t", i as u8)])).collect()).await;
    let first = log.limited_get_log_entries(1, 11).await.unwrap();
    assert!(!first.is_empty() && first.len() < 10, "got {} entries", first.len());
    // A read larger than the cap still returns one entry; entries beyond the cache come from disk.
    let all = log.try_get_log_entries(1..11).await.unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[0], append_entry(1, &[("t", 1)]));
}

fn spans_ipc(trace: u8, n: u8) -> Bytes {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![trace; 16],
            span_id: vec![i + 1; 8],
            name: format!("s{i}"),
            start_time_unix_nano: 1_000 + i as u64,
            end_time_unix_nano: 2_000 + i as u64,
            ..Default::default()
        })
        .collect();
    let rs = ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() };
    let batch = spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch;
    Bytes::from(spindle_schema::ipc::encode(&[batch]).unwrap())
}

/// An append at `index` with one item per `(tenant, trace)`, one span each.
fn append_entry(index: u64, items: &[(&str, u8)]) -> Entry<ShardTypes> {
    let items = items
        .iter()
        .map(|(tenant, trace)| AppendItem {
            tenant: tenant.to_string(),
            digest: [index, *trace as u64],
            payload: SpanPayload::from_ipc(spans_ipc(*trace, 1)),
        })
        .collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(ShardCommand::Append { received_unix_ms: 0, items }),
    }
}

fn block(tenant: &str, first: u64, last: u64) -> BlockMeta {
    BlockMeta {
        id: format!("c-0-{tenant}-{first}-{last}"),
        shard: 0,
        first_index: first,
        last_index: last,
        path: format!("{tenant}/blocks/c/shard-00000/{first}-{last}.parquet"),
        min_time_ns: 0,
        max_time_ns: 0,
        min_trace_id: String::new(),
        max_trace_id: String::new(),
        rows: 0,
        bytes: 1,
        created_unix_ms: 0,
        layout: 1,
        trace_bloom: None,
    }
}

fn flushed(index: u64, tenant: &str, after: u64, through: u64) -> Entry<ShardTypes> {
    let command = ShardCommand::BlockFlushed {
        tenant: tenant.into(),
        term: 1,
        leader: 1,
        after_index: after,
        through_index: through,
        block: Box::new(block(tenant, after + 1, through)),
    };
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(command) }
}

fn rows(sm: &ShardStateMachine, tenant: &str) -> usize {
    let state = sm.state();
    let s = read(&state);
    s.tenants.get(tenant).map_or(0, |t| t.unflushed.iter().map(|b| b.rows).sum())
}

#[tokio::test]
async fn flushes_are_fenced_by_log_range_and_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = ShardStateMachine::open(dir.path(), Default::default()).unwrap();
    sm.apply((1..=4).map(|i| append_entry(i, &[("a", i as u8)]))).await.unwrap();
    // A block covering (0, 3]: rows of entries 1-3 go.
    let r = sm.apply(vec![flushed(5, "a", 0, 3)]).await.unwrap();
    assert_eq!(r, vec![ShardResponse::Flushed]);
    assert_eq!(rows(&sm, "a"), 1);
    // The same block again (a retried commit), an overlapping one, and one with a gap: refused.
    for (index, after, through) in [(6, 0, 3), (7, 2, 4), (8, 4, 4)] {
        let r = sm.apply(vec![flushed(index, "a", after, through)]).await.unwrap();
        assert!(matches!(r[0], ShardResponse::FlushRefused(_)), "({after}, {through}]: {r:?}");
    }
    // A block proposed in a different term than its flusher's: refused.
    let mut stale = flushed(9, "a", 3, 4);
    stale.log_id = LogId::new(CommittedLeaderId::new(2, 1), 9);
    assert!(matches!(sm.apply(vec![stale]).await.unwrap()[0], ShardResponse::FlushRefused(_)));
    assert_eq!(rows(&sm, "a"), 1);
    let state = sm.state();
    assert_eq!(read(&state).tenants["a"].blocks.len(), 1);
}

#[tokio::test]
async fn snapshot_at_the_safe_point_restores_unflushed_spans_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = ShardStateMachine::open(&dir.path().join("sm"), Default::default()).unwrap();
    let mut log: Vec<Entry<ShardTypes>> = vec![
        append_entry(1, &[("a", 1)]),
        append_entry(2, &[("b", 2), ("a", 3)]),
        append_entry(3, &[("a", 4)]),
        flushed(4, "a", 0, 3),
        append_entry(5, &[("b", 5)]),
    ];
    sm.apply(log.clone()).await.unwrap();
    assert_eq!((rows(&sm, "a"), rows(&sm, "b")), (0, 2));
    // Tenant b still has the span of entry 2 unflushed: the snapshot stops at index 1.
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1)));
    drop(sm);

    // A restart (or a follower installing the snapshot) restores the catalog, then applies the
    // log after the snapshot again: a's appends are in its block, b's come back, nothing twice.
    let mut restored = ShardStateMachine::open(&dir.path().join("sm"), Default::default()).unwrap();
    let (applied, _) = restored.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1)));
    let state = restored.state();
    assert_eq!(read(&state).tenants["a"].flushed_through, 3);
    let replay: Vec<_> = log.drain(1..).collect();
    let answers = restored.apply(replay).await.unwrap();
    assert!(matches!(answers[2], ShardResponse::FlushRefused(_)), "the flush it already has is stale: {answers:?}");
    assert_eq!((rows(&restored, "a"), rows(&restored, "b")), (0, 2));
    assert_eq!(read(&state).tenants["a"].blocks.len(), 1);

    // Once b is flushed too, the safe point is the last applied entry.
    restored.apply(vec![flushed(6, "b", 0, 5)]).await.unwrap();
    let snapshot = restored.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 6)));
}

#[tokio::test]
async fn coalescing_keeps_what_each_log_index_holds() {
    let dir = tempfile::tempdir().unwrap();
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sm = ShardStateMachine::open(&dir.path().join("budgeted"), budget.clone()).unwrap();
    sm.apply((1..=10).map(|i| append_entry(i, &[("t", i as u8)]))).await.unwrap();
    let state = sm.state();
    // Applied from the log (as a follower does), the pushes stay undecoded and are not merged.
    assert!(read(&state).tenants["t"].unflushed.iter().all(|b| !b.is_decoded()));
    assert_eq!(coalesce_small_batches(&state, 100, 1000).unwrap(), 0);
    // A leader decodes them, then merges.
    assert_eq!(decode_buffered(&state), 10);
    assert_eq!(coalesce_small_batches(&state, 100, 1000).unwrap(), 9);
    assert_eq!(
        budget.load(std::sync::atomic::Ordering::Relaxed),
        read(&state).unflushed_bytes,
        "the node-wide count follows"
    );
    {
        let s = read(&state);
        let t = &s.tenants["t"];
        assert_eq!(t.unflushed.len(), 1);
        assert_eq!(t.unflushed[0].rows, 10);
        assert_eq!(t.unflushed[0].batch().unwrap().num_rows(), 10);
        assert_eq!(t.unflushed[0].parts.len(), 10);
        assert_eq!(s.unflushed_bytes, t.unflushed_bytes);
    }
    // A block of (0, 6] drops exactly the first six rows of the merged batch.
    sm.apply(vec![flushed(11, "t", 0, 6)]).await.unwrap();
    let s = read(&state);
    assert_eq!(budget.load(std::sync::atomic::Ordering::Relaxed), s.unflushed_bytes);
    let t = &s.tenants["t"];
    assert_eq!(t.unflushed[0].batch().unwrap().num_rows(), 4);
    assert_eq!(t.unflushed[0].parts.iter().map(|p| p.index).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    assert!(s.recent.contains(&[3, 3]).is_some(), "digests of applied pushes are remembered");
}
