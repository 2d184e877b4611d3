//! Cluster metadata, the state kept by the metadata Raft group on the storage nodes.
//!
//! - [`state`]: [`ClusterState`] (storage nodes, shards, the replicas of each shard, the ring
//!   settings) and the [`MetaCommand`]s that change it, applied the same way on every replica.
//! - [`placement`]: which replica to move next so every shard has its replication factor on
//!   active nodes and nodes carry an even share.
//! - [`topology`]: a [`ClusterState`] with its ring built, what ingesters, queriers and storage
//!   nodes route by.

pub mod placement;
pub mod state;
pub mod topology;

pub use state::{ClusterConfig, ClusterState, MetaCommand, MetaError, Move, NodeInfo, NodeState, ShardInfo};
pub use topology::Topology;

/// Identifies a storage node. Stable across restarts; chosen by the operator (`--node-id`).
pub type NodeId = u64;

/// Identifies a data shard (one Raft group).
pub type ShardId = u32;

/// Raft group id of the metadata group on the internal Raft transport (data shards use their
/// shard id, which is always below it).
pub const META_GROUP: u32 = u32::MAX;
