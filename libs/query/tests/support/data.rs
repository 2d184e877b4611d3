//! Generated traces for differential tests: nested spans across services, errors, events,
//! links, attributes of every type (including one key whose type changes between spans, and a
//! key set on both span and resource), orphans and traces without a root.

use arrow::record_batch::RecordBatch;
use spindle_otlp::otlp::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use spindle_otlp::otlp::resource::v1::Resource;
use spindle_otlp::otlp::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An OTLP `ArrayValue`.
    Array(Vec<Val>),
}

impl Val {
    fn any(&self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                Val::Str(s) => any_value::Value::StringValue(s.clone()),
                Val::Int(i) => any_value::Value::IntValue(*i),
                Val::Float(f) => any_value::Value::DoubleValue(*f),
                Val::Bool(b) => any_value::Value::BoolValue(*b),
                Val::Array(items) => {
                    any_value::Value::ArrayValue(ArrayValue { values: items.iter().map(Val::any).collect() })
                }
            }),
        }
    }
}

/// A span event.
#[derive(Debug, Clone)]
pub struct TEvent {
    pub time: i64,
    pub name: String,
    pub attrs: Vec<(String, Val)>,
}

/// A span link.
#[derive(Debug, Clone)]
pub struct TLink {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub attrs: Vec<(String, Val)>,
}

/// A span as the reference evaluator sees it.
#[derive(Debug, Clone)]
pub struct TSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    /// OTLP kind number (0..=5).
    pub kind: i32,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    pub status_message: String,
    pub start: i64,
    pub duration: i64,
    /// Resource attributes; `service.name` first.
    pub resource: Vec<(String, Val)>,
    pub attrs: Vec<(String, Val)>,
    pub scope_name: String,
    pub scope_version: String,
    pub scope_attrs: Vec<(String, Val)>,
    pub events: Vec<TEvent>,
    pub links: Vec<TLink>,
}

impl TSpan {
    /// The service (`service.name`), or "".
    pub fn service(&self) -> String {
        match self.resource.iter().find(|(k, _)| k == "service.name") {
            Some((_, Val::Str(s))) => s.clone(),
            _ => String::new(),
        }
    }
}

/// A small deterministic random generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Start of the generated data (unix ns).
pub const T0: i64 = 1_700_000_000_000_000_000;
/// The data spans ten minutes.
pub const SPAN_OF_DATA: i64 = 600_000_000_000;

pub const SERVICES: [&str; 4] = ["api", "cart", "db", "auth"];
pub const NAMES: [&str; 6] = ["GET /", "POST /cart", "SELECT", "auth.check", "render", "queue.send"];

/// Generates `n` traces.
pub fn traces(seed: u64, n: usize) -> Vec<Vec<TSpan>> {
    let mut r = Rng::new(seed);
    (0..n).map(|t| trace(&mut r, t)).collect()
}

fn id<const N: usize>(r: &mut Rng) -> [u8; N] {
    let mut out = [0u8; N];
    for b in out.iter_mut() {
        *b = r.next() as u8;
    }
    out
}

fn trace(r: &mut Rng, t: usize) -> Vec<TSpan> {
    let mut trace_id: [u8; 16] = id(r);
    if t.is_multiple_of(17) {
        // Ids with leading zero bytes (Tempo prints them without leading zeros).
        trace_id[0] = 0;
        trace_id[1] = 0;
    }
    let n = 1 + r.below(9) as usize;
    let start = T0 + r.below(SPAN_OF_DATA as u64) as i64;
    let mut spans: Vec<TSpan> = Vec::with_capacity(n);
    for i in 0..n {
        let parent = if i == 0 {
            // Some traces lack their root: the first span points at a span that never arrived.
            if r.chance(10) {
                Some(id::<8>(r))
            } else {
                None
            }
        } else if r.chance(5) {
            Some(id::<8>(r)) // an orphan subtree
        } else {
            Some(spans[r.below(i as u64) as usize].span_id)
        };
        let parent_start = parent.and_then(|p| spans.iter().find(|s| s.span_id == p)).map_or(start, |s| s.start);
        let span_start = parent_start + r.below(5_000_000) as i64;
        let duration = match r.below(10) {
            0 => 0,
            1 => 1,
            2..=7 => 100_000 + r.below(50_000_000) as i64,
            _ => 1_000_000_000 + r.below(3_000_000_000) as i64,
        };
        let service = r.pick(&SERVICES).to_string();
        let mut resource = vec![("service.name".to_string(), Val::Str(service.clone()))];
        if r.chance(50) {
            resource.push(("deployment.environment".into(), Val::Str(r.pick(&["prod", "dev"]).to_string())));
        }
        if r.chance(40) {
            resource.push(("region".into(), Val::Str(r.pick(&["eu", "us"]).to_string())));
        }
        if r.chance(30) {
            resource.push(("shared".into(), Val::Str(r.pick(&["res-a", "res-b"]).to_string())));
        }
        let mut attrs = Vec::new();
        if r.chance(60) {
            attrs.push(("http.status_code".to_string(), Val::Int(*r.pick(&[200, 201, 404, 500, 503]))));
        }
        if i == 0 || r.chance(10) {
            attrs.push(("user.id".into(), Val::Str(format!("u{}", r.below(40)))));
        }
        if r.chance(40) {
            attrs.push(("retries".into(), Val::Int(r.below(5) as i64 - 1)));
        }
        if r.chance(40) {
            attrs.push(("ratio".into(), Val::Float((r.below(400) as f64) / 100.0)));
        }
        if r.chance(30) {
            attrs.push(("flag".into(), Val::Bool(r.chance(50))));
        }
        if r.chance(25) {
            attrs.push(("shared".into(), Val::Str(r.pick(&["span-a", "res-a"]).to_string())));
        }
        if r.chance(40) {
            // One key, three types.
            attrs.push((
                "mixed".into(),
                match r.below(3) {
                    0 => Val::Int(r.below(4) as i64),
                    1 => Val::Float(r.below(4) as f64),
                    _ => Val::Str(format!("{}", r.below(4))),
                },
            ));
        }
        if r.chance(20) {
            attrs.push(("http.route".into(), Val::Str(r.pick(&["/a", "/b/c", "/a/b"]).to_string())));
        }
        if r.chance(30) {
            // An array attribute (Tempo 3.0 matches its elements): strings, integers, mixed, empty.
            let n = r.below(3) + 1;
            let items = match r.below(4) {
                0 => (0..n).map(|_| Val::Str(r.pick(&["a", "b", "bb", "c"]).to_string())).collect(),
                1 => (0..n).map(|_| Val::Int(r.below(5) as i64 - 1)).collect(),
                2 => vec![Val::Str("a".into()), Val::Int(2), Val::Bool(true)],
                _ => Vec::new(),
            };
            attrs.push(("arr".into(), Val::Array(items)));
        }
        let mut events = Vec::new();
        for _ in 0..r.below(4) {
            let mut ea = Vec::new();
            if r.chance(60) {
                ea.push(("e.code".to_string(), Val::Int(r.below(3) as i64)));
            }
            if r.chance(60) {
                ea.push(("e.msg".to_string(), Val::Str(r.pick(&["boom", "ok", "retry"]).to_string())));
            }
            events.push(TEvent {
                time: span_start + r.below((duration.max(2)) as u64) as i64,
                name: r.pick(&["exception", "retry", "log"]).to_string(),
                attrs: ea,
            });
        }
        let mut links = Vec::new();
        for _ in 0..r.below(3).saturating_sub(1) {
            let mut la = Vec::new();
            if r.chance(70) {
                la.push(("l.kind".to_string(), Val::Str(r.pick(&["follows", "batch"]).to_string())));
            }
            links.push(TLink { trace_id: id(r), span_id: id(r), attrs: la });
        }
        let scope = r.below(3);
        spans.push(TSpan {
            trace_id,
            span_id: id(r),
            parent,
            name: r.pick(&NAMES).to_string(),
            kind: r.below(6) as i32,
            status: *r.pick(&[0, 0, 1, 2]),
            status_message: if r.chance(20) { "failed".into() } else { String::new() },
            start: span_start,
            duration,
            resource,
            attrs,
            scope_name: ["lib-a", "lib-b", ""][scope as usize].to_string(),
            scope_version: ["1.0", "2.1", ""][scope as usize].to_string(),
            scope_attrs: if scope == 0 { vec![("scope.attr".into(), Val::Str("x".into()))] } else { Vec::new() },
            events,
            links,
        });
    }
    spans
}

fn kvs(attrs: &[(String, Val)]) -> Vec<KeyValue> {
    attrs.iter().map(|(k, v)| KeyValue { key: k.clone(), value: Some(v.any()), ..Default::default() }).collect()
}

/// One span as OTLP (one resource and scope each).
pub fn to_otlp(s: &TSpan) -> ResourceSpans {
    let span = Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: s.kind,
        start_time_unix_nano: s.start as u64,
        end_time_unix_nano: (s.start + s.duration) as u64,
        attributes: kvs(&s.attrs),
        events: s
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: e.time as u64,
                name: e.name.clone(),
                attributes: kvs(&e.attrs),
                ..Default::default()
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                attributes: kvs(&l.attrs),
                ..Default::default()
            })
            .collect(),
        status: Some(Status { code: s.status, message: s.status_message.clone() }),
        ..Default::default()
    };
    ResourceSpans {
        resource: Some(Resource { attributes: kvs(&s.resource), ..Default::default() }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: s.scope_name.clone(),
                version: s.scope_version.clone(),
                attributes: kvs(&s.scope_attrs),
                ..Default::default()
            }),
            spans: vec![span],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Spans as one Arrow batch.
pub fn batch(spans: &[&TSpan]) -> RecordBatch {
    let rs: Vec<ResourceSpans> = spans.iter().map(|s| to_otlp(s)).collect();
    let converted = spindle_otlp::to_arrow::resource_spans_to_batch(&rs).expect("convert");
    assert_eq!(converted.rejected, 0, "{:?}", converted.first_error);
    converted.batch
}

/// Spreads the spans over `blocks` blocks and unflushed data at random, so most traces are split.
pub fn spread(traces: &[Vec<TSpan>], blocks: usize, seed: u64) -> (Vec<Vec<RecordBatch>>, Vec<RecordBatch>) {
    let mut r = Rng::new(seed);
    let mut parts: Vec<Vec<&TSpan>> = vec![Vec::new(); blocks + 1];
    for s in traces.iter().flatten() {
        parts[r.below(blocks as u64 + 1) as usize].push(s);
    }
    let unflushed = parts.pop().unwrap_or_default();
    let blocks = parts.into_iter().filter(|p| !p.is_empty()).map(|p| vec![batch(&p)]).collect();
    let unflushed = if unflushed.is_empty() { Vec::new() } else { vec![batch(&unflushed)] };
    (blocks, unflushed)
}
