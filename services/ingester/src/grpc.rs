//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};

use crate::rpc_status::{retry_after, RpcStatus};
use crate::{IngestError, Ingester};

/// The OTLP trace service.
pub struct OtlpGrpc {
    ingester: Arc<Ingester>,
}

impl OtlpGrpc {
    /// The tonic service, accepting gzip and limiting message size.
    pub fn service(ingester: Arc<Ingester>) -> TraceServiceServer<Self> {
        let max = ingester.config().max_request_bytes;
        TraceServiceServer::new(Self { ingester })
            .max_decoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
    }
}

/// The gRPC status for an ingest failure. Retryable failures carry `RetryInfo`, which OTLP
/// clients need before they retry `RESOURCE_EXHAUSTED`.
pub fn status_for(e: &IngestError) -> Status {
    let retryable = |code: Code, message: &str| {
        let seconds = e.retry_after().map(|d| d.as_secs_f64().ceil() as i64).unwrap_or(1).max(1);
        let details =
            RpcStatus { code: code as i32, message: message.to_string(), details: vec![retry_after(seconds)] };
        Status::with_details(code, message.to_string(), details.encode_to_vec().into())
    };
    match e {
        IngestError::Invalid(m) => Status::invalid_argument(m.clone()),
        IngestError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        IngestError::Forbidden(m) => Status::permission_denied(m.clone()),
        IngestError::TooLarge(m) => Status::resource_exhausted(m.clone()),
        IngestError::Overloaded(m) | IngestError::RateLimited { message: m, .. } => {
            retryable(Code::ResourceExhausted, m)
        }
        IngestError::Unavailable(m) => retryable(Code::Unavailable, m),
        IngestError::Internal(m) => Status::internal(m.clone()),
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let metrics = self.ingester.metrics();
        let text = |name: &str| match request.metadata().get(name).map(|v| v.to_str()) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(_)) => Err(Status::invalid_argument(format!("{name} is not valid ASCII text"))),
        };
        let tenant = self.ingester.authorize(text("authorization")?, text("x-scope-orgid")?).map_err(|e| {
            metrics.request("grpc", "refused");
            status_for(&e)
        })?;
        let request = request.into_inner();
        let size = request.encoded_len();
        metrics.request_bytes.inc_by(size as u64);
        match self.ingester.ingest(&tenant, request, size).await {
            Ok(outcome) => {
                metrics.request("grpc", if outcome.rejected > 0 { "partial" } else { "ok" });
                let partial_success = (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: outcome.rejected as i64,
                    error_message: outcome.message.unwrap_or_default(),
                });
                Ok(Response::new(ExportTraceServiceResponse { partial_success }))
            }
            Err(e) => {
                metrics.request("grpc", "error");
                Err(status_for(&e))
            }
        }
    }
}

/// The answer for an export refused unread because the receiver is at its limit of concurrent
/// requests: `RESOURCE_EXHAUSTED` with a `RetryInfo` of one second (counted as shed).
pub fn busy_response<B: Default>(
    metrics: crate::IngestMetrics,
) -> impl Fn(&http::HeaderMap) -> http::Response<B> + Send + Sync + 'static {
    move |_headers| {
        metrics.request("grpc", "shed");
        status_for(&IngestError::Overloaded(
            "the receiver is at its limit of concurrent requests; retry shortly".into(),
        ))
        .into_http()
    }
}

/// Rewrites two of tonic's codec errors into the codes OTLP clients expect: an oversized
/// message (`OUT_OF_RANGE` "message length too large") becomes `RESOURCE_EXHAUSTED`, and an
/// undecodable protobuf (`INTERNAL` "failed to decode Protobuf message") becomes
/// `INVALID_ARGUMENT`, so clients do not retry it. Messages, which state the limit or the
/// decode error, are kept.
pub fn map_codec_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
    let code = match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some("11") if message.contains("too%20large") || message.contains("too large") => Some("8"),
        Some("13") if message.contains("failed%20to%20decode") || message.contains("failed to decode") => Some("3"),
        _ => None,
    };
    if let Some(code) = code {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}
