//! The metrics generator: span metrics and service graphs, with Tempo's metric names, labels
//! and buckets, from the spans ingesters accept.
//!
//! Ingesters hand each accepted batch to the generator that owns its traces ([`tee`]: in
//! process for `spindle all`, over gRPC by trace id otherwise), never waiting for it: a full
//! queue drops and counts. Per tenant, [`spanmetrics`] and [`servicegraph`] keep series in
//! memory under an active-series budget ([`series`]). Every collection interval the series go
//! to the tenant's remote-write endpoints ([`remote_write`]) and into sample files for the SQL
//! table `metrics` ([`sql_sink`]); `GET /api/generator/metrics` serves them for scraping
//! ([`service`]).

pub mod metrics;
pub mod remote_write;
pub mod series;
pub mod service;
pub mod servicegraph;
pub mod settings;
pub mod spanmetrics;
pub mod spans;
pub mod sql_sink;
pub mod tee;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use object_store::ObjectStore;
use spindle_storage::{Retention, TenantId};
use tokio::sync::watch;

pub use metrics::GeneratorMetrics;
pub use settings::{GeneratorSettings, RemoteWriteTarget, TenantSettings};

use crate::remote_write::RemoteWriter;
use crate::series::{MetricFamily, SeriesBudget};
use crate::servicegraph::ServiceGraph;
use crate::spanmetrics::SpanMetrics;
use crate::spans::SpanColumns;
use crate::sql_sink::SqlSink;

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// A span batch lacks a column the processors read.
    #[error("span batch has no usable column {0}")]
    MissingColumn(String),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Snappy compression failed.
    #[error("snappy: {0}")]
    Snappy(#[source] snap::Error),
    /// A remote-write request failed.
    #[error("remote write: {0}")]
    RemoteWrite(#[source] reqwest::Error),
    /// A remote-write endpoint refused the samples.
    #[error("remote write to {url} refused with HTTP {status}: {body}")]
    RemoteWriteRefused {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
}

/// The state of one tenant.
struct TenantState {
    settings: TenantSettings,
    budget: SeriesBudget,
    span_metrics: Option<SpanMetrics>,
    graph: Option<ServiceGraph>,
    last_expiry: Instant,
    last_collection: Option<Instant>,
    last_sql: Option<Instant>,
}

impl TenantState {
    fn new(settings: TenantSettings) -> Self {
        Self {
            budget: SeriesBudget::new(settings.max_active_series),
            span_metrics: settings.span_metrics.then(|| SpanMetrics::new(&settings.dimensions)),
            graph: settings.service_graphs.then(|| ServiceGraph::new(settings.wait, settings.max_items)),
            settings,
            last_expiry: Instant::now(),
            last_collection: None,
            last_sql: None,
        }
    }

    /// Expires waiting edges, drops stale series and returns the current values.
    fn collect(
        &mut self,
        stale_after: Duration,
        take_exemplars: bool,
        metrics: &GeneratorMetrics,
    ) -> Vec<MetricFamily> {
        let now = Instant::now();
        self.expire(now, metrics);
        let mut families = Vec::new();
        if let Some(s) = &mut self.span_metrics {
            s.drop_stale(now, stale_after, &mut self.budget);
            families.extend(s.collect(take_exemplars));
        }
        if let Some(g) = &mut self.graph {
            g.drop_stale(now, stale_after, &mut self.budget);
            families.extend(g.collect(take_exemplars));
        }
        families
    }

    fn expire(&mut self, now: Instant, metrics: &GeneratorMetrics) {
        self.last_expiry = now;
        if let Some(g) = &mut self.graph {
            g.expire(now, unix_ms(), &mut self.budget);
            let stats = g.take_stats();
            metrics.edge("paired", stats.paired);
            metrics.edge("virtual_node", stats.virtual_nodes);
            metrics.edge("expired", stats.expired);
            metrics.edge("dropped", stats.dropped);
        }
        if self.budget.refused > 0 {
            metrics.series_refused.inc_by(std::mem::take(&mut self.budget.refused));
        }
    }
}

/// The metrics generator of one process.
pub struct Generator {
    settings: GeneratorSettings,
    tenants: Mutex<HashMap<TenantId, Arc<Mutex<TenantState>>>>,
    metrics: GeneratorMetrics,
    remote: RemoteWriter,
    sql: Option<tokio::sync::Mutex<SqlSink>>,
    retention: Option<Retention>,
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Generator {
    /// A generator; with a `store`, collected samples are also written there for SQL (and
    /// dropped past `retention`).
    pub fn new(
        settings: GeneratorSettings,
        store: Option<Arc<dyn ObjectStore>>,
        retention: Option<Retention>,
        metrics: GeneratorMetrics,
    ) -> Result<Arc<Self>, GeneratorError> {
        let remote = RemoteWriter::new(settings.collection_interval.max(Duration::from_secs(5)))?;
        let writer_id = uuid::Uuid::now_v7().simple().to_string();
        Ok(Arc::new(Self {
            sql: store.map(|s| tokio::sync::Mutex::new(SqlSink::new(s, writer_id))),
            settings,
            tenants: Mutex::new(HashMap::new()),
            metrics,
            remote,
            retention,
        }))
    }

    /// The generator's settings.
    pub fn settings(&self) -> &GeneratorSettings {
        &self.settings
    }

    /// The generator's own metrics.
    pub fn metrics(&self) -> &GeneratorMetrics {
        &self.metrics
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<Mutex<TenantState>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(TenantState::new(self.settings.for_tenant(tenant.as_str()).clone())))
            })
            .clone()
    }

    fn existing_tenants(&self) -> Vec<(TenantId, Arc<Mutex<TenantState>>)> {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.iter().map(|(t, s)| (t.clone(), s.clone())).collect()
    }

    /// Processes one batch of `tenant`'s spans (span schema); `sizes` are the spans' encoded sizes.
    pub fn consume(&self, tenant: &TenantId, batch: &RecordBatch, sizes: &[u32]) {
        let spans = match SpanColumns::new(batch) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics generator: batch not processed");
                self.metrics.dropped("invalid", batch.num_rows() as u64);
                return;
            }
        };
        let state = self.tenant(tenant);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        let now = Instant::now();
        let now_ms = unix_ms();
        if let Some(s) = &mut state.span_metrics {
            s.consume(&spans, sizes, &mut state.budget, now, now_ms);
        }
        if let Some(g) = &mut state.graph {
            g.consume(&spans, &mut state.budget, now, now_ms);
        }
        if now.saturating_duration_since(state.last_expiry) >= Duration::from_secs(1) {
            state.expire(now, &self.metrics);
        }
        self.metrics.spans.inc_by(spans.len() as u64);
    }

    /// `tenant`'s series in the Prometheus text format (empty for a tenant never seen).
    pub fn exposition(&self, tenant: &TenantId) -> String {
        let state = {
            let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            tenants.get(tenant).cloned()
        };
        let Some(state) = state else { return String::new() };
        let families =
            state.lock().unwrap_or_else(|e| e.into_inner()).collect(self.settings.stale_after, false, &self.metrics);
        series::exposition(&families)
    }

    /// Collects every tenant each collection interval (remote write, SQL rows), flushes sample
    /// files each SQL flush interval, until `stop`; then collects and flushes a last time.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut collect = tokio::time::interval(self.settings.collection_interval);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        let mut last_retention = Instant::now();
        let mut in_flight: HashMap<(TenantId, String), tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let stopping = tokio::select! {
                _ = collect.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            self.collect_all(&mut in_flight).await;
            if stopping || last_flush.elapsed() >= self.settings.sql_flush_interval {
                last_flush = Instant::now();
                self.flush_sql().await;
            }
            if last_retention.elapsed() >= sql_sink::RETENTION_EVERY {
                last_retention = Instant::now();
                self.apply_retention().await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn collect_all(self: &Arc<Self>, in_flight: &mut HashMap<(TenantId, String), tokio::task::JoinHandle<()>>) {
        let now_ms = unix_ms();
        let mut active = 0;
        let mut pending = 0;
        for (tenant, state) in self.existing_tenants() {
            let (families, targets, sql) = {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                // A tenant with a longer interval than the loop's is collected every few ticks
                // (half a tick of slack so it does not slip by one tick each time).
                let due = state.last_collection.is_none_or(|t| {
                    t.elapsed() + self.settings.collection_interval / 2 >= state.settings.collection_interval
                });
                if !due {
                    continue;
                }
                state.last_collection = Some(Instant::now());
                let sql_due = state.settings.sql
                    && state.last_sql.is_none_or(|t| {
                        t.elapsed() + self.settings.collection_interval / 2 >= self.settings.sql_interval
                    });
                if sql_due {
                    state.last_sql = Some(Instant::now());
                }
                let families = state.collect(self.settings.stale_after, true, &self.metrics);
                active += state.budget.active;
                pending += state.graph.as_ref().map(|g| g.pending()).unwrap_or(0);
                (families, state.settings.remote_write.clone(), sql_due)
            };
            if sql {
                if let Some(sink) = &self.sql {
                    let dropped = sink.lock().await.add(&tenant, &families, now_ms);
                    if dropped > 0 {
                        self.metrics.sql_failures.inc();
                    }
                }
            }
            if targets.is_empty() || families.iter().all(|f| f.samples.is_empty()) {
                continue;
            }
            let request = Arc::new(remote_write::write_request(&families, now_ms));
            for target in targets {
                let key = (tenant.clone(), target.url.clone());
                if in_flight.get(&key).is_some_and(|h| !h.is_finished()) {
                    // The previous request is still going; counters are cumulative, so the
                    // next collection carries these values too.
                    continue;
                }
                let (writer, metrics, tenant, request) =
                    (self.remote.clone(), self.metrics.clone(), tenant.clone(), request.clone());
                let handle = tokio::spawn(async move {
                    match writer.send(&target, tenant.as_str(), &request).await {
                        Ok(n) => {
                            metrics.remote_write_samples.inc_by(n);
                        }
                        Err(e) => {
                            metrics.remote_write_failures.inc();
                            tracing::warn!(error = %e, tenant = %tenant, "metrics generator: remote write failed");
                        }
                    }
                });
                in_flight.insert(key, handle);
            }
        }
        in_flight.retain(|_, h| !h.is_finished());
        self.metrics.active_series.set(active as i64);
        self.metrics.pending_edges.set(pending as i64);
    }

    async fn flush_sql(&self) {
        let Some(sink) = &self.sql else { return };
        match sink.lock().await.flush().await {
            Ok(rows) => {
                self.metrics.sql_rows.inc_by(rows);
            }
            Err(e) => {
                self.metrics.sql_failures.inc();
                tracing::warn!(error = %e, "metrics generator: writing sample files failed; retrying at the next flush");
            }
        }
    }

    async fn apply_retention(&self) {
        let (Some(sink), Some(retention)) = (&self.sql, &self.retention) else { return };
        if let Err(e) = sink.lock().await.apply_retention(retention, unix_ms()).await {
            tracing::warn!(error = %e, "metrics generator: deleting expired sample files failed");
        }
    }
}
