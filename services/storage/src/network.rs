//! Raft networking of a shard whose group has a single voter (all-in-one mode).
//!
//! A one-member group never sends Raft RPCs: the leader commits alone. This network answers
//! every call with `Unreachable` so a misconfigured multi-member group fails loudly instead of
//! pretending. Multi-node groups use the `Raft` gRPC service in `proto/` (cluster mode).

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use crate::raft_types::TypeConfig;

/// Network factory for single-voter groups.
#[derive(Debug, Clone, Default)]
pub struct SingleVoterNetwork;

/// Connection handed out by [`SingleVoterNetwork`].
#[derive(Debug)]
pub struct NoPeer {
    target: u64,
}

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        let e = std::io::Error::other(format!(
            "node {} is not reachable: this shard runs as a single-voter group (all-in-one mode)",
            self.target
        ));
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleVoterNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
