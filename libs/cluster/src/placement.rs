//! Replica placement: the next moves that bring the cluster to its goal.
//!
//! The goal, in order of urgency:
//! 1. no replica on a node that is not active (draining or gone);
//! 2. every shard has `replication_factor` replicas (when there are enough active nodes);
//! 3. active nodes hold an even share: the most and least loaded differ by at most one.
//!
//! Each move adds one replica to one node and, for 1 and 3, removes one from another. Shards
//! that are moving or not initialized yet are left alone.

use std::collections::BTreeMap;

use crate::state::{ClusterState, Move, NodeState};
use crate::{NodeId, ShardId};

/// Up to `max` moves, each on a different shard, that the controller should start now.
pub fn next_moves(state: &ClusterState, max: usize) -> Vec<(ShardId, Move)> {
    let active: Vec<NodeId> = state.active_nodes().map(|n| n.id).collect();
    if active.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<NodeId, usize> = state.load().into_iter().filter(|(n, _)| active.contains(n)).collect();
    let rf = state.config.replication_factor as usize;
    let mut moves = Vec::new();
    let movable = |s: &crate::ShardInfo| s.initialized && s.moving.is_none();

    // The least loaded active node that does not hold the shard yet.
    let pick = |load: &BTreeMap<NodeId, usize>, replicas: &[NodeId]| {
        load.iter().filter(|(n, _)| !replicas.contains(n)).min_by_key(|(n, l)| (**l, **n)).map(|(n, _)| *n)
    };

    for shard in state.shards.values().filter(|s| movable(s)) {
        if moves.len() >= max {
            return moves;
        }
        let inactive = shard.replicas.iter().copied().find(|r| !active.contains(r));
        let mv = match inactive {
            Some(gone) => pick(&load, &shard.replicas).map(|add| Move { add, remove: Some(gone) }),
            None if shard.replicas.len() < rf => pick(&load, &shard.replicas).map(|add| Move { add, remove: None }),
            None => None,
        };
        if let Some(mv) = mv {
            *load.entry(mv.add).or_default() += 1;
            moves.push((shard.id, mv));
        }
    }

    let busy: Vec<ShardId> = moves.iter().map(|(s, _)| *s).collect();
    while moves.len() < max {
        let Some((&most, &hi)) = load.iter().max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n))) else {
            break;
        };
        let Some((&least, &lo)) = load.iter().min_by_key(|(n, l)| (**l, **n)) else {
            break;
        };
        if hi <= lo + 1 {
            break;
        }
        let candidate = state.shards.values().find(|s| {
            movable(s)
                && !busy.contains(&s.id)
                && !moves.iter().any(|(m, _)| *m == s.id)
                && s.replicas.contains(&most)
                && !s.replicas.contains(&least)
        });
        let Some(shard) = candidate else { break };
        *load.entry(least).or_default() += 1;
        *load.entry(most).or_default() -= 1;
        moves.push((shard.id, Move { add: least, remove: Some(most) }));
    }
    moves
}

/// Why a draining node cannot be emptied, if it cannot: fewer active nodes than the
/// replication factor leaves nowhere to put its replicas.
pub fn drain_blocker(state: &ClusterState, node: NodeId) -> Option<String> {
    let active = state.active_nodes().count();
    let rf = state.config.replication_factor as usize;
    let holds = state.shards_hosted_by(node).count();
    let leaving = state.nodes.get(&node).is_some_and(|n| n.state != NodeState::Active);
    (leaving && holds > 0 && active < rf).then(|| {
        format!("node {node} holds {holds} replicas but only {active} active nodes remain for replication factor {rf}")
    })
}

/// The replica that should lead each shard: every shard to one of its active replicas, the
/// same answer on every node for the same state, and as even as the placement allows (shards
/// taken in order, each to the replica that has been given the fewest so far; ties go round by
/// shard id, so equal placements do not all pick the lowest node id). A shard's group is started
/// by its preferred replica, and a leader that is not preferred hands leadership over once the
/// preferred one has caught up: leadership ends up spread after bootstrap, restarts and moves.
pub fn preferred_leaders(state: &ClusterState) -> BTreeMap<ShardId, NodeId> {
    let active = |n: &NodeId| state.nodes.get(n).is_some_and(|i| i.state == NodeState::Active);
    let mut given: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (id, info) in &state.shards {
        let mut candidates: Vec<NodeId> = info.replicas.iter().copied().filter(active).collect();
        if candidates.is_empty() {
            candidates = info.replicas.clone();
        }
        if candidates.is_empty() {
            continue;
        }
        let turn = *id as usize % candidates.len();
        candidates.rotate_left(turn);
        let pick = candidates.iter().copied().min_by_key(|n| given.get(n).copied().unwrap_or(0));
        if let Some(node) = pick {
            *given.entry(node).or_default() += 1;
            out.insert(*id, node);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::bootstrapped;
    use crate::MetaCommand;

    fn finish(s: &mut ClusterState, moves: &[(ShardId, Move)]) {
        for (shard, mv) in moves {
            s.apply(&MetaCommand::StartMove { shard: *shard, mv: *mv }).unwrap();
            let mut replicas: Vec<NodeId> =
                s.shards[shard].replicas.iter().copied().filter(|r| Some(*r) != mv.remove).collect();
            replicas.push(mv.add);
            s.apply(&MetaCommand::FinishMove { shard: *shard, mv: *mv, replicas }).unwrap();
        }
    }

    fn initialized(mut s: ClusterState) -> ClusterState {
        let ids: Vec<ShardId> = s.shards.keys().copied().collect();
        for id in ids {
            s.apply(&MetaCommand::ShardInitialized { shard: id }).unwrap();
        }
        s
    }

    #[test]
    fn balanced_cluster_needs_no_moves() {
        let s = initialized(bootstrapped(&[1, 2, 3], 4, 3));
        assert!(next_moves(&s, 8).is_empty());
    }

    #[test]
    fn a_new_node_gets_its_share() {
        let mut s = initialized(bootstrapped(&[1, 2, 3], 4, 3));
        s.apply(&MetaCommand::RegisterNode { id: 4, addr: "d:1".into() }).unwrap();
        for _ in 0..10 {
            let moves = next_moves(&s, 1);
            if moves.is_empty() {
                break;
            }
            finish(&mut s, &moves);
        }
        let load = s.load();
        assert_eq!(load.values().sum::<usize>(), 12);
        assert!(load.values().all(|l| *l == 3), "{load:?}");
        assert!(s.shards.values().all(|sh| sh.replicas.len() == 3));
    }

    #[test]
    fn draining_moves_everything_off_and_keeps_rf() {
        let mut s = initialized(bootstrapped(&[1, 2, 3, 4], 4, 3));
        s.apply(&MetaCommand::SetNodeState { id: 2, state: NodeState::Leaving }).unwrap();
        for _ in 0..10 {
            let moves = next_moves(&s, 2);
            if moves.is_empty() {
                break;
            }
            finish(&mut s, &moves);
        }
        assert_eq!(s.shards_hosted_by(2).count(), 0);
        assert!(s.shards.values().all(|sh| sh.replicas.len() == 3 && !sh.replicas.contains(&2)));
        assert_eq!(drain_blocker(&s, 2), None);
    }

    #[test]
    fn drain_without_room_is_reported() {
        let mut s = initialized(bootstrapped(&[1, 2, 3], 2, 3));
        s.apply(&MetaCommand::SetNodeState { id: 3, state: NodeState::Leaving }).unwrap();
        assert!(next_moves(&s, 4).is_empty());
        assert!(drain_blocker(&s, 3).unwrap().contains("only 2 active nodes"));
    }

    #[test]
    fn preferred_leaders_are_even_and_the_same_everywhere() {
        for (nodes, shards) in [(vec![1, 2, 3], 8), (vec![1, 2, 3, 4, 5, 6], 16), (vec![1, 2, 3, 4], 5)] {
            let s = initialized(bootstrapped(&nodes, shards, 3));
            let preferred = preferred_leaders(&s);
            assert_eq!(preferred.len(), shards as usize);
            for (shard, node) in &preferred {
                assert!(s.shards[shard].replicas.contains(node));
            }
            let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
            for node in preferred.values() {
                *counts.entry(*node).or_default() += 1;
            }
            let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
            assert!(max - min <= 1, "{nodes:?} x {shards}: {counts:?}");
            assert_eq!(preferred_leaders(&s.clone()), preferred);
        }
    }
}
