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
    #[error("span {index}: {reason}")]
    Span {
        /// Position of the span in the body (0-based).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
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
