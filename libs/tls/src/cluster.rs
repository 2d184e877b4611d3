//! Mutual TLS among the members of a cluster.
//!
//! Every node holds a certificate signed by the cluster's CA and presents it both ways: as the
//! server certificate of its internal gRPC API and as its client certificate when it calls
//! another node. A node accepts only peers whose certificate chains to that CA, and checks
//! that the peer it called holds a certificate for the name it called (the host of the address,
//! or one fixed name for the whole cluster). The node certificate is read again when its files
//! change; the CA is read at start.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;

use crate::{ServerTls, TlsError};

/// This node's certificate, the cluster CA, and the name peers' certificates must carry.
#[derive(Debug)]
pub struct ClusterTls {
    identity: Arc<ServerTls>,
    roots: Arc<RootCertStore>,
    server_name: Option<String>,
}

impl ClusterTls {
    /// The node certificate and key in PEM files, the CA certificates (PEM, one or more) that
    /// sign every member's certificate, and optionally one name every member's certificate
    /// carries (else each peer's certificate must name the host it is called at).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, server_name: Option<String>) -> Result<Arc<Self>, TlsError> {
        let pem = std::fs::read(ca).map_err(|source| TlsError::Read { path: ca.to_path_buf(), source })?;
        let pem_err = |reason: String| TlsError::Pem { path: ca.to_path_buf(), reason };
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&pem) {
            roots.add(der.map_err(|e| pem_err(e.to_string()))?).map_err(|e| pem_err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_err("no PEM certificate in the file".into()));
        }
        if let Some(name) = &server_name {
            ServerName::try_from(name.as_str()).map_err(|_| TlsError::ServerName { name: name.clone() })?;
        }
        Ok(Arc::new(Self { identity: ServerTls::from_files(cert, key)?, roots: Arc::new(roots), server_name }))
    }

    /// This node's certificate (for [`ServerTls::reload_on_change`]).
    pub fn identity(&self) -> &Arc<ServerTls> {
        &self.identity
    }

    /// The server side: presents this node's certificate, offers HTTP/2 only, and refuses
    /// clients without a certificate from the cluster CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client side: trusts only the cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A connector for tonic's `Endpoint::connect_with_connector_lazy` that opens TCP (Nagle
    /// off) and does the TLS handshake, checking the peer's certificate for `host`.
    pub fn connector(&self, host: &str) -> Result<ClusterConnector, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        // An IPv6 host arrives in brackets from `host:port`.
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName { name: name.to_string() })?;
        Ok(ClusterConnector { tls: TlsConnector::from(self.client_config()?), server_name })
    }
}

/// Opens TLS connections to one peer (see [`ClusterTls::connector`]).
#[derive(Clone)]
pub struct ClusterConnector {
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

impl tower::Service<Uri> for ClusterConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, name) = (self.tls.clone(), self.server_name.clone());
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host:port")))?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}
