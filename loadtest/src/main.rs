//! `loadsim`: sends realistic OpenTelemetry traces to an OTLP/gRPC endpoint at a target rate
//! (or as fast as the server takes them) and reports throughput and export latency.

mod traffic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::Code;

/// Realistic OTLP trace load.
#[derive(Debug, Parser)]
#[command(name = "loadsim", version, about)]
struct Args {
    /// OTLP/gRPC endpoint (host:port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: String,
    /// Number of simulated services.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// Spans per second per service; 0 sends as fast as the server accepts.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Spans per export request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Export requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of traces that fail.
    #[arg(long, default_value_t = 0.02)]
    error_ratio: f64,
    /// Tenant (sent as x-scope-orgid).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
    bytes: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = format!("http://{}", args.endpoint);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await.with_context(|| format!("connecting to {url}"))?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let target_rate = args.rate * args.services as f64;
    let per_worker_interval = if target_rate > 0.0 {
        Some(Duration::from_secs_f64(args.batch as f64 * args.concurrency as f64 / target_rate))
    } else {
        None
    };
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut client = TraceServiceClient::new(channel.clone()).max_encoding_message_size(64 << 20);
        let counters = counters.clone();
        let latencies = latencies.clone();
        let tenant = args.tenant_id.clone();
        let mut traffic = traffic::Traffic::new(args.services, args.seed.wrapping_mul(1000).wrapping_add(w as u64), args.error_ratio);
        let batch = args.batch;
        workers.push(tokio::spawn(async move {
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(interval) = per_worker_interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let resource_spans = traffic.request(batch);
                let spans: u64 = resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum();
                let message = ExportTraceServiceRequest { resource_spans };
                let size = message.encoded_len() as u64;
                let mut attempt = 0;
                loop {
                    let mut request = tonic::Request::new(message.clone());
                    if let Some(t) = &tenant {
                        if let Ok(v) = t.parse() {
                            request.metadata_mut().insert("x-scope-orgid", v);
                        }
                    }
                    let t0 = Instant::now();
                    let result = client.export(request).await;
                    let elapsed = t0.elapsed().as_secs_f64();
                    match result {
                        Ok(r) => {
                            let rejected = r.into_inner().partial_success.map(|p| p.rejected_spans.max(0) as u64).unwrap_or(0);
                            counters.sent.fetch_add(spans, Ordering::Relaxed);
                            counters.acked.fetch_add(spans - rejected.min(spans), Ordering::Relaxed);
                            counters.rejected.fetch_add(rejected, Ordering::Relaxed);
                            counters.bytes.fetch_add(size, Ordering::Relaxed);
                            if let Ok(mut l) = latencies.lock() {
                                l.push(elapsed);
                            }
                            break;
                        }
                        Err(status) if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) && attempt < 5 => {
                            attempt += 1;
                            counters.retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                        Err(status) => {
                            counters.sent.fetch_add(spans, Ordering::Relaxed);
                            counters.rejected.fetch_add(spans, Ordering::Relaxed);
                            eprintln!("export failed: {:?} {}", status.code(), status.message());
                            break;
                        }
                    }
                }
            }
        }));
    }
    let progress = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let acked = counters.acked.load(Ordering::Relaxed);
                eprintln!("loadsim: {acked} spans acknowledged ({:.0}/s over the last 5 s)", (acked - last) as f64 / 5.0);
                last = acked;
            }
        })
    };
    for w in workers {
        w.await?;
    }
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0.0) * 1000.0;
    let acked = counters.acked.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "seconds": secs,
        "spans_sent": counters.sent.load(Ordering::Relaxed),
        "spans_acknowledged": acked,
        "spans_rejected": counters.rejected.load(Ordering::Relaxed),
        "requests_retried": counters.retried.load(Ordering::Relaxed),
        "spans_per_second": acked as f64 / secs,
        "megabytes_per_second": bytes as f64 / secs / 1e6,
        "bytes_per_span_otlp": if acked > 0 { bytes as f64 / acked as f64 } else { 0.0 },
        "export_latency_ms": { "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": l.last().copied().unwrap_or(0.0) * 1000.0 },
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
