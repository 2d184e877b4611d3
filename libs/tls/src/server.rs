//! The certificate a listener presents, from files (reloaded) or self-signed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

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

/// A certificate and its key, replaceable while serving: what every handshake of a listener
/// presents, and (see [`ClusterTls`]) what a node presents as a client to other nodes.
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

impl ResolvesClientCert for ServerTls {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
    fn has_certs(&self) -> bool {
        true
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
