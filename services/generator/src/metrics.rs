//! The generator's own metrics (`spindle_generator_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of the generator and of the ingesters' tee.
#[derive(Debug, Clone, Default)]
pub struct GeneratorMetrics {
    /// Spans processed.
    pub spans: Counter,
    /// Spans not processed, by reason (`queue_full`, `unreachable`, `invalid`).
    pub dropped_spans: Family<Vec<(String, String)>, Counter>,
    /// Active series over all tenants.
    pub active_series: Gauge,
    /// Series not created because a tenant reached its limit.
    pub series_refused: Counter,
    /// Service-graph edges, by outcome (`paired`, `virtual_node`, `expired`, `dropped`).
    pub edges: Family<Vec<(String, String)>, Counter>,
    /// Edges waiting for their other side, over all tenants.
    pub pending_edges: Gauge,
    /// Samples accepted by remote-write endpoints.
    pub remote_write_samples: Counter,
    /// Remote-write requests that failed.
    pub remote_write_failures: Counter,
    /// Sample rows written for SQL.
    pub sql_rows: Counter,
    /// Writes of sample files that failed (retried at the next flush).
    pub sql_failures: Counter,
}

impl GeneratorMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("spindle_generator");
        r.register("spans", "Spans processed by the metrics generator", m.spans.clone());
        r.register("dropped_spans", "Spans the metrics generator did not process, by reason", m.dropped_spans.clone());
        r.register("active_series", "Active generated series over all tenants", m.active_series.clone());
        r.register(
            "series_refused",
            "Series not created because a tenant reached max_active_series",
            m.series_refused.clone(),
        );
        r.register("edges", "Service-graph edges, by outcome", m.edges.clone());
        r.register("pending_edges", "Service-graph edges waiting for their other side", m.pending_edges.clone());
        r.register(
            "remote_write_samples",
            "Samples accepted by remote-write endpoints",
            m.remote_write_samples.clone(),
        );
        r.register("remote_write_failures", "Remote-write requests that failed", m.remote_write_failures.clone());
        r.register("sql_rows", "Generated sample rows written for SQL", m.sql_rows.clone());
        r.register("sql_failures", "Writes of generated sample files that failed", m.sql_failures.clone());
        // Every reason and outcome from the start, at 0, so rates and alerts have a series.
        for reason in ["queue_full", "unreachable", "invalid"] {
            m.dropped(reason, 0);
        }
        for outcome in ["paired", "virtual_node", "expired", "dropped"] {
            m.edges.get_or_create(&vec![("outcome".into(), outcome.into())]).inc_by(0);
        }
        m
    }

    /// Counts `n` spans dropped for `reason`.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.dropped_spans.get_or_create(&vec![("reason".into(), reason.into())]).inc_by(n);
    }

    /// Counts `n` edges with `outcome`.
    pub fn edge(&self, outcome: &str, n: u64) {
        if n > 0 {
            self.edges.get_or_create(&vec![("outcome".into(), outcome.into())]).inc_by(n);
        }
    }
}
