//! The Zipkin receiver: `POST /api/v2/spans` with a JSON list of spans or a protobuf
//! `ListOfSpans` (`Content-Type: application/x-protobuf`), optionally gzip or deflate
//! compressed. Spans are mapped to OTLP by `spindle_zipkin` and stored exactly as an OTLP export
//! is: same tenant rules (API key or `X-Scope-OrgID`), limits, backpressure and retry safety.
//!
//! Answers as a Zipkin server does: 202 with an empty body once stored; errors as text with
//! the OTLP receiver's statuses (400 for a bad body, naming the span; 415 for a content type
//! other than JSON or protobuf; 413, 429 or 503 with `Retry-After`). Zipkin has no partial success, so one unusable span refuses the body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use spindle_limits::shed::{DeadlineLayer, ShedLayer};

use crate::http::{header_text, read_body, set_retry_after};
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
            set_retry_after(&mut response, std::time::Duration::from_secs(1));
            response
        }))
        .with_state(ingester)
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

fn error_response(e: &IngestError) -> Response {
    let mut response = text(e.http_status().0, &e.to_string());
    if let Some(retry) = e.retry_after() {
        set_retry_after(&mut response, retry);
    }
    response
}

/// Why a request was refused: an ingest error, or a content type Zipkin does not send (415).
enum Refusal {
    Ingest(IngestError),
    MediaType(String),
}

impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Self {
        Refusal::Ingest(e)
    }
}

/// Whether the body is protobuf (else JSON, Zipkin's default even without a content type).
fn is_protobuf(headers: &HeaderMap) -> Result<bool, Refusal> {
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str())?.unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(true),
        "" | "application/json" | "text/plain" => Ok(false),
        other => Err(Refusal::MediaType(format!(
            "unsupported content type {other:?}: use application/json or application/x-protobuf"
        ))),
    }
}

async fn post_spans(State(ingester): State<Arc<Ingester>>, headers: HeaderMap, body: Body) -> Response {
    let metrics = ingester.metrics();
    let result = async {
        let tenant =
            ingester.authorize(header_text(&headers, "authorization")?, header_text(&headers, "x-scope-orgid")?)?;
        let protobuf = is_protobuf(&headers)?;
        let body = read_body(&ingester, &headers, body).await?;
        let spans = match protobuf {
            true => spindle_zipkin::decode_protobuf(&body),
            false => spindle_zipkin::decode_json(&body),
        }
        .map_err(|e| IngestError::Invalid(e.to_string()))?;
        drop(body);
        let request = ExportTraceServiceRequest { resource_spans: spindle_zipkin::to_resource_spans(spans) };
        // Budgets and rate limits count OTLP protobuf bytes, whatever the receiver.
        let size = request.encoded_len();
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
        .map_err(Refusal::from)
    }
    .await;
    match result {
        Ok(()) => {
            metrics.request(PROTOCOL, "ok");
            StatusCode::ACCEPTED.into_response()
        }
        Err(Refusal::MediaType(message)) => {
            metrics.request(PROTOCOL, "error");
            text(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message)
        }
        Err(Refusal::Ingest(e)) => {
            metrics.request(PROTOCOL, if matches!(e, IngestError::TooLarge(_)) { "too_large" } else { "error" });
            error_response(&e)
        }
    }
}
