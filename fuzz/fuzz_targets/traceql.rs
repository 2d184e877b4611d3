//! TraceQL as the search, metrics and autocomplete endpoints receive it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = spindle_traceql::compile(text);
        let _ = spindle_traceql::autocomplete_filter(text);
    }
});
