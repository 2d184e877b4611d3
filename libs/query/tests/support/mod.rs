//! A query engine over known spans, for tests: some spans in Parquet blocks (written by
//! `spindle_storage`), the rest served as unflushed data by an in-process fake shard, so every
//! query crosses both paths the real read path has.

#![allow(dead_code)]

pub mod data;
pub mod reference;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use spindle_cluster::{ClusterConfig, ClusterState, MetaCommand, NodeInfo, NodeState, Topology};
use spindle_cluster_client::watch::TopologyWatch;
use spindle_cluster_client::{Channels, RouterConfig, ShardRouter};
use spindle_query::{QueryConfig, QueryEngine, SpanSource};
use spindle_storage::{BlockMeta, BlockOptions, TenantId};
use spindle_storage_api::{ApiError, CompactionJob, CompactionPolicy, ShardRead, ShardReadRequest, StorageApi};

/// Serves fixed blocks and unflushed batches for every read.
struct FakeShard {
    blocks: Vec<BlockMeta>,
    unflushed: Vec<RecordBatch>,
}

#[async_trait::async_trait]
impl StorageApi for FakeShard {
    async fn push(&self, _: u32, _: &TenantId, _: spindle_schema::ipc::EncodedBatch) -> Result<u64, ApiError> {
        Err(ApiError::Unavailable("read-only test shard".into()))
    }

    async fn push_many(&self, pushes: Vec<spindle_storage_api::Push>) -> Vec<Result<u64, ApiError>> {
        pushes.iter().map(|_| Err(ApiError::Unavailable("read-only test shard".into()))).collect()
    }

    async fn read(&self, request: ShardReadRequest) -> Result<ShardRead, ApiError> {
        let batches: Vec<Result<RecordBatch, ApiError>> = self
            .unflushed
            .iter()
            .map(|b| match &request.projection {
                Some(p) => b.project(p).map_err(|e| ApiError::Internal(e.to_string())),
                None => Ok(b.clone()),
            })
            .collect();
        Ok(ShardRead { blocks: self.blocks.clone(), batches: Box::pin(futures::stream::iter(batches)) })
    }

    async fn plan_compaction(&self, _: u32, _: CompactionPolicy) -> Result<Option<CompactionJob>, ApiError> {
        Ok(None)
    }

    async fn commit_compaction(&self, _: CompactionJob, _: BlockMeta) -> Result<(), ApiError> {
        Ok(())
    }
}

/// An engine over test spans, and the tenant they belong to.
pub struct TestEngine {
    pub engine: QueryEngine,
    pub tenant: TenantId,
    _dir: tempfile::TempDir,
}

/// Builds an engine whose blocks are `blocks` (each written as one Parquet block) and whose
/// unflushed spans are `unflushed`.
pub async fn engine(blocks: Vec<Vec<RecordBatch>>, unflushed: Vec<RecordBatch>) -> TestEngine {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn ObjectStore> = spindle_storage::store::local_store(dir.path()).expect("store");
    let tenant = TenantId::default_tenant();
    let mut metas = Vec::new();
    for (i, batches) in blocks.into_iter().enumerate() {
        let i = i as u64;
        let options = BlockOptions { row_group_rows: 64, page_rows: 16, ..BlockOptions::default() };
        if let Some(meta) =
            spindle_storage::write_block(store.clone(), &tenant, "test", 0, (i * 10 + 1, i * 10 + 9), batches, &options)
                .await
                .expect("write block")
        {
            metas.push(meta);
        }
    }
    let mut state = ClusterState::default();
    state
        .apply(&MetaCommand::Bootstrap {
            cluster_id: "test".into(),
            config: ClusterConfig::default(),
            shards: 1,
            nodes: vec![NodeInfo { id: 1, addr: "127.0.0.1:1".into(), state: NodeState::Active }],
        })
        .expect("bootstrap");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Topology::new(state)));
    std::mem::forget(_tx);
    let shard = Arc::new(FakeShard { blocks: metas, unflushed });
    let router = Arc::new(ShardRouter::new(
        TopologyWatch::local(rx),
        Some((1, shard as Arc<dyn StorageApi>)),
        Channels::with_secret(None).expect("channels"),
        RouterConfig::default(),
    ));
    let source = Arc::new(SpanSource::new(router, store));
    let engine = QueryEngine::new(source, QueryConfig::default()).expect("engine");
    TestEngine { engine, tenant, _dir: dir }
}
