//! Ingest metrics (`spindle_ingester_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Counters of the ingester.
#[derive(Debug, Clone, Default)]
pub struct IngestMetrics {
    /// Spans accepted and committed.
    pub spans_received: Counter,
    /// Spans refused, by tenant and reason.
    pub spans_rejected: Family<Vec<(String, String)>, Counter>,
    /// Values, attributes, events and links cut to the tenant's limits, by tenant and what.
    pub truncated: Family<Vec<(String, String)>, Counter>,
    /// Requests, by protocol and outcome.
    pub requests: Family<Vec<(String, String)>, Counter>,
    /// Request bytes received (before decompression).
    pub request_bytes: Counter,
    /// Rounds of pushes sent to storage (the exports waiting at the moment go in one).
    pub push_rounds: Counter,
    /// Exports sent in those rounds.
    pub pushed_exports: Counter,
    /// Pushes sent in those rounds (one per tenant and shard per round, or more for big ones).
    pub pushes: Counter,
}

impl IngestMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("spindle_ingester");
        r.register("spans_received", "Spans accepted and committed", m.spans_received.clone());
        r.register("spans_rejected", "Spans refused, by tenant and reason", m.spans_rejected.clone());
        r.register(
            "truncated",
            "Values, attributes, events and links cut to the tenant's limits, by tenant and what",
            m.truncated.clone(),
        );
        r.register("requests", "OTLP export requests, by protocol and outcome", m.requests.clone());
        r.register("request_bytes", "OTLP request bytes received", m.request_bytes.clone());
        r.register("push_rounds", "Rounds of pushes sent to storage", m.push_rounds.clone());
        r.register("pushed_exports", "Exports sent to storage in those rounds", m.pushed_exports.clone());
        r.register("pushes", "Pushes (one tenant, one shard) sent in those rounds", m.pushes.clone());
        m
    }

    /// Counts `n` spans of `tenant` refused for `reason`.
    pub fn rejected(&self, tenant: &str, reason: &str, n: u64) {
        self.spans_rejected
            .get_or_create(&vec![("tenant".into(), tenant.into()), ("reason".into(), reason.into())])
            .inc_by(n);
    }

    /// Counts what the span limits cut from `tenant`'s spans.
    pub fn truncated(&self, tenant: &str, t: &spindle_otlp::limits::Truncated) {
        for (what, n) in [("value", t.values), ("attribute", t.attributes), ("event", t.events), ("link", t.links)] {
            if n > 0 {
                self.truncated
                    .get_or_create(&vec![("tenant".into(), tenant.into()), ("what".into(), what.into())])
                    .inc_by(n);
            }
        }
    }

    /// Counts one request.
    pub fn request(&self, protocol: &str, outcome: &str) {
        self.requests
            .get_or_create(&vec![("protocol".into(), protocol.into()), ("outcome".into(), outcome.into())])
            .inc();
    }
}
