//! Tower layers every listener uses: answer at once when too many requests are in flight
//! (load shedding instead of queueing), and give up on requests that take too long.
//!
//! Both answer with a response the caller builds (429 with `Retry-After` for HTTP, a
//! trailers-only `RESOURCE_EXHAUSTED` for gRPC), which may also count the refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// Builds the answer for a timed-out request.
pub type Reply<B> = Arc<dyn Fn() -> http::Response<B> + Send + Sync>;

/// Builds the answer for a shed request from its headers (which say its tenant and format).
pub type ShedReply<B> = Arc<dyn Fn(&http::HeaderMap) -> http::Response<B> + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Refuses requests beyond `max_in_flight` with `reply`, without reading them.
pub struct ShedLayer<B> {
    permits: Arc<Semaphore>,
    reply: ShedReply<B>,
}

impl<B> Clone for ShedLayer<B> {
    fn clone(&self) -> Self {
        Self { permits: self.permits.clone(), reply: self.reply.clone() }
    }
}

impl<B> ShedLayer<B> {
    /// At most `max_in_flight` requests at once (across every clone of the layer).
    pub fn new(
        max_in_flight: usize,
        reply: impl Fn(&http::HeaderMap) -> http::Response<B> + Send + Sync + 'static,
    ) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)), reply: Arc::new(reply) }
    }
}

impl<S, B> Layer<S> for ShedLayer<B> {
    type Service = Shed<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed { inner, permits: self.permits.clone(), reply: self.reply.clone() }
    }
}

/// The service of [`ShedLayer`].
pub struct Shed<S, B> {
    inner: S,
    permits: Arc<Semaphore>,
    reply: ShedReply<B>,
}

impl<S: Clone, B> Clone for Shed<S, B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), permits: self.permits.clone(), reply: self.reply.clone() }
    }
}

impl<S, R, B> Service<http::Request<R>> for Shed<S, B>
where
    S: Service<http::Request<R>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<R>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let response = future.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let response = (self.reply)(request.headers());
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// Answers `reply` for a request not answered within `after` (its body included, so a client
/// trickling a body in cannot hold a request open for ever).
pub struct DeadlineLayer<B> {
    after: Duration,
    reply: Reply<B>,
}

impl<B> Clone for DeadlineLayer<B> {
    fn clone(&self) -> Self {
        Self { after: self.after, reply: self.reply.clone() }
    }
}

impl<B> DeadlineLayer<B> {
    /// Requests get `after` to complete.
    pub fn new(after: Duration, reply: impl Fn() -> http::Response<B> + Send + Sync + 'static) -> Self {
        Self { after, reply: Arc::new(reply) }
    }
}

impl<S, B> Layer<S> for DeadlineLayer<B> {
    type Service = Deadline<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, after: self.after, reply: self.reply.clone() }
    }
}

/// The service of [`DeadlineLayer`].
pub struct Deadline<S, B> {
    inner: S,
    after: Duration,
    reply: Reply<B>,
}

impl<S: Clone, B> Clone for Deadline<S, B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), after: self.after, reply: self.reply.clone() }
    }
}

impl<S, R, B> Service<http::Request<R>> for Deadline<S, B>
where
    S: Service<http::Request<R>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<R>) -> Self::Future {
        let future = self.inner.call(request);
        let (after, reply) = (self.after, self.reply.clone());
        Box::pin(async move {
            match tokio::time::timeout(after, future).await {
                Ok(response) => response,
                Err(_) => Ok(reply()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<u16>,
        Error = Infallible,
        Future = BoxFuture<Result<http::Response<u16>, Infallible>>,
    > + Clone {
        tower::service_fn(move |_r: http::Request<()>| -> BoxFuture<Result<http::Response<u16>, Infallible>> {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new(200))
            })
        })
    }

    fn status(code: u16) -> impl Fn() -> http::Response<u16> + Send + Sync {
        move || http::Response::new(code)
    }

    #[tokio::test]
    async fn sheds_beyond_the_limit_and_recovers() {
        let layer = ShedLayer::new(1, |_: &http::HeaderMap| http::Response::new(429));
        let service = layer.layer(slow(Duration::from_millis(200)));
        let first = tokio::spawn(service.clone().oneshot(http::Request::new(())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = service.clone().oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(*shed.body(), 429);
        assert_eq!(*first.await.unwrap().unwrap().body(), 200);
        assert_eq!(*service.oneshot(http::Request::new(())).await.unwrap().body(), 200);
    }

    #[tokio::test]
    async fn answers_late_requests_with_the_reply() {
        let service = DeadlineLayer::new(Duration::from_millis(50), status(408)).layer(slow(Duration::from_secs(5)));
        assert_eq!(*service.oneshot(http::Request::new(())).await.unwrap().body(), 408);
        let fast = DeadlineLayer::new(Duration::from_secs(5), status(408)).layer(slow(Duration::ZERO));
        assert_eq!(*fast.oneshot(http::Request::new(())).await.unwrap().body(), 200);
    }
}
