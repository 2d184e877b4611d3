//! The openraft type configurations (data shards and the metadata group) and the commands in
//! their logs.

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use spindle_cluster::{MetaCommand, MetaError};
use spindle_schema::digest::PushPart;
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::BlockMeta;

use crate::shard_sm::CompactionLease;

/// Spans in a Raft entry: the IPC bytes that are logged and replicated, and the decoded batch,
/// which the leader already has (it decoded the push) and a follower decodes once, at apply.
/// Cheap to clone.
#[derive(Clone)]
pub struct SpanPayload(Arc<PayloadInner>);

struct PayloadInner {
    ipc: Bytes,
    decoded: OnceLock<Result<RecordBatch, String>>,
}

impl SpanPayload {
    /// A payload whose batch is already decoded.
    pub fn from_encoded(batch: EncodedBatch) -> Self {
        let decoded = OnceLock::new();
        let _ = decoded.set(Ok(batch.batch().clone()));
        Self(Arc::new(PayloadInner { ipc: batch.ipc().clone(), decoded }))
    }

    /// A payload read from the log or the network.
    pub fn from_ipc(ipc: Bytes) -> Self {
        Self(Arc::new(PayloadInner { ipc, decoded: OnceLock::new() }))
    }

    /// The IPC bytes.
    pub fn ipc(&self) -> &Bytes {
        &self.0.ipc
    }

    /// The spans, if decoded already (by whoever made the payload, or an earlier use).
    pub fn decoded(&self) -> Option<Result<RecordBatch, String>> {
        self.0.decoded.get().cloned()
    }

    /// The spans, decoded on first use and kept.
    pub fn batch(&self) -> Result<RecordBatch, String> {
        self.0
            .decoded
            .get_or_init(|| {
                EncodedBatch::decode(self.0.ipc.clone()).map(|b| b.batch().clone()).map_err(|e| e.to_string())
            })
            .clone()
    }
}

impl std::fmt::Debug for SpanPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpanPayload({} bytes)", self.0.ipc.len())
    }
}

impl PartialEq for SpanPayload {
    fn eq(&self, other: &Self) -> bool {
        self.0.ipc == other.0.ipc
    }
}

impl Eq for SpanPayload {}

impl Serialize for SpanPayload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.ipc)
    }
}

impl<'de> Deserialize<'de> for SpanPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(Self::from_ipc(Bytes::from(bytes.into_vec())))
    }
}

/// One push inside an [`ShardCommand::Append`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendItem {
    /// Tenant id.
    pub tenant: String,
    /// xxh3-128 of the tenant and the IPC bytes: how the leader recognises a retried push.
    pub digest: [u64; 2],
    /// The spans.
    pub payload: SpanPayload,
}

/// One push inside an [`ShardCommand::AppendParts`]: the spans of one or more exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsItem {
    /// Tenant id.
    pub tenant: String,
    /// The exports whose rows the payload holds, in row order: how the leader recognises a
    /// retried export, whatever it was pushed with.
    pub parts: Vec<PushPart>,
    /// The spans.
    pub payload: SpanPayload,
}

/// A command in a shard's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Spans of the pushes that reached the leader together (one entry, one fsync: group
    /// commit).
    Append {
        /// When the leader proposed it (unix ms, the leader's clock): ages unflushed data and
        /// ends the window in which a retried push is recognised.
        received_unix_ms: u64,
        /// The pushes.
        items: Vec<AppendItem>,
    },
    /// A block holding a tenant's appended spans of log range `(after_index, through_index]`
    /// was written to the object store. Applied only if it starts exactly where the tenant's
    /// flushed range ends (no overlap, no gap) and was proposed in the term its leader flushed
    /// in; otherwise refused, and the block file is an orphan for the sweep.
    BlockFlushed {
        /// Tenant id.
        tenant: String,
        /// Term of the leader that wrote the block.
        term: u64,
        /// Node id of that leader.
        leader: u64,
        /// The tenant's flushed range ended here when the flush started.
        after_index: u64,
        /// Last log index whose spans the block holds.
        through_index: u64,
        /// The block (without its Bloom filter, which lives in the object-store index).
        block: Box<BlockMeta>,
    },
    /// Leases a merge of some of a tenant's blocks to one compactor. Granted if the blocks are
    /// all live and no unexpired lease covers the same time window of the tenant (one
    /// compactor per window at a time) or any of the blocks.
    LeaseCompaction {
        /// Tenant id.
        tenant: String,
        /// The lease.
        lease: CompactionLease,
        /// The leader's clock when proposed (unix ms).
        now_unix_ms: u64,
    },
    /// Swaps a leased job's input blocks for its merged output: one catalog step. Applied only
    /// while the job's lease holds and every input is live; the inputs are retired (their files
    /// are deleted after a grace period, so running queries can finish).
    Compacted {
        /// Tenant id.
        tenant: String,
        /// The job.
        job: String,
        /// Ids of the merged blocks.
        inputs: Vec<String>,
        /// The merged block (without its Bloom filter).
        output: Box<BlockMeta>,
        /// The leader's clock when proposed (unix ms).
        now_unix_ms: u64,
    },
    /// Retires blocks past the tenant's retention: no query sees them from here on.
    Retire {
        /// Tenant id.
        tenant: String,
        /// Ids of the blocks.
        blocks: Vec<String>,
        /// The leader's clock when proposed (unix ms).
        now_unix_ms: u64,
    },
    /// Forgets retired blocks whose files are deleted.
    Purge {
        /// Tenant id.
        tenant: String,
        /// Ids of the blocks.
        blocks: Vec<String>,
    },
    /// As [`ShardCommand::Append`], with pushes that may hold several exports each. Proposed
    /// only once every replica reads it (the variant is last: older logs read as before).
    AppendParts {
        /// As in `Append`.
        received_unix_ms: u64,
        /// The pushes.
        items: Vec<PartsItem>,
    },
}

/// What applying a shard command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResponse {
    /// Nothing to report (blank and membership entries).
    #[default]
    Done,
    /// Rows stored per item of an `Append`, or why an item could not be stored.
    Appended(Vec<Result<u64, String>>),
    /// The block is committed.
    Flushed,
    /// The block was refused (stale or overlapping).
    FlushRefused(String),
    /// The compaction lease is granted.
    Leased,
    /// The compaction swap is made (now or before).
    Compacted,
    /// A lifecycle command was refused, and why.
    Refused(String),
}

/// What applying a metadata command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResponse {
    /// Why the state refused the command, if it did.
    pub refused: Option<MetaError>,
}

openraft::declare_raft_types!(
    /// Raft types of a data shard.
    pub ShardTypes:
        D = ShardCommand,
        R = ShardResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<ShardTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

openraft::declare_raft_types!(
    /// Raft types of the metadata group.
    pub MetaTypes:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<MetaTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log id (term, leader, index).
pub type LogId = openraft::LogId<u64>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<u64>;
/// Stored membership of a group.
pub type Membership = openraft::StoredMembership<u64, openraft::BasicNode>;
