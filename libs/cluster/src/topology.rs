//! A cluster state with its ring built: what every role routes by.

use std::sync::Arc;

use spindle_ring::Ring;

use crate::state::ClusterState;
use crate::{NodeId, ShardId};

/// One version of the cluster's layout.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The metadata it was built from.
    pub state: Arc<ClusterState>,
    /// The ring over its shards (`None` before bootstrap).
    pub ring: Option<Ring>,
}

impl Topology {
    /// The topology of `state`.
    pub fn new(state: ClusterState) -> Self {
        let shards: Vec<ShardId> = state.shards.keys().copied().collect();
        let ring = Ring::new(&shards, state.config.vnodes as usize, state.config.shards_per_tenant as usize).ok();
        Self { state: Arc::new(state), ring }
    }

    /// The empty topology of a cluster not bootstrapped (or not reached) yet.
    pub fn empty() -> Self {
        Self { state: Arc::new(ClusterState::default()), ring: None }
    }

    /// The version of the state.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The voting replicas of a shard.
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        self.state.shards.get(&shard).map_or(&[], |s| s.replicas.as_slice())
    }

    /// The internal address of a node.
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.state.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// Every shard id.
    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.state.shards.keys().copied().collect()
    }
}
