//! OTLP/HTTP: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip-compressed.

use std::io::Read;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use spindle_limits::shed::{DeadlineLayer, ShedLayer};

use crate::rpc_status::RpcStatus;
use crate::{IngestError, Ingester};

/// Routes of the OTLP/HTTP receiver: at most `max_concurrent_requests` at once (more get 429
/// unread), each answered within `request_timeout` (a body still arriving then gets 408).
pub fn router(ingester: Arc<Ingester>) -> Router {
    let config = ingester.config().clone();
    let metrics = ingester.metrics().clone();
    let timeout = config.request_timeout;
    Router::new()
        .route("/v1/traces", post(export_traces))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(DeadlineLayer::new(timeout, move || {
            let message = format!("the request did not complete within {} s", timeout.as_secs_f64());
            error_response(Format::Json, StatusCode::REQUEST_TIMEOUT, 4, &message)
        }))
        .layer(ShedLayer::new(config.max_concurrent_requests, move |headers: &HeaderMap| {
            metrics.request("http", "shed");
            let format = format_of(headers).unwrap_or(Format::Json);
            let message = "the receiver is at its limit of concurrent requests; retry shortly";
            error_response(format, StatusCode::TOO_MANY_REQUESTS, 8, message)
        }))
        .with_state(ingester)
}

/// The body format a `Content-Type` names.
fn format_of(headers: &HeaderMap) -> Option<Format> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Some(Format::Protobuf),
        "application/json" => Some(Format::Json),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

fn error_response(format: Format, status: StatusCode, grpc_code: i32, message: &str) -> Response {
    error_response_retry(format, status, grpc_code, message, std::time::Duration::from_secs(1))
}

fn error_response_retry(
    format: Format,
    status: StatusCode,
    grpc_code: i32,
    message: &str,
    retry: std::time::Duration,
) -> Response {
    let body = RpcStatus { code: grpc_code, message: message.to_string(), details: Vec::new() };
    let bytes = match format {
        Format::Protobuf => body.encode_to_vec(),
        Format::Json => {
            serde_json::to_vec(&serde_json::json!({ "code": grpc_code, "message": message })).unwrap_or_default()
        }
    };
    let mut response = (status, [(header::CONTENT_TYPE, format.content_type())], bytes).into_response();
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        set_retry_after(&mut response, retry);
    }
    response
}

/// Sets `Retry-After` to `retry`, in whole seconds (at least 1).
pub(crate) fn set_retry_after(response: &mut Response, retry: std::time::Duration) {
    let seconds = (retry.as_secs_f64().ceil() as u64).max(1);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
}

fn ingest_error_response(format: Format, e: &IngestError) -> Response {
    let (status, code) = e.http_status();
    let retry = e.retry_after().unwrap_or(std::time::Duration::from_secs(1));
    error_response_retry(format, status, code, &e.to_string(), retry)
}

async fn export_traces(State(ingester): State<Arc<Ingester>>, headers: HeaderMap, body: Body) -> Response {
    let metrics = ingester.metrics();
    let format = match format_of(&headers) {
        Some(f) => f,
        None => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            metrics.request("http", "error");
            return error_response(
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                3,
                &format!("unsupported content type {content_type:?}: use application/x-protobuf or application/json"),
            );
        }
    };
    let result = async {
        let tenant =
            ingester.authorize(header_text(&headers, "authorization")?, header_text(&headers, "x-scope-orgid")?)?;
        let body = read_body(&ingester, &headers, body).await?;
        let request = match format {
            Format::Protobuf => ExportTraceServiceRequest::decode(body.as_ref())
                .map_err(|e| IngestError::Invalid(format!("invalid OTLP protobuf: {e}")))?,
            Format::Json => spindle_otlp::json::decode_export_trace_request(&body)
                .map_err(|e| IngestError::Invalid(e.to_string()))?,
        };
        // A protobuf body is the request's protobuf size; JSON is measured once decoded.
        let size = match format {
            Format::Protobuf => body.len(),
            Format::Json => request.encoded_len(),
        };
        drop(body);
        ingester.ingest(&tenant, request, size).await
    }
    .await;
    match result {
        Ok(outcome) => {
            metrics.request("http", if outcome.rejected > 0 { "partial" } else { "ok" });
            let partial_success = (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: outcome.rejected as i64,
                error_message: outcome.message.unwrap_or_default(),
            });
            let bytes = match format {
                Format::Protobuf => ExportTraceServiceResponse { partial_success }.encode_to_vec(),
                // OTLP/JSON: `{}` on full success; 64-bit counts as strings.
                Format::Json => match partial_success {
                    None => b"{}".to_vec(),
                    Some(p) => serde_json::json!({
                        "partialSuccess": { "rejectedSpans": p.rejected_spans.to_string(), "errorMessage": p.error_message }
                    })
                    .to_string()
                    .into_bytes(),
                },
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], bytes).into_response()
        }
        Err(e) => {
            metrics.request("http", if matches!(e, IngestError::TooLarge(_)) { "too_large" } else { "error" });
            ingest_error_response(format, &e)
        }
    }
}

/// The request body, read up to the request size limit (counted in the received bytes) and
/// decompressed as its `Content-Encoding` says, within the same limit.
pub(crate) async fn read_body(ingester: &Ingester, headers: &HeaderMap, body: Body) -> Result<Bytes, IngestError> {
    let limit = ingester.config().max_request_bytes;
    let raw = to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            IngestError::TooLarge(format!("request body exceeds the limit of {limit} bytes"))
        } else {
            IngestError::Invalid(format!("reading request body: {e}"))
        }
    })?;
    ingester.metrics().request_bytes.inc_by(raw.len() as u64);
    let encoding = header_text(headers, header::CONTENT_ENCODING.as_str())?.unwrap_or("identity");
    decompress(encoding, raw, limit)
}

/// A header as text; present but not visible ASCII is an error (not "absent").
pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, IngestError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| IngestError::Invalid(format!("header {name} is not valid ASCII text"))))
        .transpose()
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Undoes `Content-Encoding` (gzip, or deflate: zlib), refusing anything that inflates past
/// `limit` bytes.
fn decompress(encoding: &str, raw: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    let encoding = encoding.trim().to_ascii_lowercase();
    let mut decoder: Box<dyn Read + '_> = match encoding.as_str() {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(raw.as_ref())),
        "deflate" | "zlib" => Box::new(flate2::read::ZlibDecoder::new(raw.as_ref())),
        other => {
            return Err(IngestError::Invalid(format!(
                "unsupported content encoding {other:?}: use gzip, deflate or none"
            )))
        }
    };
    let mut out = Vec::new();
    decoder
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Invalid(format!("invalid {encoding} body: {e}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge(format!("decompressed request body exceeds the limit of {limit} bytes")));
    }
    Ok(Bytes::from(out))
}
