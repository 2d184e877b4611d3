//! The cluster secret: every call to a node's internal gRPC API (pushes, reads, metadata, Raft
//! votes and appends, generator pushes) carries it, and a node that has one refuses calls
//! without it, so only cluster members can write, read or vote.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Layer, Service};

/// The gRPC metadata that carries the secret.
pub const CLUSTER_SECRET_HEADER: &str = "x-spindle-cluster-secret";

/// Whether `presented` is the secret, in time independent of where they differ.
pub fn is_cluster_secret(secret: &[u8], presented: &[u8]) -> bool {
    if secret.len() != presented.len() {
        return false;
    }
    let diff = secret.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// A layer refusing internal calls that do not carry the cluster secret (UNAUTHENTICATED).
#[derive(Clone)]
pub struct RequireClusterSecret {
    secret: Arc<[u8]>,
}

impl RequireClusterSecret {
    /// Requires `secret`.
    pub fn new(secret: &str) -> Self {
        Self { secret: Arc::from(secret.as_bytes()) }
    }
}

impl<S> Layer<S> for RequireClusterSecret {
    type Service = ClusterSecretCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClusterSecretCheck { inner, secret: self.secret.clone() }
    }
}

/// The service [`RequireClusterSecret`] wraps around the internal API.
#[derive(Clone)]
pub struct ClusterSecretCheck<S> {
    inner: S,
    secret: Arc<[u8]>,
}

impl<S, B> Service<Request<B>> for ClusterSecretCheck<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let ok =
            request.headers().get(CLUSTER_SECRET_HEADER).is_some_and(|v| is_cluster_secret(&self.secret, v.as_bytes()));
        if !ok {
            let status =
                tonic::Status::unauthenticated("not a member of this cluster: wrong or missing cluster secret");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// A channel to another node that adds the cluster secret (if any) to every call.
#[derive(Debug, Clone)]
pub struct InternalChannel {
    channel: Channel,
    secret: Option<HeaderValue>,
}

impl Service<Request<Body>> for InternalChannel {
    type Response = <Channel as Service<Request<Body>>>::Response;
    type Error = <Channel as Service<Request<Body>>>::Error;
    type Future = <Channel as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(secret) = &self.secret {
            request.headers_mut().insert(CLUSTER_SECRET_HEADER, secret.clone());
        }
        Service::call(&mut self.channel, request)
    }
}

impl InternalChannel {
    /// `channel`, its calls carrying `secret` when given.
    pub fn new(channel: Channel, secret: Option<HeaderValue>) -> Self {
        Self { channel, secret }
    }
}
