//! The openraft type configuration of a storage shard and the commands in its log.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use spindle_storage::BlockMeta;

/// A command in a shard's Raft log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ShardCommand {
    /// Buffer a batch of spans for a tenant (Arrow IPC stream in the span schema).
    Append {
        /// Tenant id.
        tenant: String,
        /// The spans.
        #[serde(with = "serde_bytes")]
        ipc: Vec<u8>,
    },
    /// A block was written to the object store: record it and drop the buffered spans it holds
    /// (every `Append` of the tenant at or below `through_index`).
    BlockFlushed {
        /// Tenant id.
        tenant: String,
        /// The block.
        block: BlockMeta,
        /// Highest log index whose spans the block contains.
        through_index: u64,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardResponse {
    /// Spans buffered by an `Append`.
    pub rows: u64,
    /// Why the command could not be applied, if it could not.
    pub error: Option<String>,
}

openraft::declare_raft_types!(
    /// Raft types of a storage shard.
    pub TypeConfig:
        D = ShardCommand,
        R = ShardResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of a shard.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of a shard.
pub type LogId = openraft::LogId<u64>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<u64>;
