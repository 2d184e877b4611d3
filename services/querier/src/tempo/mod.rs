//! Tempo's HTTP query API, as Grafana's Tempo datasource calls it.

mod metrics;
mod search;
mod tags;
mod trace;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::Querier;

/// The Tempo API version Spindle reports (Grafana semver-compares it to enable features).
pub const TEMPO_API_VERSION: &str = "2.9.0";

/// Tempo API routes.
pub fn routes() -> Router<Querier> {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/api/traces/{id}", get(trace::v1))
        .route("/api/v2/traces/{id}", get(trace::v2))
        .route("/api/search", get(search::search))
        .route("/api/metrics/query_range", get(metrics::query_range))
        .route("/api/metrics/query", get(metrics::query_instant))
        .route("/api/search/tags", get(tags::names_v1))
        .route("/api/v2/search/tags", get(tags::names_v2))
        .route("/api/search/tag/{tag}/values", get(tags::values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(tags::values_v2))
}

async fn buildinfo() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Json(serde_json::json!({
            "version": TEMPO_API_VERSION,
            "revision": "spindle",
            "branch": "main",
            "buildDate": "",
            "buildUser": "spindle",
            "goVersion": "",
            "spindleVersion": env!("CARGO_PKG_VERSION"),
        })),
    )
}
