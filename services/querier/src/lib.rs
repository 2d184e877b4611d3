//! The querier's HTTP API: Tempo's query endpoints (so Grafana's Tempo datasource works
//! unchanged) and `POST /api/v1/sql`.
//!
//! Handlers parse and validate parameters ([`params`]), call the `spindle_query::QueryEngine`
//! for each tenant named by `X-Scope-OrgID` (`a|b` merges tenants), and encode answers the way
//! Tempo does ([`tempo`]) or as JSON/CSV/Arrow/JSONL ([`sql`]).

mod error;
mod metrics;
mod params;
mod sql;
mod tempo;

use std::sync::Arc;

use axum::Router;
use spindle_query::QueryEngine;

pub use error::ApiError;
pub use metrics::QueryMetrics;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Querier {
    engine: Arc<QueryEngine>,
    metrics: QueryMetrics,
}

impl Querier {
    /// A querier answering through `engine`.
    pub fn new(engine: Arc<QueryEngine>, metrics: QueryMetrics) -> Self {
        Self { engine, metrics }
    }
}

/// All querier routes.
pub fn router(querier: Querier) -> Router {
    tempo::routes().merge(sql::routes()).with_state(querier)
}
