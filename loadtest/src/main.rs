//! `loadsim`: realistic OpenTelemetry trace load over OTLP/gRPC or OTLP/HTTP at a target rate
//! (or as fast as the server takes it), with live progress, a final summary, and `--verify`,
//! which reads a random sample of acknowledged traces back through the Tempo API and fails if
//! any acknowledged span is missing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use spindle_loadtest::export::{Exporter, Outcome};
use spindle_loadtest::{traffic, verify};

/// Realistic OTLP trace load that checks nothing acknowledged was lost.
#[derive(Debug, Parser)]
#[command(name = "loadsim", version, about)]
struct Args {
    /// OTLP endpoint, host:port [127.0.0.1:4317 for grpc, 127.0.0.1:4318 for http].
    #[arg(long)]
    endpoint: Option<String>,
    /// OTLP transport: grpc or http (protobuf).
    #[arg(long, default_value = "grpc")]
    protocol: String,
    /// Number of simulated services.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// Spans per second per service; 0 sends as fast as the server accepts.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long to send (e.g. 60s, 2m, 500ms, or seconds).
    #[arg(long, default_value = "60s", value_parser = spindle_types::parse_std_duration)]
    duration: Duration,
    /// Sending before measuring starts (not counted in rates and latencies).
    #[arg(long, default_value = "0s", value_parser = spindle_types::parse_std_duration)]
    warmup: Duration,
    /// Spread traffic over this many tenants (tenant-0 .. tenant-N-1).
    #[arg(long, default_value_t = 0)]
    tenants: usize,
    /// Send everything as this tenant (x-scope-orgid).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Stop once this many spans are acknowledged (0: no limit; the duration still applies).
    #[arg(long, default_value_t = 0)]
    max_spans: u64,
    /// Spans per export request (whole traces, so slightly more).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Export requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seed: the same seed sends the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of traces that fail (error status and exception events).
    #[arg(long, default_value_t = 0.02)]
    error_ratio: f64,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long)]
    api_key: Option<String>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// After the run, read a random sample of acknowledged traces back and check every span.
    #[arg(long)]
    verify: bool,
    /// Traces in the verification sample.
    #[arg(long, default_value_t = 5000)]
    verify_sample: usize,
    /// Tempo query API for --verify, host:port.
    #[arg(long, default_value = "127.0.0.1:3200")]
    query_endpoint: String,
}

#[derive(Default)]
struct Stats {
    sent_spans: u64,
    acked_spans: u64,
    rejected: BTreeMap<String, u64>,
    retries: u64,
    retries_by_reason: BTreeMap<String, u64>,
    bytes: u64,
    requests: BTreeMap<String, u64>,
    latencies: Vec<f64>,
    measured_acked: u64,
    measured_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| if args.protocol == "http" { "127.0.0.1:4318" } else { "127.0.0.1:4317" }.to_string());
    let exporter =
        Exporter::connect(&args.protocol, &endpoint).await.with_context(|| format!("connecting to {endpoint}"))?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let sample = Arc::new(Mutex::new(verify::Sample::new(if args.verify { args.verify_sample } else { 0 }, args.seed)));
    let target = args.rate * args.services as f64;
    let interval =
        (target > 0.0).then(|| Duration::from_secs_f64(args.batch as f64 * args.concurrency as f64 / target));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = measure_from + args.duration;
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut exporter = exporter.clone();
        let stats = stats.clone();
        let sample = sample.clone();
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(w as u64);
        let mut traffic = traffic::Traffic::new(args.services, seed, args.error_ratio);
        let (batch, tenants, tenant_id, api_key, verify) =
            (args.batch, args.tenants, args.tenant_id.clone(), args.api_key.clone(), args.verify);
        let concurrency = args.concurrency.max(1);
        let max_spans = args.max_spans;
        workers.push(tokio::spawn(async move {
            // Stagger workers over one interval so a paced run does not start with a burst.
            let mut next =
                Instant::now() + interval.map(|i| i.mul_f64(w as f64 / concurrency as f64)).unwrap_or_default();
            let mut n = w;
            while Instant::now() < deadline {
                if max_spans > 0 && stats.lock().map(|s| s.acked_spans >= max_spans).unwrap_or(true) {
                    break;
                }
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let tenant = tenant_id.clone().or_else(|| (tenants > 0).then(|| format!("tenant-{}", n % tenants)));
                n += 1;
                let request = ExportTraceServiceRequest { resource_spans: traffic.request(batch) };
                let spans: u64 =
                    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum();
                let size = request.encoded_len() as u64;
                let sent = exporter.send(&request, tenant.as_deref(), api_key.as_deref()).await;
                let measured = Instant::now() >= measure_from;
                let Ok(mut st) = stats.lock() else { return };
                st.sent_spans += spans;
                st.retries += sent.retries as u64;
                for reason in &sent.retry_reasons {
                    *st.retries_by_reason.entry(reason.clone()).or_default() += 1;
                }
                match sent.outcome {
                    Outcome::Ok { rejected } => {
                        let acked = spans - rejected.min(spans);
                        st.acked_spans += acked;
                        st.bytes += size;
                        *st.requests.entry("ok".into()).or_default() += 1;
                        if rejected > 0 {
                            *st.rejected.entry("partial_success".into()).or_default() += rejected;
                        }
                        if measured {
                            st.measured_acked += acked;
                            st.measured_bytes += size;
                            st.latencies.push(sent.latency.as_secs_f64());
                        }
                        drop(st);
                        if verify && rejected == 0 {
                            if let Ok(mut s) = sample.lock() {
                                s.offer(tenant.as_deref(), &request.resource_spans);
                            }
                        }
                    }
                    Outcome::Failed { reason, message } => {
                        *st.rejected.entry(reason.clone()).or_default() += spans;
                        *st.requests.entry(reason.clone()).or_default() += 1;
                        if st.requests.get(&reason) == Some(&1) {
                            eprintln!("loadsim: export refused ({reason}): {message}");
                        }
                    }
                }
            }
        }));
    }
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let acked = stats.lock().map(|s| s.acked_spans).unwrap_or(0);
                eprintln!(
                    "loadsim: {acked} spans acknowledged, {:.0}/s over the last 5 s",
                    (acked - last) as f64 / 5.0
                );
                last = acked;
            }
        })
    };
    for w in workers {
        w.await?;
    }
    progress.abort();
    let ended = Instant::now().min(deadline);
    let measured_secs = ended.saturating_duration_since(measure_from).as_secs_f64().max(1e-9);
    let mut st = std::mem::take(&mut *stats.lock().map_err(|_| anyhow::anyhow!("stats lock poisoned"))?);
    st.latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let l = &st.latencies;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(0.0) * 1000.0
    };
    let mut summary = serde_json::json!({
        "protocol": args.protocol,
        "endpoint": endpoint,
        "seconds": measured_secs,
        "spans_sent": st.sent_spans,
        "spans_acknowledged": st.acked_spans,
        "spans_rejected": st.rejected,
        "requests": st.requests,
        "requests_retried": st.retries,
        "retries_by_reason": st.retries_by_reason,
        "spans_per_second": st.measured_acked as f64 / measured_secs,
        "megabytes_per_second": st.measured_bytes as f64 / measured_secs / 1e6,
        "bytes_per_span_otlp": if st.acked_spans > 0 { st.bytes as f64 / st.acked_spans as f64 } else { 0.0 },
        "export_latency_ms": { "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": st.latencies.last().copied().unwrap_or(0.0) * 1000.0 },
    });
    let mut lost = 0;
    if args.verify {
        let sample = std::mem::replace(
            &mut *sample.lock().map_err(|_| anyhow::anyhow!("sample lock poisoned"))?,
            verify::Sample::new(0, 0),
        );
        eprintln!(
            "loadsim: verifying {} traces ({} spans) through {}",
            sample.traces.len(),
            sample.spans(),
            args.query_endpoint
        );
        let v = verify::verify(&sample, &args.query_endpoint).await;
        lost = v.lost_spans + v.wrong_spans;
        summary["verify"] = serde_json::json!({
            "traces_checked": v.traces,
            "spans_checked": v.spans,
            "lost_spans": v.lost_spans,
            "wrong_spans": v.wrong_spans,
            "failed_reads": v.failed_reads,
        });
        summary["lost_spans"] = v.lost_spans.into();
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if lost > 0 {
        anyhow::bail!("{lost} acknowledged spans are missing or wrong");
    }
    Ok(())
}
