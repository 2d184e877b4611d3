//! Zipkin v2 bodies (`POST /api/v2/spans`): the first byte picks JSON (even) or protobuf (odd);
//! decoded, mapped to OTLP, then limited and converted as the ingester does.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else { return };
    let spans = match first % 2 {
        0 => spindle_zipkin::decode_json(body),
        _ => spindle_zipkin::decode_protobuf(body),
    };
    if let Ok(spans) = spans {
        common::ingest(ExportTraceServiceRequest { resource_spans: spindle_zipkin::to_resource_spans(spans) });
    }
});
