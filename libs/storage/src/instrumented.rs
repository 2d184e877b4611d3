//! An object store that counts its requests by operation and outcome
//! (`spindle_object_store_requests_total{operation, outcome}`), so failing credentials, quotas or
//! networks show on dashboards and alerts before they show as flush or query failures.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Object-store request counters.
#[derive(Debug, Clone, Default)]
pub struct ObjectStoreMetrics {
    /// Requests by `operation` and `outcome` (`ok`, `not_found`, `error`).
    pub requests: Family<Vec<(String, String)>, Counter>,
}

impl ObjectStoreMetrics {
    /// Creates the counters and registers them (`spindle_object_store_requests_total`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("spindle_object_store").register(
            "requests",
            "Object store requests, by operation and outcome (ok, not_found, error)",
            m.requests.clone(),
        );
        for op in ["get", "put", "delete", "list", "copy", "upload"] {
            for outcome in ["ok", "error"] {
                m.requests.get_or_create(&labels(op, outcome)).inc_by(0);
            }
        }
        m
    }

    fn count<T>(&self, operation: &str, result: &object_store::Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(object_store::Error::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        self.requests.get_or_create(&labels(operation, outcome)).inc();
    }
}

fn labels(operation: &str, outcome: &str) -> Vec<(String, String)> {
    vec![("operation".into(), operation.into()), ("outcome".into(), outcome.into())]
}

/// `inner`, with every request counted.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    metrics: ObjectStoreMetrics,
}

impl InstrumentedStore {
    /// Counts the requests to `inner` in `metrics`.
    pub fn wrap(inner: Arc<dyn ObjectStore>, metrics: ObjectStoreMetrics) -> Arc<dyn ObjectStore> {
        Arc::new(Self { inner, metrics })
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[derive(Debug)]
struct InstrumentedUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: ObjectStoreMetrics,
}

#[async_trait]
impl MultipartUpload for InstrumentedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let metrics = self.metrics.clone();
        self.inner
            .put_part(data)
            .map(move |r| {
                metrics.count("upload", &r);
                r
            })
            .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let r = self.inner.complete().await;
        self.metrics.count("upload", &r);
        r
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await;
        self.metrics.count("put", &r);
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.metrics.count("upload", &r);
        let inner = r?;
        Ok(Box::new(InstrumentedUpload { inner, metrics: self.metrics.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let r = self.inner.get_opts(location, options).await;
        self.metrics.count("get", &r);
        r
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let r = self.inner.get_ranges(location, ranges).await;
        self.metrics.count("get", &r);
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let metrics = self.metrics.clone();
        self.inner
            .delete_stream(locations)
            .map(move |r| {
                metrics.count("delete", &r);
                r
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // One count per listing read to its end: its first error, or ok.
        let failed = Arc::new(AtomicBool::new(false));
        let (seen, metrics, at_end) = (failed.clone(), self.metrics.clone(), self.metrics.clone());
        self.inner
            .list(prefix)
            .map(move |r| {
                if r.is_err() && !seen.swap(true, Ordering::Relaxed) {
                    metrics.count("list", &r);
                }
                Some(r)
            })
            .chain(futures::stream::once(async move {
                if !failed.load(Ordering::Relaxed) {
                    at_end.requests.get_or_create(&labels("list", "ok")).inc();
                }
                None
            }))
            .filter_map(futures::future::ready)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let r = self.inner.list_with_delimiter(prefix).await;
        self.metrics.count("list", &r);
        r
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let r = self.inner.copy_opts(from, to, options).await;
        self.metrics.count("copy", &r);
        r
    }
}
