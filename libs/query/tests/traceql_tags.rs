//! Tag names and values (autocomplete) from block footers, scans of unflushed data, and with a
//! filter, compared with the generated spans.

mod support;

use std::collections::BTreeSet;

use spindle_query::tags::TagQuery;
use spindle_traceql::{Attribute, AttributeScope, Field, Intrinsic};
use support::data::{self, TSpan, Val, T0};

fn text(v: &Val) -> (String, String) {
    match v {
        Val::Str(s) => ("string".into(), s.clone()),
        Val::Int(i) => ("int".into(), i.to_string()),
        Val::Float(f) => ("float".into(), f.to_string()),
        Val::Bool(b) => ("bool".into(), b.to_string()),
        Val::Array(items) => ("array".into(), format!("{items:?}")),
    }
}

fn attr(scope: AttributeScope, name: &str) -> Field {
    Field::Attribute(Attribute { scope, parent: false, name: name.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_match_the_spans() {
    let traces = data::traces(3, 120);
    let all: Vec<&TSpan> = traces.iter().flatten().collect();
    let (blocks, unflushed) = data::spread(&traces, 3, 8);
    let engine = support::engine(blocks, unflushed).await;
    let range = (T0 - 1, T0 + 3_600_000_000_000);
    let query = |filter: Option<&str>| TagQuery {
        range,
        limit: 10_000,
        filter: filter.and_then(spindle_traceql::autocomplete_filter),
    };

    let names = engine.engine.tag_names(&engine.tenant, &query(None)).await.unwrap();
    let want = |f: &dyn Fn(&TSpan) -> Vec<String>| all.iter().flat_map(|s| f(s)).collect::<BTreeSet<String>>();
    assert_eq!(names.scopes[0], want(&|s| s.resource.iter().map(|(k, _)| k.clone()).collect()));
    assert_eq!(names.scopes[1], want(&|s| s.attrs.iter().map(|(k, _)| k.clone()).collect()));
    assert_eq!(
        names.scopes[2],
        want(&|s| s.events.iter().flat_map(|e| e.attrs.iter().map(|(k, _)| k.clone())).collect())
    );
    assert_eq!(
        names.scopes[3],
        want(&|s| s.links.iter().flat_map(|l| l.attrs.iter().map(|(k, _)| k.clone())).collect())
    );
    assert_eq!(names.scopes[4], want(&|s| s.scope_attrs.iter().map(|(k, _)| k.clone()).collect()));

    // Values of every span attribute, with and without a filter.
    for key in ["http.status_code", "user.id", "retries", "ratio", "flag", "mixed", "shared"] {
        for filter in [None, Some(r#"{ resource.service.name = "api" && kind = server }"#)] {
            let got = engine
                .engine
                .tag_values(&engine.tenant, &attr(AttributeScope::Span, key), &query(filter))
                .await
                .unwrap();
            let got: BTreeSet<(String, String)> = got.into_iter().map(|v| (v.ty, v.value)).collect();
            let want: BTreeSet<(String, String)> = all
                .iter()
                .filter(|s| filter.is_none() || (s.service() == "api" && s.kind == 2))
                .flat_map(|s| s.attrs.iter().filter(|(k, _)| k == key).map(|(_, v)| text(v)))
                .collect();
            assert_eq!(got, want, "span.{key} with {filter:?}");
        }
    }
    let got = engine
        .engine
        .tag_values(&engine.tenant, &attr(AttributeScope::Resource, "service.name"), &query(None))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    let names: BTreeSet<String> = engine
        .engine
        .tag_values(
            &engine.tenant,
            &Field::Intrinsic(Intrinsic::Name),
            &query(Some(r#"{ span.http.status_code = 500 "#)),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.value)
        .collect();
    let want: BTreeSet<String> = all
        .iter()
        .filter(|s| s.attrs.iter().any(|(k, v)| k == "http.status_code" && *v == Val::Int(500)))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, want, "names narrowed by an unfinished query");
    let events =
        engine.engine.tag_values(&engine.tenant, &attr(AttributeScope::Event, "e.msg"), &query(None)).await.unwrap();
    assert_eq!(events.len(), 3);
    let status =
        engine.engine.tag_values(&engine.tenant, &Field::Intrinsic(Intrinsic::Status), &query(None)).await.unwrap();
    assert_eq!(status.iter().map(|v| v.ty.as_str()).collect::<Vec<_>>(), ["keyword"; 3]);
}
