//! What the generator computes and where it sends it, by default and per tenant.

use std::collections::HashMap;
use std::time::Duration;

/// Tempo's span-metrics latency buckets: 2 ms doubling 14 times (seconds).
pub fn span_latency_buckets() -> Vec<f64> {
    doubling(0.002, 14)
}

/// Tempo's service-graph buckets: 100 ms doubling 8 times (seconds).
pub fn service_graph_buckets() -> Vec<f64> {
    doubling(0.1, 8)
}

fn doubling(first: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| first * f64::from(1u32 << i)).collect()
}

/// Settings of the whole generator.
#[derive(Debug, Clone)]
pub struct GeneratorSettings {
    /// How often the collection loop runs: the shortest tenant collection interval.
    pub collection_interval: Duration,
    /// How often a tenant's series are recorded as rows of the SQL table `metrics` (at most; at
    /// a collection).
    pub sql_interval: Duration,
    /// How often collected samples are written to the object store (the SQL table `metrics`).
    pub sql_flush_interval: Duration,
    /// A series not updated for this long is dropped.
    pub stale_after: Duration,
    /// Span bytes (in memory) waiting to be processed; more is dropped and counted.
    pub max_queue_bytes: usize,
    /// Settings of tenants without their own.
    pub default: TenantSettings,
    /// Per-tenant settings (complete: defaults already applied).
    pub tenants: HashMap<String, TenantSettings>,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(15),
            sql_interval: Duration::from_secs(60),
            sql_flush_interval: Duration::from_secs(300),
            stale_after: Duration::from_secs(15 * 60),
            max_queue_bytes: 64 * 1024 * 1024,
            default: TenantSettings::default(),
            tenants: HashMap::new(),
        }
    }
}

impl GeneratorSettings {
    /// The settings of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> &TenantSettings {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

/// Settings of one tenant.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// How often the tenant's series are collected: sent by remote write and recorded for SQL.
    pub collection_interval: Duration,
    /// Compute span metrics.
    pub span_metrics: bool,
    /// Extra span-metrics labels: span or resource attribute names (resource first).
    pub dimensions: Vec<String>,
    /// Compute service graphs.
    pub service_graphs: bool,
    /// How long an unpaired edge waits for its other side.
    pub wait: Duration,
    /// Most edges waiting for their other side.
    pub max_items: usize,
    /// Most active series; spans that would create more are counted, not turned into series.
    pub max_active_series: usize,
    /// Record collected samples for SQL (the `metrics` table).
    pub sql: bool,
    /// Prometheus remote-write endpoints.
    pub remote_write: Vec<RemoteWriteTarget>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(15),
            span_metrics: true,
            dimensions: Vec::new(),
            service_graphs: true,
            wait: Duration::from_secs(10),
            max_items: 10_000,
            max_active_series: 500_000,
            sql: true,
            remote_write: Vec::new(),
        }
    }
}

/// One Prometheus remote-write endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteTarget {
    /// e.g. `http://prometheus:9090/api/v1/write`.
    pub url: String,
    /// Extra HTTP headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Send `X-Scope-OrgID: <tenant>` (for Mimir or Cortex).
    pub send_tenant_header: bool,
}

/// The Prometheus label name for an attribute name: every character outside `[a-zA-Z0-9_]`
/// becomes `_` (`http.method` -> `http_method`), and a leading digit gets a `_` in front.
pub fn label_name(attribute: &str) -> String {
    let mut out: String =
        attribute.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tempo_buckets_and_label_names() {
        let b = span_latency_buckets();
        assert_eq!(b.len(), 14);
        assert_eq!(format!("{}", b[13]), "16.384");
        let s = service_graph_buckets();
        assert_eq!(s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","), "0.1,0.2,0.4,0.8,1.6,3.2,6.4,12.8");
        assert_eq!(label_name("http.method"), "http_method");
        assert_eq!(label_name("9x"), "_9x");
    }
}
