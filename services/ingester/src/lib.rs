//! The ingester: accepts OTLP traces, turns them into Arrow and routes them to storage shards.
//!
//! Data path: [`grpc`] (OTLP/gRPC) or [`http`] (OTLP/HTTP, protobuf or JSON, gzip) -> tenant from
//! `X-Scope-OrgID` -> [`Ingester::ingest`]: convert to one span batch (invalid spans are counted
//! as rejected, per OTLP partial success) -> split by the ring's shard for each trace id ->
//! `StorageApi::push` to every shard in parallel -> answer once every shard has committed.

pub mod grpc;
pub mod http;
mod metrics;
mod rpc_status;

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use spindle_otlp::to_arrow::{resource_spans_to_batch_limited, DEFAULT_MAX_EXPANDED_BYTES};
use spindle_ring::Ring;
use spindle_schema::col;
use spindle_storage::TenantId;
use spindle_storage_api::{ApiError, StorageApi};

pub use metrics::IngestMetrics;

/// Limits of the ingester.
#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// Largest accepted request, compressed and decompressed (bytes).
    pub max_request_bytes: usize,
    /// Largest span data one request may expand to once every span carries its resource.
    pub max_expanded_bytes: usize,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self { max_request_bytes: 16 * 1024 * 1024, max_expanded_bytes: DEFAULT_MAX_EXPANDED_BYTES }
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
    /// Storage pushes back: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// Storage cannot take writes now: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for IngestError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Overloaded(m) => IngestError::Overloaded(m),
            ApiError::Unavailable(m) => IngestError::Unavailable(m),
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
    ring: Ring,
    storage: Arc<dyn StorageApi>,
    config: IngesterConfig,
    metrics: IngestMetrics,
}

impl Ingester {
    /// An ingester writing to `storage` through `ring`.
    pub fn new(ring: Ring, storage: Arc<dyn StorageApi>, config: IngesterConfig, metrics: IngestMetrics) -> Self {
        Self { ring, storage, config, metrics }
    }

    /// The configured limits.
    pub fn config(&self) -> &IngesterConfig {
        &self.config
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Stores the spans of one export request; returns once every shard has committed them.
    pub async fn ingest(&self, tenant: &TenantId, request: ExportTraceServiceRequest) -> Result<Outcome, IngestError> {
        let converted = resource_spans_to_batch_limited(&request.resource_spans, self.config.max_expanded_bytes).map_err(|e| match e {
            spindle_otlp::ConvertError::TooLarge(m) => IngestError::TooLarge(m),
            other => IngestError::Invalid(other.to_string()),
        })?;
        drop(request);
        if converted.rejected > 0 {
            self.metrics.rejected("invalid_span", converted.rejected);
        }
        let rows = converted.batch.num_rows() as u64;
        if rows > 0 {
            let shards = self.ring.tenant_shards(tenant.as_str());
            let pushes = split_by_shard(&self.ring, &shards, converted.batch)?
                .into_iter()
                .map(|(shard, batch)| self.storage.push(shard, tenant, batch));
            if let Err(e) = futures::future::try_join_all(pushes).await {
                let reason = match &e {
                    ApiError::Overloaded(_) => "overloaded",
                    ApiError::Unavailable(_) => "unavailable",
                    _ => "storage_error",
                };
                self.metrics.rejected(reason, rows);
                return Err(e.into());
            }
            self.metrics.spans_received.inc_by(rows);
        }
        Ok(Outcome { accepted: rows, rejected: converted.rejected, message: converted.first_error })
    }
}

/// Splits a batch into one batch per shard, by the ring's placement of each trace id.
fn split_by_shard(ring: &Ring, shards: &[u32], batch: RecordBatch) -> Result<Vec<(u32, RecordBatch)>, IngestError> {
    if shards.len() <= 1 {
        return Ok(vec![(shards.first().copied().unwrap_or(0), batch)]);
    }
    let ids = batch
        .column_by_name(col::TRACE_ID)
        .ok_or_else(|| IngestError::Internal("batch has no trace_id".into()))?
        .as_fixed_size_binary();
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); shards.len()];
    for i in 0..batch.num_rows() {
        let shard = ring.shard_for(shards, ids.value(i));
        let slot = shards.iter().position(|s| *s == shard).unwrap_or(0);
        rows[slot].push(i as u32);
    }
    let mut out = Vec::new();
    for (slot, indices) in rows.into_iter().enumerate() {
        if indices.is_empty() {
            continue;
        }
        let part = take_record_batch(&batch, &UInt32Array::from(indices)).map_err(|e| IngestError::Internal(e.to_string()))?;
        out.push((shards[slot], part));
    }
    Ok(out)
}

/// The tenant named by an `X-Scope-OrgID` value, or the default tenant when absent.
pub fn tenant_from_header(value: Option<&str>) -> Result<TenantId, IngestError> {
    match value.map(str::trim) {
        None | Some("") => Ok(TenantId::default_tenant()),
        Some(v) => TenantId::new(v).map_err(|e| IngestError::Invalid(format!("X-Scope-OrgID: {e}"))),
    }
}
