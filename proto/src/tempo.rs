//! Tempo's `tempopb` messages that its HTTP query API returns as `application/protobuf`.
//! Field numbers follow Tempo's `pkg/tempopb/tempo.proto`.

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

/// A trace: its resource spans (`tempopb.Trace`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Trace {
    /// The trace's spans, grouped by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `tempopb.TraceByIDMetrics`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdMetrics {
    /// Bytes read to answer.
    #[prost(uint64, tag = "1")]
    pub inspected_bytes: u64,
}

/// `tempopb.TraceByIDResponse`, the body of `/api/v2/traces/{id}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    /// The trace (empty when not found).
    #[prost(message, optional, tag = "1")]
    pub trace: Option<Trace>,
    /// What answering cost.
    #[prost(message, optional, tag = "2")]
    pub metrics: Option<TraceByIdMetrics>,
    /// 0 = complete, 1 = partial (cut at a size limit).
    #[prost(int32, tag = "3")]
    pub status: i32,
    /// Why the trace is partial.
    #[prost(string, tag = "4")]
    pub message: String,
}
