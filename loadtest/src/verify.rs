//! Read-back verification: a random sample of acknowledged traces is fetched through the Tempo
//! API and every span of each must come back with its name, times and attributes.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use spindle_proto::tempo::TraceByIdResponse;
use xxhash_rust::xxh3::xxh3_64;

use crate::traffic::Rng;

/// A digest of what must survive: name, kind, times, attributes (order-insensitive), events, links.
pub fn span_digest(span: &Span) -> u64 {
    let mut attrs: Vec<&KeyValue> = span.attributes.iter().collect();
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(span.name.as_bytes());
    buf.extend_from_slice(&span.kind.to_le_bytes());
    buf.extend_from_slice(&span.start_time_unix_nano.to_le_bytes());
    buf.extend_from_slice(&span.end_time_unix_nano.to_le_bytes());
    buf.extend_from_slice(&span.parent_span_id);
    for a in attrs {
        a.encode(&mut buf).ok();
    }
    for e in &span.events {
        e.encode(&mut buf).ok();
    }
    for l in &span.links {
        l.encode(&mut buf).ok();
    }
    xxh3_64(&buf)
}

/// A sampled trace: its tenant, its id, and the digest of each of its spans by span id.
pub type SampledTrace = (Option<String>, [u8; 16], HashMap<[u8; 8], u64>);

/// A uniform random sample (reservoir) of acknowledged traces, with their span digests.
pub struct Sample {
    capacity: usize,
    seen: u64,
    rng: Rng,
    /// (tenant, trace id) -> span id -> digest.
    pub traces: Vec<SampledTrace>,
}

impl Sample {
    /// A reservoir of `capacity` traces.
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self { capacity, seen: 0, rng: Rng::new(seed ^ 0xA5A5), traces: Vec::new() }
    }

    /// Offers every trace of an acknowledged request.
    pub fn offer(&mut self, tenant: Option<&str>, request: &[ResourceSpans]) {
        let mut by_trace: HashMap<[u8; 16], HashMap<[u8; 8], u64>> = HashMap::new();
        for span in request.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            let (Ok(t), Ok(s)) =
                (<[u8; 16]>::try_from(span.trace_id.as_slice()), <[u8; 8]>::try_from(span.span_id.as_slice()))
            else {
                continue;
            };
            by_trace.entry(t).or_default().insert(s, span_digest(span));
        }
        for (trace, spans) in by_trace {
            self.seen += 1;
            let entry = (tenant.map(str::to_string), trace, spans);
            if self.traces.len() < self.capacity {
                self.traces.push(entry);
            } else {
                let j = self.rng.below(self.seen) as usize;
                if j < self.capacity {
                    self.traces[j] = entry;
                }
            }
        }
    }

    /// Spans in the sample.
    pub fn spans(&self) -> u64 {
        self.traces.iter().map(|t| t.2.len() as u64).sum()
    }
}

/// Result of a verification.
#[derive(Debug, Default)]
pub struct Verified {
    /// Traces read back.
    pub traces: u64,
    /// Spans checked.
    pub spans: u64,
    /// Spans missing.
    pub lost_spans: u64,
    /// Spans present but different.
    pub wrong_spans: u64,
    /// Reads that failed (HTTP errors).
    pub failed_reads: u64,
}

/// Reads every sampled trace from `query_endpoint` (host:port of the Tempo API) and compares.
pub async fn verify(sample: &Sample, query_endpoint: &str) -> Verified {
    let client = reqwest::Client::new();
    let mut v = Verified::default();
    for (tenant, trace_id, spans) in &sample.traces {
        v.traces += 1;
        v.spans += spans.len() as u64;
        let url = format!("http://{query_endpoint}/api/v2/traces/{}", hex::encode(trace_id));
        let mut r = client.get(url).header("accept", "application/protobuf");
        if let Some(t) = tenant {
            r = r.header("x-scope-orgid", t);
        }
        let body = match r.send().await {
            Ok(resp) if resp.status().is_success() => resp.bytes().await.ok(),
            _ => None,
        };
        let Some(body) = body.and_then(|b| TraceByIdResponse::decode(b.as_ref()).ok()) else {
            v.failed_reads += 1;
            v.lost_spans += spans.len() as u64;
            continue;
        };
        let got: HashMap<Vec<u8>, u64> = body
            .trace
            .unwrap_or_default()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| (s.span_id.clone(), span_digest(s)))
            .collect();
        for (span_id, digest) in spans {
            match got.get(span_id.as_slice()) {
                None => v.lost_spans += 1,
                Some(d) if d != digest => v.wrong_spans += 1,
                Some(_) => {}
            }
        }
    }
    v
}
