//! Sending export requests over OTLP/gRPC or OTLP/HTTP, honouring backpressure with bounded
//! retries, and classifying every outcome.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

/// Retries of one request after backpressure before it counts as refused.
pub const MAX_RETRIES: u32 = 6;

/// How one export request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Acknowledged; `rejected` spans were refused by partial success.
    Ok { rejected: u64 },
    /// Refused for good, with a reason label (status code name).
    Failed { reason: String, message: String },
}

/// What an export attempt series produced.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Final outcome.
    pub outcome: Outcome,
    /// Retries after backpressure.
    pub retries: u32,
    /// Why each retry happened (status code name, or "connection").
    pub retry_reasons: Vec<String>,
    /// Latency of the final attempt.
    pub latency: Duration,
}

/// An OTLP exporter over one protocol.
#[derive(Clone)]
pub enum Exporter {
    /// OTLP/gRPC.
    Grpc(TraceServiceClient<Channel>),
    /// OTLP/HTTP protobuf.
    Http { client: reqwest::Client, url: String },
}

impl Exporter {
    /// Connects to `endpoint` (host:port) with `protocol` (`grpc` or `http`).
    pub async fn connect(protocol: &str, endpoint: &str) -> anyhow::Result<Self> {
        match protocol {
            "grpc" => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
                    .connect_timeout(Duration::from_secs(10))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(4 * 1024 * 1024))
                    .initial_connection_window_size(Some(16 * 1024 * 1024))
                    .connect()
                    .await?;
                Ok(Exporter::Grpc(TraceServiceClient::new(channel).max_encoding_message_size(64 << 20)))
            }
            "http" => {
                Ok(Exporter::Http { client: reqwest::Client::new(), url: format!("http://{endpoint}/v1/traces") })
            }
            other => anyhow::bail!("unknown protocol {other:?}: use grpc or http"),
        }
    }

    /// Sends one request, retrying after backpressure (RESOURCE_EXHAUSTED/UNAVAILABLE, HTTP
    /// 429/503) with the server's Retry-After or an exponential backoff.
    pub async fn send(
        &mut self,
        request: &ExportTraceServiceRequest,
        tenant: Option<&str>,
        api_key: Option<&str>,
    ) -> Sent {
        let mut retries = 0;
        let mut retry_reasons = Vec::new();
        loop {
            let start = Instant::now();
            let attempt = self.attempt(request, tenant, api_key).await;
            let latency = start.elapsed();
            match attempt {
                Attempt::Done(outcome) => return Sent { outcome, retries, retry_reasons, latency },
                Attempt::Retry { after, reason, message } => {
                    if retries >= MAX_RETRIES {
                        return Sent { outcome: Outcome::Failed { reason, message }, retries, retry_reasons, latency };
                    }
                    retries += 1;
                    retry_reasons.push(reason);
                    let backoff = Duration::from_millis(100 << retries.min(6));
                    tokio::time::sleep(after.unwrap_or(backoff).min(Duration::from_secs(10))).await;
                }
            }
        }
    }

    async fn attempt(
        &mut self,
        request: &ExportTraceServiceRequest,
        tenant: Option<&str>,
        api_key: Option<&str>,
    ) -> Attempt {
        match self {
            Exporter::Grpc(client) => {
                let mut r = tonic::Request::new(request.clone());
                if let Some(t) = tenant.and_then(|t| t.parse().ok()) {
                    r.metadata_mut().insert("x-scope-orgid", t);
                }
                if let Some(k) = api_key.and_then(|k| format!("Bearer {k}").parse().ok()) {
                    r.metadata_mut().insert("authorization", k);
                }
                match client.export(r).await {
                    Ok(resp) => Attempt::Done(ok(resp.into_inner())),
                    Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => Attempt::Retry {
                        after: None,
                        reason: format!("{:?}", s.code()),
                        message: s.message().to_string(),
                    },
                    Err(s) => Attempt::Done(Outcome::Failed {
                        reason: format!("{:?}", s.code()),
                        message: s.message().to_string(),
                    }),
                }
            }
            Exporter::Http { client, url } => {
                let mut r = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec());
                if let Some(t) = tenant {
                    r = r.header("x-scope-orgid", t);
                }
                if let Some(k) = api_key {
                    r = r.header("authorization", format!("Bearer {k}"));
                }
                match r.send().await {
                    Err(e) => Attempt::Retry { after: None, reason: "connection".into(), message: e.to_string() },
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs);
                        let body = resp.bytes().await.unwrap_or_default();
                        match status {
                            200 => {
                                Attempt::Done(ok(ExportTraceServiceResponse::decode(body.as_ref()).unwrap_or_default()))
                            }
                            429 | 502 | 503 | 504 => Attempt::Retry {
                                after,
                                reason: format!("http_{status}"),
                                message: String::from_utf8_lossy(&body).into(),
                            },
                            _ => Attempt::Done(Outcome::Failed {
                                reason: format!("http_{status}"),
                                message: String::from_utf8_lossy(&body).chars().take(300).collect(),
                            }),
                        }
                    }
                }
            }
        }
    }
}

enum Attempt {
    Done(Outcome),
    Retry { after: Option<Duration>, reason: String, message: String },
}

fn ok(response: ExportTraceServiceResponse) -> Outcome {
    Outcome::Ok { rejected: response.partial_success.map(|p| p.rejected_spans.max(0) as u64).unwrap_or(0) }
}
