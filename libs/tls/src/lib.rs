//! TLS and connection handling for Spindle's listeners.
//!
//! [`ServerTls`] holds the certificate every handshake presents: read from PEM files and read
//! again when they change (so a cert-manager renewal needs no restart), or made up once at
//! start for development ([`ServerTls::self_signed`], written next to the data so clients can
//! trust it). [`Incoming`] turns a `TcpListener` into a stream of connections, plaintext or
//! TLS (each handshake in its own task with a deadline, so a client that never finishes its
//! handshake holds up no one), each of which must start talking within a deadline
//! ([`FirstBytes`]); it serves axum (as an `axum::serve::Listener`) and tonic (as an incoming
//! stream). [`ClusterTls`] is mutual TLS for the internal API among cluster members, and
//! [`write_cluster_certs`] makes a cluster CA and node certificates for it.

mod certs;
mod cluster;
mod deadline;
mod incoming;
mod server;

pub use certs::{write_cluster_certs, ClusterCertFiles};
pub use cluster::{ClusterConnector, ClusterTls};
pub use deadline::{FirstBytes, FIRST_BYTES};
pub use incoming::{Connection, Incoming, HANDSHAKE_TIMEOUT};
/// A rustls server configuration, as [`ServerTls::server_config`] and
/// [`ClusterTls::server_config`] make and [`Incoming::new`] takes.
pub use rustls::ServerConfig;
pub use server::ServerTls;

use std::io;
use std::path::PathBuf;

/// Errors of TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate could not be made.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The cluster CA cannot verify client certificates.
    #[error("cluster CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A name peers' certificates are checked for is not a DNS name or IP address.
    #[error("{name:?} is not a DNS name or IP address to check a certificate for")]
    ServerName {
        /// The name.
        name: String,
    },
}
