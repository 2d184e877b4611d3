//! The SQL endpoint's body: UTF-8, `{"query": ...}` or plain SQL, then the SQL check that runs
//! before DataFusion plans anything.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct Body {
    query: String,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sql = match serde_json::from_str::<Body>(text) {
        Ok(body) => body.query,
        Err(_) => text.to_string(),
    };
    let _ = spindle_sql_guard::check(&sql);
});
