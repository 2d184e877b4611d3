//! Trace by id (the direct point read) against SQL over the same spans (DataFusion's scan):
//! every trace, spread over several blocks with small row groups and pages (so traces cross
//! pages and row groups, and many columns are empty in some row groups) and unflushed data;
//! with and without a time range and a span limit.

mod support;

use arrow::record_batch::RecordBatch;
use prost::Message;
use support::data;

/// Every span of `batches` as user-visible bytes (resource, scope and span, OTLP-encoded), sorted.
fn spans_of(batches: &[RecordBatch]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rs in spindle_otlp::from_arrow::batches_to_resource_spans(batches).expect("to otlp") {
        let resource = rs.resource.clone().unwrap_or_default().encode_to_vec();
        for ss in &rs.scope_spans {
            let scope = ss.scope.clone().unwrap_or_default().encode_to_vec();
            for s in &ss.spans {
                out.push([resource.clone(), scope.clone(), s.encode_to_vec()].concat());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn trace_by_id_reads_what_sql_reads() {
    let traces = data::traces(31, 300);
    let (blocks, unflushed) = data::spread(&traces, 3, 7);
    let t = support::engine(blocks, unflushed).await;
    let sql = |q: String| {
        let t = &t;
        async move { t.engine.sql(&t.tenant, &q, 1_000_000, 1 << 30).await.unwrap_or_else(|e| panic!("{q}: {e}")).1 }
    };
    let mut checked = 0;
    for trace in &traces {
        let id = trace[0].trace_id;
        let got = t.engine.trace_by_id(&t.tenant, id, None, 100_000).await.expect("trace by id");
        let want = sql(format!("SELECT * FROM spans WHERE trace_id = X'{}'", hex::encode(id))).await;
        let got = spans_of(&got);
        assert_eq!(got.len(), trace.len(), "every span of the trace");
        assert_eq!(got, spans_of(&want), "trace {}", hex::encode(id));
        checked += got.len();
    }
    assert!(checked > 1000, "the data has {checked} spans");

    // A time range inside a long trace, and a limit.
    let trace = traces.iter().max_by_key(|t| t.len()).expect("traces");
    let id = trace[0].trace_id;
    let mut starts: Vec<i64> = trace.iter().map(|s| s.start).collect();
    starts.sort();
    let (from, to) = (starts[starts.len() / 4], starts[starts.len() * 3 / 4]);
    let got = t.engine.trace_by_id(&t.tenant, id, Some((from, to)), 100_000).await.expect("trace by id");
    let want = sql(format!(
        "SELECT * FROM spans WHERE trace_id = X'{}' AND start_time >= to_timestamp_nanos({from}) AND start_time <= to_timestamp_nanos({to})",
        hex::encode(id)
    ))
    .await;
    assert_eq!(spans_of(&got), spans_of(&want));
    assert_eq!(spans_of(&got).len(), trace.iter().filter(|s| s.start >= from && s.start <= to).count());
    let limited = t.engine.trace_by_id(&t.tenant, id, None, 3).await.expect("trace by id");
    assert_eq!(limited.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    // A trace that is not there.
    let none = t.engine.trace_by_id(&t.tenant, [0xab; 16], None, 100_000).await.expect("trace by id");
    assert_eq!(none.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}
