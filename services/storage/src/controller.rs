//! The controller: runs on every storage node, acts only on the metadata leader.
//!
//! Each second it
//! 1. keeps the metadata group's membership right: every registered node a member (learner),
//!    up to three active nodes voters, nodes that left removed;
//! 2. starts the next replica moves
//!    (`spindle_cluster::placement`), at most [`MAX_MOVES`] at once; the shard's leader
//!    carries each out and records it;
//! 3. marks draining nodes that hold nothing any more as `Left`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use spindle_cluster::placement::{drain_blocker, next_moves};
use spindle_cluster::{MetaCommand, NodeId, NodeState};

use crate::node::{StorageNode, MAX_MOVES};
use crate::NodeError;

/// Voters of the metadata group when there are enough active nodes.
pub const META_VOTERS: usize = 3;

/// Runs the controller until the node stops.
pub async fn run(node: Arc<StorageNode>) {
    let mut stop = node.stopped();
    let mut last_warning = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.is_meta_leader() {
            continue;
        }
        match step(&node).await {
            Ok(Some(warning)) if warning != last_warning => {
                tracing::warn!("{warning}");
                last_warning = warning;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "controller step failed; retrying"),
        }
    }
}

async fn propose(node: &StorageNode, command: MetaCommand) -> Result<(), NodeError> {
    tracing::info!(command = ?command, "controller");
    if let Err(refused) = node.propose_meta(command, 0).await? {
        tracing::info!(reason = %refused, "controller command refused");
    }
    Ok(())
}

/// One round; returns a warning worth logging once (a drain that cannot finish).
async fn step(node: &StorageNode) -> Result<Option<String>, NodeError> {
    let state = node.state();
    if !state.is_bootstrapped() {
        return Ok(None);
    }
    meta_membership(node).await?;

    // A move whose target stopped being active is ended by the shard's leader, which knows
    // whether the target already votes (see `StorageNode::try_move`).
    let moving = state.shards.values().filter(|s| s.moving.is_some()).count();
    for (shard, mv) in next_moves(&state, MAX_MOVES.saturating_sub(moving)) {
        propose(node, MetaCommand::StartMove { shard, mv }).await?;
    }

    let voters: BTreeSet<NodeId> =
        node.meta_raft().metrics().borrow().membership_config.membership().voter_ids().collect();
    let mut warning = None;
    for n in state.nodes.values().filter(|n| n.state == NodeState::Leaving) {
        if state.shards_hosted_by(n.id).next().is_none() && !voters.contains(&n.id) {
            propose(node, MetaCommand::SetNodeState { id: n.id, state: NodeState::Left }).await?;
        } else if let Some(why) = drain_blocker(&state, n.id) {
            warning = Some(format!("drain of node {} cannot finish: {why}", n.id));
        }
    }
    Ok(warning)
}

/// Registered nodes are members; up to [`META_VOTERS`] active ones vote; nodes that left go.
async fn meta_membership(node: &StorageNode) -> Result<(), NodeError> {
    let state = node.state();
    let raft = node.meta_raft();
    let membership = raft.metrics().borrow().membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();

    for n in state.nodes.values().filter(|n| n.state != NodeState::Left && !members.contains(&n.id)) {
        tracing::info!(node = n.id, addr = %n.addr, "adding node to the metadata group");
        raft.add_learner(n.id, BasicNode::new(n.addr.clone()), false).await.map_err(NodeError::raft)?;
    }

    // An odd number of voters: one until there are three active nodes, then three. Current
    // voters that are still active keep their vote.
    let active: Vec<NodeId> = state.active_nodes().map(|n| n.id).collect();
    let target = if active.len() >= META_VOTERS { META_VOTERS } else { 1 };
    let mut order: Vec<NodeId> = active.iter().copied().filter(|a| voters.contains(a)).collect();
    order.extend(active.iter().copied().filter(|a| !voters.contains(a)));
    let desired: BTreeSet<NodeId> = order.into_iter().take(target).collect();
    if !desired.is_empty() && desired != voters {
        tracing::info!(voters = ?desired, "changing the metadata group's voters");
        // Demoted voters stay as learners, so they keep following the metadata.
        raft.change_membership(desired, true).await.map_err(NodeError::raft)?;
    }

    let left: BTreeSet<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Left && members.contains(&n.id) && !voters.contains(&n.id))
        .map(|n| n.id)
        .collect();
    if !left.is_empty() {
        tracing::info!(nodes = ?left, "removing drained nodes from the metadata group");
        raft.change_membership(ChangeMembers::RemoveNodes(left), false).await.map_err(NodeError::raft)?;
    }
    Ok(())
}
