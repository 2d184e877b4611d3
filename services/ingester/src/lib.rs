//! The ingester: accepts OTLP traces, turns them into Arrow and routes them to storage shards.
//!
//! Data path: [`grpc`] (OTLP/gRPC), [`http`] (OTLP/HTTP, protobuf or JSON, gzip) or [`zipkin`]
//! (Zipkin v2 JSON or protobuf, mapped to OTLP) -> tenant from
//! the API key (or `X-Scope-OrgID`) -> [`Ingester::ingest`]: a share of the node's in-flight byte
//! budget and of the tenant's rate limit (refused at once with a retry hint when there is none)
//! -> strings, attributes, events and links cut to the tenant's limits (counted) -> convert to
//! one span batch per shard, each span put in the batch of the ring's shard for its trace id
//! (the ring of the current topology; invalid spans are counted as rejected, per OTLP partial
//! success) -> cut into parts of at most `max_push_bytes` -> the [`batcher`], which sends the
//! parts of the exports waiting at that moment together (one push per tenant and shard, each
//! encoded once; one call per storage node) through the `ShardRouter` (which follows leader
//! changes and retries) -> answer once every shard has committed. A client retry after a
//! partial failure sends the same parts again, which the shards that committed them recognise
//! (by the digest of each part's rows) and do not store twice.

mod batcher;
pub mod grpc;
pub mod http;
mod metrics;
mod rpc_status;
pub mod zipkin;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use spindle_auth::{Access, Auth, AuthError};
use spindle_cluster_client::ShardRouter;
use spindle_limits::{LimitsTable, RateLimiter};
use spindle_otlp::limits::SpanLimits;
use spindle_otlp::to_arrow::{resource_spans_to_batches, DEFAULT_MAX_EXPANDED_BYTES};
use spindle_storage_api::ApiError;
use spindle_types::SpanTee;
use spindle_types::TenantId;
use tokio::sync::Semaphore;

use crate::batcher::{Part, PushBatcher};

pub use metrics::IngestMetrics;

/// Limits of the ingester.
#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// Largest accepted request, compressed and decompressed (bytes).
    pub max_request_bytes: usize,
    /// Largest span data one request may expand to once every span carries its resource.
    pub max_expanded_bytes: usize,
    /// Largest push to one shard (in-memory Arrow bytes); bigger parts are cut, so one Raft
    /// entry stays bounded.
    pub max_push_bytes: usize,
    /// Bytes of requests (their protobuf size) the node works on at once, across tenants;
    /// requests beyond it are refused with a retry hint instead of queueing.
    pub max_inflight_bytes: usize,
    /// Requests each receiver takes at once, before reading them; more are refused unread.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, body included.
    pub request_timeout: Duration,
    /// Rounds of pushes to storage at once (their first attempt); the exports that arrive
    /// meanwhile go together in the next round. One: measured 25 % more spans/s from 16
    /// callers than two, at a quarter less CPU per span.
    pub pushes_in_flight: usize,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 * 1024 * 1024,
            max_expanded_bytes: DEFAULT_MAX_EXPANDED_BYTES,
            max_push_bytes: 4 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_concurrent_requests: 64,
            request_timeout: Duration::from_secs(120),
            pushes_in_flight: 1,
        }
    }
}

/// Why a request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The request cannot be decoded or is otherwise wrong: do not retry.
    #[error("{0}")]
    Invalid(String),
    /// The request is larger than allowed: do not retry as is.
    #[error("{0}")]
    TooLarge(String),
    /// Storage or this node pushes back: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The tenant sends faster than its rate limit: retry after the given time.
    #[error("{message}")]
    RateLimited {
        /// What was exceeded.
        message: String,
        /// When the request would be accepted.
        retry_after: Duration,
    },
    /// No usable API key: do not retry as is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The API key may not write this tenant: do not retry as is.
    #[error("{0}")]
    Forbidden(String),
    /// Storage cannot take writes now: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl IngestError {
    /// The HTTP status of this error, and the gRPC code an OTLP/HTTP error body carries.
    pub fn http_status(&self) -> (::http::StatusCode, i32) {
        use ::http::StatusCode as S;
        match self {
            IngestError::Invalid(_) => (S::BAD_REQUEST, 3),
            IngestError::Unauthenticated(_) => (S::UNAUTHORIZED, 16),
            IngestError::Forbidden(_) => (S::FORBIDDEN, 7),
            IngestError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, 8),
            IngestError::Overloaded(_) | IngestError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, 8),
            IngestError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, 14),
            IngestError::Internal(_) => (S::INTERNAL_SERVER_ERROR, 13),
        }
    }

    /// How long a client should wait before retrying, for the errors worth retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Overloaded(_) | IngestError::Unavailable(_) => Some(Duration::from_secs(1)),
            IngestError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<ApiError> for IngestError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Overloaded(m) => IngestError::Overloaded(m),
            ApiError::Unavailable(m) | ApiError::Unreachable(m) => IngestError::Unavailable(m),
            e @ ApiError::NotLeader { .. } => IngestError::Unavailable(e.to_string()),
            ApiError::InvalidArgument(m) => IngestError::Invalid(m),
            ApiError::Internal(m) => IngestError::Internal(m),
        }
    }
}

/// What happened to the spans of a successful request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Spans stored.
    pub accepted: u64,
    /// Spans refused as invalid.
    pub rejected: u64,
    /// Why spans were refused.
    pub message: Option<String>,
}

/// Turns OTLP requests into committed span batches.
pub struct Ingester {
    router: Arc<ShardRouter>,
    batcher: PushBatcher,
    config: IngesterConfig,
    metrics: IngestMetrics,
    tee: Option<Arc<dyn SpanTee>>,
    auth: Arc<Auth>,
    limits: LimitsTable,
    rate: RateLimiter,
    /// The in-flight byte budget, in KiB.
    inflight: Arc<Semaphore>,
}

/// Budget units are KiB, so a semaphore's `u32` counts reach terabytes.
const BUDGET_UNIT: usize = 1024;

impl Ingester {
    /// An ingester writing to the shards `router` finds. Call within a Tokio runtime (it starts
    /// the task that sends pushes).
    pub fn new(router: Arc<ShardRouter>, config: IngesterConfig, metrics: IngestMetrics) -> Self {
        let inflight =
            Arc::new(Semaphore::new((config.max_inflight_bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS)));
        let batcher = PushBatcher::new(router.clone(), config.pushes_in_flight, config.max_push_bytes, metrics.clone());
        Self {
            router,
            batcher,
            config,
            metrics,
            tee: None,
            auth: Auth::trust_header(),
            limits: LimitsTable::default(),
            rate: RateLimiter::default(),
            inflight,
        }
    }

    /// Applies the per-tenant limits of `limits` (ingest rate, span sizes).
    pub fn with_limits(mut self, limits: LimitsTable) -> Self {
        self.limits = limits;
        self
    }

    /// Decides the tenant of each request with `auth` (API keys) instead of trusting
    /// `X-Scope-OrgID`.
    pub fn with_auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// The tenant a request writes to, from its `Authorization` and `X-Scope-OrgID` values.
    pub fn authorize(&self, authorization: Option<&str>, org_id: Option<&str>) -> Result<TenantId, IngestError> {
        let tenants = self.auth.authorize(authorization, org_id, Access::Write).map_err(|e| match e {
            AuthError::Unauthenticated(m) => IngestError::Unauthenticated(m),
            AuthError::Forbidden(m) => IngestError::Forbidden(m),
            AuthError::BadRequest(m) => IngestError::Invalid(m),
            e @ AuthError::KeysFile { .. } => IngestError::Internal(e.to_string()),
        })?;
        tenants.into_iter().next().ok_or_else(|| IngestError::Internal("no tenant".into()))
    }

    /// Also hands every committed batch to the metrics generator through `tee` (never waiting).
    pub fn with_tee(mut self, tee: Arc<dyn SpanTee>) -> Self {
        self.tee = Some(tee);
        self
    }

    /// Whether the ingester knows the cluster's layout (it can route writes).
    pub fn has_topology(&self) -> bool {
        self.router.topology().current().ring.is_some()
    }

    /// The configured limits.
    pub fn config(&self) -> &IngesterConfig {
        &self.config
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Stores the spans of one export request (`size`: its protobuf size, which the receivers
    /// already know); returns once every shard has committed them.
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        request: ExportTraceServiceRequest,
        size: usize,
    ) -> Result<Outcome, IngestError> {
        let spans: u64 = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum();
        let refuse = |reason: &str, e: IngestError| {
            self.metrics.rejected(tenant.as_str(), reason, spans);
            e
        };
        let units = u32::try_from(size.div_ceil(BUDGET_UNIT).clamp(1, self.config.max_inflight_bytes / BUDGET_UNIT))
            .unwrap_or(u32::MAX);
        // Held until the spans are pushed (by the batcher, if the client leaves before that).
        let budget = self.inflight.clone().try_acquire_many_owned(units).map_err(|_| {
            refuse(
                "node_inflight_bytes",
                IngestError::Overloaded(format!(
                    "this node already works on {} bytes of requests (its limit); retry shortly",
                    self.config.max_inflight_bytes
                )),
            )
        })?;
        let limits = self.limits.get(tenant.as_str());
        self.rate.take(tenant.as_str(), size as u64, limits.ingest_rate_bytes, limits.ingest_burst_bytes).map_err(
            |refused| {
                refuse(
                    "rate_limited",
                    IngestError::RateLimited {
                        message: format!(
                            "tenant {tenant} exceeds its ingest rate of {} bytes/s (burst {} bytes); retry after {:.1} s",
                            limits.ingest_rate_bytes,
                            limits.ingest_burst_bytes,
                            refused.retry_after.as_secs_f64()
                        ),
                        retry_after: refused.retry_after,
                    },
                )
            },
        )?;
        let mut request = request;
        let truncated = spindle_otlp::limits::apply(
            &mut request.resource_spans,
            &SpanLimits {
                max_value_bytes: limits.max_attribute_value_bytes,
                max_attributes: limits.max_attributes_per_span,
                max_events: limits.max_events_per_span,
                max_links: limits.max_links_per_span,
            },
        );
        if !truncated.is_empty() {
            self.metrics.truncated(tenant.as_str(), &truncated);
        }
        let topology = self.router.topology().current();
        let ring = topology.ring.as_ref().ok_or_else(|| {
            IngestError::Unavailable("the ingester has not reached the cluster metadata yet; retry shortly".into())
        })?;
        let shards = ring.tenant_shards(tenant.as_str());
        // One batch per shard, built as the spans are converted (no rows copied to split them).
        let slot_of = |trace_id: &[u8]| {
            let shard = ring.shard_for(&shards, trace_id);
            shards.iter().position(|s| *s == shard).unwrap_or(0)
        };
        let split = resource_spans_to_batches(
            &request.resource_spans,
            self.config.max_expanded_bytes,
            self.tee.is_some(),
            shards.len(),
            slot_of,
        )
        .map_err(|e| match e {
            spindle_otlp::ConvertError::TooLarge(m) => refuse("too_large", IngestError::TooLarge(m)),
            other => refuse("invalid", IngestError::Invalid(other.to_string())),
        })?;
        drop(request);
        if split.rejected > 0 {
            self.metrics.rejected(tenant.as_str(), "invalid_span", split.rejected);
        }
        let rows: u64 = split.batches.iter().map(|b| b.batch.num_rows() as u64).sum();
        if rows > 0 {
            let mut parts = Vec::new();
            for part in split.batches.iter().filter(|p| p.batch.num_rows() > 0) {
                let shard = shards.get(part.slot).copied().unwrap_or(0);
                for batch in chunks(&part.batch, self.config.max_push_bytes) {
                    parts.push(Part { shard, batch });
                }
            }
            if let Err(e) = self.batcher.push(tenant, parts, budget).await {
                let reason = match &e {
                    ApiError::Overloaded(_) => "overloaded",
                    ApiError::Unavailable(_) | ApiError::Unreachable(_) | ApiError::NotLeader { .. } => "unavailable",
                    _ => "storage_error",
                };
                self.metrics.rejected(tenant.as_str(), reason, rows);
                return Err(e.into());
            }
            self.metrics.spans_received.inc_by(rows);
            // Only committed spans are counted by the generator, so a retried request is not
            // counted twice for a failure.
            if let Some(tee) = &self.tee {
                for part in &split.batches {
                    tee.offer(tenant, &part.batch, &part.span_sizes);
                }
            }
        }
        Ok(Outcome { accepted: rows, rejected: split.rejected, message: split.first_error })
    }
}

/// Cuts a batch into slices of at most about `max_bytes` each (by its average row size), the
/// same way every time for the same batch, so a retried request makes the same pushes.
fn chunks(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = spindle_schema::batch_bytes(batch).max(1);
    if bytes <= max_bytes || rows <= 1 {
        return vec![batch.clone()];
    }
    let per_chunk = (rows * max_bytes / bytes).max(1);
    (0..rows).step_by(per_chunk).map(|start| batch.slice(start, per_chunk.min(rows - start))).collect()
}
