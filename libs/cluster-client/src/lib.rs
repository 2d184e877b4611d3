//! How every role reaches the cluster.
//!
//! - [`channels::Channels`]: one lazily connected gRPC channel per node address, shared by
//!   every call to that node (data, control and Raft traffic).
//! - [`control::ControlClient`]: the `Cluster` service (hello, topology, metadata proposals).
//! - [`watch`]: a topology that follows the metadata group by polling any storage node.
//! - [`router::ShardRouter`]: sends a shard's pushes and reads to its leader, follows leader
//!   hints and retries with bounded, jittered backoff until a deadline.

pub mod channels;
pub mod control;
pub mod router;
pub mod watch;

pub use channels::{Channels, InternalChannel};
pub use control::ControlClient;
pub use router::{Attempt, RouterConfig, ShardRouter};

/// Failures of control-plane calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not usable as a gRPC endpoint.
    #[error("invalid node address {addr:?}: {source}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The cluster secret cannot be sent as gRPC metadata.
    #[error("the cluster secret must be printable ASCII")]
    InvalidSecret,
    /// No TLS connection can be set up for a node address.
    #[error("TLS to {addr}: {source}")]
    Tls {
        /// The node address.
        addr: String,
        /// Why.
        source: spindle_tls::TlsError,
    },
    /// The call failed.
    #[error("call to {addr} failed: {source}")]
    Rpc {
        /// The node called.
        addr: String,
        /// The status it (or the transport) answered.
        source: tonic::Status,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer from {addr}: {source}")]
    Decode {
        /// The node called.
        addr: String,
        /// Why.
        source: serde_json::Error,
    },
}
