//! Routing a shard's calls to its leader.
//!
//! The router remembers the last node that answered for each shard. A node that does not lead
//! the shard answers with the leader it knows, and the call goes there at once; a node that
//! cannot answer (down, no leader yet, timed out) makes the router try the shard's next replica
//! after a short jittered backoff, until the call's deadline. Calls in this process's own
//! storage node (all-in-one, or a storage node's own shards) do not go through gRPC.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_cluster::{NodeId, ShardId};
use spindle_schema::ipc::EncodedBatch;
use spindle_storage::{BlockMeta, TenantId};
use spindle_storage_api::grpc::GrpcStorageClient;
use spindle_storage_api::{ApiError, CompactionJob, CompactionPolicy, Push, ShardRead, ShardReadRequest, StorageApi};

use crate::watch::TopologyWatch;
use crate::Channels;

/// Deadlines of routed calls.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long a push may keep retrying before the client gets UNAVAILABLE.
    pub write_deadline: Duration,
    /// How long a read may keep retrying.
    pub read_deadline: Duration,
    /// Longest single attempt (a node that stopped answering is left after this).
    pub attempt_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            write_deadline: Duration::from_secs(15),
            read_deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// What the first attempt of a push came to ([`ShardRouter::push_once`]).
#[derive(Debug)]
pub enum Attempt {
    /// Stored (the rows), or failed for good.
    Done(Result<u64, ApiError>),
    /// Not stored yet: send it again with [`ShardRouter::push_one`].
    Retry(Push),
}

/// Sends shard calls to shard leaders.
pub struct ShardRouter {
    topology: TopologyWatch,
    local: Option<(NodeId, Arc<dyn StorageApi>)>,
    channels: Channels,
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    /// Nodes that failed or timed out lately, and when: tried last for a while.
    suspects: Mutex<HashMap<NodeId, Instant>>,
    config: RouterConfig,
}

/// How long a node that failed is tried only after every other replica.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// How long one attempt of a compaction call may take (a Raft commit and an index update in
/// the object store).
const LIFECYCLE_ATTEMPT: Duration = Duration::from_secs(30);

impl ShardRouter {
    /// A router following `topology`; calls to node `local.0` go to `local.1` in process.
    pub fn new(
        topology: TopologyWatch,
        local: Option<(NodeId, Arc<dyn StorageApi>)>,
        channels: Channels,
        config: RouterConfig,
    ) -> Self {
        Self {
            topology,
            local,
            channels,
            leaders: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// The topology it routes by.
    pub fn topology(&self) -> &TopologyWatch {
        &self.topology
    }

    /// Appends a batch to a shard; see [`StorageApi::push`].
    pub async fn push(&self, shard: ShardId, tenant: &TenantId, batch: EncodedBatch) -> Result<u64, ApiError> {
        self.push_one(Push::whole(shard, tenant.clone(), batch)).await
    }

    /// One push, retried across leader changes until the write deadline (a push that
    /// [`ShardRouter::push_once`] left to retry).
    pub async fn push_one(&self, push: Push) -> Result<u64, ApiError> {
        let shard = push.shard;
        self.call(shard, self.config.write_deadline, self.config.attempt_timeout, |api| {
            let push = push.clone();
            async move {
                let mut results = api.push_many(vec![push]).await;
                results.pop().unwrap_or_else(|| Err(ApiError::Internal("no result".into())))
            }
        })
        .await
    }

    /// The first attempt of pushes to their shards (see [`StorageApi::push_many`]): the pushes
    /// bound for the shards one node leads go to it in one call. The outcome of each, in order:
    /// settled, or to send again with [`ShardRouter::push_one`] (a leader moved, a node is down),
    /// after this call has learnt what the failure taught.
    pub async fn push_once(&self, pushes: Vec<Push>) -> Vec<Attempt> {
        let mut out: Vec<Option<Attempt>> = pushes.iter().map(|_| None).collect();
        let topology = self.topology.current();
        let mut by_node: HashMap<NodeId, Vec<(usize, Push)>> = HashMap::new();
        for (i, push) in pushes.into_iter().enumerate() {
            let replicas: Vec<NodeId> =
                topology.state.shards.get(&push.shard).map(|s| s.hosts().collect()).unwrap_or_default();
            match self.target(push.shard, &replicas, &mut 0) {
                Some(node) => by_node.entry(node).or_default().push((i, push)),
                None => out[i] = Some(Attempt::Retry(push)),
            }
        }
        let attempt = self.config.attempt_timeout;
        let calls = by_node.into_iter().map(|(node, pushes)| async move {
            let batch: Vec<Push> = pushes.iter().map(|(_, p)| p.clone()).collect();
            let results = match self.api(node) {
                Ok(api) => match tokio::time::timeout(attempt, api.push_many(batch)).await {
                    Ok(results) => results,
                    Err(_) => {
                        let e = ApiError::Unreachable(format!("node {node} did not answer within {attempt:?}"));
                        pushes.iter().map(|_| Err(e.clone())).collect()
                    }
                },
                Err(e) => pushes.iter().map(|_| Err(e.clone())).collect(),
            };
            (node, pushes, results)
        });
        for (node, pushes, results) in futures::future::join_all(calls).await {
            let mut results = results.into_iter();
            for (i, push) in pushes {
                let result = results.next().unwrap_or_else(|| Err(ApiError::Internal("missing result".into())));
                out[i] = Some(match result {
                    Ok(n) => {
                        self.set_leader(push.shard, Some(node));
                        Attempt::Done(Ok(n))
                    }
                    Err(e) if e.is_retryable() => {
                        // Learn what the call taught, as a single push would, before retrying.
                        match &e {
                            ApiError::NotLeader { leader: Some(hint), .. } if *hint != node => {
                                self.set_leader(push.shard, Some(*hint))
                            }
                            ApiError::NotLeader { .. } => self.set_leader(push.shard, None),
                            ApiError::Unreachable(_) => {
                                self.set_leader(push.shard, None);
                                self.suspect(node);
                            }
                            _ => {}
                        }
                        Attempt::Retry(push)
                    }
                    Err(e) => Attempt::Done(Err(e)),
                });
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Attempt::Done(Err(ApiError::Internal("a push got no result".into())))))
            .collect()
    }

    /// Reads a shard; see [`StorageApi::read`].
    pub async fn read(&self, request: ShardReadRequest) -> Result<ShardRead, ApiError> {
        let shard = request.shard;
        self.call(shard, self.config.read_deadline, self.config.attempt_timeout, |api| {
            let request = request.clone();
            async move { api.read(request).await }
        })
        .await
    }

    /// Asks a shard's leader to lease the next merge worth doing under `policy`.
    pub async fn plan_compaction(
        &self,
        shard: ShardId,
        policy: &CompactionPolicy,
    ) -> Result<Option<CompactionJob>, ApiError> {
        self.call(shard, self.config.read_deadline, LIFECYCLE_ATTEMPT, |api| {
            let policy = policy.clone();
            async move { api.plan_compaction(shard, policy).await }
        })
        .await
    }

    /// Hands a merged block to the shard's leader to swap in (retried across leader changes;
    /// a swap already made is reported as made).
    pub async fn commit_compaction(&self, job: &CompactionJob, output: &BlockMeta) -> Result<(), ApiError> {
        self.call(job.shard, self.config.read_deadline, LIFECYCLE_ATTEMPT, |api| {
            let (job, output) = (job.clone(), output.clone());
            async move { api.commit_compaction(job, output).await }
        })
        .await
    }

    fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.leaders.lock().unwrap_or_else(|e| e.into_inner()).get(&shard).copied()
    }

    fn set_leader(&self, shard: ShardId, node: Option<NodeId>) {
        let mut map = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        match node {
            Some(n) => map.insert(shard, n),
            None => map.remove(&shard),
        };
    }

    fn suspect(&self, node: NodeId) {
        self.suspects.lock().unwrap_or_else(|e| e.into_inner()).insert(node, Instant::now());
    }

    fn is_suspect(&self, node: NodeId) -> bool {
        let mut map = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        map.contains_key(&node)
    }

    /// The replica to try: the known leader, else the next replica in turn that has not failed
    /// lately (any replica when all have).
    fn target(&self, shard: ShardId, replicas: &[NodeId], turn: &mut usize) -> Option<NodeId> {
        if let Some(l) = self.leader(shard).filter(|l| !self.is_suspect(*l)) {
            let known =
                self.topology.current().addr(l).is_some() || self.local.as_ref().is_some_and(|(id, _)| *id == l);
            if known {
                return Some(l);
            }
        }
        if replicas.is_empty() {
            return None;
        }
        let healthy: Vec<NodeId> = replicas.iter().copied().filter(|r| !self.is_suspect(*r)).collect();
        let pool = if healthy.is_empty() { replicas } else { &healthy };
        *turn += 1;
        Some(pool[(*turn - 1) % pool.len()])
    }

    fn api(&self, node: NodeId) -> Result<Arc<dyn StorageApi>, ApiError> {
        if let Some((id, api)) = &self.local {
            if *id == node {
                return Ok(api.clone());
            }
        }
        let topology = self.topology.current();
        let addr =
            topology.addr(node).ok_or_else(|| ApiError::Unavailable(format!("node {node} is not in the topology")))?;
        let channel = self.channels.get(addr).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(Arc::new(GrpcStorageClient::new(channel)))
    }

    async fn call<T, F, Fut>(
        &self,
        shard: ShardId,
        deadline: Duration,
        attempt_timeout: Duration,
        f: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(Arc<dyn StorageApi>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let start = Instant::now();
        let mut failures = 0u32;
        let mut turn = 0usize;
        let mut last_error = ApiError::Unavailable(format!("shard {shard} is not in the topology yet"));
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(match last_error {
                    e @ (ApiError::Unavailable(_) | ApiError::Unreachable(_) | ApiError::NotLeader { .. }) => {
                        ApiError::Unavailable(format!(
                            "shard {shard}: no leader took the call within {deadline:?} (last: {e})"
                        ))
                    }
                    e => e,
                });
            }
            let topology = self.topology.current();
            let replicas: Vec<NodeId> =
                topology.state.shards.get(&shard).map(|s| s.hosts().collect()).unwrap_or_default();
            if let Some(target) = self.target(shard, &replicas, &mut turn) {
                let attempt = match self.api(target) {
                    Ok(api) => tokio::time::timeout(attempt_timeout.min(remaining), f(api)).await,
                    Err(e) => Ok(Err(ApiError::Unreachable(e.to_string()))),
                };
                match attempt {
                    Ok(Ok(value)) => {
                        self.set_leader(shard, Some(target));
                        return Ok(value);
                    }
                    Ok(Err(ApiError::NotLeader { leader: Some(hint), .. }))
                        if hint != target && !self.is_suspect(hint) && failures < 8 =>
                    {
                        // Straight to the leader the node named, without waiting.
                        self.set_leader(shard, Some(hint));
                        failures += 1;
                        last_error = ApiError::NotLeader { shard, leader: Some(hint) };
                        continue;
                    }
                    Ok(Err(e @ ApiError::NotLeader { .. })) => {
                        // The node knows no (reachable) leader: an election is probably under way.
                        tracing::debug!(shard, node = target, error = %e, elapsed = ?start.elapsed(), "no usable leader hint; waiting");
                        self.set_leader(shard, None);
                        last_error = e;
                        // Ask again soon: the new leader is usually known within an election.
                        tokio::time::sleep(jittered(100).min(deadline.saturating_sub(start.elapsed()))).await;
                        continue;
                    }
                    Ok(Err(e @ ApiError::Unreachable(_))) => {
                        tracing::debug!(shard, node = target, error = %e, "node unreachable; trying another replica");
                        self.set_leader(shard, None);
                        self.suspect(target);
                        last_error = e;
                    }
                    Ok(Err(e)) if e.is_retryable() => {
                        tracing::debug!(shard, node = target, error = %e, "shard call failed; retrying");
                        last_error = e;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        tracing::debug!(shard, node = target, "shard call timed out; trying another replica");
                        self.set_leader(shard, None);
                        self.suspect(target);
                        last_error =
                            ApiError::Unavailable(format!("node {target} did not answer within {attempt_timeout:?}"));
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(backoff(failures).min(deadline.saturating_sub(start.elapsed()))).await;
        }
    }
}

/// Exponential backoff from 20 ms to 500 ms, with jitter of ±50 %.
fn backoff(failures: u32) -> Duration {
    jittered(20u64.saturating_mul(1u64 << failures.min(5)).min(500))
}

/// `base_ms` give or take half of it, at random.
fn jittered(base_ms: u64) -> Duration {
    let jitter = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(base_ms);
        h.finish() % 1000
    };
    Duration::from_millis(base_ms / 2 + base_ms * jitter / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        assert!(backoff(1) <= Duration::from_millis(60));
        for f in 0..50 {
            let b = backoff(f);
            assert!(b >= Duration::from_millis(10) && b <= Duration::from_millis(750), "{b:?}");
        }
    }
}
