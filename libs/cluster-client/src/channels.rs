//! A pool of gRPC channels, one per node address, each call carrying the cluster secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use spindle_auth::cluster::InternalChannel;
use tonic::codegen::http::HeaderValue;
use tonic::transport::Endpoint;

use crate::ClientError;

/// Lazily connected channels by `host:port`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, InternalChannel>>>,
    secret: Option<HeaderValue>,
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
        Ok(Self { inner: Arc::default(), secret })
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
        let channel = InternalChannel::new(endpoint.connect_lazy(), self.secret.clone());
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
