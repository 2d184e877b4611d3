//! Raft traffic over gRPC: every group of every node shares one `Raft` service per node and
//! one channel per peer, and messages carry their group id.
//!
//! [`GrpcNetwork`] is the client openraft uses to reach a group's members; [`RaftService`]
//! serves the calls a node receives and hands each to the group it names. Bodies are openraft's
//! own request and response types, bincode-encoded. A group a node does not host (yet) answers
//! `NOT_FOUND`, which the sender treats as unreachable and backs off from.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spindle_cluster::{ShardId, META_GROUP};
use spindle_cluster_client::Channels;
use spindle_proto::storage::raft_client::RaftClient;
use spindle_proto::storage::raft_server::{Raft as RaftRpc, RaftServer};
use spindle_proto::storage::RaftPayload;
use tonic::{Code, Request, Response, Status};

use crate::raft_types::{MetaTypes, ShardTypes};

/// Largest Raft message (AppendEntries reads are capped well below it).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// What a Raft type configuration must be to travel over [`GrpcNetwork`].
pub trait WireTypes: RaftTypeConfig<NodeId = u64, Node = BasicNode> {}

impl<C: RaftTypeConfig<NodeId = u64, Node = BasicNode>> WireTypes for C {}

/// Failures of the Raft transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer's address is unusable.
    #[error(transparent)]
    Address(#[from] spindle_cluster_client::ClientError),
    /// The call failed.
    #[error("raft rpc to {addr}: {status}")]
    Rpc {
        /// Peer address.
        addr: String,
        /// What came back.
        status: Status,
    },
    /// A body could not be encoded or decoded.
    #[error("raft message encoding: {0}")]
    Codec(#[from] bincode::Error),
}

/// Network factory of one group.
pub struct GrpcNetwork<C> {
    group: u32,
    channels: Channels,
    _types: PhantomData<fn() -> C>,
}

impl<C> GrpcNetwork<C> {
    /// The network of group `group` (a shard id or [`META_GROUP`]).
    pub fn new(group: u32, channels: Channels) -> Self {
        Self { group, channels, _types: PhantomData }
    }
}

/// A connection to one member of a group.
pub struct GrpcPeer<C> {
    target: u64,
    addr: String,
    group: u32,
    channels: Channels,
    _types: PhantomData<fn() -> C>,
}

impl<C: WireTypes> RaftNetworkFactory<C> for GrpcNetwork<C> {
    type Network = GrpcPeer<C>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcPeer<C> {
        GrpcPeer {
            target,
            addr: node.addr.clone(),
            group: self.group,
            channels: self.channels.clone(),
            _types: PhantomData,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl<C: WireTypes> GrpcPeer<C> {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: Kind,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, TransportError> {
        let body = Bytes::from(bincode::serialize(request)?);
        let mut client = RaftClient::new(self.channels.get(&self.addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut req = Request::new(RaftPayload { group: self.group, body });
        req.set_timeout(ttl);
        let reply = match kind {
            Kind::Append => client.append_entries(req).await,
            Kind::Vote => client.vote(req).await,
            Kind::Snapshot => client.install_snapshot(req).await,
        }
        .map_err(|status| TransportError::Rpc { addr: self.addr.clone(), status })?;
        Ok(bincode::deserialize(&reply.into_inner().body)?)
    }

    fn rpc_error<E: std::error::Error>(&self, e: TransportError) -> RPCError<u64, BasicNode, E> {
        match &e {
            TransportError::Rpc { status, .. }
                if matches!(status.code(), Code::Unavailable | Code::NotFound | Code::Unknown | Code::Cancelled) =>
            {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl<C: WireTypes> RaftNetwork<C> for GrpcPeer<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let reply: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            self.call(Kind::Append, &rpc, option.hard_ttl()).await.map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let reply: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
            self.call(Kind::Snapshot, &rpc, option.hard_ttl()).await.map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let reply: Result<VoteResponse<u64>, RaftError<u64>> =
            self.call(Kind::Vote, &rpc, option.hard_ttl()).await.map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}

/// The groups a node hosts, as the Raft service finds them.
#[async_trait::async_trait]
pub trait RaftGroups: Send + Sync + 'static {
    /// The metadata group, once opened.
    fn meta(&self) -> Option<Raft<MetaTypes>>;
    /// A data shard's group, if hosted here (opened on the spot if this node is to host it
    /// but has not opened it yet: a new group's first votes can arrive before that).
    async fn shard(&self, id: ShardId) -> Option<Raft<ShardTypes>>;
}

/// Serves Raft calls for every group of a node.
pub struct RaftService {
    groups: Arc<dyn RaftGroups>,
}

impl RaftService {
    /// The tonic service.
    pub fn service(groups: Arc<dyn RaftGroups>) -> RaftServer<Self> {
        RaftServer::new(Self { groups })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }

    async fn dispatch(&self, kind: Kind, payload: RaftPayload) -> Result<Response<RaftPayload>, Status> {
        let group = payload.group;
        let body = if group == META_GROUP {
            let raft =
                self.groups.meta().ok_or_else(|| Status::not_found("the metadata group is not open on this node"))?;
            handle(&raft, kind, &payload.body).await?
        } else {
            let raft = self
                .groups
                .shard(group)
                .await
                .ok_or_else(|| Status::not_found(format!("shard {group} is not hosted on this node")))?;
            handle(&raft, kind, &payload.body).await?
        };
        Ok(Response::new(RaftPayload { group, body: Bytes::from(body) }))
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    bincode::deserialize(body).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(value).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

async fn handle<C: WireTypes>(raft: &Raft<C>, kind: Kind, body: &[u8]) -> Result<Vec<u8>, Status> {
    match kind {
        Kind::Append => encode(&raft.append_entries(decode::<AppendEntriesRequest<C>>(body)?).await),
        Kind::Vote => encode(&raft.vote(decode::<VoteRequest<u64>>(body)?).await),
        Kind::Snapshot => encode(&raft.install_snapshot(decode::<InstallSnapshotRequest<C>>(body)?).await),
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.dispatch(Kind::Append, request.into_inner()).await
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.dispatch(Kind::Vote, request.into_inner()).await
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.dispatch(Kind::Snapshot, request.into_inner()).await
    }
}
