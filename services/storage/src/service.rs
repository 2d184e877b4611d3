//! The control plane over gRPC (`Cluster` service): who a node is, the topology, metadata
//! proposals (forwarded to the metadata leader) and the metadata read index.

use std::sync::Arc;

use spindle_cluster::MetaCommand;
use spindle_proto::storage::cluster_server::{Cluster, ClusterServer};
use spindle_proto::storage::{
    CampaignRequest, CampaignResponse, HelloRequest, HelloResponse, MetaReadIndexRequest, MetaReadIndexResponse,
    ProposeMetaRequest, ProposeMetaResponse, TopologyRequest, TopologyResponse,
};
use tonic::{Request, Response, Status};

use crate::node::StorageNode;
use crate::NodeError;

/// Serves the `Cluster` service of a storage node.
pub struct ClusterService {
    node: Arc<StorageNode>,
}

impl ClusterService {
    /// The tonic service.
    pub fn service(node: Arc<StorageNode>) -> ClusterServer<Self> {
        ClusterServer::new(Self { node })
    }
}

fn unavailable(e: NodeError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn hello(&self, _request: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let h = self.node.hello().await;
        Ok(Response::new(HelloResponse {
            node_id: h.node_id,
            addr: h.addr,
            meta_initialized: h.meta_initialized,
            cluster_id: h.cluster_id,
            incarnation: h.incarnation,
        }))
    }

    async fn get_topology(&self, request: Request<TopologyRequest>) -> Result<Response<TopologyResponse>, Status> {
        let known = request.into_inner().known_version;
        let state = self.node.state();
        let state_json = if state.version > known {
            serde_json::to_string(state.as_ref())
                .map_err(|e| Status::internal(format!("encoding the cluster state: {e}")))?
        } else {
            String::new()
        };
        Ok(Response::new(TopologyResponse { version: state.version, state_json }))
    }

    async fn propose_meta(
        &self,
        request: Request<ProposeMetaRequest>,
    ) -> Result<Response<ProposeMetaResponse>, Status> {
        let r = request.into_inner();
        let command: MetaCommand = serde_json::from_str(&r.command_json)
            .map_err(|e| Status::invalid_argument(format!("undecodable metadata command: {e}")))?;
        let verdict = self.node.propose_meta(command, r.hops).await.map_err(unavailable)?;
        let refused_json = match verdict {
            Ok(()) => String::new(),
            Err(refused) => serde_json::to_string(&refused).map_err(|e| Status::internal(e.to_string()))?,
        };
        Ok(Response::new(ProposeMetaResponse { refused_json }))
    }

    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let shard = request.into_inner().shard;
        let s = self.node.shard(shard).ok_or_else(|| Status::not_found(format!("shard {shard} is not hosted here")))?;
        s.raft().trigger().elect().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignResponse {}))
    }

    async fn meta_read_index(
        &self,
        _request: Request<MetaReadIndexRequest>,
    ) -> Result<Response<MetaReadIndexResponse>, Status> {
        let index = self.node.meta_read_index().await.map_err(unavailable)?;
        Ok(Response::new(MetaReadIndexResponse { index }))
    }
}
