//! A Spindle storage node.
//!
//! Data path: `StorageApi::push` -> [`shard::Shard::append`] -> openraft `client_write` ->
//! [`log_store::LogStore`] (fsynced segment files: the WAL) -> commit ->
//! [`state_machine::StateMachine::apply`] buffers the batch as Arrow -> the flusher writes a
//! Parquet block (`spindle_storage::write_block`), updates the object-store block index, commits
//! `BlockFlushed` through Raft and snapshots, which purges the log.

pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft_types;
pub mod shard;
pub mod state_machine;

pub use metrics::StorageMetrics;
pub use node::{NodeConfig, StorageNode};
pub use shard::ShardConfig;

/// Errors starting, flushing or stopping a storage node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Local disk I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Block storage failed.
    #[error(transparent)]
    Storage(#[from] spindle_storage::StorageError),
    /// Raft refused or failed.
    #[error("raft: {0}")]
    Raft(String),
}
