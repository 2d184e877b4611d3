//! Service graphs: edges between services, from a client span and its server child (or a
//! producer and its consumer) in the same trace, with Tempo's names, labels and buckets.
//!
//! - client -> server child: connection_type `""`; producer -> consumer: `messaging_system`.
//! - a client span with `db.name` or `db.system`: an edge to the database at once
//!   (`database`), named by the first of `peer.service`, `server.address`, `db.name`, `db.system`.
//! - a root server (or consumer) span: an edge from the virtual node `user` at once (`virtual_node`).
//! - a client span whose server never comes but that names `peer.service`: after the wait,
//!   an edge to that virtual node (`virtual_node`); without it, counted as unpaired.
//!
//! As in Tempo, both latency histograms are observed for every edge; the side that has no span
//! observes 0 (a database edge's server side observes the client's duration).

use std::time::{Duration, Instant};

use crate::series::{
    fast_map, key_of, Exemplar, Family, FastMap, Histogram, MetricFamily, MetricKind, SeriesBudget, SeriesValue,
};
use crate::settings::service_graph_buckets;
use crate::spans::SpanColumns;

const DATABASE_NAME_ATTRIBUTES: [&str; 4] = ["peer.service", "server.address", "db.name", "db.system"];

/// What happened to edges, for the generator's own metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct EdgeStats {
    /// Edges completed from two spans.
    pub paired: u64,
    /// Edges completed with a virtual node (user, peer, database).
    pub virtual_nodes: u64,
    /// Edges that expired unpaired.
    pub expired: u64,
    /// Spans not kept because the pending store was full.
    pub dropped: u64,
}

#[derive(Debug, Clone)]
struct Side {
    service: String,
    seconds: f64,
    failed: bool,
}

#[derive(Debug)]
struct Pending {
    client: Option<Side>,
    server: Option<Side>,
    messaging: bool,
    peer: Option<String>,
    trace_id: [u8; 16],
    created: Instant,
}

/// Values of one edge series.
#[derive(Debug)]
pub struct EdgeSeries {
    total: u64,
    failed: u64,
    server: Histogram,
    client: Histogram,
}

impl SeriesValue for EdgeSeries {
    fn series_count(&self) -> usize {
        2 + self.server.series_count() + self.client.series_count()
    }
}

/// A plain counter series.
#[derive(Debug, Default)]
pub struct CounterSeries(u64);

impl SeriesValue for CounterSeries {
    fn series_count(&self) -> usize {
        1
    }
}

/// The service-graph processor of one tenant.
#[derive(Debug)]
pub struct ServiceGraph {
    wait: Duration,
    max_items: usize,
    bounds: Vec<f64>,
    pending: FastMap<([u8; 16], [u8; 8]), Pending>,
    edges: Family<EdgeSeries>,
    unpaired: Family<CounterSeries>,
    dropped: Family<CounterSeries>,
    stats: EdgeStats,
    key: String,
}

fn edge_labels() -> Vec<String> {
    vec!["client".into(), "server".into(), "connection_type".into()]
}

impl ServiceGraph {
    /// A processor whose unpaired edges wait `wait`, at most `max_items` of them.
    pub fn new(wait: Duration, max_items: usize) -> Self {
        Self {
            wait,
            max_items,
            bounds: service_graph_buckets(),
            pending: fast_map(),
            edges: Family::new(edge_labels()),
            unpaired: Family::new(edge_labels()),
            dropped: Family::new(edge_labels()),
            stats: EdgeStats::default(),
            key: String::new(),
        }
    }

    /// Edges waiting for their other side.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes the edge counts since the last call.
    pub fn take_stats(&mut self) -> EdgeStats {
        std::mem::take(&mut self.stats)
    }

    /// Pairs the spans of a batch.
    pub fn consume(&mut self, spans: &SpanColumns, budget: &mut SeriesBudget, now: Instant, now_ms: i64) {
        let db_name = spans.attribute("db.name");
        let db_system = spans.attribute("db.system");
        let peer_service = spans.attribute("peer.service");
        let database_names: Vec<_> = DATABASE_NAME_ATTRIBUTES.iter().map(|a| spans.attribute(a)).collect();
        for i in 0..spans.len() {
            let kind = spans.kind.value(i);
            if !matches!(kind, "client" | "server" | "producer" | "consumer") {
                continue;
            }
            let side = Side {
                service: spans.service(i).to_string(),
                seconds: spans.duration_seconds(i),
                failed: spans.status.value(i) == "error",
            };
            let trace_id = spans.trace_id(i);
            let exemplar = Exemplar { trace_id, value: side.seconds, timestamp_ms: now_ms };
            match kind {
                "client" if db_name.value(i).is_some() || db_system.value(i).is_some() => {
                    let name = database_names
                        .iter()
                        .find_map(|a| a.value(i).filter(|v| !v.is_empty()))
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    let server = Side { service: name, ..side.clone() };
                    self.stats.virtual_nodes += 1;
                    self.record(&side, &server, "database", budget, now, exemplar);
                }
                "server" | "consumer" if spans.parent(i).is_none() => {
                    let user = Side { service: "user".into(), seconds: 0.0, failed: false };
                    self.stats.virtual_nodes += 1;
                    self.record(&user, &side, "virtual_node", budget, now, exemplar);
                }
                _ => {
                    let is_client = matches!(kind, "client" | "producer");
                    let span = if is_client { Some(spans.span_id(i)) } else { spans.parent(i) };
                    let Some(span) = span else { continue };
                    let key = (trace_id, span);
                    if !self.pending.contains_key(&key) && self.pending.len() >= self.max_items {
                        self.stats.dropped += 1;
                        let (c, s) = if is_client { (side.service.as_str(), "") } else { ("", side.service.as_str()) };
                        key_of(&mut self.key, [c, s, ""]);
                        if let Some(v) = self.dropped.get_or_create(&self.key, budget, now, 1, CounterSeries::default) {
                            v.0 += 1;
                        }
                        continue;
                    }
                    let entry = self.pending.entry(key).or_insert_with(|| Pending {
                        client: None,
                        server: None,
                        messaging: false,
                        peer: None,
                        trace_id,
                        created: now,
                    });
                    entry.messaging |= matches!(kind, "producer" | "consumer");
                    if is_client {
                        entry.peer = peer_service.value(i).map(|v| v.into_owned());
                        entry.client = Some(side);
                    } else {
                        entry.server = Some(side);
                    }
                    if entry.client.is_some() && entry.server.is_some() {
                        if let Some(p) = self.pending.remove(&key) {
                            let (Some(client), Some(server)) = (p.client, p.server) else { continue };
                            let ty = if p.messaging { "messaging_system" } else { "" };
                            self.stats.paired += 1;
                            let exemplar = Exemplar { value: server.seconds, ..exemplar };
                            self.record(&client, &server, ty, budget, now, exemplar);
                        }
                    }
                }
            }
        }
    }

    fn record(
        &mut self,
        client: &Side,
        server: &Side,
        connection_type: &str,
        budget: &mut SeriesBudget,
        now: Instant,
        exemplar: Exemplar,
    ) {
        key_of(&mut self.key, [client.service.as_str(), server.service.as_str(), connection_type]);
        let bounds = &self.bounds;
        let cost = 2 + 2 * (bounds.len() + 3);
        let Some(e) = self.edges.get_or_create(&self.key, budget, now, cost, || EdgeSeries {
            total: 0,
            failed: 0,
            server: Histogram::new(bounds),
            client: Histogram::new(bounds),
        }) else {
            return;
        };
        e.total += 1;
        if client.failed || server.failed {
            e.failed += 1;
        }
        e.server.observe(bounds, server.seconds, Some(Exemplar { value: server.seconds, ..exemplar }));
        e.client.observe(bounds, client.seconds, Some(Exemplar { value: client.seconds, ..exemplar }));
    }

    /// Completes or gives up the edges that waited `wait`: a client naming `peer.service` gets
    /// a virtual server, anything else is counted as unpaired.
    pub fn expire(&mut self, now: Instant, now_ms: i64, budget: &mut SeriesBudget) {
        let wait = self.wait;
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.created) >= wait)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let Some(p) = self.pending.remove(&key) else { continue };
            match (&p.client, &p.peer) {
                (Some(client), Some(peer)) if p.server.is_none() && !peer.is_empty() => {
                    let server = Side { service: peer.clone(), seconds: 0.0, failed: false };
                    self.stats.virtual_nodes += 1;
                    let exemplar = Exemplar { trace_id: p.trace_id, value: client.seconds, timestamp_ms: now_ms };
                    self.record(client, &server, "virtual_node", budget, now, exemplar);
                }
                _ => {
                    self.stats.expired += 1;
                    let c = p.client.as_ref().map(|s| s.service.as_str()).unwrap_or("");
                    let s = p.server.as_ref().map(|s| s.service.as_str()).unwrap_or("");
                    key_of(&mut self.key, [c, s, ""]);
                    if let Some(v) = self.unpaired.get_or_create(&self.key, budget, now, 1, CounterSeries::default) {
                        v.0 += 1;
                    }
                }
            }
        }
    }

    /// Drops series idle for `stale_after`.
    pub fn drop_stale(&mut self, now: Instant, stale_after: Duration, budget: &mut SeriesBudget) {
        self.edges.drop_stale(now, stale_after, budget);
        self.unpaired.drop_stale(now, stale_after, budget);
        self.dropped.drop_stale(now, stale_after, budget);
    }

    /// The current values as metric families.
    pub fn collect(&mut self, take_exemplars: bool) -> Vec<MetricFamily> {
        let mut total =
            MetricFamily::new("traces_service_graph_request_total", MetricKind::Counter, "Requests between two nodes.");
        let mut failed = MetricFamily::new(
            "traces_service_graph_request_failed_total",
            MetricKind::Counter,
            "Failed requests between two nodes.",
        );
        let mut server = MetricFamily::new(
            "traces_service_graph_request_server_seconds",
            MetricKind::Histogram,
            "Request time between two nodes as seen from the server.",
        );
        let mut client = MetricFamily::new(
            "traces_service_graph_request_client_seconds",
            MetricKind::Histogram,
            "Request time between two nodes as seen from the client.",
        );
        let bounds = &self.bounds;
        for (labels, e) in self.edges.iter_mut() {
            total.push(labels.clone(), e.total as f64, None);
            if e.failed > 0 {
                failed.push(labels.clone(), e.failed as f64, None);
            }
            server.push_histogram(labels.clone(), bounds, &mut e.server, take_exemplars);
            client.push_histogram(labels, bounds, &mut e.client, take_exemplars);
        }
        let mut unpaired = MetricFamily::new(
            "traces_service_graph_unpaired_spans_total",
            MetricKind::Counter,
            "Spans whose other side never arrived.",
        );
        for (labels, v) in self.unpaired.iter_mut() {
            unpaired.push(labels, v.0 as f64, None);
        }
        let mut dropped = MetricFamily::new(
            "traces_service_graph_dropped_spans_total",
            MetricKind::Counter,
            "Spans not paired because too many edges were waiting.",
        );
        for (labels, v) in self.dropped.iter_mut() {
            dropped.push(labels, v.0 as f64, None);
        }
        vec![total, failed, server, client, unpaired, dropped]
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::RecordBatch;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::series::exposition;

    fn span(
        service: &str,
        trace: u8,
        id: u8,
        parent: Option<u8>,
        kind: SpanKind,
        attrs: &[(&str, &str)],
    ) -> ResourceSpans {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        };
        ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![trace; 16],
                    span_id: vec![id; 8],
                    parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
                    name: "op".into(),
                    kind: kind as i32,
                    start_time_unix_nano: 1_000_000_000,
                    end_time_unix_nano: 1_250_000_000,
                    attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn batch(spans: Vec<ResourceSpans>) -> RecordBatch {
        spindle_otlp::to_arrow::resource_spans_to_batch(&spans).unwrap().batch
    }

    fn scrape(g: &mut ServiceGraph) -> String {
        exposition(&g.collect(false))
    }

    #[test]
    fn pairs_across_batches_and_bounds_what_waits() {
        let mut g = ServiceGraph::new(Duration::from_secs(10), 2);
        let mut budget = SeriesBudget::new(10_000);
        let t0 = Instant::now();
        // Three clients wait for servers; the store holds two, the third is dropped and counted.
        let clients = batch(vec![
            span("a", 1, 1, None, SpanKind::Client, &[]),
            span("a", 2, 2, None, SpanKind::Client, &[("peer.service", "ext")]),
            span("a", 3, 3, None, SpanKind::Client, &[]),
        ]);
        g.consume(&SpanColumns::new(&clients).unwrap(), &mut budget, t0, 0);
        assert_eq!(g.pending(), 2);
        assert!(scrape(&mut g)
            .contains("traces_service_graph_dropped_spans_total{client=\"a\",server=\"\",connection_type=\"\"} 1"));
        // The server of trace 1 arrives in a later batch: one paired edge.
        let server = batch(vec![span("b", 1, 9, Some(1), SpanKind::Server, &[])]);
        g.consume(&SpanColumns::new(&server).unwrap(), &mut budget, t0, 0);
        let text = scrape(&mut g);
        assert!(
            text.contains("traces_service_graph_request_total{client=\"a\",server=\"b\",connection_type=\"\"} 1"),
            "{text}"
        );
        assert!(text.contains("traces_service_graph_request_server_seconds_bucket{client=\"a\",server=\"b\",connection_type=\"\",le=\"0.4\"} 1"), "{text}");
        // Nothing expires before the wait; after it, the client naming peer.service becomes a
        // virtual edge.
        g.expire(t0 + Duration::from_secs(9), 0, &mut budget);
        assert_eq!(g.pending(), 1);
        g.expire(t0 + Duration::from_secs(10), 0, &mut budget);
        assert_eq!(g.pending(), 0);
        let text = scrape(&mut g);
        assert!(
            text.contains(
                "traces_service_graph_request_total{client=\"a\",server=\"ext\",connection_type=\"virtual_node\"} 1"
            ),
            "{text}"
        );
        let stats = g.take_stats();
        assert_eq!((stats.paired, stats.virtual_nodes, stats.dropped), (1, 1, 1));
    }

    #[test]
    fn database_and_root_edges_need_no_pair() {
        let mut g = ServiceGraph::new(Duration::from_secs(10), 100);
        let mut budget = SeriesBudget::new(10_000);
        let spans = batch(vec![
            span("a", 1, 1, None, SpanKind::Server, &[]),
            span("a", 1, 2, Some(1), SpanKind::Client, &[("db.system", "postgresql"), ("db.name", "orders")]),
        ]);
        g.consume(&SpanColumns::new(&spans).unwrap(), &mut budget, Instant::now(), 0);
        assert_eq!(g.pending(), 0);
        let text = scrape(&mut g);
        assert!(
            text.contains(
                "traces_service_graph_request_total{client=\"user\",server=\"a\",connection_type=\"virtual_node\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "traces_service_graph_request_total{client=\"a\",server=\"orders\",connection_type=\"database\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_spent_series_budget_refuses_new_edges() {
        let mut g = ServiceGraph::new(Duration::from_secs(10), 100);
        let one_edge = 2 + 2 * (service_graph_buckets().len() + 3);
        let mut budget = SeriesBudget::new(one_edge);
        let spans =
            batch(vec![span("a", 1, 1, None, SpanKind::Server, &[]), span("b", 2, 2, None, SpanKind::Server, &[])]);
        g.consume(&SpanColumns::new(&spans).unwrap(), &mut budget, Instant::now(), 0);
        assert_eq!((budget.active, budget.refused), (one_edge, 1));
        assert_eq!(scrape(&mut g).matches("traces_service_graph_request_total{").count(), 1);
    }
}
