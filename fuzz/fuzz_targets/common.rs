//! What the ingester does with a decoded request: cut it to the span limits, then convert it.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use spindle_otlp::limits::SpanLimits;

/// Small limits, so truncation paths run often.
const LIMITS: SpanLimits = SpanLimits { max_value_bytes: 64, max_attributes: 8, max_events: 4, max_links: 4 };

/// Applies the limits and converts to Arrow; errors are fine, panics are not.
pub fn ingest(mut request: ExportTraceServiceRequest) {
    let _ = spindle_otlp::limits::apply(&mut request.resource_spans, &LIMITS);
    if let Ok(converted) = spindle_otlp::to_arrow::resource_spans_to_batch_limited(&request.resource_spans, 1 << 24, true) {
        assert_eq!(converted.span_sizes.len(), converted.batch.num_rows());
    }
}
