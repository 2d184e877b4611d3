//! The metadata group's state machine: the [`ClusterState`], published to the rest of the
//! process as a [`Topology`] every time an applied command changes it. Snapshots are the whole
//! state (a few kilobytes).

use std::io::{self, Cursor};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta};
use serde::{Deserialize, Serialize};
use spindle_cluster::{ClusterState, Topology};
use tokio::sync::watch;

use crate::raft_types::{LogId, Membership, MetaResponse, MetaTypes, StorageError};
use crate::snapshot_store::{snap_err, SnapshotStore};

#[derive(Default)]
struct Inner {
    last_applied: Option<LogId>,
    membership: Membership,
    state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    state: ClusterState,
}

/// The metadata state machine.
pub struct MetaStateMachine {
    inner: Arc<Mutex<Inner>>,
    snapshots: SnapshotStore,
    topology: watch::Sender<Arc<Topology>>,
}

impl MetaStateMachine {
    /// Opens the state machine in `dir` (restoring its snapshot) and publishes its topology.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (topology, _) = watch::channel(Arc::new(Topology::empty()));
        let sm = Self { inner: Arc::default(), snapshots: SnapshotStore::new(&dir.join("snapshot.json")), topology };
        if let Some(bytes) = sm.snapshots.read()? {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
            sm.snapshots.loaded(file.meta.last_log_id);
            sm.restore(file);
        }
        Ok(sm)
    }

    /// The topology, updated on every change.
    pub fn topology(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: &ClusterState) {
        if self.topology.borrow().version() != state.version || state.version == 0 {
            self.topology.send_replace(Arc::new(Topology::new(state.clone())));
        }
    }

    fn restore(&self, file: SnapshotFile) {
        let mut inner = self.lock();
        inner.last_applied = file.meta.last_log_id;
        inner.membership = file.meta.last_membership;
        inner.state = file.state;
        self.publish(&inner.state);
    }
}

impl RaftSnapshotBuilder<MetaTypes> for MetaStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<MetaTypes>, StorageError> {
        let file = {
            let inner = self.lock();
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: format!("{}-{}", inner.last_applied.map_or(0, |l| l.index), inner.state.version),
            };
            SnapshotFile { meta, state: inner.state.clone() }
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let bytes = self
            .snapshots
            .save_blocking(file.meta.last_log_id, bytes)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<MetaTypes> for MetaStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<MetaTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut inner = self.lock();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => MetaResponse::default(),
                EntryPayload::Normal(command) => match inner.state.apply(&command) {
                    Ok(()) => MetaResponse::default(),
                    Err(refused) => {
                        tracing::info!(command = ?command, reason = %refused, "metadata command refused");
                        MetaResponse { refused: Some(refused) }
                    }
                },
                EntryPayload::Membership(m) => {
                    inner.membership = Membership::new(Some(entry.log_id), m);
                    MetaResponse::default()
                }
            };
            responses.push(response);
        }
        self.publish(&inner.state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self { inner: self.inner.clone(), snapshots: self.snapshots.clone(), topology: self.topology.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut file: SnapshotFile =
            serde_json::from_slice(snapshot.get_ref()).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        file.meta = meta.clone();
        let bytes = serde_json::to_vec(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.snapshots.save_blocking(file.meta.last_log_id, bytes).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.restore(file);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<MetaTypes>>, StorageError> {
        let Some(bytes) = self.snapshots.read_blocking().await.map_err(|e| snap_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}
