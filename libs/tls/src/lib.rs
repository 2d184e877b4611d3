//! TLS for Spindle's listeners.
//!
//! [`ServerTls`] holds the certificate every handshake presents: read from PEM files and read
//! again when they change (so a cert-manager renewal needs no restart), or made up once at
//! start for development ([`ServerTls::self_signed`], written next to the data so clients can
//! trust it). [`TlsIncoming`] turns a `TcpListener` into a stream of finished handshakes, each
//! done in its own task with a deadline, so a client that never finishes its handshake holds up
//! no one; it serves axum (as an `axum::serve::Listener`) and tonic (as an incoming stream).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A self-signed certificate could not be made.
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.to_path_buf(), source });
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    certified(&cert_pem, &key_pem, cert, key)
}

fn certified(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem_err = |p: &Path, reason: String| TlsError::Pem { path: p.to_path_buf(), reason };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err(key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, private, &provider)?))
}

/// The certificate every handshake presents, replaceable while serving.
#[derive(Debug)]
pub struct ServerTls {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<(PathBuf, PathBuf)>,
}

impl ResolvesServerCert for ServerTls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ServerTls {
    /// The certificate chain and private key in PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let current = load(cert, key)?;
        Ok(Arc::new(Self { current: RwLock::new(current), files: Some((cert.to_path_buf(), key.to_path_buf())) }))
    }

    /// A new self-signed certificate for `localhost`, `127.0.0.1` and `hostnames`, written to
    /// `dir/cert.pem` (for clients to trust) and `dir/key.pem`. For development only.
    pub fn self_signed(dir: &Path, hostnames: &[String]) -> Result<Arc<Self>, TlsError> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(hostnames.iter().cloned());
        let generated = rcgen::generate_simple_self_signed(names)?;
        let cert_pem = generated.cert.pem();
        let key_pem = generated.key_pair.serialize_pem();
        let write = |name: &str, data: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&path, data))
                .map_err(|source| TlsError::Read { path, source })
        };
        write("cert.pem", &cert_pem)?;
        write("key.pem", &key_pem)?;
        let current = certified(cert_pem.as_bytes(), key_pem.as_bytes(), &dir.join("cert.pem"), &dir.join("key.pem"))?;
        Ok(Arc::new(Self { current: RwLock::new(current), files: None }))
    }

    /// A rustls server configuration presenting this certificate, offering HTTP/2 and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again whenever they change (checked every `every`); files that do not
    /// load keep the current certificate. Returns at once for a self-signed certificate.
    pub async fn reload_on_change(self: Arc<Self>, every: Duration) {
        let Some((cert, key)) = self.files.clone() else { return };
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: (Option<SystemTime>, Option<SystemTime>) = (stamp(&cert), stamp(&key));
        loop {
            tokio::time::sleep(every).await;
            let now = (stamp(&cert), stamp(&key));
            if now == seen {
                continue;
            }
            seen = now;
            match load(&cert, &key) {
                Ok(c) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = c;
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one"),
            }
        }
    }
}

/// A TLS connection (after its handshake), for axum and tonic.
pub struct TlsConnection(TlsStream<TcpStream>);

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// Finished TLS handshakes from a listener.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Accepts on `listener` (Nagle off) and does each handshake in its own task.
    pub fn new(listener: TcpListener, tls: &Arc<ServerTls>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let config = tls.server_config().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, done) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((TlsConnection(stream), addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { rx, local })
    }

    /// The connections, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        use futures::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.rx).map(|(c, _)| Ok(c))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_then_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ServerTls::self_signed(dir.path(), &["spindle.example".into()]).unwrap();
        tls.server_config().unwrap();
        let again = ServerTls::from_files(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        again.server_config().unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not pem").unwrap();
        let err = ServerTls::from_files(&dir.path().join("bad.pem"), &dir.path().join("key.pem")).unwrap_err();
        assert!(err.to_string().contains("bad.pem"), "{err}");
    }
}
