//! The generator's endpoints: the internal gRPC push API ingesters send spans to, and
//! `GET /api/generator/metrics` (Prometheus text format) for scraping a tenant's series.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use spindle_proto::generator::generator_server::{Generator as GeneratorApi, GeneratorServer};
use spindle_proto::generator::{PushSpans, PushSpansReply};
use spindle_storage::TenantId;
use tonic::{Request, Status};

use crate::tee::LocalTee;
use crate::Generator;

/// Largest push accepted (bytes of Arrow IPC).
const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// The gRPC push API: decodes the spans and queues them to the local generator.
pub struct GeneratorGrpc {
    tee: Arc<LocalTee>,
}

impl GeneratorGrpc {
    /// The service, feeding `tee`.
    pub fn service(tee: Arc<LocalTee>) -> GeneratorServer<Self> {
        GeneratorServer::new(Self { tee }).max_decoding_message_size(MAX_PUSH_BYTES)
    }
}

#[tonic::async_trait]
impl GeneratorApi for GeneratorGrpc {
    async fn push(&self, request: Request<PushSpans>) -> Result<tonic::Response<PushSpansReply>, Status> {
        let push = request.into_inner();
        let tenant = TenantId::new(&push.tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let batches = spindle_schema::ipc::decode(&push.spans)
            .map_err(|e| Status::invalid_argument(format!("spans are not an Arrow IPC stream: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != push.span_sizes.len() {
            return Err(Status::invalid_argument(format!("{rows} spans but {} span sizes", push.span_sizes.len())));
        }
        let mut offset = 0;
        for batch in batches {
            let n = batch.num_rows();
            if batch.schema() != spindle_schema::span_schema() {
                return Err(Status::invalid_argument("spans do not have the span schema"));
            }
            let sizes = push.span_sizes[offset..offset + n].to_vec();
            offset += n;
            if !self.tee.try_offer(&tenant, batch, sizes) {
                return Err(Status::resource_exhausted("the metrics generator is behind; spans dropped"));
            }
        }
        Ok(tonic::Response::new(PushSpansReply {}))
    }
}

#[derive(Deserialize)]
struct ScrapeParams {
    tenant: Option<String>,
}

/// `GET /api/generator/metrics`: the tenant named by `X-Scope-OrgID` (or `?tenant=`).
pub fn routes(generator: Arc<Generator>) -> Router {
    Router::new().route("/api/generator/metrics", get(scrape)).with_state(generator)
}

async fn scrape(
    State(generator): State<Arc<Generator>>,
    headers: HeaderMap,
    Query(params): Query<ScrapeParams>,
) -> Response {
    let header = match headers.get("x-scope-orgid").map(|v| v.to_str()).transpose() {
        Ok(h) => h,
        Err(_) => return (StatusCode::BAD_REQUEST, "X-Scope-OrgID is not valid text").into_response(),
    };
    // Behind the API-key check the header holds the caller's tenant; `?tenant=` is for
    // scrapers that cannot send headers (header mode only: the check rewrites the header).
    let tenant = match TenantId::from_header(header.or(params.tenant.as_deref())) {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("tenant: {e}")).into_response(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], generator.exposition(&tenant))
        .into_response()
}
