//! Where a tenant's spans are: unflushed batches on the storage shards, and Parquet blocks
//! listed in the object-store block index.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use spindle_ring::Ring;
use spindle_storage::index::read_index;
use spindle_storage::{BlockMeta, TenantId};
use spindle_storage_api::{ApiError, ReadRequest, StorageApi};

use crate::hints::ScanHints;
use crate::{QueryError, Result};

/// A consistent view of a tenant's spans for one scan.
#[derive(Debug, Default, Clone)]
pub struct SpanSnapshot {
    /// Spans not yet in a block.
    pub batches: Vec<RecordBatch>,
    /// Committed blocks that may hold matching spans (already pruned by the hints).
    pub blocks: Vec<BlockMeta>,
}

/// Loads [`SpanSnapshot`]s: asks the tenant's shards for unflushed spans and committed blocks,
/// and merges the (cached) object-store block index.
pub struct SpanSource {
    storage: Arc<dyn StorageApi>,
    ring: Ring,
    store: Arc<dyn ObjectStore>,
    index_cache: moka::future::Cache<(TenantId, u32), Arc<Vec<BlockMeta>>>,
}

impl SpanSource {
    /// A source over `storage` shards laid out by `ring`, with blocks in `store`.
    pub fn new(storage: Arc<dyn StorageApi>, ring: Ring, store: Arc<dyn ObjectStore>) -> Self {
        let index_cache = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(10))
            .build();
        Self { storage, ring, store, index_cache }
    }

    /// The object store holding blocks.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Loads what a scan with `hints` needs.
    pub async fn load(&self, tenant: &TenantId, hints: &ScanHints) -> Result<SpanSnapshot> {
        let request = ReadRequest {
            tenant: tenant.clone(),
            shards: self.ring.tenant_shards(tenant.as_str()),
            time_range: hints.time_range,
            trace_id: hints.single_trace(),
        };
        let shards = self.storage.read_unflushed(&request).await.map_err(|e| match e {
            ApiError::Unavailable(m) | ApiError::Overloaded(m) => QueryError::Unavailable(m),
            other => QueryError::Internal(other.to_string()),
        })?;
        let mut snapshot = SpanSnapshot::default();
        for shard in shards {
            // Blocks the shard has committed are authoritative; the index may lag (cache) or run
            // ahead (a block written but not yet committed, whose spans are still unflushed).
            let committed_seq = shard.blocks.iter().map(|b| b.seq).max().unwrap_or(0);
            let index = self.index(tenant, shard.shard).await?;
            let mut seen: HashSet<&str> = HashSet::new();
            let mut blocks = Vec::new();
            for b in shard.blocks.iter().chain(index.iter().filter(|b| b.seq <= committed_seq)) {
                if seen.insert(b.id.as_str()) && block_matches(b, hints) {
                    blocks.push(b.clone());
                }
            }
            snapshot.blocks.extend(blocks);
            snapshot.batches.extend(shard.batches);
        }
        Ok(snapshot)
    }

    async fn index(&self, tenant: &TenantId, shard: u32) -> Result<Arc<Vec<BlockMeta>>> {
        let store = self.store.clone();
        let t = tenant.clone();
        self.index_cache
            .try_get_with((tenant.clone(), shard), async move { read_index(store.as_ref(), &t, shard).await.map(Arc::new) })
            .await
            .map_err(|e| QueryError::Internal(format!("reading block index: {e}")))
    }
}

fn block_matches(block: &BlockMeta, hints: &ScanHints) -> bool {
    if let Some((start, end)) = hints.time_range {
        if !block.overlaps(start, end) {
            return false;
        }
    }
    match &hints.trace_ids {
        Some(ids) => ids.iter().any(|id| block.may_contain_trace(id)),
        None => true,
    }
}
