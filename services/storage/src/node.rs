//! A storage node: its replica of the metadata group, the shards the metadata assigns to it,
//! and the loops that keep the two in line.
//!
//! - Joining: a node whose metadata group is empty asks its seeds who they are. If one belongs
//!   to a cluster, the node registers through it and waits for the metadata leader to add it
//!   to the metadata group as a learner. If none does and `--bootstrap-expect` nodes answer,
//!   the one with the lowest id creates the cluster (up to 3 metadata voters, every shard
//!   placed on the nodes found).
//! - Reconciling: the node opens every shard it must host (a replica, or a move's target),
//!   initializes the groups it is to start (each shard by a different replica, so leadership
//!   starts spread), carries out the replica moves of the
//!   shards it leads (add learner, catch up, change voters), and removes the shards it no
//!   longer hosts once an up-to-date copy of the metadata confirms it.
//! - Controlling: on the metadata leader, [`crate::controller`] decides the moves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use object_store::ObjectStore;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::Serialize;
use spindle_cluster::{
    ClusterConfig, ClusterState, MetaCommand, MetaError, Move, NodeId, NodeInfo, NodeState, ShardId, Topology,
};
use spindle_cluster_client::control::Hello;
use spindle_cluster_client::{Channels, ControlClient};
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::{BlockMeta, TenantId};
use spindle_storage_api::{ApiError, CompactionJob, CompactionPolicy, Push, ShardRead, ShardReadRequest, StorageApi};
use spindle_wal::{Wal, WalOptions};
use tokio::sync::watch;

use crate::meta_sm::MetaStateMachine;
use crate::metrics::StorageMetrics;
use crate::network::{GrpcNetwork, RaftGroups, RaftLinks};
use crate::raft_log::{self, GroupLog};
use crate::raft_types::{MetaTypes, ShardTypes};
use crate::shard::{Shard, ShardConfig, ShardContext};
use crate::NodeError;

/// How a new cluster is created.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// Storage nodes (this one included) that must answer before the cluster is created.
    pub expect: usize,
    /// Shards to create.
    pub shards: u32,
    /// Replication factor, shards per tenant, ring points.
    pub cluster: ClusterConfig,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self { expect: 1, shards: 1, cluster: ClusterConfig::default() }
    }
}

/// How a storage node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stable id of this node.
    pub node_id: NodeId,
    /// Address of this node's internal gRPC API as other nodes reach it (`host:port`).
    pub advertise_addr: String,
    /// Local directory for Raft logs and snapshots.
    pub dir: PathBuf,
    /// Internal addresses of other storage nodes to join through.
    pub seeds: Vec<String>,
    /// Used when this node creates the cluster.
    pub bootstrap: BootstrapConfig,
    /// Shard tunables.
    pub shard: ShardConfig,
}

/// A running storage node.
pub struct StorageNode {
    id: NodeId,
    config: NodeConfig,
    channels: Channels,
    meta: Raft<MetaTypes>,
    topology: watch::Receiver<Arc<Topology>>,
    shards: RwLock<BTreeMap<ShardId, Arc<Shard>>>,
    shard_context: ShardContext,
    opening: Mutex<HashMap<ShardId, Arc<tokio::sync::Mutex<()>>>>,
    moves: Mutex<HashSet<ShardId>>,
    leaders: Mutex<HashMap<ShardId, Option<NodeId>>>,
    metrics: StorageMetrics,
    stop: watch::Sender<bool>,
    identity: Mutex<Identity>,
    incarnation: u64,
    wal: Wal,
    links: RaftLinks,
}

/// Whether this node may take part in the cluster's Raft groups.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// Its data directory is its own history: it may.
    Known,
    /// It started with an empty data directory and has not yet asked the cluster whether its
    /// id belongs to a member with another data directory: not yet.
    Unchecked,
    /// It started with an empty data directory under the id of a member whose incarnation is
    /// another: it lost what that member acknowledged and voted, and may not take part (the
    /// message says what to do).
    LostData(String),
}

/// How often a node checks that it leads only the shards it is preferred for.
const BALANCE_EVERY: Duration = Duration::from_secs(5);

/// How many replica moves the controller runs at once.
pub const MAX_MOVES: usize = 2;

/// How long a new replica may take to catch up before its move is retried.
const MOVE_CATCH_UP: Duration = Duration::from_secs(120);

/// Waits until the leader has replicated to `learner` everything it had when asked.
async fn wait_caught_up(raft: &Raft<ShardTypes>, learner: NodeId) -> Result<(), NodeError> {
    let target = raft.metrics().borrow().last_log_index.unwrap_or(0);
    raft.wait(Some(MOVE_CATCH_UP))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&learner).copied().flatten())
                    .is_some_and(|matched| matched.index >= target)
            },
            "new replica caught up",
        )
        .await
        .map(|_| ())
        .map_err(|e| NodeError::Raft(format!("the new replica did not catch up: {e}")))
}

impl StorageNode {
    /// Opens the node's metadata replica and the shards on its disk, and starts joining (or
    /// bootstrapping) and reconciling in the background.
    pub async fn start(
        config: NodeConfig,
        store: Arc<dyn ObjectStore>,
        channels: Channels,
        metrics: StorageMetrics,
    ) -> Result<Arc<Self>, NodeError> {
        if config.dir.join("shard-00000").join("raft-log").exists() {
            return Err(NodeError::Meta(format!(
                "{} holds a Raft log of an older Spindle layout; move it away (flush it with the older version first)",
                config.dir.display()
            )));
        }
        let meta_dir = config.dir.join("meta");
        let wal_dir = config.dir.join("wal");
        // Nothing on disk yet: a new node, or one whose disk was replaced (see `Identity`).
        let fresh = !meta_dir.join("log").exists() && !wal_dir.exists();
        let other_seeds = config.seeds.iter().any(|s| *s != config.advertise_addr);
        let identity = if fresh && other_seeds { Identity::Unchecked } else { Identity::Known };
        let incarnation = load_incarnation(&config.dir)?;
        let wal = open_wal(&wal_dir, &config.shard.log).await?;
        crate::legacy_log::import::<MetaTypes>(&meta_dir.join("log"), &wal, spindle_cluster::META_GROUP).await?;
        drop_orphaned_groups(&wal, &config.dir.join("shards")).await?;
        let log = GroupLog::<MetaTypes>::open(&wal, spindle_cluster::META_GROUP, config.shard.log.clone())?;
        let sm = MetaStateMachine::open(&meta_dir.join("state"))?;
        let topology = sm.topology();
        let raft_config = openraft::Config {
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            ..config.shard.raft.config("spindle-meta".into())
        }
        .validate()
        .map_err(NodeError::raft)?;
        let links = RaftLinks::new(channels.clone());
        let meta = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            GrpcNetwork::new(spindle_cluster::META_GROUP, links.clone()),
            log,
            sm,
        )
        .await
        .map_err(NodeError::raft)?;
        let shard_context = ShardContext::new(
            config.node_id,
            store.clone(),
            topology.clone(),
            links.clone(),
            config.shard.clone(),
            metrics.clone(),
            wal.clone(),
        );
        let node = Arc::new(Self {
            shard_context,
            id: config.node_id,
            channels,
            meta,
            topology,
            shards: RwLock::new(BTreeMap::new()),
            opening: Mutex::new(HashMap::new()),
            moves: Mutex::new(HashSet::new()),
            leaders: Mutex::new(HashMap::new()),
            metrics,
            stop: watch::channel(false).0,
            config,
            identity: Mutex::new(identity),
            incarnation,
            wal,
            links: links.clone(),
        });
        // Shards on disk rejoin their groups at once (all opened together), whatever the
        // metadata says yet.
        let on_disk = shard_dirs(&node.config.dir.join("shards")).await?;
        futures::future::try_join_all(on_disk.into_iter().map(|id| node.open_shard(id))).await?;
        tokio::spawn(node.clone().join_loop());
        tokio::spawn(node.clone().reconcile_loop());
        tokio::spawn(crate::controller::run(node.clone()));
        tokio::spawn(node.clone().metrics_loop());
        tokio::spawn(node.clone().heartbeat_loop());
        tokio::spawn(node.clone().balance_loop());
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The metadata group's Raft handle.
    pub fn meta_raft(&self) -> &Raft<MetaTypes> {
        &self.meta
    }

    /// The topology this node's metadata replica has applied, updated on every change.
    pub fn topology(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.clone()
    }

    /// The current cluster state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.topology.borrow().state.clone()
    }

    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// A shard hosted here.
    pub fn shard(&self, id: ShardId) -> Option<Arc<Shard>> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn all_shards(&self) -> Vec<Arc<Shard>> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Who this node is, for a joining node's `Hello`.
    pub async fn hello(&self) -> Hello {
        Hello {
            node_id: self.id,
            addr: self.config.advertise_addr.clone(),
            meta_initialized: self.meta.is_initialized().await.unwrap_or(false),
            cluster_id: self.state().cluster_id.clone(),
            incarnation: self.incarnation,
        }
    }

    /// Whether this node leads the metadata group.
    pub fn is_meta_leader(&self) -> bool {
        let metrics = self.meta.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    async fn open_shard(&self, id: ShardId) -> Result<Arc<Shard>, NodeError> {
        // One opening per shard id at a time; different shards open concurrently.
        let lock = self.opening.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(s) = self.shard(id) {
            return Ok(s);
        }
        let dir = self.config.dir.join("shards").join(format!("shard-{id:05}"));
        let shard = Shard::open(id, &dir, &self.shard_context).await?;
        tracing::info!(shard = id, "opened shard");
        self.shards.write().unwrap_or_else(|e| e.into_inner()).insert(id, shard.clone());
        Ok(shard)
    }

    /// Proposes a metadata command here or, when this node does not lead the metadata group,
    /// through its leader. The inner result is the state's verdict.
    pub async fn propose_meta(&self, command: MetaCommand, hops: u32) -> Result<Result<(), MetaError>, NodeError> {
        match self.meta.client_write(command.clone()).await {
            Ok(r) => Ok(r.data.refused.map_or(Ok(()), Err)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) else {
                    return Err(NodeError::Meta("the metadata group has no leader now; retry".into()));
                };
                if hops >= 2 || leader == self.id {
                    return Err(NodeError::Meta("the metadata leader moved while forwarding; retry".into()));
                }
                Ok(ControlClient::new(&self.channels, &node.addr)?.propose(&command, hops + 1).await?)
            }
            Err(e) => Err(NodeError::Meta(e.to_string())),
        }
    }

    /// The read index of the metadata group (this node must lead it).
    pub async fn meta_read_index(&self) -> Result<u64, NodeError> {
        let (read, _) = self.meta.get_read_log_id().await.map_err(NodeError::raft)?;
        Ok(read.map_or(0, |l| l.index))
    }

    /// Waits until this node's metadata replica has applied everything the metadata leader
    /// had committed when asked: after that, the local state is not older than the cluster's.
    async fn meta_caught_up(&self) -> Result<(), NodeError> {
        let index = if self.is_meta_leader() {
            self.meta_read_index().await?
        } else {
            let addr = {
                let metrics = self.meta.metrics();
                let m = metrics.borrow();
                let leader =
                    m.current_leader.ok_or_else(|| NodeError::Meta("the metadata group has no leader now".into()))?;
                m.membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| NodeError::Meta(format!("metadata leader {leader} has no address")))?
            };
            ControlClient::new(&self.channels, &addr)?.meta_read_index().await?
        };
        self.meta
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "metadata caught up")
            .await
            .map_err(NodeError::raft)?;
        Ok(())
    }

    /// Whether this node may answer Raft calls (see `Identity`).
    fn takes_part(&self) -> bool {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) == Identity::Known
    }

    /// A node that started with an empty data directory asks the seeds whether its id belongs
    /// to a member with another incarnation (another data directory). If so it lost that
    /// member's log: acknowledged writes counted it in their quorum and it may have voted in
    /// current terms, so taking part again under that id could lose acknowledged spans or elect
    /// two leaders. It stays out (not ready, no Raft) until the old member has been drained,
    /// then joins as new. A member without an incarnation on record (just bootstrapped with it,
    /// or from an older version) gets this one recorded. Returns whether the node may go on.
    async fn check_identity(&self) -> bool {
        let current = self.identity.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if current == Identity::Known {
            return true;
        }
        for seed in self.config.seeds.iter().filter(|s| **s != self.config.advertise_addr) {
            let (next, how) = match self.identity_at(seed).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::debug!(seed = %seed, error = %e, "seed did not answer the identity check");
                    continue;
                }
            };
            if next != current {
                match &next {
                    Identity::LostData(why) => tracing::error!("{why}"),
                    _ => tracing::info!(node = self.id, incarnation = %format!("{:x}", self.incarnation), "{how}"),
                }
            }
            let known = next == Identity::Known;
            *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = next;
            return known;
        }
        false
    }

    /// What the cluster, as `seed` knows it, says of this node's identity.
    async fn identity_at(&self, seed: &str) -> Result<(Identity, &'static str), NodeError> {
        const NEW: &str = "no member has this node id: joining as a new node";
        let client = ControlClient::new(&self.channels, seed)?;
        let Some(state) = client.topology(0).await?.filter(|s| s.is_bootstrapped()) else {
            return Ok((Identity::Known, NEW));
        };
        let Some(member) = state.nodes.get(&self.id).filter(|n| n.state != NodeState::Left) else {
            return Ok((Identity::Known, NEW));
        };
        let verdict = match state.incarnations.get(&self.id) {
            Some(known) if *known == self.incarnation => {
                return Ok((Identity::Known, "this data directory is the member's own: joining"))
            }
            Some(known) => MetaError::LostData { id: self.id, known: *known, presented: self.incarnation },
            None => {
                let record = MetaCommand::RecordIncarnation { id: self.id, incarnation: self.incarnation };
                match client.propose(&record, 0).await? {
                    Ok(()) => return Ok((Identity::Known, "this data directory recorded as the member's: joining")),
                    Err(e @ MetaError::LostData { .. }) => e,
                    Err(e) => return Err(NodeError::Meta(e.to_string())),
                }
            }
        };
        let why = format!(
            "this node started with an empty data directory ({}), but {verdict} ({}). Taking part again \
             could lose acknowledged spans, so it stays out. Drain the old member (`spindle storage --leave \
             --node-id {}`, which works while this node waits) and this node joins as new once it has left; \
             or start it with a --node-id the cluster has never had",
            self.config.dir.display(),
            member.addr,
            self.id
        );
        Ok((Identity::LostData(why), "lost data"))
    }

    async fn join_loop(self: Arc<Self>) {
        let mut stop = self.stopped();
        while !self.check_identity().await {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        loop {
            match self.try_join().await {
                Ok(true) => {
                    tracing::info!(node = self.id, cluster = %self.state().cluster_id, "member of the cluster");
                    self.record_incarnation().await;
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "joining the cluster failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Puts this node's incarnation on record if none is (a member from an older version, or
    /// one that has just joined); retried until it is, or until another one is found there.
    async fn record_incarnation(&self) {
        let mut stop = self.stopped();
        loop {
            if self.state().incarnations.contains_key(&self.id) {
                return;
            }
            let record = MetaCommand::RecordIncarnation { id: self.id, incarnation: self.incarnation };
            match self.propose_meta(record, 0).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "this node's incarnation was not recorded");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "recording this node's incarnation failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One step of joining; `true` once this node is registered with its current address.
    async fn try_join(&self) -> Result<bool, NodeError> {
        let me = NodeInfo { id: self.id, addr: self.config.advertise_addr.clone(), state: NodeState::Active };
        if self.meta.is_initialized().await.map_err(NodeError::raft)? {
            let state = self.state();
            if !state.is_bootstrapped() {
                // The node that created the group stopped before bootstrapping: its successor does.
                if self.is_meta_leader() {
                    let membership = self.meta.metrics().borrow().membership_config.membership().clone();
                    let nodes = membership
                        .nodes()
                        .map(|(id, n)| NodeInfo { id: *id, addr: n.addr.clone(), state: NodeState::Active })
                        .collect();
                    self.bootstrap_cluster(nodes).await?;
                }
                return Ok(false);
            }
            return match state.nodes.get(&self.id) {
                Some(n) if n.addr == me.addr && n.state != NodeState::Left => Ok(true),
                _ => {
                    let verdict =
                        self.propose_meta(MetaCommand::RegisterNode { id: me.id, addr: me.addr.clone() }, 0).await?;
                    verdict.map_err(|e| NodeError::Meta(e.to_string()))?;
                    Ok(false)
                }
            };
        }
        let mut peers: BTreeMap<NodeId, Hello> = BTreeMap::new();
        peers.insert(self.id, self.hello().await);
        for seed in self.config.seeds.iter().filter(|s| **s != me.addr) {
            match ControlClient::new(&self.channels, seed)?.hello().await {
                Ok(h) => {
                    peers.insert(h.node_id, h);
                }
                Err(e) => tracing::debug!(seed = %seed, error = %e, "seed did not answer"),
            }
        }
        if let Some(member) = peers.values().find(|h| h.meta_initialized && h.node_id != self.id) {
            tracing::info!(via = %member.addr, "joining the cluster");
            let verdict = ControlClient::new(&self.channels, &member.addr)?
                .propose(&MetaCommand::RegisterNode { id: me.id, addr: me.addr.clone() }, 0)
                .await?;
            verdict.map_err(|e| NodeError::Meta(e.to_string()))?;
            return Ok(false);
        }
        let expect = self.config.bootstrap.expect.max(1);
        if peers.len() < expect {
            tracing::info!(found = peers.len(), expect, "waiting for more storage nodes before creating the cluster");
            return Ok(false);
        }
        if peers.keys().next() != Some(&self.id) {
            return Ok(false);
        }
        let voter_count = if peers.len() >= 3 { 3 } else { 1 };
        let voters: BTreeMap<NodeId, BasicNode> =
            peers.values().take(voter_count).map(|h| (h.node_id, BasicNode::new(h.addr.clone()))).collect();
        tracing::info!(nodes = ?peers.keys().collect::<Vec<_>>(), voters = ?voters.keys().collect::<Vec<_>>(), "creating the cluster");
        match self.meta.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(NodeError::raft(e)),
        }
        self.meta
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "metadata leader")
            .await
            .map_err(NodeError::raft)?;
        let nodes = peers
            .values()
            .map(|h| NodeInfo { id: h.node_id, addr: h.addr.clone(), state: NodeState::Active })
            .collect();
        self.bootstrap_cluster(nodes).await?;
        // The first members' data directories, as they said in their hellos (before any of them
        // could lose one).
        for h in peers.values().filter(|h| h.incarnation != 0) {
            let record = MetaCommand::RecordIncarnation { id: h.node_id, incarnation: h.incarnation };
            if let Ok(Err(e)) = self.propose_meta(record, 0).await {
                tracing::warn!(node = h.node_id, error = %e, "incarnation not recorded");
            }
        }
        Ok(false)
    }

    async fn bootstrap_cluster(&self, nodes: Vec<NodeInfo>) -> Result<(), NodeError> {
        let cluster_id: String = format!("{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            h.write_u64(self.id);
            h.finish()
        });
        let b = &self.config.bootstrap;
        let command = MetaCommand::Bootstrap {
            cluster_id: cluster_id.clone(),
            config: b.cluster.clone(),
            shards: b.shards,
            nodes,
        };
        match self.propose_meta(command, 0).await? {
            Ok(()) => {
                tracing::info!(cluster = %cluster_id, shards = b.shards, rf = b.cluster.replication_factor, "cluster created");
                Ok(())
            }
            Err(MetaError::AlreadyBootstrapped(_)) => Ok(()),
            Err(e) => Err(NodeError::Meta(e.to_string())),
        }
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let mut stop = self.stopped();
        let mut changes = self.topology.clone();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciling shards failed; retrying");
            }
        }
    }

    async fn reconcile(self: &Arc<Self>) -> Result<(), NodeError> {
        let state = self.state();
        if !state.is_bootstrapped() || !state.nodes.contains_key(&self.id) {
            return Ok(());
        }
        let mut hosted = HashSet::new();
        let preferred = spindle_cluster::placement::preferred_leaders(&state);
        for info in state.shards_hosted_by(self.id) {
            hosted.insert(info.id);
            let shard = self.open_shard(info.id).await?;
            // Each shard is initialized by its preferred leader, which campaigns first and so
            // leads it: leadership starts spread over the nodes.
            if !info.initialized && preferred.get(&info.id) == Some(&self.id) {
                let members: BTreeMap<NodeId, BasicNode> = info
                    .replicas
                    .iter()
                    .filter_map(|n| state.nodes.get(n).map(|i| (*n, BasicNode::new(i.addr.clone()))))
                    .collect();
                shard.initialize(members).await?;
                if let Err(e) = self.propose_meta(MetaCommand::ShardInitialized { shard: info.id }, 0).await? {
                    tracing::debug!(shard = info.id, reason = %e, "shard already marked initialized");
                }
                tracing::info!(shard = info.id, replicas = ?info.replicas, "initialized shard group");
            }
            if let Some(mv) = info.moving {
                let start = shard.is_leader() && self.moves.lock().unwrap_or_else(|e| e.into_inner()).insert(info.id);
                if start {
                    tokio::spawn(self.clone().execute_move(shard, mv));
                }
            }
        }
        let extra: Vec<ShardId> = self
            .shards
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .filter(|id| !hosted.contains(id))
            .collect();
        if !extra.is_empty() {
            // Act only on a copy of the metadata at least as new as the cluster's.
            self.meta_caught_up().await?;
            let state = self.state();
            for id in extra {
                if state.shards_hosted_by(self.id).any(|s| s.id == id) {
                    continue;
                }
                let shard = self.shards.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(shard) = shard {
                    tracing::info!(shard = id, "this node no longer hosts the shard; removing its local copy");
                    shard.remove().await?;
                }
            }
        }
        Ok(())
    }

    async fn execute_move(self: Arc<Self>, shard: Arc<Shard>, mv: Move) {
        let id = shard.id();
        match self.try_move(&shard, mv).await {
            Ok(()) => {
                tracing::info!(shard = id, add = mv.add, remove = ?mv.remove, "replica move finished")
            }
            Err(e) => {
                tracing::warn!(shard = id, add = mv.add, remove = ?mv.remove, error = %e, "replica move failed; will retry")
            }
        }
        self.moves.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Adds `mv.add` as a learner, waits until it has caught up, makes it a voter in place of
    /// `mv.remove`, and records the new voters in the metadata. A move whose target is no
    /// longer active is cancelled here, where the group's real membership is known: if the
    /// target does not vote yet it is taken out of the group first; if it does, the move
    /// finishes as planned (and the controller later moves the replica off it).
    async fn try_move(&self, shard: &Shard, mv: Move) -> Result<(), NodeError> {
        let state = self.state();
        let target = state.nodes.get(&mv.add).filter(|n| n.state == NodeState::Active);
        let raft = shard.raft();
        let membership = raft.metrics().borrow().membership_config.membership().clone();
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&mv.add) {
            let Some(target) = target else {
                if membership.learner_ids().any(|l| l == mv.add) {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([mv.add])), false)
                        .await
                        .map_err(NodeError::raft)?;
                }
                tracing::info!(
                    shard = shard.id(),
                    node = mv.add,
                    "the move's target is not active any more; cancelling"
                );
                return self
                    .propose_meta(MetaCommand::CancelMove { shard: shard.id() }, 0)
                    .await?
                    .map_err(|e| NodeError::Meta(e.to_string()));
            };
            if !membership.learner_ids().any(|l| l == mv.add) {
                tracing::info!(shard = shard.id(), node = mv.add, "adding a learner");
                tokio::time::timeout(
                    MOVE_CATCH_UP,
                    raft.add_learner(mv.add, BasicNode::new(target.addr.clone()), false),
                )
                .await
                .map_err(|_| NodeError::Raft("adding the learner did not commit".into()))?
                .map_err(NodeError::raft)?;
            }
            wait_caught_up(raft, mv.add).await?;
            voters.insert(mv.add);
        }
        if let Some(r) = mv.remove {
            voters.remove(&r);
        }
        let current: BTreeSet<NodeId> = raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if current != voters {
            tracing::info!(shard = shard.id(), voters = ?voters, "changing voters");
            tokio::time::timeout(Duration::from_secs(60), raft.change_membership(voters.clone(), false))
                .await
                .map_err(|_| NodeError::Raft("the membership change did not commit within 60 s".into()))?
                .map_err(NodeError::raft)?;
        }
        let replicas = voters.into_iter().collect();
        self.propose_meta(MetaCommand::FinishMove { shard: shard.id(), mv, replicas }, 0)
            .await?
            .map_err(|e| NodeError::Meta(e.to_string()))
    }

    /// Sends the heartbeats of every group this node leads at the same moment (openraft's own
    /// per-group timers are off), so the heartbeats of many groups to one peer share a frame.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut stop = self.stopped();
        let mut tick = tokio::time::interval(self.config.shard.raft.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.is_meta_leader() {
                let _ = self.meta.trigger().heartbeat().await;
            }
            for shard in self.all_shards() {
                if shard.is_leader() {
                    let _ = shard.raft().trigger().heartbeat().await;
                }
            }
        }
    }

    /// Keeps shard leadership spread over the nodes: each shard has a preferred replica
    /// (`placement::preferred_leaders`, even over the active nodes), and a leader that is not
    /// it hands leadership over once the preferred replica is a voter that has caught up (after
    /// a restart, or once moves settle). One hand-over at a time per node.
    async fn balance_loop(self: Arc<Self>) {
        let mut stop = self.stopped();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(BALANCE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.ready().is_err() {
                continue;
            }
            let state = self.state();
            let leaders = spindle_cluster::placement::preferred_leaders(&state);
            for info in state.shards_hosted_by(self.id) {
                let Some(&preferred) = leaders.get(&info.id) else { continue };
                let Some(shard) = self.shard(info.id) else { continue };
                if preferred == self.id || info.moving.is_some() || !shard.is_leader() {
                    continue;
                }
                let Some(addr) =
                    state.nodes.get(&preferred).filter(|n| n.state == NodeState::Active).map(|n| n.addr.clone())
                else {
                    continue;
                };
                let caught_up = {
                    let metrics = shard.raft().metrics();
                    let m = metrics.borrow();
                    let voter = m.membership_config.membership().voter_ids().any(|v| v == preferred);
                    let matched = m.replication.as_ref().and_then(|r| r.get(&preferred).copied().flatten());
                    // Close behind is enough: it catches up while this leader stops writing.
                    voter && matched.is_some_and(|l| l.index + 1000 >= m.last_log_index.unwrap_or(0))
                };
                if caught_up {
                    shard.hand_over(preferred, &addr, &self.channels).await;
                    break;
                }
            }
        }
    }

    async fn metrics_loop(self: Arc<Self>) {
        let mut stop = self.stopped();
        let mut wal_seen = spindle_wal::WalStats::default();
        let mut sent_seen = crate::network::LinkStats::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let shards = self.all_shards();
            let (mut unflushed, mut blocks, mut leading, mut leaderless) = (0, 0, 0, 0);
            let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
            for s in &shards {
                let (u, b) = s.usage();
                unflushed += u;
                blocks += b;
                let leader = s.raft().metrics().borrow().current_leader;
                leading += usize::from(leader == Some(self.id));
                leaderless += usize::from(leader.is_none());
                if let Some(previous) = leaders.insert(s.id(), leader) {
                    if previous != leader && leader.is_some() {
                        self.metrics.leader_changes.inc();
                    }
                }
            }
            self.metrics.unflushed_bytes.set(unflushed as i64);
            self.metrics.blocks.set(blocks as i64);
            let wal = self.wal.stats();
            self.metrics.raft_log_bytes.set(wal.bytes as i64);
            self.metrics.wal_segments.set(wal.segments as i64);
            self.metrics.wal_appends.inc_by(wal.entries.saturating_sub(wal_seen.entries));
            self.metrics.wal_batches.inc_by(wal.batches.saturating_sub(wal_seen.batches));
            self.metrics.wal_syncs.inc_by(wal.syncs.saturating_sub(wal_seen.syncs));
            wal_seen = wal;
            let sent = self.links.stats();
            self.metrics.raft_frames.inc_by(sent.frames.saturating_sub(sent_seen.frames));
            self.metrics.raft_appends.inc_by(sent.appends.saturating_sub(sent_seen.appends));
            self.metrics.raft_heartbeats.inc_by(sent.heartbeats.saturating_sub(sent_seen.heartbeats));
            sent_seen = sent;
            self.metrics.shards_hosted.set(shards.len() as i64);
            self.metrics.shards_leading.set(leading as i64);
            self.metrics.shards_without_leader.set(leaderless as i64);
        }
    }

    /// Whether the node serves: it has joined, and every shard it hosts is open and has a
    /// leader. `Err` says what is missing.
    pub fn ready(&self) -> Result<(), String> {
        match &*self.identity.lock().unwrap_or_else(|e| e.into_inner()) {
            Identity::Known => {}
            Identity::Unchecked => return Err("checking with the seeds whether this node id is in use".into()),
            Identity::LostData(why) => return Err(why.clone()),
        }
        let state = self.state();
        if !state.is_bootstrapped() {
            return Err("the cluster is not bootstrapped yet".into());
        }
        if state.nodes.get(&self.id).is_none_or(|n| n.addr != self.config.advertise_addr) {
            return Err("this node has not joined the cluster yet".into());
        }
        for info in state.shards_hosted_by(self.id) {
            if !info.initialized {
                return Err(format!("shard {} is not initialized yet", info.id));
            }
            let Some(shard) = self.shard(info.id) else {
                return Err(format!("shard {} is not open yet", info.id));
            };
            if shard.raft().metrics().borrow().current_leader.is_none() {
                return Err(format!("shard {} has no leader", info.id));
            }
        }
        Ok(())
    }

    /// Flushes every shard this node leads (used by tests and on shutdown).
    pub async fn flush_all(&self) -> Result<usize, NodeError> {
        let mut n = 0;
        for shard in self.all_shards() {
            n += shard.flush(true).await?;
        }
        Ok(n)
    }

    /// Stops the loops, flushes the shards this node leads and stops every group.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        let mut first_error = None;
        // All at once: each final flush may wait for its commit (up to its timeout).
        let shards = self.all_shards();
        let results = futures::future::join_all(shards.iter().map(|s| s.shutdown())).await;
        for (shard, result) in shards.iter().zip(results) {
            if let Err(e) = result {
                tracing::error!(shard = shard.id(), error = %e, "shard shutdown failed");
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.meta.shutdown().await {
            first_error.get_or_insert(NodeError::raft(e));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What this node and its groups are doing, for `/admin/status`.
    pub fn status(&self) -> NodeStatus {
        let state = self.state();
        let mut shards: Vec<ShardStatus> = self
            .all_shards()
            .iter()
            .map(|s| {
                let (unflushed_bytes, blocks) = s.usage();
                ShardStatus {
                    shard: s.id(),
                    group: GroupStatus::of(&s.raft().metrics().borrow()),
                    unflushed_bytes,
                    blocks,
                    log_bytes: s.log_bytes(),
                }
            })
            .collect();
        shards.sort_by_key(|s| s.shard);
        NodeStatus {
            node_id: self.id,
            addr: self.config.advertise_addr.clone(),
            ready: self.ready().err(),
            cluster_id: state.cluster_id.clone(),
            topology_version: state.version,
            meta: GroupStatus::of(&self.meta.metrics().borrow()),
            shards,
        }
    }
}

/// A node's status.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: NodeId,
    /// Internal address.
    pub addr: String,
    /// `null` when ready, else what is missing.
    pub ready: Option<String>,
    /// Cluster id (empty before bootstrap).
    pub cluster_id: String,
    /// Version of the cluster state applied here.
    pub topology_version: u64,
    /// The metadata group as this node sees it.
    pub meta: GroupStatus,
    /// The shards hosted here.
    pub shards: Vec<ShardStatus>,
}

/// One Raft group as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Leader, if known.
    pub leader: Option<NodeId>,
    /// Last log index here.
    pub last_log_index: Option<u64>,
    /// Last applied index here.
    pub last_applied: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot: Option<u64>,
    /// Purged up to.
    pub purged: Option<u64>,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// On the leader: the index each member has replicated up to.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
}

impl GroupStatus {
    fn of(m: &RaftMetrics<u64, BasicNode>) -> Self {
        let membership = m.membership_config.membership();
        Self {
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            replication: m.replication.as_ref().map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect()),
        }
    }
}

/// One shard replica on this node.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// Shard id.
    pub shard: ShardId,
    /// Its group.
    #[serde(flatten)]
    pub group: GroupStatus,
    /// In-memory bytes of unflushed spans.
    pub unflushed_bytes: usize,
    /// Committed blocks.
    pub blocks: usize,
    /// Bytes of its Raft log on disk.
    pub log_bytes: u64,
}

/// Opens the node's write-ahead log (reading it back is blocking work).
async fn open_wal(dir: &std::path::Path, options: &raft_log::LogOptions) -> Result<Wal, NodeError> {
    let (dir, options) = (dir.to_path_buf(), WalOptions { fsync: options.fsync, ..WalOptions::default() });
    let started = std::time::Instant::now();
    let wal = tokio::task::spawn_blocking(move || Wal::open(&dir, options))
        .await
        .map_err(|e| NodeError::Io(std::io::Error::other(e)))??;
    let stats = wal.stats();
    tracing::info!(segments = stats.segments, bytes = stats.bytes, groups = wal.groups().len(), took = ?started.elapsed(), "write-ahead log read back");
    Ok(wal)
}

/// Ids of the shard directories under `dir` (deleting what a crash left of removed shards).
async fn shard_dirs(dir: &std::path::Path) -> Result<Vec<ShardId>, NodeError> {
    let dir = dir.to_path_buf();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<ShardId>> {
        let mut ids = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(ids) };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("removing-") {
                std::fs::remove_dir_all(entry.path())?;
            } else if let Some(id) = name.strip_prefix("shard-").and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    });
    Ok(found.await.map_err(|e| NodeError::Io(std::io::Error::other(e)))??)
}

/// Drops from the shared log the shard groups whose directory is gone (a shard removed while
/// the node stopped half-way through).
async fn drop_orphaned_groups(wal: &Wal, shards: &std::path::Path) -> Result<(), NodeError> {
    let hosted = shard_dirs(shards).await?;
    for group in wal.groups() {
        if group != spindle_cluster::META_GROUP && !hosted.contains(&group) {
            tracing::info!(group, "dropping the log of a shard this node no longer hosts");
            raft_log::drop_group(wal, group).await?;
        }
    }
    Ok(())
}

/// The incarnation of this data directory: made once (random, not 0) and kept in
/// `<dir>/incarnation`.
fn load_incarnation(dir: &std::path::Path) -> Result<u64, NodeError> {
    let path = dir.join("incarnation");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(n) = u64::from_str_radix(text.trim(), 16) {
            return Ok(n);
        }
    }
    let n = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        h.finish().max(1)
    };
    std::fs::create_dir_all(dir)?;
    crate::write_atomic(&path, format!("{n:016x}\n").as_bytes())?;
    Ok(n)
}

#[async_trait::async_trait]
impl RaftGroups for StorageNode {
    fn stopping(&self) -> watch::Receiver<bool> {
        self.stopped()
    }

    fn meta(&self) -> Option<Raft<MetaTypes>> {
        self.takes_part().then(|| self.meta.clone())
    }

    async fn shard(&self, id: ShardId) -> Option<Raft<ShardTypes>> {
        if !self.takes_part() {
            return None;
        }
        if let Some(s) = StorageNode::shard(self, id) {
            return Some(s.raft().clone());
        }
        if !self.state().shards_hosted_by(self.id).any(|s| s.id == id) {
            return None;
        }
        match self.open_shard(id).await {
            Ok(s) => Some(s.raft().clone()),
            Err(e) => {
                tracing::warn!(shard = id, error = %e, "could not open a shard this node hosts");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl StorageApi for StorageNode {
    async fn push(&self, shard: ShardId, tenant: &TenantId, batch: EncodedBatch) -> Result<u64, ApiError> {
        let s = self.shard(shard).ok_or(ApiError::NotLeader { shard, leader: None })?;
        s.append(tenant, batch, &[]).await
    }

    async fn push_many(&self, pushes: Vec<Push>) -> Vec<Result<u64, ApiError>> {
        futures::future::join_all(pushes.into_iter().map(|p| async move {
            let s = self.shard(p.shard).ok_or(ApiError::NotLeader { shard: p.shard, leader: None })?;
            s.append(&p.tenant, p.batch, &p.parts).await
        }))
        .await
    }

    async fn read(&self, request: ShardReadRequest) -> Result<ShardRead, ApiError> {
        let s = self.shard(request.shard).ok_or(ApiError::NotLeader { shard: request.shard, leader: None })?;
        s.read(&request).await
    }

    async fn plan_compaction(
        &self,
        shard: ShardId,
        policy: CompactionPolicy,
    ) -> Result<Option<CompactionJob>, ApiError> {
        let s = self.shard(shard).ok_or(ApiError::NotLeader { shard, leader: None })?;
        s.plan_compaction(&policy).await
    }

    async fn commit_compaction(&self, job: CompactionJob, output: BlockMeta) -> Result<(), ApiError> {
        let s = self.shard(job.shard).ok_or(ApiError::NotLeader { shard: job.shard, leader: None })?;
        s.commit_compaction(job, output).await
    }
}
