//! Query metrics (`spindle_query_*`).

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

type Labels = Vec<(String, String)>;

/// Latency of queries by endpoint and outcome, and queries refused by tenant and reason.
#[derive(Clone)]
pub struct QueryMetrics {
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    refused: Family<Labels, Counter>,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        Self { latency: Family::new_with_constructor(latency_histogram), refused: Family::default() }
    }
}

impl QueryMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("spindle_query").register(
            "duration_seconds",
            "Query latency by endpoint and outcome",
            m.latency.clone(),
        );
        registry.sub_registry_with_prefix("spindle_query").register(
            "refused",
            "Queries refused by a limit, by tenant and reason",
            m.refused.clone(),
        );
        m
    }

    /// Counts one query of `tenant` refused for `reason`.
    pub fn refused(&self, tenant: &str, reason: &str) {
        self.refused.get_or_create(&vec![("tenant".into(), tenant.into()), ("reason".into(), reason.into())]).inc();
    }

    /// Records one query of `endpoint` that started at `start`.
    pub fn observe(&self, endpoint: &str, ok: bool, start: Instant) {
        self.latency
            .get_or_create(&vec![
                ("endpoint".into(), endpoint.into()),
                ("outcome".into(), if ok { "ok" } else { "error" }.into()),
            ])
            .observe(start.elapsed().as_secs_f64());
    }
}
