//! One storage shard: an openraft group, its log, its state machine and its flusher.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{FixedSizeBinaryArray, RecordBatch, Scalar};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::cmp::eq;
use object_store::{ObjectStore, ObjectStoreExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use spindle_schema::{col, ipc};
use spindle_storage::index::write_index;
use spindle_storage::{write_block, BlockOptions, TenantId};
use spindle_storage_api::{ApiError, ShardData, ShardId};
use tokio::sync::{Mutex, Notify, Semaphore};

use crate::log_store::LogStore;
use crate::metrics::StorageMetrics;
use crate::network::SingleVoterNetwork;
use crate::raft_types::{ShardCommand, TypeConfig};
use crate::state_machine::{self, tenant_loads, SharedState, StateMachine};
use crate::NodeError;

/// Tunables of a shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// A tenant's unflushed spans are flushed to a block once they take this many bytes.
    pub flush_max_bytes: usize,
    /// ... or once the oldest of them is this old.
    pub flush_max_age: Duration,
    /// Pushes are refused (backpressure) while the shard holds this many unflushed bytes.
    pub max_unflushed_bytes: usize,
    /// Pushes are refused while this many are waiting for their commit.
    pub max_inflight_writes: usize,
    /// `fsync` every append to the Raft log.
    pub fsync: bool,
    /// How blocks are written.
    pub block: BlockOptions,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            flush_max_bytes: 256 * 1024 * 1024,
            flush_max_age: Duration::from_secs(120),
            max_unflushed_bytes: 768 * 1024 * 1024,
            max_inflight_writes: 256,
            fsync: true,
            block: BlockOptions::default(),
        }
    }
}

/// A shard hosted on this node.
pub struct Shard {
    id: ShardId,
    node_id: u64,
    raft: Raft<TypeConfig>,
    state: SharedState,
    store: Arc<dyn ObjectStore>,
    config: ShardConfig,
    inflight: Semaphore,
    flush_lock: Mutex<()>,
    stop: Notify,
    metrics: StorageMetrics,
}

impl Shard {
    /// Opens the shard stored under `dir` as the single voter of its group, and starts its flusher.
    pub async fn open(
        id: ShardId,
        node_id: u64,
        dir: &Path,
        store: Arc<dyn ObjectStore>,
        config: ShardConfig,
        metrics: StorageMetrics,
    ) -> Result<Arc<Self>, NodeError> {
        let log = LogStore::open(&dir.join("raft-log"), config.fsync)?;
        let sm = StateMachine::open(&dir.join("state"))?;
        let state = sm.state();
        let raft_config = openraft::Config {
            cluster_name: format!("spindle-shard-{id}"),
            heartbeat_interval: 200,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(node_id, Arc::new(raft_config), SingleVoterNetwork, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))? {
            let members = BTreeMap::from([(node_id, BasicNode::new("local"))]);
            raft.initialize(members).await.map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "shard leadership")
            .await
            .map_err(|e| NodeError::Raft(format!("shard {id} did not elect a leader: {e}")))?;
        let shard = Arc::new(Self {
            id,
            node_id,
            raft,
            state,
            store,
            inflight: Semaphore::new(config.max_inflight_writes),
            config,
            flush_lock: Mutex::new(()),
            stop: Notify::new(),
            metrics,
        });
        tokio::spawn(shard.clone().flush_loop());
        Ok(shard)
    }

    /// The shard id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Appends spans; returns once they are committed and applied.
    pub async fn append(&self, tenant: &TenantId, batch: RecordBatch) -> Result<u64, ApiError> {
        let unflushed = state_machine::read(&self.state).unflushed_bytes;
        if unflushed >= self.config.max_unflushed_bytes {
            self.metrics.pushes_rejected_overload.inc();
            return Err(ApiError::Overloaded(format!(
                "shard {} holds {unflushed} unflushed bytes (limit {}); retry after the next flush",
                self.id, self.config.max_unflushed_bytes
            )));
        }
        let Ok(_permit) = self.inflight.try_acquire() else {
            self.metrics.pushes_rejected_overload.inc();
            return Err(ApiError::Overloaded(format!(
                "shard {} has {} writes in flight; retry shortly",
                self.id, self.config.max_inflight_writes
            )));
        };
        let ipc = ipc::encode(&[batch]).map_err(|e| ApiError::Internal(format!("encoding batch: {e}")))?;
        let command = ShardCommand::Append { tenant: tenant.to_string(), ipc };
        let response = self.raft.client_write(command).await.map_err(write_error)?;
        if let Some(e) = response.data.error {
            return Err(ApiError::Internal(e));
        }
        self.metrics.spans_appended.inc_by(response.data.rows);
        Ok(response.data.rows)
    }

    /// A tenant's unflushed spans (optionally only a time range or one trace) and its blocks.
    pub fn read(&self, tenant: &TenantId, time_range: Option<(i64, i64)>, trace_id: Option<[u8; 16]>) -> Result<ShardData, ApiError> {
        let (buffered, blocks) = {
            let s = state_machine::read(&self.state);
            match s.tenants.get(tenant.as_str()) {
                Some(t) => (t.unflushed.clone(), t.blocks.clone()),
                None => (Vec::new(), Vec::new()),
            }
        };
        let filter = trace_id
            .map(|id| FixedSizeBinaryArray::try_from_iter(std::iter::once(id)).map(Scalar::new))
            .transpose()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut batches = Vec::new();
        for b in buffered {
            if let Some((start, end)) = time_range {
                if b.max_time < start || b.min_time > end {
                    continue;
                }
            }
            match &filter {
                None => batches.push(b.batch),
                Some(id) => {
                    let column = b.batch.column_by_name(col::TRACE_ID).ok_or_else(|| ApiError::Internal("no trace_id".into()))?;
                    let mask = eq(column, id).map_err(|e| ApiError::Internal(e.to_string()))?;
                    let hit = filter_record_batch(&b.batch, &mask).map_err(|e| ApiError::Internal(e.to_string()))?;
                    if hit.num_rows() > 0 {
                        batches.push(hit);
                    }
                }
            }
        }
        Ok(ShardData { shard: self.id, batches, blocks })
    }

    async fn flush_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.notified() => return,
            }
            {
                // Under the flush lock: a merge must not straddle the index a flush is cutting at.
                let _guard = self.flush_lock.lock().await;
                if let Err(e) = state_machine::coalesce_small_batches(&self.state, 4096, 65536) {
                    tracing::warn!(shard = self.id, error = %e, "could not coalesce small batches");
                }
            }
            self.metrics.unflushed_bytes.set(state_machine::read(&self.state).unflushed_bytes as i64);
            if let Err(e) = self.flush(false).await {
                self.metrics.flush_errors.inc();
                tracing::error!(shard = self.id, error = %e, "flush failed; will retry");
            }
        }
    }

    /// Writes every tenant's unflushed spans to blocks if a threshold is reached (or `force`),
    /// commits the blocks through Raft and snapshots so the log can be purged. Only the leader
    /// flushes. Returns the number of blocks written.
    pub async fn flush(&self, force: bool) -> Result<usize, NodeError> {
        let _guard = self.flush_lock.lock().await;
        if !self.is_leader() {
            return Ok(0);
        }
        let loads = tenant_loads(&self.state);
        let total: usize = loads.iter().map(|l| l.bytes).sum();
        let due = force
            || total >= self.config.max_unflushed_bytes / 2
            || loads.iter().any(|l| {
                l.bytes >= self.config.flush_max_bytes || l.oldest.is_some_and(|o| o.elapsed() >= self.config.flush_max_age)
            });
        if !due || loads.is_empty() {
            return Ok(0);
        }
        // Flush every tenant together so the snapshot taken afterwards stays small.
        let mut written = 0;
        for load in loads {
            let tenant = TenantId::new(&load.tenant).map_err(|e| NodeError::Raft(e.to_string()))?;
            let (batches, through_index, seq, mut blocks) = {
                let s = state_machine::read(&self.state);
                let Some(t) = s.tenants.get(&load.tenant) else { continue };
                let Some(last) = t.unflushed.last() else { continue };
                let batches: Vec<RecordBatch> = t.unflushed.iter().map(|b| b.batch.clone()).collect();
                (batches, last.index, s.next_seq.max(1), t.blocks.clone())
            };
            let Some(block) = write_block(self.store.clone(), &tenant, self.id, seq, batches, &self.config.block).await?
            else {
                continue;
            };
            let (rows, bytes) = (block.rows, block.bytes);
            let command = ShardCommand::BlockFlushed { tenant: load.tenant.clone(), block: block.clone(), through_index };
            if let Err(e) = self.raft.client_write(command).await {
                // Not committed: the spans stay buffered and the next flush writes a new block.
                if let Err(del) = self.store.delete(&object_store::path::Path::from(block.path.as_str())).await {
                    tracing::warn!(shard = self.id, block = %block.id, error = %del, "could not delete uncommitted block");
                }
                return Err(NodeError::Raft(e.to_string()));
            }
            // The index lists committed blocks only; queriers also get them from the shard itself.
            blocks.push(block);
            write_index(self.store.as_ref(), &tenant, self.id, &blocks).await?;
            self.metrics.flushes.inc();
            self.metrics.blocks.inc();
            self.metrics.block_bytes_written.inc_by(bytes);
            self.metrics.block_spans_written.inc_by(rows);
            tracing::info!(shard = self.id, tenant = %tenant, seq, rows, bytes, "flushed block");
            written += 1;
        }
        if written > 0 {
            self.raft.trigger().snapshot().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        Ok(written)
    }

    /// Stops the flusher, flushes everything and stops Raft.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.stop.notify_one();
        let flushed = self.flush(true).await;
        if matches!(flushed, Ok(n) if n > 0) {
            // Give openraft a moment to build the snapshot and purge the log before stopping.
            let applied = self.raft.metrics().borrow().last_applied;
            let _ = self
                .raft
                .wait(Some(Duration::from_secs(5)))
                .metrics(|m| m.snapshot == applied, "snapshot after flush")
                .await;
        }
        self.raft.shutdown().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        flushed.map(|_| ())
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::Unavailable(format!("shard has no leader here (leader: {:?})", f.leader_id))
        }
        RaftError::APIError(other) => ApiError::Internal(other.to_string()),
        RaftError::Fatal(f) => ApiError::Unavailable(format!("shard stopped: {f}")),
    }
}
