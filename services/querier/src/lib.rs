//! The querier's HTTP API: Tempo's query endpoints (so Grafana's Tempo datasource works
//! unchanged), Jaeger's query APIs ([`jaeger`]: the Jaeger UI and Grafana's Jaeger datasource)
//! and `POST /api/v1/sql`.
//!
//! Every request first takes one of its tenants' query slots (`max_concurrent_queries`; none
//! free: 429 with `Retry-After`). Handlers parse and validate parameters ([`params`]), call the `spindle_query::QueryEngine`
//! for each tenant named by `X-Scope-OrgID` (`a|b` merges tenants), and encode answers the way
//! Tempo does ([`tempo`]) or as JSON/CSV/Arrow/JSONL ([`sql`]).

mod error;
mod jaeger;
mod mcp;
mod metrics;
mod params;
mod sql;
mod tempo;
mod traces;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use spindle_limits::shed::{DeadlineLayer, ShedLayer};
use spindle_limits::{LimitsTable, TenantSlots};
use spindle_query::QueryEngine;

pub use error::ApiError;
pub use metrics::QueryMetrics;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Querier {
    engine: Arc<QueryEngine>,
    metrics: QueryMetrics,
    limits: LimitsTable,
    slots: Arc<TenantSlots>,
    sql: SqlLimits,
    admission: Admission,
    mcp_any_host: bool,
}

/// How much the query API takes on at once, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Requests running at once, all tenants together; more get 429 at once.
    pub max_concurrent: usize,
    /// Longest a request may take, body included (then 408).
    pub timeout: std::time::Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Self { max_concurrent: 32, timeout: std::time::Duration::from_secs(120) }
    }
}

/// How large an SQL answer may grow before the query is stopped.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Most rows.
    pub max_rows: usize,
    /// Most bytes of Arrow data (before encoding).
    pub max_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self { max_rows: 1_000_000, max_bytes: 256 * 1024 * 1024 }
    }
}

impl Querier {
    /// A querier answering through `engine`, with the default limits.
    pub fn new(engine: Arc<QueryEngine>, metrics: QueryMetrics) -> Self {
        Self {
            engine,
            metrics,
            limits: LimitsTable::default(),
            slots: Arc::default(),
            sql: SqlLimits::default(),
            admission: Admission::default(),
            mcp_any_host: false,
        }
    }

    /// Lets MCP clients reach `/api/mcp` under any host name (when the API listens beyond
    /// loopback, behind API keys); by default only loopback names are accepted, so a web page
    /// cannot reach a local Spindle through DNS rebinding.
    pub fn with_mcp_any_host(mut self, any_host: bool) -> Self {
        self.mcp_any_host = any_host;
        self
    }

    /// How many requests at once, and for how long.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Per-tenant limits (`max_concurrent_queries`) from `limits`.
    pub fn with_limits(mut self, limits: LimitsTable) -> Self {
        self.limits = limits;
        self
    }

    /// Caps of SQL answers.
    pub fn with_sql_limits(mut self, sql: SqlLimits) -> Self {
        self.sql = sql;
        self
    }
}

/// All querier routes, behind the node's admission limits and then the tenants' query slots;
/// `/api/mcp` (the MCP server) calls the other routes in process, so its tools take query
/// slots as the HTTP API does.
pub fn router(querier: Querier) -> Router {
    let Admission { max_concurrent, timeout } = querier.admission;
    let metrics = querier.metrics.clone();
    let api = tempo::routes()
        .merge(jaeger::routes())
        .merge(sql::routes())
        .layer(axum::middleware::from_fn_with_state(querier.clone(), tenant_slots))
        .with_state(querier.clone());
    let mcp = mcp::service(api.clone(), querier.mcp_any_host);
    api.route_service("/api/mcp", mcp)
        .layer(DeadlineLayer::new(timeout, move || {
            ApiError {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                message: format!("the request did not complete within {} s", timeout.as_secs_f64()),
            }
            .into_response()
        }))
        .layer(ShedLayer::new(max_concurrent, move |headers: &axum::http::HeaderMap| {
            for tenant in params::tenants(headers).unwrap_or_default() {
                metrics.refused(tenant.as_str(), "node_concurrent_queries");
            }
            ApiError {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                message: format!("this node already runs {max_concurrent} queries (its limit); retry shortly"),
            }
            .into_response()
        }))
}

/// Runs a request only if it names no more tenants than each of them allows, while each has a
/// free query slot, and only when its query string is UTF-8.
async fn tenant_slots(State(q): State<Querier>, request: Request, next: Next) -> Response {
    if let Err(e) = params::check_query_utf8(request.uri().query()) {
        return e.into_response();
    }
    let tenants = match params::tenants(request.headers()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    for tenant in &tenants {
        let most = q.limits.get(tenant.as_str()).max_tenants_per_query;
        if tenants.len() > most {
            q.metrics.refused(tenant.as_str(), "tenants_per_query");
            return ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                message: format!(
                    "the query names {} tenants; tenant {tenant} allows at most {most} per query",
                    tenants.len()
                ),
            }
            .into_response();
        }
    }
    let mut held = Vec::with_capacity(tenants.len());
    for tenant in &tenants {
        let limit = q.limits.get(tenant.as_str()).max_concurrent_queries;
        match q.slots.try_acquire(tenant.as_str(), limit) {
            Some(slot) => held.push(slot),
            None => {
                q.metrics.refused(tenant.as_str(), "concurrent_queries");
                return ApiError {
                    status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                    message: format!("tenant {tenant} already runs {limit} queries (its limit); retry shortly"),
                }
                .into_response();
            }
        }
    }
    let response = next.run(request).await;
    drop(held);
    response
}
