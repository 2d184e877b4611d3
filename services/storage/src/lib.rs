//! A Spindle storage node: hosts data shards and a replica of the metadata group, each an
//! openraft group, and serves the data plane (push, read), the control plane (topology,
//! joining) and Raft traffic for all of them over one gRPC server.
//!
//! - [`shard::Shard`]: a data shard. Pushes are grouped into one Raft entry per commit
//!   (group commit); the committed entry is the write-ahead log (every group of the node
//!   shares one, `spindle-wal`; [`raft_log`] is a group's view of it); the state
//!   machine ([`shard_sm`]) buffers spans until the leader flushes them to a Parquet block,
//!   commits the block through Raft (fenced by log range and term) and snapshots metadata only.
//! - [`meta_sm`]: the metadata group's state machine: the cluster state of `spindle-cluster`.
//! - [`node::StorageNode`]: joins or bootstraps the cluster, opens the shards the metadata
//!   assigns to it, initializes new groups, executes replica moves for the shards it leads, and
//!   (on the metadata leader) runs the [`controller`].
//! - [`network`]: the Raft transport; [`service`]: the gRPC control plane; [`admin`]: HTTP
//!   admin endpoints.

pub mod admin;
pub mod controller;
mod legacy_log;
pub mod meta_sm;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft_log;
pub mod raft_types;
pub mod service;
pub mod shard;
pub mod shard_sm;
mod snapshot_store;

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

pub use metrics::StorageMetrics;
pub use node::{BootstrapConfig, NodeConfig, StorageNode};
pub use shard::ShardConfig;

/// Errors starting, flushing or stopping a storage node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Local disk I/O failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The node's write-ahead log failed (or is damaged).
    #[error(transparent)]
    Wal(#[from] spindle_wal::WalError),
    /// Block storage failed.
    #[error(transparent)]
    Storage(#[from] spindle_storage::StorageError),
    /// A tenant id in the shard's state is not usable.
    #[error(transparent)]
    Tenant(#[from] spindle_storage::tenant::InvalidTenant),
    /// openraft refused a configuration or stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// The metadata group could not take a command.
    #[error("cluster metadata: {0}")]
    Meta(String),
    /// A call to another node failed.
    #[error(transparent)]
    Peer(#[from] spindle_cluster_client::ClientError),
}

impl NodeError {
    /// A Raft error, keeping its message.
    pub fn raft(e: impl std::fmt::Display) -> Self {
        NodeError::Raft(e.to_string())
    }
}

/// Raft timing of every group on a node.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat (sent for every group of a node at once); also how long openraft gives
    /// a follower to take one AppendEntries.
    pub heartbeat: Duration,
    /// A follower that hears nothing from its leader for `max` (openraft's leader lease) plus
    /// a random time in `[min, max)` starts an election: with the defaults a dead leader is
    /// replaced within 1.5-2 s.
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
        }
    }
}

impl RaftTiming {
    /// An openraft configuration with this timing.
    pub(crate) fn config(&self, name: String) -> openraft::Config {
        openraft::Config {
            cluster_name: name,
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: self.election_min.as_millis() as u64,
            election_timeout_max: self.election_max.as_millis() as u64,
            // The node sends every group's heartbeats at once (`StorageNode`), so they share
            // frames on the Raft streams.
            enable_heartbeat: false,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 512,
            replication_lag_threshold: 100_000,
            ..Default::default()
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
/// The one atomic file write of the storage node (votes, snapshots, purge points).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, by this node's clock.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
