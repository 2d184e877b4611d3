//! Series storage: counters and histograms keyed by label values, with an active-series
//! budget, staleness, exemplars, and the samples every output is made from.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3Builder;

/// A fast hasher for maps keyed by client-chosen text (span names, attribute values), seeded at
/// random per map so nobody can aim for collisions.
pub type FastMap<K, V> = HashMap<K, V, Xxh3Builder>;

/// An empty [`FastMap`] with a random seed.
pub fn fast_map<K, V>() -> FastMap<K, V> {
    let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
    HashMap::with_hasher(Xxh3Builder::new().with_seed(seed))
}

/// Separates label values inside a series key.
const SEP: char = '\u{1f}';

/// The most series a tenant may have, and how many it has.
#[derive(Debug)]
pub struct SeriesBudget {
    /// Most active series.
    pub max: usize,
    /// Active series now.
    pub active: usize,
    /// Series not created because the budget was spent (since the last collection).
    pub refused: u64,
}

impl SeriesBudget {
    /// A budget of `max` series.
    pub fn new(max: usize) -> Self {
        Self { max, active: 0, refused: 0 }
    }
}

/// A trace id observed with a value, attached to the series it landed in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The observed value.
    pub value: f64,
    /// When (unix ms).
    pub timestamp_ms: i64,
}

/// A cumulative histogram over fixed upper bounds (plus +Inf).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    /// Latest exemplar per bucket, taken by the next collection.
    exemplars: Vec<Option<Exemplar>>,
}

impl Histogram {
    /// An empty histogram for `bounds`.
    pub fn new(bounds: &[f64]) -> Self {
        Self { counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0, exemplars: vec![None; bounds.len() + 1] }
    }

    /// Records `value` (a value equal to a bound counts in that bound's bucket).
    pub fn observe(&mut self, bounds: &[f64], value: f64, exemplar: Option<Exemplar>) {
        let bucket = bounds.partition_point(|b| *b < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
        if exemplar.is_some() {
            self.exemplars[bucket] = exemplar;
        }
    }
}

/// Values of one series of a family.
pub trait SeriesValue {
    /// Prometheus series this value produces (for the active-series budget).
    fn series_count(&self) -> usize;
}

impl SeriesValue for Histogram {
    fn series_count(&self) -> usize {
        self.counts.len() + 2
    }
}

/// Series of one shape: label names and, per label-value combination, a value. Values live in
/// a vector and the map points into it, so a span costs one hash lookup.
#[derive(Debug)]
pub struct Family<V> {
    label_names: Vec<String>,
    index: FastMap<Arc<str>, usize>,
    slots: Vec<Slot<V>>,
}

#[derive(Debug)]
struct Slot<V> {
    key: Arc<str>,
    value: V,
    updated: Instant,
}

impl<V: SeriesValue> Family<V> {
    /// A family with these label names.
    pub fn new(label_names: Vec<String>) -> Self {
        Self { label_names, index: fast_map(), slots: Vec::new() }
    }

    /// Label names.
    pub fn label_names(&self) -> &[String] {
        &self.label_names
    }

    /// The series whose label values, joined by [`key_of`], are `key`; created with `make` if the
    /// budget has room for `cost` more series (else `None`, counted in the budget, and `make` is
    /// not called: a tenant over its limit costs no allocation per span).
    pub fn get_or_create(
        &mut self,
        key: &str,
        budget: &mut SeriesBudget,
        now: Instant,
        cost: usize,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        if let Some(&i) = self.index.get(key) {
            let slot = &mut self.slots[i];
            slot.updated = now;
            return Some(&mut slot.value);
        }
        if budget.active + cost > budget.max {
            budget.refused += 1;
            return None;
        }
        let value = make();
        budget.active += value.series_count();
        let key: Arc<str> = Arc::from(key);
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Slot { key, value, updated: now });
        self.slots.last_mut().map(|s| &mut s.value)
    }

    /// Drops series not updated since `now - stale_after`, giving their budget back.
    pub fn drop_stale(&mut self, now: Instant, stale_after: Duration, budget: &mut SeriesBudget) {
        let mut i = 0;
        while i < self.slots.len() {
            if now.saturating_duration_since(self.slots[i].updated) < stale_after {
                i += 1;
                continue;
            }
            let gone = self.slots.swap_remove(i);
            budget.active = budget.active.saturating_sub(gone.value.series_count());
            self.index.remove(&*gone.key);
            if let Some(moved) = self.slots.get(i) {
                if let Some(at) = self.index.get_mut(&*moved.key) {
                    *at = i;
                }
            }
        }
    }

    /// Every series: its labels (name, value) and value.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Vec<(String, String)>, &mut V)> + '_ {
        let names = &self.label_names;
        self.slots.iter_mut().map(move |slot| {
            let labels = names.iter().cloned().zip(slot.key.split(SEP).map(str::to_string)).collect();
            (labels, &mut slot.value)
        })
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the family is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Builds a series key from label values into `buf` (cleared first).
pub fn key_of<'a>(buf: &mut String, values: impl IntoIterator<Item = &'a str>) {
    buf.clear();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            buf.push(SEP);
        }
        // A separator inside a value would shift the labels: replace it.
        if v.contains(SEP) {
            buf.extend(v.chars().map(|c| if c == SEP { ' ' } else { c }));
        } else {
            buf.push_str(v);
        }
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One sample of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Full series name (e.g. `traces_spanmetrics_latency_bucket`).
    pub name: String,
    /// Labels, in family order (`le` last for buckets).
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
    /// An exemplar, when one was observed since the last collection.
    pub exemplar: Option<Exemplar>,
}

/// The samples of one metric family.
#[derive(Debug, Clone)]
pub struct MetricFamily {
    /// Base name (e.g. `traces_spanmetrics_latency`).
    pub name: &'static str,
    /// Kind.
    pub kind: MetricKind,
    /// Help text.
    pub help: &'static str,
    /// Samples.
    pub samples: Vec<Sample>,
}

impl MetricFamily {
    /// An empty family.
    pub fn new(name: &'static str, kind: MetricKind, help: &'static str) -> Self {
        Self { name, kind, help, samples: Vec::new() }
    }

    /// Adds a counter or gauge sample.
    pub fn push(&mut self, labels: Vec<(String, String)>, value: f64, exemplar: Option<Exemplar>) {
        self.samples.push(Sample { name: self.name.to_string(), labels, value, exemplar });
    }

    /// Adds a histogram's `_bucket` (cumulative, with `le`), `_sum` and `_count` samples;
    /// exemplars are taken when `take_exemplars`.
    pub fn push_histogram(
        &mut self,
        labels: Vec<(String, String)>,
        bounds: &[f64],
        h: &mut Histogram,
        take_exemplars: bool,
    ) {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = bounds.get(i).map(|b| format_float(*b)).unwrap_or_else(|| "+Inf".to_string());
            let mut l = labels.clone();
            l.push(("le".to_string(), le));
            let exemplar = if take_exemplars { h.exemplars[i].take() } else { None };
            self.samples.push(Sample {
                name: format!("{}_bucket", self.name),
                labels: l,
                value: cumulative as f64,
                exemplar,
            });
        }
        self.samples.push(Sample {
            name: format!("{}_sum", self.name),
            labels: labels.clone(),
            value: h.sum,
            exemplar: None,
        });
        self.samples.push(Sample {
            name: format!("{}_count", self.name),
            labels,
            value: h.count as f64,
            exemplar: None,
        });
    }
}

/// A float as Prometheus writes it (`0.002`, `1`, `+Inf`).
pub fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v.is_nan() {
        return "NaN".into();
    }
    format!("{v}")
}

/// Renders families in the Prometheus text exposition format 0.0.4.
pub fn exposition(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let kind = match f.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"");
                    for c in v.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '"' => out.push_str("\\\""),
                            '\n' => out.push_str("\\n"),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_float(s.value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        let bounds = [0.1, 0.2];
        let mut h = Histogram::new(&bounds);
        for v in [0.05, 0.1, 0.15, 5.0] {
            h.observe(&bounds, v, None);
        }
        let mut f = MetricFamily::new("x", MetricKind::Histogram, "h");
        f.push_histogram(vec![("a".into(), "1".into())], &bounds, &mut h, true);
        let values: Vec<(String, f64)> =
            f.samples.iter().map(|s| (s.labels.last().map(|l| l.1.clone()).unwrap_or_default(), s.value)).collect();
        assert_eq!(values[0], ("0.1".to_string(), 2.0));
        assert_eq!(values[1], ("0.2".to_string(), 3.0));
        assert_eq!(values[2], ("+Inf".to_string(), 4.0));
        assert_eq!(f.samples[3].name, "x_sum");
        assert!((f.samples[3].value - 5.3).abs() < 1e-9);
        assert_eq!(f.samples[4].value, 4.0);
        let text = exposition(&[f]);
        assert!(text.contains("x_bucket{a=\"1\",le=\"0.1\"} 2\n"), "{text}");
    }

    #[test]
    fn budget_refuses_new_series_and_staleness_returns_it() {
        let bounds = [1.0];
        let mut fam: Family<Histogram> = Family::new(vec!["a".into()]);
        let mut budget = SeriesBudget::new(8);
        let now = Instant::now();
        let make = || Histogram::new(&bounds);
        assert!(fam.get_or_create("x", &mut budget, now, 4, make).is_some());
        assert_eq!(budget.active, 4);
        assert!(fam.get_or_create("y", &mut budget, now, 4, make).is_some());
        assert!(fam.get_or_create("z", &mut budget, now, 4, make).is_none());
        assert_eq!(budget.refused, 1);
        // An existing series is still updated at the limit.
        assert!(fam.get_or_create("x", &mut budget, now, 4, make).is_some());
        fam.drop_stale(now + Duration::from_secs(10), Duration::from_secs(5), &mut budget);
        assert_eq!((fam.len(), budget.active), (0, 0));
    }

    #[test]
    fn dropping_stale_series_keeps_the_rest_findable() {
        let bounds = [1.0];
        let mut fam: Family<Histogram> = Family::new(vec!["a".into()]);
        let mut budget = SeriesBudget::new(100);
        let t0 = Instant::now();
        for k in ["a", "b", "c", "d"] {
            fam.get_or_create(k, &mut budget, t0, 4, || Histogram::new(&bounds));
        }
        for k in ["a", "c"] {
            fam.get_or_create(k, &mut budget, t0 + Duration::from_secs(9), 4, || unreachable!())
                .unwrap()
                .observe(&bounds, 0.5, None);
        }
        fam.drop_stale(t0 + Duration::from_secs(10), Duration::from_secs(5), &mut budget);
        assert_eq!((fam.len(), budget.active), (2, 8));
        for k in ["a", "c"] {
            let h = fam.get_or_create(k, &mut budget, t0, 4, || unreachable!()).unwrap();
            assert_eq!(h.count, 1, "{k}");
        }
        let labels: Vec<String> = fam.iter_mut().map(|(l, _)| l[0].1.clone()).collect();
        assert_eq!(labels.len(), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = MetricFamily::new("c", MetricKind::Counter, "c");
        f.push(vec![("k".into(), "a\"b\\c\nd".into())], 1.0, None);
        assert_eq!(exposition(&[f]).lines().nth(2), Some(r#"c{k="a\"b\\c\nd"} 1"#));
    }
}
