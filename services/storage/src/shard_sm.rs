//! A shard's state machine: spans not yet in a block, and the catalog of committed blocks.
//!
//! Applying `Append` buffers its batches (decoded once); applying `BlockFlushed` records the
//! block and drops the buffered rows of the log range it covers, if the range starts exactly
//! where the tenant's flushed range ends. Every replica applies the same entries the same way,
//! so every replica holds the same spans for the same log index. The state is shared (behind a
//! lock) with the read path, so queriers see a span as soon as it is applied.
//!
//! Snapshots hold metadata only. A snapshot is taken at the *safe point*: the highest index at
//! which every appended span is in a committed block. It carries the catalog and each tenant's
//! flushed-through index; the spans after the safe point stay in the Raft log (openraft purges
//! only up to the snapshot) and are applied again after a restart or a snapshot install. Those
//! re-applied entries are idempotent: an append of a tenant at or below its flushed-through
//! index is already in a block, and a `BlockFlushed` it has seen is refused as stale.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Cursor};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use arrow::error::ArrowError;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use serde::{Deserialize, Serialize};
use spindle_schema::col;
use spindle_schema::digest::Digest;
use spindle_storage::BlockMeta;

use crate::raft_types::{LogId, Membership, ShardCommand, ShardResponse, ShardTypes, SpanPayload, StorageError};
use crate::snapshot_store::{snap_err, SnapshotStore};

/// How long a pushed batch's digest is remembered, so a retried push is recognised.
pub const RETRY_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Most digests remembered.
pub const RETRY_WINDOW_ENTRIES: usize = 262_144;

/// Spans waiting to be flushed. The leader keeps them decoded (it decoded the push to check
/// it); a follower keeps the IPC bytes as they arrived and decodes them only when it must: when
/// it leads and flushes, answers a read, or decodes everything on taking over.
#[derive(Debug, Clone)]
pub struct Buffered {
    spans: Spans,
    /// The pushes the batch holds, in log order (several once small batches are coalesced).
    pub parts: Vec<Part>,
    /// Spans in the batch.
    pub rows: usize,
    /// Bytes the spans take decoded (what the node's unflushed budget counts).
    pub bytes: usize,
    /// When the leader received the oldest part (unix ms).
    pub received_unix_ms: u64,
}

/// The spans of a [`Buffered`].
#[derive(Debug, Clone)]
enum Spans {
    /// Decoded, with their earliest start and latest end (unix ns).
    Decoded { batch: RecordBatch, bounds: (i64, i64) },
    /// The IPC bytes of one push, not decoded here yet.
    Encoded(SpanPayload),
}

impl Buffered {
    /// Buffers one push: decoded if the payload already is, else its bytes as they are (their
    /// row count and decoded size read from the IPC headers).
    fn of_payload(payload: &SpanPayload, part: (u64, u32), received_unix_ms: u64) -> Result<Self, String> {
        let (spans, rows, bytes) = match payload.decoded() {
            Some(batch) => {
                let batch = batch?;
                let bounds = time_bounds(&batch).map_err(|e| e.to_string())?;
                let (rows, bytes) = (batch.num_rows(), batch_bytes(&batch));
                (Spans::Decoded { batch, bounds }, rows, bytes)
            }
            None => {
                let summary = spindle_schema::ipc::summary(payload.ipc()).map_err(|e| e.to_string())?;
                (Spans::Encoded(payload.clone()), summary.rows, summary.data_bytes)
            }
        };
        let parts = vec![Part { index: part.0, item: part.1, rows }];
        Ok(Self { spans, parts, rows, bytes, received_unix_ms })
    }

    /// The spans, decoded (a follower's bytes are decoded on first use and kept).
    pub fn batch(&self) -> Result<RecordBatch, String> {
        match &self.spans {
            Spans::Decoded { batch, .. } => Ok(batch.clone()),
            Spans::Encoded(payload) => payload.batch(),
        }
    }

    /// Earliest span start and latest span end (unix ns), decoding the bytes if need be.
    pub fn bounds(&self) -> Result<(i64, i64), String> {
        match &self.spans {
            Spans::Decoded { bounds, .. } => Ok(*bounds),
            Spans::Encoded(payload) => time_bounds(&payload.batch()?).map_err(|e| e.to_string()),
        }
    }

    /// Whether the spans are held decoded.
    pub fn is_decoded(&self) -> bool {
        matches!(self.spans, Spans::Decoded { .. })
    }

    /// The same pushes, decoded.
    fn decoded(&self) -> Result<Self, String> {
        let batch = self.batch()?;
        let bounds = time_bounds(&batch).map_err(|e| e.to_string())?;
        Ok(Self { spans: Spans::Decoded { batch, bounds }, ..self.clone() })
    }

    fn first_index(&self) -> u64 {
        self.parts.first().map_or(0, |p| p.index)
    }

    /// Log index of the newest push the batch holds.
    pub fn last_index(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.index)
    }
}

/// One push in a [`Buffered`] batch: the log entry and the item within it that brought it, and
/// how many of the batch's rows are its.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Log index of the `Append`.
    pub index: u64,
    /// Position of the push in the `Append`'s items.
    pub item: u32,
    /// Rows it holds.
    pub rows: usize,
}

/// One tenant's data on a shard.
#[derive(Debug, Default, Clone)]
pub struct TenantState {
    /// Every append of the tenant at or below this index is in a committed block.
    pub flushed_through: u64,
    /// Batches not yet in a committed block, in log order.
    pub unflushed: Vec<Buffered>,
    /// In-memory size of `unflushed`.
    pub unflushed_bytes: usize,
    /// Committed blocks.
    pub blocks: Vec<BlockMeta>,
    /// Blocks replaced by compaction or past retention: no query sees them, their files go
    /// after a grace period (so queries already reading them can finish).
    pub retired: Vec<RetiredBlock>,
    /// Compactions leased on this tenant's blocks (a block is in at most one unexpired lease).
    pub leases: Vec<CompactionLease>,
}

/// A block no query sees any more, waiting for its file to be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredBlock {
    /// The block.
    pub block: BlockMeta,
    /// When it was retired (unix ms, the leader's clock).
    pub retired_unix_ms: u64,
}

/// A merge of some of a tenant's blocks, leased to one compactor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionLease {
    /// Job id.
    pub job: String,
    /// The compactor.
    pub holder: String,
    /// Ids of the blocks to merge.
    pub inputs: Vec<String>,
    /// The time window the blocks belong to: `(start ms, length ms)`; one lease per window.
    pub window: (i64, u64),
    /// The lease ends then (unix ms, the leader's clock).
    pub until_unix_ms: u64,
}

/// Digests of recently applied pushes. Not part of the replicated state's meaning: the leader
/// consults it before proposing, to acknowledge a retried push instead of storing it twice.
/// Every replica fills it as it applies, so a new leader has it too.
#[derive(Debug, Default)]
pub struct RecentDigests {
    by_digest: HashMap<Digest, u64>,
    order: VecDeque<(Digest, u64, u64)>,
    newest_ms: u64,
}

impl RecentDigests {
    /// Whether a push with this digest was applied within the window (at which index).
    pub fn contains(&self, digest: &Digest) -> Option<u64> {
        self.by_digest.get(digest).copied()
    }

    fn insert(&mut self, digest: Digest, index: u64, received_ms: u64) {
        self.newest_ms = self.newest_ms.max(received_ms);
        self.by_digest.insert(digest, index);
        self.order.push_back((digest, index, received_ms));
        while self.order.len() > RETRY_WINDOW_ENTRIES
            || self.order.front().is_some_and(|f| f.2 + RETRY_WINDOW_MS < self.newest_ms)
        {
            if let Some((d, i, _)) = self.order.pop_front() {
                if self.by_digest.get(&d) == Some(&i) {
                    self.by_digest.remove(&d);
                }
            }
        }
    }
}

/// Everything the state machine holds.
#[derive(Debug, Default)]
pub struct ShardState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Current membership of the group.
    pub membership: Membership,
    /// Memberships since the safe point (and the last one at or before it).
    memberships: Vec<Membership>,
    /// Where each leader's entries start: `(first index, log id of that entry)`.
    leader_starts: Vec<LogId>,
    /// Tenants by id.
    pub tenants: BTreeMap<String, TenantState>,
    /// Total in-memory size of all unflushed batches.
    pub unflushed_bytes: usize,
    /// The node-wide count of unflushed bytes this shard adds to.
    budget: Arc<AtomicUsize>,
    /// Catalog changes (blocks flushed, swapped, retired, purged) since the state machine
    /// started: tells replicas when to snapshot.
    pub flushes: u64,
    /// Digests of recent pushes.
    pub recent: RecentDigests,
}

impl ShardState {
    fn grow(&mut self, bytes: usize) {
        self.unflushed_bytes += bytes;
        self.budget.fetch_add(bytes, Ordering::Relaxed);
    }

    fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.unflushed_bytes);
        self.unflushed_bytes -= bytes;
        self.budget.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The highest index at which every appended span is in a committed block.
    pub fn safe_point(&self) -> u64 {
        let first_unflushed =
            self.tenants.values().filter_map(|t| t.unflushed.first()).map(Buffered::first_index).min();
        match first_unflushed {
            Some(i) => i.saturating_sub(1),
            None => self.last_applied.map_or(0, |l| l.index),
        }
    }

    fn log_id_at(&self, index: u64) -> Option<LogId> {
        let start = self.leader_starts.iter().rev().find(|l| l.index <= index)?;
        Some(LogId::new(start.leader_id, index))
    }

    fn membership_at(&self, index: u64) -> Membership {
        self.memberships
            .iter()
            .rev()
            .find(|m| m.log_id().is_some_and(|l| l.index <= index))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets leader starts and memberships no snapshot will need again.
    fn trim_history(&mut self, safe: u64) {
        let keep_from = |starts: &[u64]| starts.iter().rposition(|i| *i <= safe).unwrap_or(0);
        let k = keep_from(&self.leader_starts.iter().map(|l| l.index).collect::<Vec<_>>());
        self.leader_starts.drain(..k);
        let m = keep_from(&self.memberships.iter().map(|m| m.log_id().map_or(0, |l| l.index)).collect::<Vec<_>>());
        self.memberships.drain(..m);
    }

    /// Applies one push of an append entry (`at`: its index and position in the entry); the
    /// rows it holds, or why it cannot be read.
    fn append(
        &mut self,
        at: (u64, u32),
        received_unix_ms: u64,
        tenant: &str,
        digests: &[Digest],
        payload: &SpanPayload,
    ) -> Result<u64, String> {
        let index = at.0;
        let buffered = Buffered::of_payload(payload, at, received_unix_ms).inspect_err(|e| {
            tracing::error!(index, error = %e, "unreadable append in the raft log; skipped");
        })?;
        let rows = buffered.rows as u64;
        for digest in digests {
            self.recent.insert(*digest, index, received_unix_ms);
        }
        let flushed = self.tenants.get(tenant).is_some_and(|t| index <= t.flushed_through);
        if flushed || rows == 0 {
            // Already in a block (applied again after a snapshot), or nothing to keep.
            return Ok(rows);
        }
        self.grow(buffered.bytes);
        let t = self.tenants.entry(tenant.to_string()).or_default();
        t.unflushed_bytes += buffered.bytes;
        t.unflushed.push(buffered);
        Ok(rows)
    }

    fn apply_command(&mut self, log_id: LogId, command: &ShardCommand) -> ShardResponse {
        let index = log_id.index;
        match command {
            ShardCommand::Append { received_unix_ms, items } => ShardResponse::Appended(
                items
                    .iter()
                    .enumerate()
                    .map(|(position, item)| {
                        let at = (index, position as u32);
                        self.append(at, *received_unix_ms, &item.tenant, &[item.digest], &item.payload)
                    })
                    .collect(),
            ),
            ShardCommand::AppendParts { received_unix_ms, items } => ShardResponse::Appended(
                items
                    .iter()
                    .enumerate()
                    .map(|(position, item)| {
                        let digests: Vec<Digest> = item.parts.iter().map(|p| p.digest).collect();
                        let at = (index, position as u32);
                        self.append(at, *received_unix_ms, &item.tenant, &digests, &item.payload)
                    })
                    .collect(),
            ),
            ShardCommand::BlockFlushed { tenant, term, leader, after_index, through_index, block } => {
                let t = self.tenants.entry(tenant.clone()).or_default();
                let refuse = |why: String| {
                    tracing::info!(index, tenant = %tenant, block = %block.id, "block refused: {why}");
                    ShardResponse::FlushRefused(why)
                };
                if *through_index <= t.flushed_through {
                    return refuse(format!("stale: the tenant is flushed through {}", t.flushed_through));
                }
                if *after_index != t.flushed_through {
                    return refuse(format!(
                        "range ({after_index}, {through_index}] does not start where the flushed range ends ({})",
                        t.flushed_through
                    ));
                }
                if *term != log_id.leader_id.term || *leader != log_id.leader_id.node_id || *through_index >= index {
                    return refuse(format!(
                        "flushed by leader {leader} in term {term} but proposed in {} at index {index}",
                        log_id.leader_id
                    ));
                }
                let freed = drop_through(&mut t.unflushed, *through_index);
                t.unflushed_bytes = t.unflushed_bytes.saturating_sub(freed);
                t.flushed_through = *through_index;
                if !t.blocks.iter().any(|b| b.id == block.id) {
                    t.blocks.push(BlockMeta { trace_bloom: None, ..block.as_ref().clone() });
                }
                self.shrink(freed);
                self.flushes += 1;
                ShardResponse::Flushed
            }
            ShardCommand::LeaseCompaction { tenant, lease, now_unix_ms } => {
                let Some(t) = self.tenants.get_mut(tenant) else {
                    return ShardResponse::Refused(format!("tenant {tenant} has no blocks here"));
                };
                t.leases.retain(|l| l.until_unix_ms > *now_unix_ms);
                let overlaps = |l: &CompactionLease| {
                    let (a, b) = (l.window, lease.window);
                    let windows_meet = a.0 < b.0.saturating_add(b.1 as i64) && b.0 < a.0.saturating_add(a.1 as i64);
                    windows_meet || l.inputs.iter().any(|id| lease.inputs.contains(id))
                };
                if let Some(held) = t.leases.iter().find(|l| overlaps(l)) {
                    return ShardResponse::Refused(format!(
                        "the window is leased to {} until {}",
                        held.holder, held.until_unix_ms
                    ));
                }
                if let Some(missing) = lease.inputs.iter().find(|id| !t.blocks.iter().any(|b| &b.id == *id)) {
                    return ShardResponse::Refused(format!("block {missing} is not live"));
                }
                t.leases.push(lease.clone());
                ShardResponse::Leased
            }
            ShardCommand::Compacted { tenant, job, inputs, output, now_unix_ms } => {
                let Some(t) = self.tenants.get_mut(tenant) else {
                    return ShardResponse::Refused(format!("tenant {tenant} has no blocks here"));
                };
                let live = |id: &String| t.blocks.iter().any(|b| &b.id == id);
                if live(&output.id) && !inputs.iter().any(live) {
                    return ShardResponse::Compacted;
                }
                match t.leases.iter().find(|l| &l.job == job) {
                    Some(l) if l.until_unix_ms >= *now_unix_ms => {}
                    Some(_) => return ShardResponse::Refused(format!("the lease of job {job} ended")),
                    None => return ShardResponse::Refused(format!("job {job} holds no lease")),
                }
                if let Some(missing) = inputs.iter().find(|id| !live(id)) {
                    return ShardResponse::Refused(format!("block {missing} is not live any more"));
                }
                let (gone, kept): (Vec<BlockMeta>, Vec<BlockMeta>) =
                    std::mem::take(&mut t.blocks).into_iter().partition(|b| inputs.contains(&b.id));
                t.blocks = kept;
                t.blocks.push(BlockMeta { trace_bloom: None, ..output.as_ref().clone() });
                t.retired.extend(gone.into_iter().map(|block| RetiredBlock { block, retired_unix_ms: *now_unix_ms }));
                t.leases.retain(|l| &l.job != job);
                self.flushes += 1;
                ShardResponse::Compacted
            }
            ShardCommand::Retire { tenant, blocks, now_unix_ms } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    let (gone, kept): (Vec<BlockMeta>, Vec<BlockMeta>) =
                        std::mem::take(&mut t.blocks).into_iter().partition(|b| blocks.contains(&b.id));
                    t.blocks = kept;
                    t.retired
                        .extend(gone.into_iter().map(|block| RetiredBlock { block, retired_unix_ms: *now_unix_ms }));
                    self.flushes += 1;
                }
                ShardResponse::Done
            }
            ShardCommand::Purge { tenant, blocks } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    t.retired.retain(|r| !blocks.contains(&r.block.id));
                    self.flushes += 1;
                }
                ShardResponse::Done
            }
        }
    }
}

/// Removes the rows of every append at or below `through` (slicing batches that hold appends
/// on both sides); returns the bytes freed.
fn drop_through(unflushed: &mut Vec<Buffered>, through: u64) -> usize {
    let mut freed = 0;
    let mut kept = Vec::with_capacity(unflushed.len());
    for b in unflushed.drain(..) {
        if b.last_index() <= through {
            freed += b.bytes;
        } else if b.first_index() > through {
            kept.push(b);
        } else {
            // Only coalesced batches (decoded) hold pushes on both sides.
            let drop_rows: usize = b.parts.iter().filter(|p| p.index <= through).map(|p| p.rows).sum();
            let batch = match b.batch() {
                Ok(batch) => batch.slice(drop_rows, batch.num_rows() - drop_rows),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable unflushed spans dropped with their flushed neighbours");
                    freed += b.bytes;
                    continue;
                }
            };
            let bytes = batch_bytes(&batch);
            freed += b.bytes.saturating_sub(bytes);
            let bounds = time_bounds(&batch).unwrap_or((i64::MIN, i64::MAX));
            kept.push(Buffered {
                rows: batch.num_rows(),
                bytes,
                spans: Spans::Decoded { batch, bounds },
                parts: b.parts.into_iter().filter(|p| p.index > through).collect(),
                received_unix_ms: b.received_unix_ms,
            });
        }
    }
    *unflushed = kept;
    freed
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

/// The serialised form of a snapshot: metadata only.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    tenants: Vec<SnapshotTenant>,
    /// Digests of pushes applied at or before the snapshot point: `(digest, index, received ms)`.
    recent: Vec<([u64; 2], u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotTenant {
    tenant: String,
    flushed_through: u64,
    blocks: Vec<BlockMeta>,
    retired: Vec<RetiredBlock>,
    leases: Vec<CompactionLease>,
}

/// Marks snapshots of the current layout (the first layout began with the metadata, whose
/// first byte is 0 or 1).
const SNAPSHOT_MAGIC: u64 = 0x5350_494e_444c_0002;

/// The first snapshot layout, before compaction and retention.
#[derive(Deserialize)]
struct SnapshotFileV1 {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    tenants: Vec<SnapshotTenantV1>,
    recent: Vec<([u64; 2], u64, u64)>,
}

#[derive(Deserialize)]
struct SnapshotTenantV1 {
    tenant: String,
    flushed_through: u64,
    blocks: Vec<BlockMeta>,
}

fn encode_snapshot_file(file: &SnapshotFile) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(&(SNAPSHOT_MAGIC, file))
}

fn decode_snapshot_file(bytes: &[u8]) -> Result<SnapshotFile, bincode::Error> {
    if bytes.get(..8).is_some_and(|m| m == SNAPSHOT_MAGIC.to_le_bytes()) {
        return bincode::deserialize::<(u64, SnapshotFile)>(bytes).map(|(_, f)| f);
    }
    let old: SnapshotFileV1 = bincode::deserialize(bytes)?;
    Ok(SnapshotFile {
        meta: old.meta,
        tenants: old
            .tenants
            .into_iter()
            .map(|t| SnapshotTenant {
                tenant: t.tenant,
                flushed_through: t.flushed_through,
                blocks: t.blocks,
                retired: Vec::new(),
                leases: Vec::new(),
            })
            .collect(),
        recent: old.recent,
    })
}

/// The shard's state machine.
pub struct ShardStateMachine {
    state: SharedState,
    snapshots: SnapshotStore,
}

impl ShardStateMachine {
    /// Opens the state machine in `dir`, restoring the last snapshot if there is one. Its
    /// unflushed bytes are added to `budget`, the node-wide count.
    pub fn open(dir: &Path, budget: Arc<AtomicUsize>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state = SharedState::new(RwLock::new(ShardState { budget, ..ShardState::default() }));
        let sm = Self { state, snapshots: SnapshotStore::new(&dir.join("snapshot.bin")) };
        if let Some(bytes) = sm.snapshots.read()? {
            let file = decode_snapshot_file(&bytes).map_err(io::Error::other)?;
            sm.snapshots.loaded(file.meta.last_log_id);
            sm.restore(file);
        }
        Ok(sm)
    }

    /// The shared state.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    fn restore(&self, file: SnapshotFile) {
        let mut s = write(&self.state);
        let held = s.unflushed_bytes;
        s.shrink(held);
        let budget = s.budget.clone();
        *s = ShardState { budget, ..ShardState::default() };
        s.last_applied = file.meta.last_log_id;
        s.leader_starts = file.meta.last_log_id.into_iter().collect();
        s.membership = file.meta.last_membership.clone();
        s.memberships = vec![file.meta.last_membership];
        s.tenants = file
            .tenants
            .into_iter()
            .map(|t| {
                let state = TenantState {
                    flushed_through: t.flushed_through,
                    blocks: t.blocks,
                    retired: t.retired,
                    leases: t.leases,
                    ..Default::default()
                };
                (t.tenant, state)
            })
            .collect();
        for (digest, index, received) in file.recent {
            s.recent.insert(digest, index, received);
        }
    }

    fn encode_snapshot(&self) -> Result<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>), bincode::Error> {
        let mut s = write(&self.state);
        let safe = s.safe_point();
        s.trim_history(safe);
        let last_log_id = s.log_id_at(safe);
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: s.membership_at(safe),
            snapshot_id: format!("{safe}-{}", s.flushes),
        };
        let tenants = s
            .tenants
            .iter()
            .map(|(name, t)| SnapshotTenant {
                tenant: name.clone(),
                flushed_through: t.flushed_through,
                blocks: t.blocks.clone(),
                retired: t.retired.clone(),
                leases: t.leases.clone(),
            })
            .collect();
        let recent = s.recent.order.iter().filter(|(_, i, _)| *i <= safe).copied().collect();
        let file = SnapshotFile { meta: meta.clone(), tenants, recent };
        Ok((meta, encode_snapshot_file(&file)?))
    }
}

impl RaftSnapshotBuilder<ShardTypes> for ShardStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardTypes>, StorageError> {
        let (meta, bytes) = self.encode_snapshot().map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let bytes =
            self.snapshots.save_blocking(meta.last_log_id, bytes).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<ShardTypes> for ShardStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let s = read(&self.state);
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardResponse>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<ShardTypes>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut responses = Vec::with_capacity(entries.len());
        let mut s = write(&self.state);
        for entry in entries {
            if s.leader_starts.last().is_none_or(|l| l.leader_id != entry.log_id.leader_id) {
                s.leader_starts.push(entry.log_id);
            }
            s.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => ShardResponse::Done,
                EntryPayload::Normal(command) => s.apply_command(entry.log_id, command),
                EntryPayload::Membership(m) => {
                    let stored = Membership::new(Some(entry.log_id), m.clone());
                    s.membership = stored.clone();
                    s.memberships.push(stored);
                    ShardResponse::Done
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self { state: self.state.clone(), snapshots: self.snapshots.clone() }
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
        let mut file = decode_snapshot_file(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        file.meta = meta.clone();
        let bytes = encode_snapshot_file(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.snapshots.save_blocking(file.meta.last_log_id, bytes).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.restore(file);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<ShardTypes>>, StorageError> {
        let Some(bytes) = self.snapshots.read_blocking().await.map_err(|e| snap_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        let file = decode_snapshot_file(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
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
    /// When the oldest unflushed batch was received (unix ms).
    pub oldest_unix_ms: Option<u64>,
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
            oldest_unix_ms: t.unflushed.iter().map(|b| b.received_unix_ms).min(),
        })
        .collect()
}

/// Merges runs of consecutive small unflushed batches (each under `small_rows` rows) into
/// batches of about `target_rows`, so scans see a few large batches instead of thousands of
/// tiny ones (SDKs often export a handful of spans per request). Only the in-memory layout
/// changes: a merged batch keeps the log index and row count of every part, so flushing still
/// drops exactly the rows of the log range it covers, and replicas that merged differently
/// hold the same spans per log index. Returns how many batches were merged away.
pub fn coalesce_small_batches(
    state: &SharedState,
    small_rows: usize,
    target_rows: usize,
) -> Result<usize, arrow::error::ArrowError> {
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
                // A follower's undecoded bytes stay as they are (decoding them costs more than
                // the merge saves).
                let small = b.is_decoded() && b.rows < small_rows;
                if !small || rows + b.rows > target_rows {
                    close(&mut run, &mut rows);
                }
                if small {
                    rows += b.rows;
                    run.push(b.clone());
                }
            }
            close(&mut run, &mut rows);
        }
        runs
    };
    let mut merged_away = 0;
    for (tenant, run) in runs {
        let batches = run.iter().map(Buffered::batch).collect::<Result<Vec<_>, _>>().map_err(ArrowError::IpcError)?;
        let merged = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
        let bounds = (
            run.iter().filter_map(|b| b.bounds().ok()).map(|b| b.0).min().unwrap_or(i64::MAX),
            run.iter().filter_map(|b| b.bounds().ok()).map(|b| b.1).max().unwrap_or(i64::MIN),
        );
        let replacement = Buffered {
            rows: merged.num_rows(),
            bytes: batch_bytes(&merged),
            spans: Spans::Decoded { batch: merged, bounds },
            parts: run.iter().flat_map(|b| b.parts.iter().copied()).collect(),
            received_unix_ms: run.iter().map(|b| b.received_unix_ms).min().unwrap_or(0),
        };
        if replace_run(state, &tenant, &run, replacement) {
            merged_away += run.len() - 1;
        }
    }
    Ok(merged_away)
}

/// Decodes every buffered push still held as IPC bytes (a new leader, which will flush and
/// serve reads of them). Returns how many were decoded.
pub fn decode_buffered(state: &SharedState) -> usize {
    let encoded: Vec<(String, Buffered)> = {
        let s = read(state);
        s.tenants
            .iter()
            .flat_map(|(tenant, t)| t.unflushed.iter().filter(|b| !b.is_decoded()).map(|b| (tenant.clone(), b.clone())))
            .collect()
    };
    let mut decoded = 0;
    for (tenant, b) in encoded {
        match b.decoded() {
            Ok(d) => decoded += usize::from(replace_run(state, &tenant, std::slice::from_ref(&b), d)),
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "unflushed spans in the raft log cannot be decoded")
            }
        }
    }
    decoded
}

/// Replaces the buffered batches of `run` with `replacement`, if the same pushes (log index
/// and item, unique) are still there in the same batches (they may have been flushed or sliced
/// meanwhile); whether it did.
fn replace_run(state: &SharedState, tenant: &str, run: &[Buffered], replacement: Buffered) -> bool {
    let keys: Vec<(u64, u32)> = run.iter().flat_map(|b| b.parts.iter().map(|p| (p.index, p.item))).collect();
    let Some(first) = keys.first().copied() else { return false };
    let mut s = write(state);
    let Some(t) = s.tenants.get_mut(tenant) else { return false };
    let Some(pos) = t.unflushed.iter().position(|b| b.parts.first().map(|p| (p.index, p.item)) == Some(first)) else {
        return false;
    };
    let end = pos + run.len();
    let current = t
        .unflushed
        .get(pos..end)
        .map(|bs| bs.iter().flat_map(|b| b.parts.iter().map(|p| (p.index, p.item))).collect::<Vec<_>>());
    if current.as_ref() != Some(&keys) {
        return false;
    }
    let old: usize = t.unflushed[pos..end].iter().map(|b| b.bytes).sum();
    let new = replacement.bytes;
    t.unflushed.splice(pos..end, std::iter::once(replacement));
    t.unflushed_bytes = t.unflushed_bytes + new - old;
    if new >= old {
        s.grow(new - old);
    } else {
        s.shrink(old - new);
    }
    true
}

/// A catalog entry for tests.
#[cfg(test)]
pub(crate) fn test_block(id: &str) -> BlockMeta {
    BlockMeta {
        id: id.into(),
        shard: 0,
        first_index: 0,
        last_index: 0,
        path: format!("t/{id}.parquet"),
        min_time_ns: 0,
        max_time_ns: 10,
        min_trace_id: String::new(),
        max_trace_id: String::new(),
        rows: 1,
        bytes: 1,
        created_unix_ms: 0,
        layout: 1,
        trace_bloom: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str) -> BlockMeta {
        test_block(id)
    }

    fn state_with(blocks: &[&str]) -> ShardState {
        let mut s = ShardState::default();
        let t = s.tenants.entry("t".into()).or_default();
        t.blocks = blocks.iter().map(|b| block(b)).collect();
        s
    }

    fn apply(s: &mut ShardState, index: u64, command: ShardCommand) -> ShardResponse {
        s.apply_command(LogId::new(openraft::CommittedLeaderId::new(1, 1), index), &command)
    }

    fn lease(job: &str, holder: &str, inputs: &[&str], window: i64, until: u64) -> ShardCommand {
        lease_at(job, holder, inputs, window, until, 100)
    }

    fn lease_at(job: &str, holder: &str, inputs: &[&str], window: i64, until: u64, now: u64) -> ShardCommand {
        ShardCommand::LeaseCompaction {
            tenant: "t".into(),
            lease: CompactionLease {
                job: job.into(),
                holder: holder.into(),
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                window: (window, 1000),
                until_unix_ms: until,
            },
            now_unix_ms: now,
        }
    }

    fn compacted(job: &str, inputs: &[&str], output: &str, now: u64) -> ShardCommand {
        ShardCommand::Compacted {
            tenant: "t".into(),
            job: job.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: Box::new(block(output)),
            now_unix_ms: now,
        }
    }

    fn live(s: &ShardState) -> Vec<String> {
        let mut ids: Vec<String> = s.tenants["t"].blocks.iter().map(|b| b.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_swap_is_atomic_once_only_and_needs_its_lease() {
        let mut s = state_with(&["a", "b", "c", "d"]);
        assert_eq!(apply(&mut s, 1, lease("j1", "x", &["a", "b"], 0, 1000)), ShardResponse::Leased);
        // One compactor per window, and a block in one lease at a time.
        assert!(matches!(apply(&mut s, 2, lease("j2", "y", &["c", "d"], 0, 1000)), ShardResponse::Refused(_)));
        assert!(matches!(apply(&mut s, 3, lease("j3", "y", &["b", "c"], 5000, 9000)), ShardResponse::Refused(_)));
        assert_eq!(apply(&mut s, 4, lease("j4", "y", &["c", "d"], 5000, 9000)), ShardResponse::Leased);
        // A job without a lease, or past its lease, is refused and changes nothing.
        assert!(matches!(apply(&mut s, 5, compacted("nope", &["a"], "o", 200)), ShardResponse::Refused(_)));
        assert!(matches!(apply(&mut s, 6, compacted("j1", &["a", "b"], "o1", 2000)), ShardResponse::Refused(_)));
        assert_eq!(live(&s), ["a", "b", "c", "d"]);
        assert_eq!(apply(&mut s, 7, compacted("j4", &["c", "d"], "o4", 300)), ShardResponse::Compacted);
        assert_eq!(live(&s), ["a", "b", "o4"]);
        assert_eq!(s.tenants["t"].retired.len(), 2);
        // The retry of a swap that was made (or the entry applied again after a snapshot).
        assert_eq!(apply(&mut s, 8, compacted("j4", &["c", "d"], "o4", 400)), ShardResponse::Compacted);
        assert_eq!(live(&s), ["a", "b", "o4"]);
        assert_eq!(s.tenants["t"].retired.len(), 2);
        // The expired lease of j1 no longer blocks its window.
        assert_eq!(apply(&mut s, 9, lease_at("j5", "y", &["a", "b"], 0, 3000, 1500)), ShardResponse::Leased);
    }

    #[test]
    fn retire_then_purge() {
        let mut s = state_with(&["a", "b"]);
        apply(&mut s, 1, ShardCommand::Retire { tenant: "t".into(), blocks: vec!["a".into()], now_unix_ms: 5 });
        assert_eq!(live(&s), ["b"]);
        assert_eq!(s.tenants["t"].retired[0].retired_unix_ms, 5);
        // A block being retired cannot be compacted any more.
        assert!(matches!(apply(&mut s, 2, lease("j", "x", &["a", "b"], 0, 1000)), ShardResponse::Refused(_)));
        apply(&mut s, 3, ShardCommand::Purge { tenant: "t".into(), blocks: vec!["a".into()] });
        assert!(s.tenants["t"].retired.is_empty());
    }

    #[test]
    fn snapshots_of_the_first_layout_still_load() {
        #[derive(Serialize)]
        struct V1 {
            meta: SnapshotMeta<u64, openraft::BasicNode>,
            tenants: Vec<(String, u64, Vec<BlockMeta>)>,
            recent: Vec<([u64; 2], u64, u64)>,
        }
        let old = V1 {
            meta: SnapshotMeta::default(),
            tenants: vec![("t".into(), 7, vec![block("a")])],
            recent: vec![([1, 2], 3, 4)],
        };
        let file = decode_snapshot_file(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!(file.tenants[0].flushed_through, 7);
        assert_eq!(file.tenants[0].blocks[0].id, "a");
        let again = decode_snapshot_file(&encode_snapshot_file(&file).unwrap()).unwrap();
        assert_eq!(again.tenants[0].blocks[0].id, "a");
        assert_eq!(again.recent, vec![([1, 2], 3, 4)]);
    }
}
