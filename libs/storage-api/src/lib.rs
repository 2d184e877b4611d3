//! The storage data plane, behind one trait so the all-in-one binary and the cluster run the
//! same code: [`StorageApi`] is implemented in-process by a storage node, by
//! [`grpc::GrpcStorageClient`] across the network, and served by [`grpc::StorageGrpcServer`].
//! Calls address one shard; routing to the shard's leader is the caller's job
//! (`spindle-cluster-client`).

pub mod compaction;
pub mod grpc;

use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
pub use spindle_schema::digest::PushPart;
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::{BlockMeta, TenantId};

pub use compaction::{CompactionJob, CompactionPolicy};
pub use spindle_cluster::{NodeId, ShardId};

/// What a querier wants from one shard.
#[derive(Debug, Clone)]
pub struct ShardReadRequest {
    /// Whose spans.
    pub tenant: TenantId,
    /// Which shard.
    pub shard: ShardId,
    /// Only spans overlapping `[start, end]` unix nanoseconds, when set.
    pub time_range: Option<(i64, i64)>,
    /// Only spans of these traces, when set.
    pub trace_ids: Option<Vec<[u8; 16]>>,
    /// Only these columns of the span schema (by index), when set.
    pub projection: Option<Vec<usize>>,
}

/// One shard's answer to a [`ShardReadRequest`], consistent at one point of its Raft log: the
/// blocks it had committed, and a stream of the spans not in any of them (projected).
pub struct ShardRead {
    /// The tenant's committed blocks on this shard that may match the request.
    pub blocks: Vec<BlockMeta>,
    /// Spans not yet in any committed block.
    pub batches: BoxStream<'static, Result<RecordBatch, ApiError>>,
}

impl std::fmt::Debug for ShardRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRead").field("blocks", &self.blocks.len()).finish_non_exhaustive()
    }
}

/// Failures of the storage API, each with a clear retry meaning. They cross the network, so
/// they carry messages rather than sources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Too much unflushed data or too many writes in flight: retry later.
    #[error("storage overloaded: {0}")]
    Overloaded(String),
    /// The shard cannot serve now (no quorum, shutting down, outcome unknown): retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The node could not be reached (refused, reset, timed out): retry elsewhere.
    #[error("storage node unreachable: {0}")]
    Unreachable(String),
    /// This node does not lead the shard; `leader` does, when known: retry there.
    #[error("node does not lead shard {shard} (leader: {leader:?})")]
    NotLeader {
        /// The shard.
        shard: ShardId,
        /// Its leader, when known.
        leader: Option<NodeId>,
    },
    /// The request itself is wrong: do not retry.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// Anything else.
    #[error("storage error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Whether the same request may succeed if sent again (here or to another node).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::Unreachable(_) | ApiError::NotLeader { .. })
    }
}

/// One batch for one shard, in a [`StorageApi::push_many`] call.
#[derive(Debug, Clone)]
pub struct Push {
    /// The shard.
    pub shard: ShardId,
    /// Whose spans.
    pub tenant: TenantId,
    /// The spans.
    pub batch: EncodedBatch,
    /// The exports whose rows the batch holds, in row order; empty when the batch is one part
    /// (the leader then takes the digest of its bytes).
    pub parts: Vec<PushPart>,
}

impl Push {
    /// A push of one part.
    pub fn whole(shard: ShardId, tenant: TenantId, batch: EncodedBatch) -> Self {
        Self { shard, tenant, batch, parts: Vec::new() }
    }
}

/// Calls an ingester or querier makes to one storage node.
#[async_trait::async_trait]
pub trait StorageApi: Send + Sync + 'static {
    /// Appends spans to a shard led by this node; returns once they are committed by the
    /// shard's quorum. Sending the same batch again after an unknown outcome stores it once
    /// (the leader recognises a batch it committed recently by its digest).
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: EncodedBatch) -> Result<u64, ApiError>;

    /// Appends several batches, each to its shard as [`StorageApi::push`] would, in one call to
    /// the node; the result of each, in order. The pushes are committed concurrently. A push's
    /// parts are recognised one by one: a part committed before is acknowledged, not stored
    /// again, whatever it travelled with.
    async fn push_many(&self, pushes: Vec<Push>) -> Vec<Result<u64, ApiError>>;

    /// Reads a shard's committed blocks and unflushed spans (linearizable: everything
    /// acknowledged before the call is included).
    async fn read(&self, request: ShardReadRequest) -> Result<ShardRead, ApiError>;

    /// Leases the next merge worth doing on a shard under `policy` to its holder, if any.
    async fn plan_compaction(
        &self,
        shard: ShardId,
        policy: CompactionPolicy,
    ) -> Result<Option<CompactionJob>, ApiError>;

    /// Swaps a leased job's inputs for its merged `output` in one catalog step. Sending it again
    /// after an unknown outcome is safe: a swap already made is reported as made. Refused
    /// (`InvalidArgument`) when the lease ended or the inputs changed; the output is then unused.
    async fn commit_compaction(&self, job: CompactionJob, output: BlockMeta) -> Result<(), ApiError>;
}
