//! `spindle storage --leave`: drains a storage node and waits until it holds nothing.

use std::time::Duration;

use anyhow::{bail, Context};
use spindle_cluster::{MetaCommand, MetaError, NodeState};
use spindle_cluster_client::ControlClient;

use crate::config::Config;

/// Asks the cluster (through the seeds or the node itself) to drain `--node-id`, then reports
/// progress until the node has left.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let channels = crate::listeners::channels(&config, crate::listeners::cluster_tls(&config)?)?;
    let id = config.node_id;
    let mut candidates = config.seeds.clone();
    candidates.push(config.advertise_addr.clone());
    candidates.dedup();
    let drain = MetaCommand::SetNodeState { id, state: NodeState::Leaving };
    let mut asked = false;
    let mut on_record = None;
    for addr in &candidates {
        let client = ControlClient::new(&channels, addr)?;
        if let Ok(Some(state)) = client.topology(0).await {
            on_record = state.incarnations.get(&id).copied();
        }
        match client.propose(&drain, 0).await {
            Ok(Ok(())) => {
                asked = true;
                break;
            }
            Ok(Err(MetaError::BadTransition { why, .. })) if why.contains("has left") => {
                println!("node {id} has already left the cluster");
                return Ok(());
            }
            Ok(Err(refused)) => bail!("the cluster refused to drain node {id}: {refused}"),
            Err(e) => tracing::warn!(error = %e, "could not reach {addr}"),
        }
    }
    if !asked {
        bail!("no storage node answered at {candidates:?}");
    }
    println!("draining node {id}: its replicas move to other nodes");
    let mut last = String::new();
    // The data directory on record when the drain started: a node that lost its data waits
    // for the drain and joins as new as soon as the old member has left, so another one (or
    // none yet) on record also means the old member left.
    let mut draining: Option<Option<u64>> = on_record.map(Some);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for addr in &candidates {
            let Ok(Some(state)) = ControlClient::new(&channels, addr)?.topology(0).await else {
                continue;
            };
            let node = state.nodes.get(&id).with_context(|| format!("node {id} is not in the cluster"))?;
            let incarnation = state.incarnations.get(&id).copied();
            let replaced = draining.is_some_and(|d| d.is_some() && d != incarnation);
            if node.state == NodeState::Left || replaced {
                println!("node {id} has left the cluster; it can be stopped");
                if replaced {
                    println!("(a node with a new data directory has joined under id {id} since)");
                }
                return Ok(());
            }
            if node.state == NodeState::Active && draining.is_some() {
                bail!("the drain of node {id} was cancelled (the node is active again)");
            }
            draining.get_or_insert(incarnation);
            let held = state.shards_hosted_by(id).count();
            let progress = match spindle_cluster::placement::drain_blocker(&state, id) {
                Some(why) => format!("waiting: {why}"),
                None => format!("{held} replicas left on node {id}"),
            };
            if progress != last {
                println!("{progress}");
                last = progress;
            }
            break;
        }
    }
}
