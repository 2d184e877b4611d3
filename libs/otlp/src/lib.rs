//! Conversion between OTLP traces and Spindle's Arrow span schema.
//!
//! - [`to_arrow`]: OTLP `ResourceSpans` -> one span `RecordBatch` (validating ids, counting rejects).
//! - [`from_arrow`]: span batches -> OTLP `ResourceSpans`, grouped by resource and scope again.
//! - [`json`]: OTLP/JSON request decoding (hex or base64 ids, enum names or numbers).
//! - [`limits`]: size limits on decoded spans (cut and counted in the `dropped_*_count` fields).
//! - [`tempo_json`]: protobuf-JSON output in the dialect Tempo's query API speaks (Go jsonpb).

mod attrs;
pub mod from_arrow;
pub mod json;
pub mod limits;
pub mod tempo_json;
pub mod to_arrow;

pub use attrs::decode_any;
pub use opentelemetry_proto::tonic as otlp;

/// Errors converting between OTLP and Arrow.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The Arrow layer refused the data (schema mismatch, bad encoding).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The input could not be parsed.
    #[error("{0}")]
    Invalid(String),
    /// The input would expand past the allowed size once every span carries its resource.
    #[error("{0}")]
    TooLarge(String),
}

/// Result alias for this crate.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;
