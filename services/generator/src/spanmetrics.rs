//! Span metrics: calls, latency and size per service, span name, kind, status and configured
//! dimensions, with Tempo's names, labels and buckets; plus `traces_target_info`.

use std::time::{Duration, Instant};

use crate::series::{key_of, Exemplar, Family, Histogram, MetricFamily, MetricKind, SeriesBudget, SeriesValue};
use crate::settings::{label_name, span_latency_buckets};
use crate::spans::{kind_label, status_label, SpanColumns};

/// The values of one span-metrics series.
#[derive(Debug)]
pub struct SpanSeries {
    calls: u64,
    size: u64,
    latency: Histogram,
    exemplar: Option<Exemplar>,
}

impl SeriesValue for SpanSeries {
    fn series_count(&self) -> usize {
        2 + self.latency.series_count()
    }
}

/// `traces_target_info` (value 1 per resource seen).
#[derive(Debug)]
pub struct Info;

impl SeriesValue for Info {
    fn series_count(&self) -> usize {
        1
    }
}

/// The span-metrics processor of one tenant.
#[derive(Debug)]
pub struct SpanMetrics {
    /// Attribute names of the extra dimensions.
    dimensions: Vec<String>,
    bounds: Vec<f64>,
    series: Family<SpanSeries>,
    target_info: Family<Info>,
    key: String,
}

impl SpanMetrics {
    /// A processor adding `dimensions` (attribute names) as labels.
    pub fn new(dimensions: &[String]) -> Self {
        // A dimension whose label name is taken (a built-in label or an earlier dimension) is skipped.
        let mut labels: Vec<String> =
            ["service", "span_name", "span_kind", "status_code"].iter().map(|s| s.to_string()).collect();
        let mut kept = Vec::new();
        for d in dimensions {
            let name = label_name(d);
            if !labels.contains(&name) {
                labels.push(name);
                kept.push(d.clone());
            }
        }
        Self {
            dimensions: kept,
            bounds: span_latency_buckets(),
            series: Family::new(labels),
            target_info: Family::new(vec!["job".into(), "instance".into()]),
            key: String::new(),
        }
    }

    /// Counts the spans of a batch; `sizes` are their encoded sizes (bytes).
    pub fn consume(
        &mut self,
        spans: &SpanColumns,
        sizes: &[u32],
        budget: &mut SeriesBudget,
        now: Instant,
        now_ms: i64,
    ) {
        let dims: Vec<_> = self.dimensions.iter().map(|d| spans.attribute(d)).collect();
        let namespace = spans.attribute("service.namespace");
        let instance = spans.attribute("service.instance.id");
        let mut values: Vec<std::borrow::Cow<str>> = Vec::with_capacity(dims.len());
        let mut last_resource: Option<(String, String, String)> = None;
        for i in 0..spans.len() {
            let service = spans.service(i);
            values.clear();
            values.extend(dims.iter().map(|d| d.value(i).unwrap_or_default()));
            key_of(
                &mut self.key,
                [service, spans.name.value(i), kind_label(spans.kind.value(i)), status_label(spans.status.value(i))]
                    .into_iter()
                    .chain(values.iter().map(|v| v.as_ref())),
            );
            let duration = spans.duration_seconds(i);
            let bounds = &self.bounds;
            let cost = 2 + bounds.len() + 3;
            if let Some(s) = self.series.get_or_create(&self.key, budget, now, cost, || SpanSeries {
                calls: 0,
                size: 0,
                latency: Histogram::new(bounds),
                exemplar: None,
            }) {
                s.calls += 1;
                s.size += u64::from(sizes.get(i).copied().unwrap_or(0));
                let exemplar = Exemplar { trace_id: spans.trace_id(i), value: duration, timestamp_ms: now_ms };
                s.latency.observe(bounds, duration, Some(exemplar));
                s.exemplar = Some(Exemplar { value: 1.0, ..exemplar });
            }
            // traces_target_info: one series per resource (job, instance); rows of one resource
            // are adjacent, so only a change of resource costs a lookup.
            let ns = namespace.value(i);
            let inst = instance.value(i);
            let resource = (service, ns.as_deref().unwrap_or(""), inst.as_deref().unwrap_or(""));
            if last_resource.as_ref().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())) != Some(resource) {
                let job = if resource.1.is_empty() { service.to_string() } else { format!("{}/{service}", resource.1) };
                key_of(&mut self.key, [job.as_str(), resource.2]);
                self.target_info.get_or_create(&self.key, budget, now, 1, || Info);
                last_resource = Some((service.to_string(), resource.1.to_string(), resource.2.to_string()));
            }
        }
    }

    /// Drops series idle for `stale_after`.
    pub fn drop_stale(&mut self, now: Instant, stale_after: Duration, budget: &mut SeriesBudget) {
        self.series.drop_stale(now, stale_after, budget);
        self.target_info.drop_stale(now, stale_after, budget);
    }

    /// The current values as metric families.
    pub fn collect(&mut self, take_exemplars: bool) -> Vec<MetricFamily> {
        let mut calls = MetricFamily::new(
            "traces_spanmetrics_calls_total",
            MetricKind::Counter,
            "Spans received, by service, span name, kind and status.",
        );
        let mut latency =
            MetricFamily::new("traces_spanmetrics_latency", MetricKind::Histogram, "Span durations in seconds.");
        let mut size = MetricFamily::new(
            "traces_spanmetrics_size_total",
            MetricKind::Counter,
            "Protobuf-encoded bytes of the spans received.",
        );
        let bounds = &self.bounds;
        for (labels, s) in self.series.iter_mut() {
            let exemplar = if take_exemplars { s.exemplar.take() } else { None };
            calls.push(labels.clone(), s.calls as f64, exemplar);
            size.push(labels.clone(), s.size as f64, None);
            latency.push_histogram(labels, bounds, &mut s.latency, take_exemplars);
        }
        let mut info =
            MetricFamily::new("traces_target_info", MetricKind::Gauge, "One series per resource that sent spans.");
        for (labels, _) in self.target_info.iter_mut() {
            info.push(labels, 1.0, None);
        }
        vec![calls, latency, size, info]
    }
}
