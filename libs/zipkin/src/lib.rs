//! Zipkin v2 spans in, OTLP out: the body of Zipkin's `POST /api/v2/spans`.
//!
//! - [`decode_json`] and [`decode_protobuf`] parse a body (a JSON list of spans, or protobuf
//!   `zipkin.proto3.ListOfSpans`) into [`Span`]s, checking ids and endpoints; one bad span refuses
//!   the whole body (Zipkin has no partial success), naming the span.
//! - [`to_resource_spans`] maps them to OTLP as the OpenTelemetry Collector's zipkin receiver does
//!   (see [`convert`] for the rules and where Spindle keeps more than the Collector).
//!
//! The output depends only on the input (maps are ordered), so a retried body converts to the same
//! OTLP and the storage layer recognises the retry.

pub mod convert;
mod json;
mod proto;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use convert::to_resource_spans;
pub use json::decode_json;
pub use proto::decode_protobuf;

/// Why a Zipkin body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ZipkinError {
    /// The body is not a JSON list of Zipkin v2 spans.
    #[error("invalid Zipkin JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The body is not a protobuf `ListOfSpans`.
    #[error("invalid Zipkin protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// One span of the body is unusable.
    #[error("span {index}: {error}")]
    Span {
        /// Position of the span in the body (0-based).
        index: usize,
        /// What is wrong with it.
        #[source]
        error: SpanError,
    },
}

/// What makes one span unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// A required id is absent or empty.
    #[error("{field} is required")]
    Missing {
        /// `traceId`, `id`, ...
        field: &'static str,
    },
    /// A JSON id is not 1 to `max` hex digits.
    #[error("{field} {value:?}: expected 1 to {max} hexadecimal digits")]
    BadHex {
        /// Which id.
        field: &'static str,
        /// The text sent (at most 64 characters of it).
        value: String,
        /// Most digits.
        max: usize,
    },
    /// A protobuf id or address has the wrong length.
    #[error("{field} has {len} bytes; expected {expected}")]
    BadLength {
        /// Which field.
        field: &'static str,
        /// Bytes sent.
        len: usize,
        /// The lengths allowed.
        expected: &'static str,
    },
    /// An id is all zeros (invalid in Zipkin and OTLP).
    #[error("{field} is all zeros")]
    Zero {
        /// Which id.
        field: &'static str,
    },
    /// An endpoint address does not parse.
    #[error("{field} {value:?} is not an {family} address")]
    BadAddress {
        /// `ipv4` or `ipv6`.
        field: &'static str,
        /// The text sent (at most 64 characters of it).
        value: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// An endpoint port is not 0-65535.
    #[error("an endpoint's port {0} is out of range")]
    BadPort(i32),
    /// A JSON annotation without a timestamp.
    #[error("an annotation has no timestamp")]
    AnnotationWithoutTimestamp,
    /// A time past what unix nanoseconds in 64 bits hold (the year 2262).
    #[error("{field} ends after the year 2262 (its unix nanoseconds do not fit in 64 bits)")]
    TimeOutOfRange {
        /// `timestamp + duration` or `annotation timestamp`.
        field: &'static str,
    },
}

/// At most 64 characters of a value, for an error message.
fn excerpt(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Microseconds that, as nanoseconds, still fit in an `i64`.
const MAX_MICROS: u64 = (i64::MAX as u64) / 1000;

/// Refuses times that do not fit OTLP's nanoseconds as Spindle stores them (signed 64 bits).
fn check_times(span: &Span) -> Result<(), SpanError> {
    let end = span.timestamp_us.unwrap_or(0).checked_add(span.duration_us);
    if end.is_none_or(|e| e > MAX_MICROS) {
        return Err(SpanError::TimeOutOfRange { field: "timestamp + duration" });
    }
    if span.annotations.iter().any(|a| a.timestamp_us > MAX_MICROS) {
        return Err(SpanError::TimeOutOfRange { field: "annotation timestamp" });
    }
    Ok(())
}

/// The kind of a Zipkin span, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `CLIENT`.
    Client,
    /// `SERVER`.
    Server,
    /// `PRODUCER`.
    Producer,
    /// `CONSUMER`.
    Consumer,
}

/// A network endpoint of a span (`localEndpoint` or `remoteEndpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Service name (empty: none).
    pub service_name: String,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Port (0: none).
    pub port: u16,
}

/// An annotation: a timestamped text (becomes an OTLP event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Epoch microseconds.
    pub timestamp_us: u64,
    /// The text.
    pub value: String,
}

/// One Zipkin v2 span with its ids checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Trace id; a 64-bit id is left-padded with zeros.
    pub trace_id: [u8; 16],
    /// Span id (never zero).
    pub id: [u8; 8],
    /// Parent span id (`None` for a root, or a parent equal to the span itself).
    pub parent_id: Option<[u8; 8]>,
    /// Kind, when one of Zipkin's four.
    pub kind: Option<Kind>,
    /// Operation name.
    pub name: String,
    /// Start, epoch microseconds (`None`: absent).
    pub timestamp_us: Option<u64>,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Where the span was recorded.
    pub local_endpoint: Option<Endpoint>,
    /// The other side of the call.
    pub remote_endpoint: Option<Endpoint>,
    /// Timestamped events.
    pub annotations: Vec<Annotation>,
    /// String tags, ordered by key.
    pub tags: BTreeMap<String, String>,
    /// Whether the span is the server side of a call whose client side has the same id
    /// (Brave, zipkin-go and B3 propagation do that).
    pub shared: bool,
}

fn kind_of(text: &str) -> Option<Kind> {
    match text {
        "CLIENT" => Some(Kind::Client),
        "SERVER" => Some(Kind::Server),
        "PRODUCER" => Some(Kind::Producer),
        "CONSUMER" => Some(Kind::Consumer),
        _ => None,
    }
}

/// An endpoint with every field empty is no endpoint.
fn non_empty(e: Endpoint) -> Option<Endpoint> {
    (e != Endpoint::default()).then_some(e)
}
