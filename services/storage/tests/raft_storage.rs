//! The shard's Raft log and state machine against openraft's own storage test suite, plus
//! crash-recovery cases of the log files.

use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError};
use spindle_storage_node::log_store::LogStore;
use spindle_storage_node::raft_types::TypeConfig;
use spindle_storage_node::state_machine::StateMachine;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("log"), true).expect("open log");
        let sm = StateMachine::open(&dir.path().join("sm")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
}

async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn torn_tail_is_cut_and_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut log = LogStore::open(&path, true).unwrap();
        append(&mut log, (1..=10).map(|i| blank(1, i)).collect()).await;
    }
    // A crash in the middle of a write leaves a partial record at the end of the segment.
    let segment = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();

    let mut log = LogStore::open(&path, true).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    append(&mut log, vec![blank(1, 11)]).await;
    drop(log);
    let mut log = LogStore::open(&path, true).unwrap();
    let entries = log.try_get_log_entries(1..=11).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = LogStore::open(&path, false).unwrap();
    append(&mut log, (1..=20).map(|i| blank(1, i)).collect()).await;
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 16)).await.unwrap();
    append(&mut log, vec![blank(2, 16)]).await;
    drop(log);
    let mut log = LogStore::open(&path, false).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
    assert_eq!(state.last_log_id.map(|l| (l.leader_id.term, l.index)), Some((2, 16)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(6));
    assert_eq!(entries.len(), 11);
}

#[tokio::test]
async fn state_machine_restores_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    sm.apply(vec![blank(1, 1), blank(1, 2)]).await.unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder).await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));
    drop(sm);
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
}

fn one_span_ipc(i: u8) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let span = Span {
        trace_id: vec![i + 1; 16],
        span_id: vec![i + 1; 8],
        name: format!("s{i}"),
        start_time_unix_nano: 1_000 + i as u64,
        end_time_unix_nano: 2_000 + i as u64,
        ..Default::default()
    };
    let rs = ResourceSpans { scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }], ..Default::default() };
    let batch = spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch;
    spindle_schema::ipc::encode(&[batch]).unwrap()
}

#[tokio::test]
async fn small_batches_coalesce_and_flush_drops_them() {
    use spindle_storage_node::raft_types::ShardCommand;
    use spindle_storage_node::state_machine::{coalesce_small_batches, read};

    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let entries: Vec<_> = (1..=10u64)
        .map(|i| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(ShardCommand::Append { tenant: "t".into(), ipc: one_span_ipc(i as u8) }),
        })
        .collect();
    let responses = sm.apply(entries).await.unwrap();
    assert!(responses.iter().all(|r| r.rows == 1 && r.error.is_none()));
    let state = sm.state();
    let before = read(&state).unflushed_bytes;
    assert_eq!(read(&state).tenants["t"].unflushed.len(), 10);

    assert_eq!(coalesce_small_batches(&state, 100, 1000).unwrap(), 9);
    {
        let s = read(&state);
        let t = &s.tenants["t"];
        assert_eq!(t.unflushed.len(), 1);
        assert_eq!(t.unflushed[0].batch.num_rows(), 10);
        assert_eq!(t.unflushed[0].index, 10);
        assert_eq!((t.unflushed[0].min_time, t.unflushed[0].max_time), (1_001, 2_010));
        assert_eq!(s.unflushed_bytes, t.unflushed_bytes);
        assert!(s.unflushed_bytes > 0 && s.unflushed_bytes <= before * 2);
    }

    let block = spindle_storage::BlockMeta {
        id: "b1".into(),
        shard: 0,
        seq: 1,
        path: "t/blocks/b1.parquet".into(),
        min_time_ns: 0,
        max_time_ns: 0,
        min_trace_id: String::new(),
        max_trace_id: String::new(),
        rows: 10,
        bytes: 1,
        created_unix_ms: 0,
        layout: 1,
        trace_bloom: None,
    };
    let flushed = Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 11),
        payload: EntryPayload::Normal(ShardCommand::BlockFlushed { tenant: "t".into(), block, through_index: 10 }),
    };
    sm.apply(vec![flushed]).await.unwrap();
    let s = read(&state);
    assert!(s.tenants["t"].unflushed.is_empty());
    assert_eq!(s.unflushed_bytes, 0);
    assert_eq!(s.tenants["t"].blocks.len(), 1);
    assert_eq!(s.next_seq, 2);
}
