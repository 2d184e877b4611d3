//! The internal storage API, behind one trait so the all-in-one binary and the cluster run the
//! same code: [`StorageApi`] is implemented in-process by the storage node, by
//! [`grpc::GrpcStorageClient`] across the network, and served by [`grpc::StorageGrpcServer`].

pub mod grpc;

use arrow::record_batch::RecordBatch;
use spindle_storage::{BlockMeta, TenantId};

/// Identifies a storage shard.
pub type ShardId = u32;

/// What a querier wants from the shards' unflushed data.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    /// Whose spans.
    pub tenant: TenantId,
    /// Which shards to ask.
    pub shards: Vec<ShardId>,
    /// Only spans overlapping `[start, end]` unix nanoseconds, when set.
    pub time_range: Option<(i64, i64)>,
    /// Only spans of this trace, when set.
    pub trace_id: Option<[u8; 16]>,
}

/// One shard's answer to a [`ReadRequest`], consistent at one point of its Raft log.
#[derive(Debug, Clone)]
pub struct ShardData {
    /// The shard.
    pub shard: ShardId,
    /// Spans not yet in any committed block.
    pub batches: Vec<RecordBatch>,
    /// The tenant's committed blocks on this shard.
    pub blocks: Vec<BlockMeta>,
}

/// Failures of the storage API, each with a clear retry meaning.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Too much unflushed data or too many writes in flight: retry later.
    #[error("storage overloaded: {0}")]
    Overloaded(String),
    /// The shard cannot serve now (no leader, shutting down): retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong: do not retry.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// Anything else.
    #[error("storage error: {0}")]
    Internal(String),
}

/// Calls an ingester or querier makes to storage shards.
#[async_trait::async_trait]
pub trait StorageApi: Send + Sync + 'static {
    /// Appends spans to a shard; returns once they are committed (durable on a quorum).
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: RecordBatch) -> Result<u64, ApiError>;

    /// Reads unflushed spans and committed block lists from shards.
    async fn read_unflushed(&self, request: &ReadRequest) -> Result<Vec<ShardData>, ApiError>;
}
