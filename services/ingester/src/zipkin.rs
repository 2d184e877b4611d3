//! The Zipkin receiver: `POST /api/v2/spans` with a JSON list of spans or a protobuf
//! `ListOfSpans` (`Content-Type: application/x-protobuf`), optionally gzip or deflate
//! compressed. Spans are mapped to OTLP by `spindle_zipkin` and stored exactly as an OTLP export
//! is: same tenant rules (API key or `X-Scope-OrgID`), limits, backpressure and retry safety.
//!
//! Answers as a Zipkin server does: 202 with an empty body once stored; errors as text with
//! the OTLP receiver's statuses (400 for a bad body, naming the span; 413, 429 or 503 with
//! `Retry-After`). Zipkin has no partial success, so one unusable span refuses the body.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use spindle_limits::shed::{DeadlineLayer, ShedLayer};

use crate::http::{decompress, header_text, is_length_limit};
use crate::{IngestError, Ingester};

/// The metrics label of this receiver's requests.
const PROTOCOL: &str = "zipkin";

/// Routes of the Zipkin receiver, with the OTLP/HTTP receiver's admission limits.
pub fn router(ingester: Arc<Ingester>) -> Router {
    let config = ingester.config().clone();
    let metrics = ingester.metrics().clone();
    let timeout = config.request_timeout;
    Router::new()
        .route("/api/v2/spans", post(post_spans))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(DeadlineLayer::new(timeout, move || {
            text(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request did not complete within {} s", timeout.as_secs_f64()),
            )
        }))
        .layer(ShedLayer::new(config.max_concurrent_requests, move |_: &HeaderMap| {
            metrics.request(PROTOCOL, "shed");
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                "the receiver is at its limit of concurrent requests; retry shortly",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }))
        .with_state(ingester)
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

fn error_response(e: &IngestError) -> Response {
    let status = match e {
        IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
        IngestError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
        IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::Overloaded(_) | IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        IngestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = text(status, &e.to_string());
    if let Some(retry) = e.retry_after() {
        let seconds = (retry.as_secs_f64().ceil() as u64).max(1);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Whether the body is protobuf (else JSON, Zipkin's default even without a content type).
fn is_protobuf(headers: &HeaderMap) -> Result<bool, IngestError> {
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str())?.unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(true),
        "" | "application/json" | "text/plain" => Ok(false),
        other => Err(IngestError::Invalid(format!(
            "unsupported content type {other:?}: use application/json or application/x-protobuf"
        ))),
    }
}

async fn post_spans(State(ingester): State<Arc<Ingester>>, headers: HeaderMap, body: Body) -> Response {
    let metrics = ingester.metrics();
    let result = async {
        let protobuf = is_protobuf(&headers)?;
        let tenant =
            ingester.authorize(header_text(&headers, "authorization")?, header_text(&headers, "x-scope-orgid")?)?;
        let limit = ingester.config().max_request_bytes;
        let raw = to_bytes(body, limit).await.map_err(|e| {
            if is_length_limit(&e) {
                IngestError::TooLarge(format!("request body exceeds the limit of {limit} bytes"))
            } else {
                IngestError::Invalid(format!("reading request body: {e}"))
            }
        })?;
        metrics.request_bytes.inc_by(raw.len() as u64);
        let encoding = header_text(&headers, header::CONTENT_ENCODING.as_str())?.unwrap_or("identity");
        let body = decompress(encoding, raw, limit)?;
        let spans = match protobuf {
            true => spindle_zipkin::decode_protobuf(&body),
            false => spindle_zipkin::decode_json(&body),
        }
        .map_err(|e| IngestError::Invalid(e.to_string()))?;
        let size = body.len();
        drop(body);
        let request = ExportTraceServiceRequest { resource_spans: spindle_zipkin::to_resource_spans(spans) };
        let outcome = ingester.ingest(&tenant, request, size).await?;
        // Every span is checked while decoding, so none should be refused here; if one is, the
        // client must hear of it (Zipkin has no partial success). A retry stores no duplicates.
        match outcome.message {
            Some(m) if outcome.rejected > 0 => Err(IngestError::Invalid(format!(
                "{} of {} spans refused: {m}",
                outcome.rejected,
                outcome.rejected + outcome.accepted
            ))),
            _ => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => {
            metrics.request(PROTOCOL, "ok");
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            metrics.request(PROTOCOL, if matches!(e, IngestError::TooLarge(_)) { "too_large" } else { "error" });
            error_response(&e)
        }
    }
}
