//! `ackbench`: how fast Spindle acknowledges OTLP/gRPC exports.
//!
//! An OpenTelemetry SDK exports one batch at a time and a Collector a few in parallel, so the
//! time to acknowledge one request bounds their throughput. `ackbench` measures exactly that:
//! `--concurrency` callers each send one request, wait for the answer, and send the next
//! (optionally paced to `--rate` requests per second in total). Requests are realistic
//! `loadsim` traffic encoded once up front; every send copies a template and changes its trace
//! ids in place (XOR with a counter), so each request carries new traces without spending the
//! benchmark's CPU on protobuf encoding.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use spindle_loadtest::traffic::Traffic;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

/// Acknowledgement latency and throughput of pre-encoded OTLP/gRPC exports.
#[derive(Debug, Parser)]
#[command(name = "ackbench", version, about)]
struct Args {
    /// OTLP/gRPC endpoint, host:port.
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: String,
    /// Spans per request (whole traces, so slightly more).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Callers, each with one request in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests per second over all callers; 0 sends the next request as soon as the last is answered.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Sending before measuring starts, in seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Distinct requests encoded up front.
    #[arg(long, default_value_t = 64)]
    templates: usize,
    /// Simulated services in the traffic.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// Tenant (x-scope-orgid).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

/// A request encoded once, with the byte offsets of every trace id in it.
struct Template {
    bytes: Vec<u8>,
    trace_id_offsets: Vec<usize>,
    spans: u64,
}

impl Template {
    fn new(request: &ExportTraceServiceRequest) -> Self {
        let bytes = request.encode_to_vec();
        let mut ids: HashSet<&[u8]> = HashSet::new();
        let mut spans = 0;
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            spans += 1;
            ids.insert(&span.trace_id);
            ids.extend(span.links.iter().map(|l| l.trace_id.as_slice()));
        }
        let trace_id_offsets =
            (0..bytes.len().saturating_sub(15)).filter(|&i| ids.contains(&bytes[i..i + 16])).collect();
        Self { bytes, trace_id_offsets, spans }
    }

    /// A copy whose trace ids are changed by `n` (distinct ids stay distinct, links stay valid).
    fn variant(&self, n: u64) -> Bytes {
        let mut out = self.bytes.clone();
        let x = n.to_le_bytes();
        for &o in &self.trace_id_offsets {
            for (b, k) in out[o..o + 8].iter_mut().zip(x) {
                *b ^= k;
            }
        }
        Bytes::from(out)
    }
}

/// Sends already-encoded request bodies; decodes the response.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

#[derive(Default)]
struct Stats {
    latencies: Vec<f64>,
    spans: u64,
    errors: BTreeMap<String, u64>,
}

async fn export(channel: Channel, body: Bytes, tenant: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    if let Some(t) = tenant {
        request.metadata_mut().insert("x-scope-orgid", t.parse().map_err(|_| Status::invalid_argument("tenant"))?);
    }
    let path = PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    grpc.unary(request, path, RawCodec).await.map(|_| ())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut traffic = Traffic::new(args.services, args.seed, 0.02);
    let templates: Arc<Vec<Template>> = Arc::new(
        (0..args.templates.max(1))
            .map(|_| Template::new(&ExportTraceServiceRequest { resource_spans: traffic.request(args.batch) }))
            .collect(),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.endpoint))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let counter = Arc::new(AtomicU64::new(args.seed << 40));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let deadline = measure_from + Duration::from_secs_f64(args.duration);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
    let mut callers = Vec::new();
    for c in 0..args.concurrency.max(1) {
        let (channel, templates, stats, counter) = (channel.clone(), templates.clone(), stats.clone(), counter.clone());
        let tenant = args.tenant_id.clone();
        let concurrency = args.concurrency.max(1) as u32;
        callers.push(tokio::spawn(async move {
            let mut next = Instant::now() + interval.map(|i| i * c as u32 / concurrency).unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let template = &templates[(n % templates.len() as u64) as usize];
                let body = template.variant(n);
                let sent = Instant::now();
                let result = export(channel.clone(), body, tenant.as_deref()).await;
                let latency = sent.elapsed().as_secs_f64();
                if sent < measure_from {
                    continue;
                }
                let Ok(mut st) = stats.lock() else { return };
                match result {
                    Ok(()) => {
                        st.latencies.push(latency);
                        st.spans += template.spans;
                    }
                    Err(status) => *st.errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            }
        }));
    }
    for c in callers {
        c.await?;
    }
    let seconds = Instant::now().min(deadline).saturating_duration_since(measure_from).as_secs_f64().max(1e-9);
    let mut st = std::mem::take(&mut *stats.lock().map_err(|_| anyhow::anyhow!("stats lock poisoned"))?);
    st.latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let l = &st.latencies;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0.0) * 1000.0
    };
    let summary = serde_json::json!({
        "endpoint": args.endpoint,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": seconds,
        "requests": st.latencies.len(),
        "errors": st.errors,
        "spans_per_second": st.spans as f64 / seconds,
        "requests_per_second": st.latencies.len() as f64 / seconds,
        "ack_latency_ms": { "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": st.latencies.last().copied().unwrap_or(0.0) * 1000.0 },
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
