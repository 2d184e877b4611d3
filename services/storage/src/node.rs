//! A storage node: the shards it hosts, served through [`StorageApi`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use spindle_storage::TenantId;
use spindle_storage_api::{ApiError, ReadRequest, ShardData, ShardId, StorageApi};

use crate::metrics::StorageMetrics;
use crate::shard::{Shard, ShardConfig};
use crate::NodeError;

/// How a storage node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Raft node id of this node.
    pub node_id: u64,
    /// Local directory for Raft logs and snapshots (`<dir>/shard-<id>/`).
    pub dir: PathBuf,
    /// Shards hosted here.
    pub shards: Vec<ShardId>,
    /// Shard tunables.
    pub shard: ShardConfig,
}

/// A running storage node.
pub struct StorageNode {
    shards: BTreeMap<ShardId, Arc<Shard>>,
}

impl StorageNode {
    /// Opens every configured shard (replaying its log) and starts their flushers.
    pub async fn open(config: NodeConfig, store: Arc<dyn ObjectStore>, metrics: StorageMetrics) -> Result<Self, NodeError> {
        let mut shards = BTreeMap::new();
        for &id in &config.shards {
            let dir = config.dir.join(format!("shard-{id:05}"));
            let shard = Shard::open(id, config.node_id, &dir, store.clone(), config.shard.clone(), metrics.clone()).await?;
            shards.insert(id, shard);
        }
        Ok(Self { shards })
    }

    fn shard(&self, id: ShardId) -> Result<&Arc<Shard>, ApiError> {
        self.shards.get(&id).ok_or_else(|| ApiError::Unavailable(format!("shard {id} is not hosted on this node")))
    }

    /// Flushes every shard now (used by tests and on shutdown).
    pub async fn flush_all(&self) -> Result<usize, NodeError> {
        let mut n = 0;
        for shard in self.shards.values() {
            n += shard.flush(true).await?;
        }
        Ok(n)
    }

    /// Flushes and stops every shard.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let mut first_error = None;
        for shard in self.shards.values() {
            if let Err(e) = shard.shutdown().await {
                tracing::error!(shard = shard.id(), error = %e, "shard shutdown failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[async_trait::async_trait]
impl StorageApi for StorageNode {
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: RecordBatch) -> Result<u64, ApiError> {
        self.shard(shard)?.append(tenant, batch).await
    }

    async fn read_unflushed(&self, request: &ReadRequest) -> Result<Vec<ShardData>, ApiError> {
        request
            .shards
            .iter()
            .map(|&id| self.shard(id)?.read(&request.tenant, request.time_range, request.trace_id))
            .collect()
    }
}
