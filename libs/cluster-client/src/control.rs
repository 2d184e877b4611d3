//! The control-plane client (`Cluster` service).

use std::time::Duration;

use spindle_auth::cluster::InternalChannel;
use spindle_cluster::{ClusterState, MetaCommand, MetaError, NodeId};
use spindle_proto::storage::cluster_client::ClusterClient;
use spindle_proto::storage::{
    CampaignRequest, HelloRequest, MetaReadIndexRequest, ProposeMetaRequest, TopologyRequest,
};

use crate::{Channels, ClientError};

/// Longest a control-plane call may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Its node id.
    pub node_id: NodeId,
    /// Its internal address.
    pub addr: String,
    /// Whether its metadata group is initialized.
    pub meta_initialized: bool,
    /// The cluster id, once bootstrapped.
    pub cluster_id: String,
    /// The incarnation of its data directory (0 from nodes of older versions).
    pub incarnation: u64,
}

/// Calls the `Cluster` service of one node.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: String,
    client: ClusterClient<InternalChannel>,
}

impl ControlClient {
    /// A client for the node at `addr`.
    pub fn new(channels: &Channels, addr: &str) -> Result<Self, ClientError> {
        Ok(Self { addr: addr.to_string(), client: ClusterClient::new(channels.get(addr)?) })
    }

    fn rpc(&self, source: tonic::Status) -> ClientError {
        ClientError::Rpc { addr: self.addr.clone(), source }
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(CONTROL_TIMEOUT);
        r
    }

    /// Who the node is.
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        let r = self.client.clone().hello(Self::request(HelloRequest {})).await.map_err(|s| self.rpc(s))?.into_inner();
        Ok(Hello {
            node_id: r.node_id,
            addr: r.addr,
            meta_initialized: r.meta_initialized,
            cluster_id: r.cluster_id,
            incarnation: r.incarnation,
        })
    }

    /// The node's view of the cluster state, if newer than `known_version`.
    pub async fn topology(&self, known_version: u64) -> Result<Option<ClusterState>, ClientError> {
        let r = self
            .client
            .clone()
            .get_topology(Self::request(TopologyRequest { known_version }))
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        if r.state_json.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&r.state_json)
            .map(Some)
            .map_err(|source| ClientError::Decode { addr: self.addr.clone(), source })
    }

    /// Proposes a metadata command through this node (which forwards it to the metadata
    /// leader). The outer error is the call's; the inner one the state's refusal.
    pub async fn propose(&self, command: &MetaCommand, hops: u32) -> Result<Result<(), MetaError>, ClientError> {
        let command_json =
            serde_json::to_string(command).map_err(|source| ClientError::Decode { addr: self.addr.clone(), source })?;
        let r = self
            .client
            .clone()
            .propose_meta(Self::request(ProposeMetaRequest { command_json, hops }))
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        if r.refused_json.is_empty() {
            return Ok(Ok(()));
        }
        let refused: MetaError = serde_json::from_str(&r.refused_json)
            .map_err(|source| ClientError::Decode { addr: self.addr.clone(), source })?;
        Ok(Err(refused))
    }

    /// Asks the node to stand for election as leader of `shard` now (a leadership hand-over).
    pub async fn campaign(&self, shard: u32) -> Result<(), ClientError> {
        self.client.clone().campaign(Self::request(CampaignRequest { shard })).await.map_err(|s| self.rpc(s))?;
        Ok(())
    }

    /// The metadata leader's read index (called on the leader).
    pub async fn meta_read_index(&self) -> Result<u64, ClientError> {
        let r = self
            .client
            .clone()
            .meta_read_index(Self::request(MetaReadIndexRequest {}))
            .await
            .map_err(|s| self.rpc(s))?;
        Ok(r.into_inner().index)
    }
}
