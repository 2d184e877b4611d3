//! A pool of gRPC channels, one per node address, each call carrying the cluster secret, over
//! mutual TLS when the cluster has a CA.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use spindle_auth::cluster::InternalChannel;
use spindle_tls::ClusterTls;
use tonic::codegen::http::HeaderValue;
use tonic::transport::Endpoint;

use crate::ClientError;

/// Lazily connected channels by `host:port`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, InternalChannel>>>,
    secret: Option<HeaderValue>,
    tls: Option<Arc<ClusterTls>>,
}

impl Channels {
    /// Channels whose calls carry `secret` (`--cluster-secret`).
    pub fn with_secret(secret: Option<&str>) -> Result<Self, ClientError> {
        let secret = secret
            .map(|s| {
                let mut v = HeaderValue::from_str(s).map_err(|_| ClientError::InvalidSecret)?;
                v.set_sensitive(true);
                Ok::<_, ClientError>(v)
            })
            .transpose()?;
        Ok(Self { inner: Arc::default(), secret, tls: None })
    }

    /// These channels, connecting with mutual TLS (`--internal-tls-*`).
    pub fn with_tls(self, tls: Option<Arc<ClusterTls>>) -> Self {
        Self { tls, ..self }
    }

    /// The channel to `addr`, created on first use (connecting happens on the first call).
    pub fn get(&self, addr: &str) -> Result<InternalChannel, ClientError> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| ClientError::Address { addr: addr.to_string(), source })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let connector =
                    tls.connector(host).map_err(|source| ClientError::Tls { addr: addr.to_string(), source })?;
                endpoint.connect_with_connector_lazy(connector)
            }
            None => endpoint.connect_lazy(),
        };
        let channel = InternalChannel::new(channel, self.secret.clone());
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
