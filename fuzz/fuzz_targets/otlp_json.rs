//! OTLP/JSON export requests through Spindle's decoder, then limited and converted.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = spindle_otlp::json::decode_export_trace_request(data) {
        common::ingest(request);
    }
});
