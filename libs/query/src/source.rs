//! Where a tenant's spans are: unflushed spans on every shard (streamed from its leader), and
//! Parquet blocks, found in the shards' catalogs and in the tenant's object-store indexes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::ObjectStore;
use spindle_cluster_client::ShardRouter;
use spindle_storage::index::{index_path, index_paths, read_index};
use spindle_storage::{BlockMeta, TenantId};
use spindle_storage_api::{ApiError, ShardReadRequest};

use crate::hints::ScanHints;
use crate::refresh::{Freshness, RefreshingCache};
use crate::{QueryError, Result};

/// Index listings and indexes are re-read in the background after 10 s, and served stale for up
/// to 5 minutes meanwhile: a slow store never delays a lookup by a re-read. Stale is safe: the
/// shards' catalogs are authoritative for their blocks (an index only adds Bloom filters), and the
/// blocks of shards no longer asked do not change.
const INDEX_FRESHNESS: Freshness =
    Freshness { fresh_for: Duration::from_secs(10), serve_stale_for: Duration::from_secs(300) };

/// Unflushed spans of one shard, as its leader streams them (projected).
pub type UnflushedStream = BoxStream<'static, Result<RecordBatch, ApiError>>;

/// A consistent view of a tenant's spans for one scan.
#[derive(Default)]
pub struct SpanSnapshot {
    /// Spans not yet in a block, one stream per shard.
    pub unflushed: Vec<UnflushedStream>,
    /// Committed blocks that may hold matching spans (already pruned by the hints).
    pub blocks: Vec<BlockMeta>,
}

/// Loads [`SpanSnapshot`]s: asks every shard's leader for its unflushed spans and committed
/// blocks, and adds what the tenant's object-store indexes know (Bloom filters, and blocks of
/// shards or clusters that are no longer asked).
pub struct SpanSource {
    router: Arc<ShardRouter>,
    store: Arc<dyn ObjectStore>,
    listing_cache: RefreshingCache<TenantId, Vec<Path>>,
    index_cache: RefreshingCache<Path, Vec<BlockMeta>>,
}

impl SpanSource {
    /// A source reading shards through `router` and blocks from `store`.
    pub fn new(router: Arc<ShardRouter>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            router,
            store,
            listing_cache: RefreshingCache::new(10_000, INDEX_FRESHNESS),
            index_cache: RefreshingCache::new(100_000, INDEX_FRESHNESS),
        }
    }

    /// The object store holding blocks.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Loads what a scan with `hints` needs; unflushed spans come with `projection` applied.
    pub async fn load(
        &self,
        tenant: &TenantId,
        hints: &ScanHints,
        projection: Option<Vec<usize>>,
    ) -> Result<SpanSnapshot> {
        let topology = self.router.topology().current();
        if !topology.state.is_bootstrapped() {
            return Err(QueryError::Unavailable("the querier has not reached the cluster metadata yet".into()));
        }
        let cluster = topology.state.cluster_id.clone();
        let reads = topology.shard_ids().into_iter().map(|shard| {
            self.router.read(ShardReadRequest {
                tenant: tenant.clone(),
                shard,
                time_range: hints.time_range,
                trace_ids: hints.trace_ids.clone(),
                projection: projection.clone(),
            })
        });
        let (reads, indexes) = futures::join!(futures::future::join_all(reads), self.indexes(tenant));
        let indexes = indexes?;
        let own = |path: &Path, shard: u32| path == &index_path(tenant, &cluster, shard);
        let mut blooms: HashMap<&str, &BlockMeta> = HashMap::new();
        let mut snapshot = SpanSnapshot::default();
        for (path, blocks) in &indexes {
            let is_own = blocks.first().is_some_and(|b| own(path, b.shard));
            for b in blocks.iter() {
                if is_own {
                    blooms.insert(b.id.as_str(), b);
                } else if block_matches(b, hints) {
                    // A block of a shard layout or cluster that no shard answers for any more.
                    snapshot.blocks.push(b.clone());
                }
            }
        }
        for read in reads {
            let read = read.map_err(|e| match e {
                ApiError::Unavailable(m) | ApiError::Overloaded(m) => QueryError::Unavailable(m),
                other => QueryError::Unavailable(other.to_string()),
            })?;
            for b in read.blocks {
                // The index copy carries the Bloom filter; the shard's catalog is authoritative.
                let b = blooms.get(b.id.as_str()).map_or(b, |indexed| (*indexed).clone());
                if block_matches(&b, hints) {
                    snapshot.blocks.push(b);
                }
            }
            snapshot.unflushed.push(read.batches);
        }
        Ok(snapshot)
    }

    /// Every index of the tenant with its blocks.
    async fn indexes(&self, tenant: &TenantId) -> Result<Vec<(Path, Arc<Vec<BlockMeta>>)>> {
        let store = self.store.clone();
        let t = tenant.clone();
        let paths = self
            .listing_cache
            .get(tenant, move || {
                let (store, t) = (store.clone(), t.clone());
                async move { index_paths(store.as_ref(), &t).await }
            })
            .await
            .map_err(|e| QueryError::Internal(format!("listing block indexes: {e}")))?;
        let reads = paths.iter().map(|path| {
            let store = self.store.clone();
            let p = path.clone();
            async move {
                let blocks = self
                    .index_cache
                    .get(path, move || {
                        let (store, p) = (store.clone(), p.clone());
                        async move { read_index(store.as_ref(), &p).await }
                    })
                    .await
                    .map_err(|e| QueryError::Internal(format!("reading block index {path}: {e}")))?;
                Ok::<_, QueryError>((path.clone(), blocks))
            }
        });
        futures::future::try_join_all(reads).await
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
