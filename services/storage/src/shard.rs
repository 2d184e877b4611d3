//! One data shard on this node: its openraft group, log, state machine, write batcher and (on
//! the leader) its flusher and orphan sweep.
//!
//! Write path: [`Shard::append`] checks leadership, quorum and backpressure, recognises a batch
//! it committed recently (a retry) by its digest, and queues the push. The writer task turns
//! every push queued at that moment into one `Append` entry (group commit: one log write, one
//! fsync, one replication round for all of them) and answers each push once the entry is
//! committed by a quorum and applied.
//!
//! Flush path (leader only): a tenant's unflushed appends `(flushed_through, last]` are
//! written to the block named after that range, then `BlockFlushed` is committed. A commit
//! whose outcome is unknown leaves the file in place (a retry overwrites it; the sweep removes
//! it if it is never committed); nothing is deleted on an ambiguous outcome.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use futures::StreamExt;
use object_store::ObjectStore;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use spindle_cluster::{NodeId, ShardId, Topology};
use spindle_cluster_client::Channels;
use spindle_schema::col;
use spindle_schema::digest::{self, Digest, PushPart};
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::{write_block, BlockMeta, BlockOptions, Retention, TenantId};
use spindle_storage_api::{ApiError, ShardRead, ShardReadRequest};
use spindle_wal::Wal;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::StorageMetrics;
use crate::network::{GrpcNetwork, PeerReads, RaftLinks};
use crate::raft_log::{self, GroupLog, LogOptions};
use crate::raft_types::{AppendItem, PartsItem, ShardCommand, ShardResponse, ShardTypes, SpanPayload};
use crate::shard_sm::{self, tenant_loads, ShardStateMachine, SharedState};
use crate::{now_unix_ms, NodeError, RaftTiming};

pub mod lifecycle;

/// Tunables of a shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// A tenant's unflushed spans are flushed to a block once they take this many bytes.
    pub flush_max_bytes: usize,
    /// ... or once the oldest of them is this old.
    pub flush_max_age: Duration,
    /// Pushes are refused (backpressure) while the node's shards hold this many unflushed
    /// bytes together (leaders and followers alike); at half of it every tenant is flushed.
    pub max_unflushed_bytes: usize,
    /// Bytes of pushes waiting for their commit on the node, at most (more are refused with
    /// backpressure).
    pub max_pending_bytes: usize,
    /// Bytes of pushes grouped into one Raft entry, at most. openraft gives a follower one
    /// heartbeat interval to take an AppendEntries, so entries stay small.
    pub max_entry_bytes: usize,
    /// Raft entries being committed at once. One: the pushes that reach the leader while an
    /// entry commits all go in the next one (fewer, larger entries under load: measured 10 %
    /// more spans/s from 16 callers than with two).
    pub commits_in_flight: usize,
    /// How long a push waits for its commit before the client is told to retry.
    pub commit_timeout: Duration,
    /// Block files never committed are deleted once this old.
    pub orphan_grace: Duration,
    /// How often the leader looks for orphaned block files.
    pub sweep_interval: Duration,
    /// Retired blocks (compacted away or past retention) are deleted once retired this long,
    /// so queries that listed them before can finish.
    pub delete_grace: Duration,
    /// How often the leader enforces retention and deletes retired blocks.
    pub lifecycle_interval: Duration,
    /// How long each tenant's blocks are kept.
    pub retention: Retention,
    /// How blocks are written.
    pub block: BlockOptions,
    /// The Raft log.
    pub log: LogOptions,
    /// Raft timing.
    pub raft: RaftTiming,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            flush_max_bytes: 256 * 1024 * 1024,
            flush_max_age: Duration::from_secs(120),
            max_unflushed_bytes: 768 * 1024 * 1024,
            max_pending_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 4 * 1024 * 1024,
            commits_in_flight: 1,
            commit_timeout: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(15 * 60),
            sweep_interval: Duration::from_secs(10 * 60),
            delete_grace: Duration::from_secs(10 * 60),
            lifecycle_interval: Duration::from_secs(30),
            retention: Retention::default(),
            block: BlockOptions::default(),
            log: LogOptions::default(),
            raft: RaftTiming::default(),
        }
    }
}

/// What every shard of a node shares.
#[derive(Clone)]
pub struct ShardContext {
    /// This node's id.
    pub node_id: NodeId,
    /// Where blocks go.
    pub store: Arc<dyn ObjectStore>,
    /// The cluster's topology (for the cluster id that names block objects).
    pub topology: watch::Receiver<Arc<Topology>>,
    /// Streams to the other nodes (Raft traffic).
    pub links: RaftLinks,
    /// Tunables.
    pub config: ShardConfig,
    /// The node's metrics.
    pub metrics: StorageMetrics,
    /// Unflushed bytes of every shard on the node.
    pub unflushed: Arc<AtomicUsize>,
    /// Kibibytes of pushes waiting for their commit on the node.
    pub pending: Arc<Semaphore>,
    /// The node's write-ahead log, shared by every group.
    pub wal: Wal,
}

impl ShardContext {
    /// The shared parts of a node's shards.
    pub fn new(
        node_id: NodeId,
        store: Arc<dyn ObjectStore>,
        topology: watch::Receiver<Arc<Topology>>,
        links: RaftLinks,
        config: ShardConfig,
        metrics: StorageMetrics,
        wal: Wal,
    ) -> Self {
        let pending = Arc::new(Semaphore::new((config.max_pending_bytes / 1024).max(1)));
        Self { node_id, store, topology, links, config, metrics, unflushed: Arc::default(), pending, wal }
    }
}

/// A push waiting for its commit. It keeps its parts' digests marked as being committed, and
/// its share of the pending budget, until the commit ends (even if the caller gave up waiting).
struct PendingWrite {
    tenant: String,
    parts: Vec<PushPart>,
    batch: EncodedBatch,
    reply: oneshot::Sender<Result<u64, ApiError>>,
    _permit: OwnedSemaphorePermit,
    _committing: Committing,
}

/// A shard hosted on this node.
pub struct Shard {
    id: ShardId,
    node_id: NodeId,
    dir: PathBuf,
    raft: Raft<ShardTypes>,
    state: SharedState,
    log: GroupLog<ShardTypes>,
    wal: Wal,
    store: Arc<dyn ObjectStore>,
    topology: watch::Receiver<Arc<Topology>>,
    config: ShardConfig,
    writes: mpsc::UnboundedSender<PendingWrite>,
    pending: Arc<Semaphore>,
    unflushed: Arc<AtomicUsize>,
    committing: Arc<Mutex<HashSet<Digest>>>,
    flush_lock: tokio::sync::Mutex<()>,
    index_synced: AtomicBool,
    index_lock: tokio::sync::Mutex<()>,
    last_sweep_ms: AtomicU64,
    last_lifecycle_ms: AtomicU64,
    stop: watch::Sender<bool>,
    metrics: StorageMetrics,
    /// The node this leader is handing leadership to: until the hand-over ends, the shard
    /// writes nothing (so the followers' leader lease runs out) and sends callers there.
    handover: Mutex<Option<NodeId>>,
}

impl Shard {
    /// Opens the shard stored under `dir` (replaying its log) and starts its tasks. A new
    /// shard's group is empty until [`Shard::initialize`] is called on one replica, or its
    /// leader reaches it.
    pub async fn open(id: ShardId, dir: &Path, context: &ShardContext) -> Result<Arc<Self>, NodeError> {
        let ShardContext { node_id, store, topology, links, config, metrics, unflushed, pending, wal } =
            context.clone();
        crate::legacy_log::import::<ShardTypes>(&dir.join("log"), &wal, id).await?;
        let log = GroupLog::open(&wal, id, config.log.clone())?;
        let state_dir = dir.join("state");
        let budget = unflushed.clone();
        let sm = tokio::task::spawn_blocking(move || ShardStateMachine::open(&state_dir, budget))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e)))??;
        let state = sm.state();
        let raft_config = openraft::Config {
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..config.raft.config(format!("spindle-shard-{id}"))
        }
        .validate()
        .map_err(NodeError::raft)?;
        let raft = Raft::new(node_id, Arc::new(raft_config), GrpcNetwork::new(id, links.clone()), log.clone(), sm)
            .await
            .map_err(NodeError::raft)?;
        let (writes, queue) = mpsc::unbounded_channel();
        let shard = Arc::new(Self {
            id,
            node_id,
            dir: dir.to_path_buf(),
            raft,
            state,
            log,
            wal,
            store,
            topology,
            pending,
            unflushed,
            config,
            writes,
            committing: Arc::default(),
            flush_lock: tokio::sync::Mutex::new(()),
            index_synced: AtomicBool::new(false),
            index_lock: tokio::sync::Mutex::new(()),
            last_sweep_ms: AtomicU64::new(now_unix_ms()),
            last_lifecycle_ms: AtomicU64::new(0),
            stop: watch::channel(false).0,
            metrics,
            handover: Mutex::new(None),
        });
        tokio::spawn(write_loop(id, node_id, shard.raft.clone(), links, queue, shard.config.clone()));
        tokio::spawn(shard.clone().maintenance_loop());
        Ok(shard)
    }

    /// The shard id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The shard's Raft handle.
    pub fn raft(&self) -> &Raft<ShardTypes> {
        &self.raft
    }

    /// Makes this node the first member of a new group with `members` as voters. Does nothing
    /// if the group already has a log (initialized before, or reached by its leader).
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), NodeError> {
        if self.raft.is_initialized().await.map_err(NodeError::raft)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::raft(e)),
        }
    }

    /// The leader this node knows of, if this node is not it (or is handing leadership over).
    fn not_leader(&self) -> Option<ApiError> {
        if let Some(to) = *self.handover.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(ApiError::NotLeader { shard: self.id, leader: Some(to) });
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader != Some(self.node_id) || m.state != ServerState::Leader)
            .then_some(ApiError::NotLeader { shard: self.id, leader: m.current_leader.filter(|l| *l != self.node_id) })
    }

    /// Whether this node leads the shard.
    pub fn is_leader(&self) -> bool {
        self.not_leader().is_none()
    }

    /// Hands leadership of this shard to `target` (a caught-up voter at `addr`): stops writing
    /// and heartbeating until the followers' leader lease has run out, asks `target` to stand
    /// for election, and waits for it to lead. openraft 0.9 has no leadership transfer; this is
    /// its effect with the protocol's own safety (an election). Returns whether `target` leads
    /// now; if it does not win, this node goes on leading (or whoever won does).
    pub async fn hand_over(&self, target: NodeId, addr: &str, channels: &Channels) -> bool {
        struct Clear<'a>(&'a Mutex<Option<NodeId>>);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        *self.handover.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        let _clear = Clear(&self.handover);
        tracing::info!(shard = self.id, to = target, "handing shard leadership over");
        // Commits in flight finish, then the followers' lease (openraft: election_max) runs out.
        tokio::time::sleep(self.config.raft.election_max + self.config.raft.heartbeat).await;
        let asked = match spindle_cluster_client::ControlClient::new(channels, addr) {
            Ok(client) => client.campaign(self.id).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = asked {
            tracing::warn!(shard = self.id, to = target, error = %e, "the new leader could not be asked to stand");
            return false;
        }
        let won = self
            .raft
            .wait(Some(self.config.raft.election_max * 3))
            .metrics(|m| m.current_leader == Some(target), "hand-over")
            .await
            .is_ok();
        tracing::info!(shard = self.id, to = target, won, "shard leadership hand-over ended");
        won
    }

    /// Refuses writes when the leader has not heard from a quorum lately (it may be cut off,
    /// and whatever it appended could not commit).
    fn check_quorum(&self) -> Result<(), ApiError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let voters = m.membership_config.membership().voter_ids().count();
        let limit = (self.config.raft.election_max * 2).as_millis() as u64;
        match m.millis_since_quorum_ack {
            Some(ms) if voters > 1 && ms > limit => {
                Err(ApiError::Unavailable(format!("shard {} leader has not heard from a quorum for {ms} ms", self.id)))
            }
            _ => Ok(()),
        }
    }

    /// Appends spans; returns once they are committed by a quorum and applied. `parts` are the
    /// exports the batch holds, in row order (none: the batch is one); a part committed
    /// recently (a retry) is acknowledged and not stored again.
    pub async fn append(&self, tenant: &TenantId, batch: EncodedBatch, parts: &[PushPart]) -> Result<u64, ApiError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        self.check_quorum()?;
        let rows = batch.num_rows() as u64;
        let parts = match parts {
            [] => vec![PushPart { digest: digest::of_bytes(tenant.as_str(), batch.ipc()), rows: rows as u32 }],
            parts
                if parts.iter().all(|p| p.rows > 0) && parts.iter().map(|p| u64::from(p.rows)).sum::<u64>() == rows =>
            {
                parts.to_vec()
            }
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "the push's parts must each hold rows and add up to its {rows} rows"
                )))
            }
        };
        // Reserved before looking at what was committed: a commit of the same spans ending in
        // between cannot make them look new.
        let digests: Vec<Digest> = parts.iter().map(|p| p.digest).collect();
        {
            let mut committing = self.committing.lock().unwrap_or_else(|e| e.into_inner());
            if digests.iter().any(|d| committing.contains(d)) {
                return Err(ApiError::Unavailable("the same spans are being committed now; retry shortly".into()));
            }
            committing.extend(digests.iter().copied());
        }
        let committing = Committing { set: self.committing.clone(), digests };
        let seen: Vec<bool> = {
            let state = shard_sm::read(&self.state);
            parts.iter().map(|p| state.recent.contains(&p.digest).is_some()).collect()
        };
        if seen.iter().all(|s| *s) {
            // A retry of pushes this shard committed: acknowledge them without storing them again.
            self.metrics.duplicate_pushes.inc_by(parts.len() as u64);
            return Ok(rows);
        }
        let (batch, parts) = if seen.iter().any(|s| *s) {
            self.metrics.duplicate_pushes.inc_by(seen.iter().filter(|s| **s).count() as u64);
            unseen_parts(batch, parts, &seen)?
        } else {
            (batch, parts)
        };
        let unflushed = self.unflushed.load(Ordering::Relaxed);
        if unflushed >= self.config.max_unflushed_bytes {
            self.metrics.pushes_rejected_overload.inc();
            return Err(ApiError::Overloaded(format!(
                "this storage node holds {unflushed} unflushed bytes (limit {}); retry after the next flush",
                self.config.max_unflushed_bytes
            )));
        }
        let kib = u32::try_from(batch.ipc().len() / 1024 + 1).unwrap_or(u32::MAX);
        let Ok(permit) = self.pending.clone().try_acquire_many_owned(kib) else {
            self.metrics.pushes_rejected_overload.inc();
            return Err(ApiError::Overloaded(format!(
                "this storage node has {} bytes of pushes waiting for their commit; retry shortly",
                self.config.max_pending_bytes
            )));
        };
        let (reply, answer) = oneshot::channel();
        let write =
            PendingWrite { tenant: tenant.to_string(), parts, batch, reply, _permit: permit, _committing: committing };
        self.writes.send(write).map_err(|_| ApiError::Unavailable(format!("shard {} is stopping", self.id)))?;
        let stored = answer
            .await
            .map_err(|_| ApiError::Unavailable(format!("shard {} stopped before answering", self.id)))??;
        self.metrics.spans_appended.inc_by(stored);
        Ok(rows)
    }

    /// A tenant's committed blocks and unflushed spans, linearizable: the leader confirms it
    /// still leads (a heartbeat round to a quorum) and has applied everything committed before.
    pub async fn read(&self, request: &ShardReadRequest) -> Result<ShardRead, ApiError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        match tokio::time::timeout(self.config.raft.election_max * 2, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(ApiError::NotLeader { shard: self.id, leader: f.leader_id });
            }
            Ok(Err(e)) => return Err(ApiError::Unavailable(format!("shard {}: {e}", self.id))),
            Err(_) => return Err(ApiError::Unavailable(format!("shard {} could not confirm its leadership", self.id))),
        }
        let (blocks, batches) = {
            let s = shard_sm::read(&self.state);
            match s.tenants.get(request.tenant.as_str()) {
                Some(t) => {
                    let overlaps =
                        |lo: i64, hi: i64| request.time_range.is_none_or(|(start, end)| lo <= end && hi >= start);
                    let blocks: Vec<BlockMeta> = t
                        .blocks
                        .iter()
                        .filter(|b| overlaps(b.min_time_ns, b.max_time_ns))
                        .filter(|b| {
                            request.trace_ids.as_ref().is_none_or(|ids| ids.iter().any(|id| b.may_contain_trace(id)))
                        })
                        .cloned()
                        .collect();
                    (blocks, t.unflushed.clone())
                }
                None => (Vec::new(), Vec::new()),
            }
        };
        // Out of the lock: a new leader may still hold some spans undecoded.
        let overlaps = |(lo, hi): (i64, i64)| request.time_range.is_none_or(|(start, end)| lo <= end && hi >= start);
        let mut spans = Vec::with_capacity(batches.len());
        for b in &batches {
            let keep = b.bounds().map(overlaps).map_err(ApiError::Internal)?;
            if keep {
                spans.push(b.batch().map_err(ApiError::Internal)?);
            }
        }
        let batches = spans;
        let ids: Option<HashSet<[u8; 16]>> = request.trace_ids.as_ref().map(|ids| ids.iter().copied().collect());
        let projection = request.projection.clone();
        let stream = futures::stream::iter(batches)
            .filter_map(move |b| {
                let out = select(b, ids.as_ref(), projection.as_deref());
                async move { out.transpose() }
            })
            .boxed();
        Ok(ShardRead { blocks, batches: stream })
    }

    async fn maintenance_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut snapshotted_flushes = 0;
        let mut was_leader = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A bug in one round (a panic) must not stop flushing for good: log it, go on.
            let round = std::panic::AssertUnwindSafe(self.maintain(&mut snapshotted_flushes, &mut was_leader));
            if futures::FutureExt::catch_unwind(round).await.is_err() {
                tracing::error!(shard = self.id, "a maintenance round panicked; the next one starts in 500 ms");
            }
        }
    }

    /// One round of upkeep: coalescing, snapshots, and on the leader flushes, index sync,
    /// retention and the orphan sweep.
    async fn maintain(&self, snapshotted_flushes: &mut u64, was_leader: &mut bool) {
        let leader = self.is_leader();
        if leader {
            // What this node buffered as a follower is decoded now that it flushes and serves
            // reads (blocking work: decompression).
            let state = self.state.clone();
            let coalesced = tokio::task::spawn_blocking(move || {
                shard_sm::decode_buffered(&state);
                shard_sm::coalesce_small_batches(&state, 4096, 65536)
            })
            .await;
            if let Ok(Err(e)) = coalesced {
                tracing::warn!(shard = self.id, error = %e, "could not coalesce small batches");
            }
        }
        // Every replica snapshots after a block commits, so its log can be purged.
        let flushes = shard_sm::read(&self.state).flushes;
        if flushes != *snapshotted_flushes {
            *snapshotted_flushes = flushes;
            if let Err(e) = self.raft.trigger().snapshot().await {
                tracing::warn!(shard = self.id, error = %e, "could not trigger a snapshot");
            }
        }
        if leader && !*was_leader {
            self.index_synced.store(false, Ordering::Relaxed);
        }
        *was_leader = leader;
        if !leader {
            return;
        }
        // Failures are counted and logged per tenant inside.
        let _ = self.flush(false).await;
        if !self.index_synced.load(Ordering::Relaxed) && self.is_settled_leader() {
            match self.sync_indexes().await {
                Ok(()) => self.index_synced.store(true, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(shard = self.id, error = %e, "could not bring the block indexes up to date")
                }
            }
        }
        let now = now_unix_ms();
        if now.saturating_sub(self.last_lifecycle_ms.load(Ordering::Relaxed))
            >= self.config.lifecycle_interval.as_millis() as u64
        {
            self.last_lifecycle_ms.store(now, Ordering::Relaxed);
            match self.enforce_lifecycle().await {
                Ok((0, 0)) => {}
                Ok((retired, deleted)) => tracing::info!(shard = self.id, retired, deleted, "block lifecycle"),
                Err(e) => {
                    tracing::warn!(shard = self.id, error = %e, "retention or deletion of retired blocks failed")
                }
            }
        }
        if now.saturating_sub(self.last_sweep_ms.load(Ordering::Relaxed))
            >= self.config.sweep_interval.as_millis() as u64
        {
            self.last_sweep_ms.store(now, Ordering::Relaxed);
            match self.sweep_orphans().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(shard = self.id, removed = n, "removed orphaned block files")
                }
                Err(e) => tracing::warn!(shard = self.id, error = %e, "orphan sweep failed"),
            }
        }
    }

    fn cluster_id(&self) -> Option<String> {
        let id = self.topology.borrow().state.cluster_id.clone();
        (!id.is_empty()).then_some(id)
    }

    /// Whether this node leads the shard and has applied every entry of earlier terms (its own
    /// first entry is applied): only then is its view of flushed ranges and blocks complete.
    fn is_settled_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        self.is_leader() && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
    }

    /// Writes tenants' unflushed spans to blocks if a threshold is reached (or `force`) and
    /// commits them through Raft. Only the leader flushes. Returns the blocks committed; a
    /// tenant whose flush fails does not keep the others from flushing.
    pub async fn flush(&self, force: bool) -> Result<usize, NodeError> {
        let _guard = self.flush_lock.lock().await;
        if !self.is_settled_leader() {
            return Ok(0);
        }
        let Some(cluster) = self.cluster_id() else {
            return Ok(0);
        };
        let now = now_unix_ms();
        let max_age = self.config.flush_max_age.as_millis() as u64;
        // Under memory pressure (the whole node's) every tenant goes; otherwise the tenants past
        // a threshold. The log is kept back to the oldest unflushed span, at most
        // `flush_max_age` old.
        let everyone = force || self.unflushed.load(Ordering::Relaxed) >= self.config.max_unflushed_bytes / 2;
        let due: Vec<_> = tenant_loads(&self.state)
            .into_iter()
            .filter(|l| {
                everyone
                    || l.bytes >= self.config.flush_max_bytes
                    || l.oldest_unix_ms.is_some_and(|o| now.saturating_sub(o) >= max_age)
            })
            .collect();
        let term = self.raft.metrics().borrow().current_term;
        let (mut written, mut first_error) = (0, None);
        for load in due {
            match self.flush_tenant(&load.tenant, &cluster, term).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    if !self.is_leader() {
                        tracing::info!(shard = self.id, "leadership moved during a flush; the new leader flushes");
                        break;
                    }
                    self.metrics.flush_errors.inc();
                    tracing::error!(shard = self.id, tenant = %load.tenant, error = %e, "flush failed; will retry");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(written), Err)
    }

    /// Flushes one tenant's unflushed spans; whether a block was committed.
    async fn flush_tenant(&self, tenant_id: &str, cluster: &str, term: u64) -> Result<bool, NodeError> {
        let tenant = TenantId::new(tenant_id)?;
        let (after_index, through_index, batches) = {
            let s = shard_sm::read(&self.state);
            let Some(t) = s.tenants.get(tenant_id) else { return Ok(false) };
            let Some(last) = t.unflushed.last().and_then(|b| b.parts.last()) else { return Ok(false) };
            (t.flushed_through, last.index, t.unflushed.clone())
        };
        let batches = batches.iter().map(|b| b.batch()).collect::<Result<Vec<_>, _>>().map_err(|e| {
            NodeError::Storage(spindle_storage::StorageError::Arrow(arrow::error::ArrowError::IpcError(e)))
        })?;
        let range = (after_index + 1, through_index);
        let Some(block) =
            write_block(self.store.clone(), &tenant, cluster, self.id, range, batches, &self.config.block).await?
        else {
            return Ok(false);
        };
        let (rows, bytes) = (block.rows, block.bytes);
        let command = ShardCommand::BlockFlushed {
            tenant: tenant_id.to_string(),
            term,
            leader: self.node_id,
            after_index,
            through_index,
            block: Box::new(BlockMeta { trace_bloom: None, ..block.clone() }),
        };
        // An error here leaves the outcome unknown: the file stays (a retry of the same range
        // overwrites it, and the sweep removes it once the range can no longer commit).
        let response = tokio::time::timeout(self.config.commit_timeout, self.raft.client_write(command))
            .await
            .map_err(|_| NodeError::Raft(format!("the block did not commit within {:?}", self.config.commit_timeout)))?
            .map_err(NodeError::raft)?;
        match response.data {
            ShardResponse::Flushed => {
                self.update_index(&tenant, cluster, vec![block]).await?;
                self.metrics.flushes.inc();
                self.metrics.block_bytes_written.inc_by(bytes);
                self.metrics.block_spans_written.inc_by(rows);
                tracing::info!(shard = self.id, tenant = %tenant, first = range.0, last = range.1, rows, bytes, "flushed block");
                Ok(true)
            }
            other => {
                tracing::warn!(shard = self.id, tenant = %tenant, answer = ?other, "block not committed; it is an orphan now");
                Ok(false)
            }
        }
    }

    /// Bytes of this shard's Raft log on disk.
    pub fn log_bytes(&self) -> u64 {
        self.log.disk_bytes()
    }

    /// Unflushed bytes and committed blocks of this shard.
    pub fn usage(&self) -> (usize, usize) {
        let s = shard_sm::read(&self.state);
        (s.unflushed_bytes, s.tenants.values().map(|t| t.blocks.len()).sum())
    }

    /// Stops the tasks; if this node leads the shard, flushes everything first and waits for
    /// the snapshot that lets the log be purged. Then stops Raft. A flush that cannot complete
    /// is logged, not an error: its spans stay in the Raft log.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        let flushed = self.flush(true).await;
        if matches!(flushed, Ok(n) if n > 0) {
            let _ = self.raft.trigger().snapshot().await;
            let wait_until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < wait_until {
                let (snapshot, safe) = {
                    let metrics = self.raft.metrics();
                    let m = metrics.borrow();
                    (m.snapshot.map_or(0, |s| s.index), shard_sm::read(&self.state).safe_point())
                };
                if snapshot >= safe {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.raft.shutdown().await.map_err(NodeError::raft)?;
        if let Err(e) = flushed {
            // Nothing is lost: the spans stay in the Raft log and a leader flushes them after
            // the restart. (When every node stops at once the last leaders cannot commit.)
            tracing::warn!(
                shard = self.id,
                error = %e,
                "the final flush did not complete; its spans stay in the Raft log and are flushed after the restart"
            );
        }
        Ok(())
    }

    /// Stops the shard without flushing and deletes its local files (its replicas live on other
    /// nodes now).
    pub async fn remove(&self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        self.raft.shutdown().await.map_err(NodeError::raft)?;
        // Renamed first, so a crash half-way through the deletion leaves no damaged shard
        // behind (a restarting node deletes what is left of it, and drops from the shared log
        // every group whose directory is gone).
        let (dir, removing) = (self.dir.clone(), self.dir.with_file_name(format!("removing-{}", self.id)));
        let renamed = removing.clone();
        tokio::task::spawn_blocking(move || std::fs::rename(dir, renamed))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e)))??;
        raft_log::drop_group(&self.wal, self.id).await?;
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(removing))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

/// Removes its digests from the set of pushes being committed when the commit ends.
struct Committing {
    set: Arc<Mutex<HashSet<Digest>>>,
    digests: Vec<Digest>,
}

impl Drop for Committing {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            set.remove(d);
        }
    }
}

/// The rows of the parts not `seen` before, as one batch (encoded again), and those parts.
fn unseen_parts(
    batch: EncodedBatch,
    parts: Vec<PushPart>,
    seen: &[bool],
) -> Result<(EncodedBatch, Vec<PushPart>), ApiError> {
    let mut slices = Vec::new();
    let mut kept = Vec::new();
    let mut offset = 0;
    for (part, seen) in parts.into_iter().zip(seen) {
        let rows = part.rows as usize;
        if !seen {
            slices.push(batch.batch().slice(offset, rows));
            kept.push(part);
        }
        offset += rows;
    }
    let internal = |e: arrow::error::ArrowError| ApiError::Internal(format!("re-encoding spans: {e}"));
    let merged = arrow::compute::concat_batches(batch.batch().schema_ref(), &slices).map_err(internal)?;
    Ok((EncodedBatch::encode(merged).map_err(internal)?, kept))
}

/// One write's rows of part `i` as a push of its own (for replicas that read one part per push).
fn part_alone(write: &PendingWrite, i: usize) -> Result<EncodedBatch, arrow::error::ArrowError> {
    let offset: usize = write.parts[..i].iter().map(|p| p.rows as usize).sum();
    EncodedBatch::encode(write.batch.batch().slice(offset, write.parts[i].rows as usize))
}

/// Keeps the rows of `ids` (all when `None`) and the columns of `projection`.
fn select(
    batch: RecordBatch,
    ids: Option<&HashSet<[u8; 16]>>,
    projection: Option<&[usize]>,
) -> Result<Option<RecordBatch>, ApiError> {
    let internal = |e: arrow::error::ArrowError| ApiError::Internal(e.to_string());
    let batch = match ids {
        None => batch,
        Some(ids) => {
            let column =
                batch.column_by_name(col::TRACE_ID).ok_or_else(|| ApiError::Internal("no trace_id column".into()))?;
            let trace_ids = column.as_fixed_size_binary();
            let mask: BooleanArray = (0..trace_ids.len())
                .map(|i| Some(<[u8; 16]>::try_from(trace_ids.value(i)).is_ok_and(|id| ids.contains(&id))))
                .collect();
            if mask.true_count() == 0 {
                return Ok(None);
            }
            filter_record_batch(&batch, &mask).map_err(internal)?
        }
    };
    match projection {
        Some(p) => batch.project(p).map(Some).map_err(internal),
        None => Ok(Some(batch)),
    }
}

/// Turns queued pushes into `Append` entries: every push waiting when a commit slot frees up
/// goes into one entry (up to `max_entry_bytes`).
async fn write_loop(
    shard: ShardId,
    node: NodeId,
    raft: Raft<ShardTypes>,
    links: RaftLinks,
    mut queue: mpsc::UnboundedReceiver<PendingWrite>,
    config: ShardConfig,
) {
    let slots = Arc::new(Semaphore::new(config.commits_in_flight.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = first.batch.ipc().len();
        let mut group = vec![first];
        while bytes < config.max_entry_bytes {
            match queue.try_recv() {
                Ok(w) => {
                    bytes += w.batch.ipc().len();
                    group.push(w);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let timeout = config.commit_timeout;
        // A replica of an earlier version may not read every form: while one may hold this
        // group, entries carry the forms it reads (see `RaftLinks::peers_read`).
        let reads = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let peers = m.membership_config.membership().nodes();
            links.peers_read(peers.filter(|(id, _)| **id != node).map(|(_, n)| n.addr.as_str()))
        };
        tokio::spawn(async move {
            commit(shard, &raft, group, timeout, reads).await;
            drop(slot);
        });
    }
}

/// The entry that stores `group` in a form every replica reads, and for each write the range
/// of the entry's items that hold it.
fn append_command(
    group: &[PendingWrite],
    reads: PeerReads,
) -> Result<(ShardCommand, Vec<std::ops::Range<usize>>), arrow::error::ArrowError> {
    let received_unix_ms = now_unix_ms();
    if reads >= PeerReads::Parts && group.iter().any(|w| w.parts.len() > 1) {
        let items = group
            .iter()
            .map(|w| PartsItem {
                tenant: w.tenant.clone(),
                parts: w.parts.clone(),
                payload: SpanPayload::from_encoded(w.batch.clone()),
            })
            .collect();
        return Ok((
            ShardCommand::AppendParts { received_unix_ms, items },
            (0..group.len()).map(|i| i..i + 1).collect(),
        ));
    }
    // One item per part: a write of several parts is cut (encoded again) for older replicas.
    let plain = reads == PeerReads::PlainIpc;
    let mut items = Vec::with_capacity(group.len());
    let mut ranges = Vec::with_capacity(group.len());
    for w in group {
        let start = items.len();
        for (i, part) in w.parts.iter().enumerate() {
            let batch = if w.parts.len() > 1 { part_alone(w, i)? } else { w.batch.clone() };
            let batch = if plain { batch.to_plain()? } else { batch };
            items.push(AppendItem {
                tenant: w.tenant.clone(),
                digest: part.digest,
                payload: SpanPayload::from_encoded(batch),
            });
        }
        ranges.push(start..items.len());
    }
    Ok((ShardCommand::Append { received_unix_ms, items }, ranges))
}

async fn commit(
    shard: ShardId,
    raft: &Raft<ShardTypes>,
    group: Vec<PendingWrite>,
    timeout: Duration,
    reads: PeerReads,
) {
    let (command, ranges) = match append_command(&group, reads) {
        Ok(c) => c,
        Err(e) => {
            for w in group {
                let _ = w.reply.send(Err(ApiError::Internal(format!("encoding spans: {e}"))));
            }
            return;
        }
    };
    let outcome = tokio::time::timeout(timeout, raft.client_write(command)).await;
    match outcome {
        Ok(Ok(response)) => match response.data {
            ShardResponse::Appended(results) if results.len() == ranges.last().map_or(0, |r| r.end) => {
                for (w, range) in group.into_iter().zip(ranges) {
                    let stored = results[range].iter().try_fold(0, |sum, r| r.as_ref().map(|n| sum + n));
                    let _ = w.reply.send(stored.map_err(|e| ApiError::Internal(e.clone())));
                }
            }
            other => {
                for w in group {
                    let _ = w.reply.send(Err(ApiError::Internal(format!("unexpected apply result {other:?}"))));
                }
            }
        },
        Ok(Err(e)) => {
            let error = write_error(shard, e);
            for w in group {
                let _ = w.reply.send(Err(error.clone()));
            }
        }
        Err(_) => {
            for w in group {
                let _ = w.reply.send(Err(ApiError::Unavailable(format!(
                    "the commit did not finish within {timeout:?}; its outcome is unknown and a retry is safe"
                ))));
            }
        }
    }
}

fn write_error(shard: ShardId, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::NotLeader { shard, leader: f.leader_id },
        RaftError::APIError(other) => ApiError::Internal(other.to_string()),
        RaftError::Fatal(f) => ApiError::Unavailable(format!("shard stopped: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn export(trace: u8, spans: u8) -> RecordBatch {
        let spans = (0..spans)
            .map(|i| Span {
                trace_id: vec![trace; 16],
                span_id: vec![i + 1; 8],
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_100_000_000,
                ..Default::default()
            })
            .collect();
        let rs = ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() };
        spindle_otlp::to_arrow::resource_spans_to_batch(&[rs]).unwrap().batch
    }

    fn write(exports: &[RecordBatch]) -> PendingWrite {
        let merged = arrow::compute::concat_batches(exports[0].schema_ref(), exports).unwrap();
        let parts =
            exports.iter().map(|b| PushPart { digest: digest::of_rows("t", b), rows: b.num_rows() as u32 }).collect();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        PendingWrite {
            tenant: "t".into(),
            parts,
            batch: EncodedBatch::encode(merged).unwrap(),
            reply: oneshot::channel().0,
            _permit: permit,
            _committing: Committing { set: Arc::default(), digests: Vec::new() },
        }
    }

    fn rows(payload: &SpanPayload) -> Vec<u8> {
        let batch = EncodedBatch::decode(payload.ipc().clone()).unwrap();
        let ids = batch.batch().column_by_name(col::TRACE_ID).unwrap().as_fixed_size_binary().clone();
        ids.iter().map(|id| id.unwrap()[0]).collect()
    }

    #[test]
    fn pushes_of_several_exports_are_logged_in_a_form_every_replica_reads() {
        let group = vec![write(&[export(1, 2), export(2, 1)]), write(&[export(3, 3)])];
        let digests: Vec<Vec<Digest>> = group.iter().map(|w| w.parts.iter().map(|p| p.digest).collect()).collect();
        // Replicas that read parts: one item per push, with its parts.
        let (command, ranges) = append_command(&group, PeerReads::Parts).unwrap();
        assert_eq!(ranges, vec![0..1, 1..2]);
        let ShardCommand::AppendParts { items, .. } = command else { panic!("{command:?}") };
        assert_eq!(items[0].parts.iter().map(|p| p.digest).collect::<Vec<_>>(), digests[0]);
        assert_eq!(rows(&items[0].payload), vec![1, 1, 2]);
        // An older replica: one item per export, each with its own digest and rows.
        for reads in [PeerReads::Compressed, PeerReads::PlainIpc] {
            let (command, ranges) = append_command(&group, reads).unwrap();
            assert_eq!(ranges, vec![0..2, 2..3]);
            let ShardCommand::Append { items, .. } = command else { panic!("{command:?}") };
            assert_eq!(items.iter().map(|i| i.digest).collect::<Vec<_>>(), digests.concat());
            let held: Vec<Vec<u8>> = items.iter().map(|i| rows(&i.payload)).collect();
            assert_eq!(held, vec![vec![1, 1], vec![2], vec![3, 3, 3]]);
            assert_eq!(reads == PeerReads::PlainIpc, !spindle_schema::ipc::is_compressed(items[0].payload.ipc()));
        }
        // Pushes of one export each keep the old form whoever reads.
        let (command, _) = append_command(&[write(&[export(4, 1)])], PeerReads::Parts).unwrap();
        assert!(matches!(command, ShardCommand::Append { .. }));
    }

    #[test]
    fn only_the_exports_not_seen_before_are_kept() {
        let w = write(&[export(1, 2), export(2, 1), export(3, 3)]);
        let (batch, parts) = unseen_parts(w.batch.clone(), w.parts.clone(), &[false, true, false]).unwrap();
        assert_eq!(parts, vec![w.parts[0], w.parts[2]]);
        assert_eq!(rows(&SpanPayload::from_encoded(batch)), vec![1, 1, 3, 3, 3]);
    }
}
