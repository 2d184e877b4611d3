//! The cluster state and the commands that change it.
//!
//! [`ClusterState::apply`] is a pure function of the state and the command, so every replica of
//! the metadata group that applies the same log holds the same state. A command that does not
//! make sense (a move for a shard already moving, a node that does not exist) is refused with a
//! [`MetaError`] and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{NodeId, ShardId, META_GROUP};

/// Settings fixed at bootstrap (shards can be added later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Copies of each shard (Raft voters).
    pub replication_factor: u32,
    /// Shards a tenant's traces are spread over (0: all shards).
    pub shards_per_tenant: u32,
    /// Points per shard on the hash ring.
    pub vnodes: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { replication_factor: 1, shards_per_tenant: 0, vnodes: 64 }
    }
}

/// Lifecycle of a storage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds replicas and takes new ones.
    Active,
    /// Being drained: its replicas move elsewhere, it takes no new ones.
    Leaving,
    /// Drained: holds nothing and may be shut down.
    Left,
}

/// A storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Address of its internal gRPC API (`host:port`), as other nodes reach it.
    pub addr: String,
    /// Lifecycle state.
    pub state: NodeState,
}

/// A replica move in progress: `add` joins the shard's group, then `remove` (if any) leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Node that receives a replica.
    pub add: NodeId,
    /// Node whose replica goes away once `add` is a voter (`None`: the shard gains a replica).
    pub remove: Option<NodeId>,
}

/// A data shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Shard id.
    pub id: ShardId,
    /// Nodes holding a voting replica (the group's voters once every move has finished).
    pub replicas: Vec<NodeId>,
    /// Whether the group has been initialized (by one of its replicas).
    pub initialized: bool,
    /// A replica move in progress.
    pub moving: Option<Move>,
}

impl ShardInfo {
    /// Nodes that must host this shard's group now: the replicas and a move's target.
    pub fn hosts(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().copied().chain(self.moving.map(|m| m.add).filter(|a| !self.replicas.contains(a)))
    }
}

/// Everything the metadata group stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Random id chosen at bootstrap; names the cluster's objects in the object store.
    /// Empty until the cluster is bootstrapped.
    pub cluster_id: String,
    /// Bumped by every applied command; clients poll for changes with it.
    pub version: u64,
    /// Settings.
    pub config: ClusterConfig,
    /// Storage nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Shards by id.
    pub shards: BTreeMap<ShardId, ShardInfo>,
    /// The incarnation of each member: a random number a storage node makes with its data
    /// directory. A node that comes back with another one lost its log (see
    /// [`MetaCommand::RecordIncarnation`]). Removed when a node leaves.
    #[serde(default)]
    pub incarnations: BTreeMap<NodeId, u64>,
}

/// A change to the cluster state, replicated through the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Creates the cluster: its id, settings and first nodes, and places `shards` shards on them.
    Bootstrap {
        /// Cluster id.
        cluster_id: String,
        /// Settings.
        config: ClusterConfig,
        /// Number of shards.
        shards: u32,
        /// The first nodes (all active).
        nodes: Vec<NodeInfo>,
    },
    /// A storage node joins, or reports its (new) address. A node that had left becomes active.
    RegisterNode {
        /// Node id.
        id: NodeId,
        /// Internal gRPC address.
        addr: String,
    },
    /// Starts (`Leaving`) or cancels (`Active`) a drain, or records a drained node as `Left`.
    SetNodeState {
        /// Node id.
        id: NodeId,
        /// New state.
        state: NodeState,
    },
    /// A shard's group was initialized by one of its replicas.
    ShardInitialized {
        /// Shard id.
        shard: ShardId,
    },
    /// The controller starts moving a replica.
    StartMove {
        /// Shard id.
        shard: ShardId,
        /// The move.
        mv: Move,
    },
    /// The shard's leader changed the group's voters for `mv`; `replicas` are the new voters.
    FinishMove {
        /// Shard id.
        shard: ShardId,
        /// The move that finished (must be the one in progress).
        mv: Move,
        /// The group's voters now.
        replicas: Vec<NodeId>,
    },
    /// Forgets a move that cannot finish (its target is no longer active).
    CancelMove {
        /// Shard id.
        shard: ShardId,
    },
    /// Adds shards; each is placed on the least loaded active nodes.
    AddShards {
        /// How many.
        count: u32,
    },
    /// Records the incarnation of a member's data directory, once: a node that later presents
    /// another one under the same id lost its log and is refused. (Last variant: log entries
    /// are encoded by variant index.)
    RecordIncarnation {
        /// Node id.
        id: NodeId,
        /// Its incarnation.
        incarnation: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    /// The cluster is not bootstrapped yet.
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    /// The cluster is already bootstrapped.
    #[error("the cluster is already bootstrapped (cluster id {0})")]
    AlreadyBootstrapped(String),
    /// Bootstrap or shard settings are unusable.
    #[error("invalid cluster settings: {0}")]
    InvalidConfig(String),
    /// No such node.
    #[error("unknown storage node {0}")]
    UnknownNode(NodeId),
    /// No such shard.
    #[error("unknown shard {0}")]
    UnknownShard(ShardId),
    /// The node cannot go to that state now.
    #[error("node {id} cannot become {to:?} now: {why}")]
    BadTransition {
        /// Node id.
        id: NodeId,
        /// Requested state.
        to: NodeState,
        /// Why not.
        why: String,
    },
    /// A member's id came back with another data directory.
    #[error(
        "node {id} is a member with another data directory (incarnation {known:x}, this one {presented:x}): \
         it lost that member's log"
    )]
    LostData {
        /// Node id.
        id: NodeId,
        /// The incarnation on record.
        known: u64,
        /// The one presented.
        presented: u64,
    },
    /// The shard already has a move in progress, or not the one named.
    #[error("shard {shard}: {why}")]
    BadMove {
        /// Shard id.
        shard: ShardId,
        /// Why not.
        why: String,
    },
}

impl ClusterState {
    /// Whether the cluster has been bootstrapped.
    pub fn is_bootstrapped(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    /// Active nodes, by id.
    pub fn active_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.state == NodeState::Active)
    }

    /// Shards whose group `node` must host (replicas and move targets).
    pub fn shards_hosted_by(&self, node: NodeId) -> impl Iterator<Item = &ShardInfo> {
        self.shards.values().filter(move |s| s.hosts().any(|h| h == node))
    }

    /// Replicas (including move targets) on each node; nodes without any count 0.
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for s in self.shards.values() {
            for n in s.hosts() {
                *load.entry(n).or_default() += 1;
            }
        }
        load
    }

    /// Applies a command. On success the version moves on; on error nothing changes.
    pub fn apply(&mut self, command: &MetaCommand) -> Result<(), MetaError> {
        if !self.is_bootstrapped() && !matches!(command, MetaCommand::Bootstrap { .. }) {
            return Err(MetaError::NotBootstrapped);
        }
        match command {
            MetaCommand::Bootstrap { cluster_id, config, shards, nodes } => {
                self.bootstrap(cluster_id, config, *shards, nodes)?
            }
            MetaCommand::RegisterNode { id, addr } => {
                let node = self.nodes.entry(*id).or_insert_with(|| NodeInfo {
                    id: *id,
                    addr: addr.clone(),
                    state: NodeState::Active,
                });
                node.addr = addr.clone();
                if node.state == NodeState::Left {
                    node.state = NodeState::Active;
                }
            }
            MetaCommand::SetNodeState { id, state } => self.set_node_state(*id, *state)?,
            MetaCommand::ShardInitialized { shard } => self.shard_mut(*shard)?.initialized = true,
            MetaCommand::StartMove { shard, mv } => self.start_move(*shard, *mv)?,
            MetaCommand::FinishMove { shard, mv, replicas } => {
                let s = self.shard_mut(*shard)?;
                if s.moving != Some(*mv) {
                    return Err(MetaError::BadMove { shard: *shard, why: format!("move {mv:?} is not in progress") });
                }
                let mut replicas = replicas.clone();
                replicas.sort_unstable();
                replicas.dedup();
                s.replicas = replicas;
                s.moving = None;
            }
            MetaCommand::CancelMove { shard } => {
                let s = self.shard_mut(*shard)?;
                if s.moving.take().is_none() {
                    return Err(MetaError::BadMove { shard: *shard, why: "no move in progress".into() });
                }
            }
            MetaCommand::AddShards { count } => self.add_shards(*count)?,
            MetaCommand::RecordIncarnation { id, incarnation } => self.record_incarnation(*id, *incarnation)?,
        }
        self.version += 1;
        Ok(())
    }

    fn shard_mut(&mut self, shard: ShardId) -> Result<&mut ShardInfo, MetaError> {
        self.shards.get_mut(&shard).ok_or(MetaError::UnknownShard(shard))
    }

    fn bootstrap(
        &mut self,
        cluster_id: &str,
        config: &ClusterConfig,
        shards: u32,
        nodes: &[NodeInfo],
    ) -> Result<(), MetaError> {
        if self.is_bootstrapped() {
            return Err(MetaError::AlreadyBootstrapped(self.cluster_id.clone()));
        }
        if cluster_id.is_empty() || !cluster_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MetaError::InvalidConfig(format!(
                "cluster id {cluster_id:?} must be non-empty and alphanumeric"
            )));
        }
        let rf = config.replication_factor as usize;
        if rf == 0 || shards == 0 || config.vnodes == 0 {
            return Err(MetaError::InvalidConfig("replication factor, shards and vnodes must be at least 1".into()));
        }
        if shards == META_GROUP {
            return Err(MetaError::InvalidConfig(format!("at most {} shards", META_GROUP - 1)));
        }
        if nodes.len() < rf {
            return Err(MetaError::InvalidConfig(format!(
                "replication factor {rf} needs at least {rf} storage nodes, bootstrapping with {}",
                nodes.len()
            )));
        }
        self.cluster_id = cluster_id.to_string();
        self.config = config.clone();
        self.nodes = nodes.iter().map(|n| (n.id, NodeInfo { state: NodeState::Active, ..n.clone() })).collect();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.shards = (0..shards)
            .map(|s| {
                let mut replicas: Vec<NodeId> = (0..rf).map(|k| ids[(s as usize + k) % ids.len()]).collect();
                replicas.sort_unstable();
                (s, ShardInfo { id: s, replicas, initialized: false, moving: None })
            })
            .collect();
        Ok(())
    }

    fn record_incarnation(&mut self, id: NodeId, incarnation: u64) -> Result<(), MetaError> {
        let node = self.nodes.get(&id).ok_or(MetaError::UnknownNode(id))?;
        if node.state == NodeState::Left {
            return Err(MetaError::BadTransition { id, to: node.state, why: "it has left; it registers first".into() });
        }
        match self.incarnations.get(&id) {
            Some(known) if *known == incarnation => Ok(()),
            Some(known) => Err(MetaError::LostData { id, known: *known, presented: incarnation }),
            None => {
                self.incarnations.insert(id, incarnation);
                Ok(())
            }
        }
    }

    fn set_node_state(&mut self, id: NodeId, state: NodeState) -> Result<(), MetaError> {
        let holds: Vec<ShardId> = self.shards_hosted_by(id).map(|s| s.id).collect();
        let node = self.nodes.get_mut(&id).ok_or(MetaError::UnknownNode(id))?;
        let bad = |why: &str| MetaError::BadTransition { id, to: state, why: why.to_string() };
        match (node.state, state) {
            (a, b) if a == b => {}
            (NodeState::Active, NodeState::Leaving) | (NodeState::Leaving, NodeState::Active) => node.state = state,
            (NodeState::Leaving, NodeState::Left) => {
                if !holds.is_empty() {
                    return Err(bad(&format!("it still holds replicas of shards {holds:?}")));
                }
                node.state = state;
                // Whatever comes back under this id later is a new member.
                self.incarnations.remove(&id);
            }
            (NodeState::Left, _) => return Err(bad("it has left; it rejoins by registering again")),
            (NodeState::Active, NodeState::Left) => return Err(bad("drain it first (Leaving)")),
            _ => return Err(bad("unsupported transition")),
        }
        Ok(())
    }

    fn start_move(&mut self, shard: ShardId, mv: Move) -> Result<(), MetaError> {
        let target_active = self.nodes.get(&mv.add).is_some_and(|n| n.state == NodeState::Active);
        let s = self.shard_mut(shard)?;
        let bad = |why: String| MetaError::BadMove { shard, why };
        if let Some(m) = s.moving {
            return Err(bad(format!("move {m:?} is already in progress")));
        }
        if !target_active {
            return Err(bad(format!("target node {} is not an active node", mv.add)));
        }
        if s.replicas.contains(&mv.add) {
            return Err(bad(format!("node {} already holds a replica", mv.add)));
        }
        if let Some(r) = mv.remove {
            if !s.replicas.contains(&r) {
                return Err(bad(format!("node {r} holds no replica to remove")));
            }
        }
        s.moving = Some(mv);
        Ok(())
    }

    fn add_shards(&mut self, count: u32) -> Result<(), MetaError> {
        let first = self.shards.keys().next_back().map_or(0, |s| s + 1);
        if count == 0 || first.checked_add(count).is_none_or(|end| end == META_GROUP) {
            return Err(MetaError::InvalidConfig(format!("cannot add {count} shards after shard {first}")));
        }
        let rf = self.config.replication_factor as usize;
        if self.active_nodes().count() < rf {
            return Err(MetaError::InvalidConfig(format!("replication factor {rf} needs {rf} active nodes")));
        }
        for id in first..first + count {
            let load = self.load();
            let mut candidates: Vec<(usize, NodeId)> = self.active_nodes().map(|n| (load[&n.id], n.id)).collect();
            candidates.sort_unstable();
            let mut replicas: Vec<NodeId> = candidates.iter().take(rf).map(|c| c.1).collect();
            replicas.sort_unstable();
            self.shards.insert(id, ShardInfo { id, replicas, initialized: false, moving: None });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(id: NodeId) -> NodeInfo {
        NodeInfo { id, addr: format!("127.0.0.1:{}", 7000 + id), state: NodeState::Active }
    }

    pub(crate) fn bootstrapped(nodes: &[NodeId], shards: u32, rf: u32) -> ClusterState {
        let mut s = ClusterState::default();
        let config = ClusterConfig { replication_factor: rf, ..ClusterConfig::default() };
        let nodes = nodes.iter().map(|i| node(*i)).collect();
        s.apply(&MetaCommand::Bootstrap { cluster_id: "c0ffee".into(), config, shards, nodes }).unwrap();
        s
    }

    #[test]
    fn bootstrap_spreads_replicas() {
        let s = bootstrapped(&[1, 2, 3], 4, 3);
        assert!(s.is_bootstrapped());
        assert_eq!(s.version, 1);
        for shard in s.shards.values() {
            assert_eq!(shard.replicas, vec![1, 2, 3]);
        }
        let s = bootstrapped(&[1, 2, 3, 4], 4, 2);
        assert!(s.load().values().all(|l| *l == 2), "{:?}", s.load());
        let mut empty = ClusterState::default();
        let too_few = MetaCommand::Bootstrap {
            cluster_id: "x".into(),
            config: ClusterConfig { replication_factor: 3, ..ClusterConfig::default() },
            shards: 1,
            nodes: vec![node(1)],
        };
        assert!(matches!(empty.apply(&too_few), Err(MetaError::InvalidConfig(_))));
        assert_eq!(empty, ClusterState::default());
    }

    #[test]
    fn an_incarnation_is_recorded_once_and_forgotten_when_the_node_leaves() {
        let mut s = bootstrapped(&[1, 2, 3], 1, 1);
        let record = |n| MetaCommand::RecordIncarnation { id: 2, incarnation: n };
        s.apply(&record(7)).unwrap();
        s.apply(&record(7)).unwrap();
        assert_eq!(s.apply(&record(8)), Err(MetaError::LostData { id: 2, known: 7, presented: 8 }));
        assert_eq!(s.apply(&MetaCommand::RecordIncarnation { id: 9, incarnation: 1 }), Err(MetaError::UnknownNode(9)));
        // Node 2 holds no replica with one shard of RF 1 unless placed there; drain it either way.
        let holds: Vec<ShardId> = s.shards_hosted_by(2).map(|x| x.id).collect();
        s.apply(&MetaCommand::SetNodeState { id: 2, state: NodeState::Leaving }).unwrap();
        for shard in holds {
            let mv = Move { add: 1, remove: Some(2) };
            s.apply(&MetaCommand::StartMove { shard, mv }).unwrap();
            s.apply(&MetaCommand::FinishMove { shard, mv, replicas: vec![1] }).unwrap();
        }
        s.apply(&MetaCommand::SetNodeState { id: 2, state: NodeState::Left }).unwrap();
        assert!(s.apply(&record(8)).is_err(), "a node that left registers first");
        s.apply(&MetaCommand::RegisterNode { id: 2, addr: "new:1".into() }).unwrap();
        s.apply(&record(8)).unwrap();
        assert_eq!(s.incarnations[&2], 8);
        // Snapshots written before incarnations existed still load.
        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("incarnations");
        let old: ClusterState = serde_json::from_value(json).unwrap();
        assert!(old.incarnations.is_empty());
    }

    #[test]
    fn commands_before_bootstrap_are_refused() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&MetaCommand::RegisterNode { id: 1, addr: "a".into() }), Err(MetaError::NotBootstrapped));
    }

    #[test]
    fn moves_are_validated() {
        let mut s = bootstrapped(&[1, 2, 3], 2, 3);
        s.apply(&MetaCommand::RegisterNode { id: 4, addr: "x:1".into() }).unwrap();
        let mv = Move { add: 4, remove: Some(1) };
        s.apply(&MetaCommand::StartMove { shard: 0, mv }).unwrap();
        assert!(s.apply(&MetaCommand::StartMove { shard: 0, mv }).is_err(), "one move at a time");
        assert_eq!(s.shards_hosted_by(4).count(), 1);
        let wrong = Move { add: 4, remove: Some(2) };
        assert!(s.apply(&MetaCommand::FinishMove { shard: 0, mv: wrong, replicas: vec![] }).is_err());
        s.apply(&MetaCommand::FinishMove { shard: 0, mv, replicas: vec![4, 2, 3] }).unwrap();
        assert_eq!(s.shards[&0].replicas, vec![2, 3, 4]);
        assert!(s.apply(&MetaCommand::StartMove { shard: 1, mv: Move { add: 9, remove: None } }).is_err());
    }

    #[test]
    fn drain_lifecycle() {
        let mut s = bootstrapped(&[1, 2, 3], 1, 1);
        let holder = s.shards[&0].replicas[0];
        let left = MetaCommand::SetNodeState { id: holder, state: NodeState::Left };
        assert!(s.apply(&left).is_err(), "active -> left needs a drain");
        s.apply(&MetaCommand::SetNodeState { id: holder, state: NodeState::Leaving }).unwrap();
        assert!(s.apply(&left).is_err(), "still holds a replica");
        let other = if holder == 1 { 2 } else { 1 };
        let mv = Move { add: other, remove: Some(holder) };
        s.apply(&MetaCommand::StartMove { shard: 0, mv }).unwrap();
        s.apply(&MetaCommand::FinishMove { shard: 0, mv, replicas: vec![other] }).unwrap();
        s.apply(&left).unwrap();
        assert_eq!(s.nodes[&holder].state, NodeState::Left);
        s.apply(&MetaCommand::RegisterNode { id: holder, addr: "new:1".into() }).unwrap();
        assert_eq!(s.nodes[&holder].state, NodeState::Active);
    }

    #[test]
    fn added_shards_go_to_least_loaded_nodes() {
        let mut s = bootstrapped(&[1, 2], 2, 1);
        s.apply(&MetaCommand::RegisterNode { id: 3, addr: "c:1".into() }).unwrap();
        s.apply(&MetaCommand::AddShards { count: 1 }).unwrap();
        assert_eq!(s.shards[&2].replicas, vec![3]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), s);
    }
}
