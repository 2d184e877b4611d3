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
    for addr in &candidates {
        let client = ControlClient::new(&channels, addr)?;
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
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for addr in &candidates {
            let Ok(Some(state)) = ControlClient::new(&channels, addr)?.topology(0).await else {
                continue;
            };
            let node = state.nodes.get(&id).with_context(|| format!("node {id} is not in the cluster"))?;
            if node.state == NodeState::Left {
                println!("node {id} has left the cluster; it can be stopped");
                return Ok(());
            }
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
