//! The current topology, kept up to date.
//!
//! Storage nodes hold the metadata group themselves and publish every applied change; ingesters
//! and queriers poll any storage node (the seeds first, then every node they learned of) with
//! the version they know, and get the state back only when it changed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_cluster::Topology;
use tokio::sync::watch;

use crate::{Channels, ControlClient};

/// A topology that follows the cluster.
#[derive(Debug, Clone)]
pub struct TopologyWatch {
    rx: watch::Receiver<Arc<Topology>>,
    /// Last successful poll, for a remote watch (`None` inside a storage node).
    contact: Option<Arc<Mutex<Option<Instant>>>>,
}

impl TopologyWatch {
    /// A watch on a topology published in this process (by a storage node's metadata group).
    pub fn local(rx: watch::Receiver<Arc<Topology>>) -> Self {
        Self { rx, contact: None }
    }

    /// Polls the cluster's storage nodes every `interval`, starting from `seeds` (`host:port`
    /// of their internal API). Stops when every clone of the watch is dropped.
    pub fn remote(seeds: Vec<String>, channels: Channels, interval: Duration) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Topology::empty()));
        let contact = Arc::new(Mutex::new(None));
        tokio::spawn(poll(seeds, channels, interval, tx, contact.clone()));
        Self { rx, contact: Some(contact) }
    }

    /// The topology now.
    pub fn current(&self) -> Arc<Topology> {
        self.rx.borrow().clone()
    }

    /// A receiver to wait for changes.
    pub fn receiver(&self) -> watch::Receiver<Arc<Topology>> {
        self.rx.clone()
    }

    /// Whether the metadata was reached within `max_age` (always true inside a storage node).
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        match &self.contact {
            None => true,
            Some(c) => c.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t.elapsed() <= max_age),
        }
    }
}

async fn poll(
    seeds: Vec<String>,
    channels: Channels,
    interval: Duration,
    tx: watch::Sender<Arc<Topology>>,
    contact: Arc<Mutex<Option<Instant>>>,
) {
    let mut preferred: Option<String> = None;
    let mut warned = false;
    while !tx.is_closed() {
        let current = tx.borrow().clone();
        let mut candidates: Vec<String> = preferred.iter().cloned().collect();
        for addr in seeds.iter().cloned().chain(current.state.nodes.values().map(|n| n.addr.clone())) {
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        let mut reached = false;
        for addr in &candidates {
            let client = match ControlClient::new(&channels, addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unusable seed");
                    continue;
                }
            };
            match client.topology(current.version()).await {
                Ok(update) => {
                    if let Some(state) = update.filter(|s| s.version > current.version()) {
                        tracing::info!(version = state.version, from = %addr, "topology updated");
                        tx.send_replace(Arc::new(Topology::new(state)));
                    }
                    *contact.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    preferred = Some(addr.clone());
                    reached = true;
                    warned = false;
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "topology poll failed"),
            }
        }
        if !reached && !warned {
            tracing::warn!(candidates = ?candidates, "no storage node answered a topology request; retrying");
            warned = true;
        }
        tokio::time::sleep(interval).await;
    }
}
