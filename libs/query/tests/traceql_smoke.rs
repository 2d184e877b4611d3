mod support;

use spindle_query::traceql::search::SearchRequest;

#[tokio::test]
async fn smoke() {
    let traces = support::data::traces(1, 50);
    let (blocks, unflushed) = support::data::spread(&traces, 2, 9);
    let t = support::engine(blocks, unflushed).await;
    for q in [
        "{}",
        "{ resource.service.name = \"api\" }",
        "{ span.http.status_code >= 500 } >> { kind = client }",
        "{ } | count() > 2",
        "{ } | by(resource.service.name) | avg(duration) > 1ms",
        "{ event.e.code = 1 }",
        "{ childCount > 1 && rootServiceName = \"api\" }",
        "{ .mixed = 1 } &~ { span.flag }",
    ] {
        let query = spindle_traceql::compile(q).unwrap();
        let request = SearchRequest { spans: query.spans, time_range: None, limit: 5, spans_per_spanset: 2 };
        let r = t.engine.search(&t.tenant, &request).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        println!(
            "{q}: {} traces, first {:?}",
            r.traces.len(),
            r.traces.first().map(|t| (&t.spansets[0].matched, &t.spansets[0].attributes))
        );
    }
}
