//! The shard's state machine: spans not yet in a block, and the catalog of committed blocks.
//!
//! Applying `Append` decodes the batch and buffers it; applying `BlockFlushed` records the
//! block and drops the buffered batches it covers. The state is shared (behind a lock) with the
//! read path, so queriers see a span as soon as it is applied. A snapshot is the catalog plus
//! the remaining buffered batches; it is written to `snapshot.bin` and loaded on start, which is
//! what lets the log be purged after a flush.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use spindle_schema::{col, ipc};
use spindle_storage::BlockMeta;

use crate::raft_types::{Entry, LogId, ShardCommand, ShardResponse, StorageError, TypeConfig};

/// A batch waiting to be flushed.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// Log index of the `Append` that brought it.
    pub index: u64,
    /// The spans.
    pub batch: RecordBatch,
    /// Earliest span start (unix ns).
    pub min_time: i64,
    /// Latest span end (unix ns).
    pub max_time: i64,
    /// When it was applied here (for the flush age).
    pub applied_at: Instant,
}

/// One tenant's data on a shard.
#[derive(Debug, Default, Clone)]
pub struct TenantState {
    /// Batches not yet in a committed block, in log order.
    pub unflushed: Vec<Buffered>,
    /// In-memory size of `unflushed`.
    pub unflushed_bytes: usize,
    /// Committed blocks.
    pub blocks: Vec<BlockMeta>,
}

/// Everything the state machine holds.
#[derive(Debug, Default)]
pub struct ShardState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership<u64, openraft::BasicNode>,
    /// Per-tenant data.
    pub tenants: BTreeMap<String, TenantState>,
    /// Sequence number of the next block.
    pub next_seq: u64,
    /// Total in-memory size of all unflushed batches.
    pub unflushed_bytes: usize,
}

impl ShardState {
    fn apply_command(&mut self, index: u64, command: ShardCommand) -> ShardResponse {
        match command {
            ShardCommand::Append { tenant, ipc } => match decode_buffered(index, &ipc) {
                Ok(buffered) => {
                    let rows: u64 = buffered.iter().map(|b| b.batch.num_rows() as u64).sum();
                    let t = self.tenants.entry(tenant).or_default();
                    for b in buffered {
                        let size = batch_bytes(&b.batch);
                        t.unflushed_bytes += size;
                        self.unflushed_bytes += size;
                        t.unflushed.push(b);
                    }
                    ShardResponse { rows, error: None }
                }
                Err(e) => {
                    tracing::error!(index, error = %e, "undecodable append in raft log; skipped");
                    ShardResponse { rows: 0, error: Some(e.to_string()) }
                }
            },
            ShardCommand::BlockFlushed { tenant, block, through_index } => {
                self.next_seq = self.next_seq.max(block.seq + 1);
                let t = self.tenants.entry(tenant).or_default();
                let mut freed = 0;
                t.unflushed.retain(|b| {
                    let keep = b.index > through_index;
                    if !keep {
                        freed += batch_bytes(&b.batch);
                    }
                    keep
                });
                t.unflushed_bytes -= freed;
                self.unflushed_bytes -= freed;
                if !t.blocks.iter().any(|b| b.id == block.id) {
                    t.blocks.push(block);
                }
                ShardResponse::default()
            }
        }
    }
}

fn decode_buffered(index: u64, bytes: &[u8]) -> Result<Vec<Buffered>, arrow::error::ArrowError> {
    let now = Instant::now();
    ipc::decode(bytes)?
        .into_iter()
        .map(|batch| {
            let (min_time, max_time) = time_bounds(&batch)?;
            Ok(Buffered { index, batch, min_time, max_time, applied_at: now })
        })
        .collect()
}

/// Bytes of data a batch holds (IPC-decoded arrays share one buffer, which
/// `get_array_memory_size` would count once per column).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// Earliest start and latest end of the spans in a batch.
pub fn time_bounds(batch: &RecordBatch) -> Result<(i64, i64), arrow::error::ArrowError> {
    let start = batch
        .column_by_name(col::START_TIME)
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("batch lacks start_time".into()))?
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("start_time has the wrong type".into()))?;
    let duration = batch
        .column_by_name(col::DURATION_NS)
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("batch lacks duration_ns".into()))?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("duration_ns has the wrong type".into()))?;
    let mut lo = i64::MAX;
    let mut hi = i64::MIN;
    for (s, d) in start.values().iter().zip(duration.values().iter()) {
        lo = lo.min(*s);
        hi = hi.max(s.saturating_add((*d).max(0)));
    }
    Ok((lo, hi))
}

/// Shared handle on the state, for the read and flush paths.
pub type SharedState = Arc<RwLock<ShardState>>;

/// Read-locks the state (a poisoned lock still holds consistent data: every update is a
/// single call that cannot panic half-way through on valid input).
pub fn read(state: &SharedState) -> RwLockReadGuard<'_, ShardState> {
    state.read().unwrap_or_else(|e| e.into_inner())
}

fn write(state: &SharedState) -> RwLockWriteGuard<'_, ShardState> {
    state.write().unwrap_or_else(|e| e.into_inner())
}

/// The serialised form of a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    next_seq: u64,
    tenants: Vec<SnapshotTenant>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotTenant {
    tenant: String,
    blocks: Vec<BlockMeta>,
    unflushed: Vec<SnapshotBatch>,
}

/// One unflushed batch in a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotBatch {
    index: u64,
    #[serde(with = "serde_bytes")]
    ipc: Vec<u8>,
}

/// The shard's state machine.
pub struct StateMachine {
    state: SharedState,
    dir: PathBuf,
    snapshot_idx: u64,
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

impl StateMachine {
    /// Opens the state machine in `dir`, restoring the last snapshot if there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let sm = Self { state: SharedState::default(), dir: dir.to_path_buf(), snapshot_idx: 0 };
        match std::fs::read(sm.snapshot_path()) {
            Ok(bytes) => {
                let file: SnapshotFile = bincode::deserialize(&bytes).map_err(io::Error::other)?;
                sm.restore(file).map_err(io::Error::other)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(sm)
    }

    /// The shared state.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.bin")
    }

    fn restore(&self, file: SnapshotFile) -> Result<(), arrow::error::ArrowError> {
        let mut tenants = BTreeMap::new();
        let mut total = 0;
        for t in file.tenants {
            let mut ts = TenantState { blocks: t.blocks, ..Default::default() };
            for sb in t.unflushed {
                for b in decode_buffered(sb.index, &sb.ipc)? {
                    let size = batch_bytes(&b.batch);
                    ts.unflushed_bytes += size;
                    total += size;
                    ts.unflushed.push(b);
                }
            }
            tenants.insert(t.tenant, ts);
        }
        let mut s = write(&self.state);
        s.last_applied = file.meta.last_log_id;
        s.membership = file.meta.last_membership;
        s.tenants = tenants;
        s.next_seq = file.next_seq;
        s.unflushed_bytes = total;
        Ok(())
    }

    fn encode_snapshot(&mut self) -> Result<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>), StorageError> {
        let s = read(&self.state);
        self.snapshot_idx += 1;
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!("{}-{}", s.last_applied.map(|l| l.index).unwrap_or(0), self.snapshot_idx),
        };
        let mut tenants = Vec::with_capacity(s.tenants.len());
        for (name, t) in &s.tenants {
            let mut unflushed = Vec::new();
            for b in &t.unflushed {
                let ipc = ipc::encode(std::slice::from_ref(&b.batch)).map_err(|e| snap_err(ErrorVerb::Write, e))?;
                unflushed.push(SnapshotBatch { index: b.index, ipc });
            }
            tenants.push(SnapshotTenant { tenant: name.clone(), blocks: t.blocks.clone(), unflushed });
        }
        let file = SnapshotFile { meta: meta.clone(), next_seq: s.next_seq, tenants };
        let bytes = bincode::serialize(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok((meta, bytes))
    }

    fn save_snapshot_bytes(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = self.dir.join("snapshot.tmp");
        let write = || -> io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.snapshot_path())?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| snap_err(ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, bytes) = self.encode_snapshot()?;
        self.save_snapshot_bytes(&bytes)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, openraft::BasicNode>), StorageError> {
        let s = read(&self.state);
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut s = write(&self.state);
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => ShardResponse::default(),
                EntryPayload::Normal(command) => s.apply_command(entry.log_id.index, command),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m);
                    ShardResponse::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self { state: self.state.clone(), dir: self.dir.clone(), snapshot_idx: self.snapshot_idx + 1 }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let mut file: SnapshotFile = bincode::deserialize(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        file.meta = meta.clone();
        let bytes = bincode::serialize(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.restore(file).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        self.save_snapshot_bytes(&bytes)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(self.snapshot_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
        };
        let file: SnapshotFile = bincode::deserialize(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

/// Per-tenant summary used by the flusher.
#[derive(Debug, Clone)]
pub struct TenantLoad {
    /// Tenant id.
    pub tenant: String,
    /// Unflushed bytes.
    pub bytes: usize,
    /// Age of the oldest unflushed batch.
    pub oldest: Option<Instant>,
}

/// Unflushed load per tenant.
pub fn tenant_loads(state: &SharedState) -> Vec<TenantLoad> {
    let s = read(state);
    s.tenants
        .iter()
        .filter(|(_, t)| !t.unflushed.is_empty())
        .map(|(name, t)| TenantLoad {
            tenant: name.clone(),
            bytes: t.unflushed_bytes,
            oldest: t.unflushed.iter().map(|b| b.applied_at).min(),
        })
        .collect()
}


/// Merges runs of consecutive small unflushed batches (each under `small_rows` rows) into
/// batches of about `target_rows`, so scans and snapshots see a few large batches instead of
/// thousands of tiny ones (SDKs often export a handful of spans per request). Returns how
/// many batches were merged away. Only the in-memory layout changes: a merged batch carries
/// the log index of its last part, which is what flushing and snapshots key on.
pub fn coalesce_small_batches(state: &SharedState, small_rows: usize, target_rows: usize) -> Result<usize, arrow::error::ArrowError> {
    type Run = (String, Vec<Buffered>);
    let runs: Vec<Run> = {
        let s = read(state);
        let mut runs = Vec::new();
        for (tenant, t) in &s.tenants {
            let mut run: Vec<Buffered> = Vec::new();
            let mut rows = 0;
            let mut close = |run: &mut Vec<Buffered>, rows: &mut usize| {
                if run.len() >= 2 {
                    runs.push((tenant.clone(), std::mem::take(run)));
                } else {
                    run.clear();
                }
                *rows = 0;
            };
            for b in &t.unflushed {
                let n = b.batch.num_rows();
                if n >= small_rows || rows + n > target_rows {
                    close(&mut run, &mut rows);
                }
                if n < small_rows {
                    rows += n;
                    run.push(b.clone());
                }
            }
            close(&mut run, &mut rows);
        }
        runs
    };
    let mut merged_away = 0;
    for (tenant, run) in runs {
        let batches: Vec<RecordBatch> = run.iter().map(|b| b.batch.clone()).collect();
        let merged = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
        let (first, last) = (run[0].index, run[run.len() - 1].index);
        let replacement = Buffered {
            index: last,
            batch: merged,
            min_time: run.iter().map(|b| b.min_time).min().unwrap_or(i64::MAX),
            max_time: run.iter().map(|b| b.max_time).max().unwrap_or(i64::MIN),
            applied_at: run.iter().map(|b| b.applied_at).min().unwrap_or_else(Instant::now),
        };
        let mut s = write(state);
        let Some(t) = s.tenants.get_mut(&tenant) else { continue };
        // The run may have been flushed meanwhile; replace it only if it is still there as is.
        let Some(pos) = t.unflushed.iter().position(|b| b.index == first) else { continue };
        let end = pos + run.len();
        if end > t.unflushed.len() || t.unflushed[end - 1].index != last {
            continue;
        }
        let old: usize = t.unflushed[pos..end].iter().map(|b| batch_bytes(&b.batch)).sum();
        let new = batch_bytes(&replacement.batch);
        t.unflushed.splice(pos..end, std::iter::once(replacement));
        t.unflushed_bytes = t.unflushed_bytes + new - old;
        s.unflushed_bytes = s.unflushed_bytes + new - old;
        merged_away += run.len() - 1;
    }
    Ok(merged_away)
}
