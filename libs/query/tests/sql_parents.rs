//! `parent_span_id` through SQL over blocks that store parents as row offsets: projected
//! alone, beside filters on other columns (which then must not thin the scan the rebuild
//! reads), filtered on itself, and in trace-by-id reads.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use support::data;

type Parents = BTreeMap<[u8; 8], Option<[u8; 8]>>;

fn parents_of(batches: &[RecordBatch]) -> Parents {
    let mut out = BTreeMap::new();
    for b in batches {
        let spans = b.column(0).as_fixed_size_binary();
        let parents = b.column(1).as_fixed_size_binary();
        for r in 0..b.num_rows() {
            let parent = parents.is_valid(r).then(|| parents.value(r).try_into().unwrap());
            out.insert(spans.value(r).try_into().unwrap(), parent);
        }
    }
    out
}

#[tokio::test]
async fn parent_ids_come_back_through_sql() {
    let traces = data::traces(23, 400);
    let spans: Vec<&data::TSpan> = traces.iter().flatten().collect();
    // One block holds whole traces (parents as offsets), a second a few spans more of some of
    // them (parents in the other block: stored as ids).
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (i, s) in spans.iter().enumerate() {
        if i % 11 == 0 {
            second.push(*s)
        } else {
            first.push(*s)
        }
    }
    let t = support::engine(vec![vec![data::batch(&first)], vec![data::batch(&second)]], Vec::new()).await;
    let want: Parents = spans.iter().map(|s| (s.span_id, s.parent)).collect();
    let sql = |q: String| {
        let t = &t;
        async move { t.engine.sql(&t.tenant, &q, 1_000_000, 1 << 30).await.unwrap_or_else(|e| panic!("{q}: {e}")).1 }
    };

    assert_eq!(parents_of(&sql("SELECT span_id, parent_span_id FROM spans".into()).await), want);

    let name = &spans[7].name;
    let named: Parents = spans.iter().filter(|s| &s.name == name).map(|s| (s.span_id, s.parent)).collect();
    let got = sql(format!("SELECT span_id, parent_span_id FROM spans WHERE name = '{name}'")).await;
    assert_eq!(parents_of(&got), named, "a filter on another column keeps the parents right");

    let long = spans.iter().map(|s| s.duration).max().unwrap() / 2;
    let slow: Parents = spans.iter().filter(|s| s.duration > long).map(|s| (s.span_id, s.parent)).collect();
    let got = sql(format!("SELECT span_id, parent_span_id FROM spans WHERE duration_ns > {long}")).await;
    assert_eq!(parents_of(&got), slow);

    let parent =
        spans.iter().filter_map(|s| s.parent).max_by_key(|p| spans.iter().filter(|s| s.parent == Some(*p)).count());
    let parent = parent.expect("some span has a parent");
    let children: Parents = spans.iter().filter(|s| s.parent == Some(parent)).map(|s| (s.span_id, s.parent)).collect();
    let got =
        sql(format!("SELECT span_id, parent_span_id FROM spans WHERE parent_span_id = X'{}'", hex::encode(parent)))
            .await;
    assert_eq!(parents_of(&got), children, "equality on the parent id finds every child");

    let roots: BTreeSet<[u8; 8]> = spans.iter().filter(|s| s.parent.is_none()).map(|s| s.span_id).collect();
    let got = sql("SELECT span_id, parent_span_id FROM spans WHERE parent_span_id IS NULL".into()).await;
    assert_eq!(parents_of(&got).keys().copied().collect::<BTreeSet<_>>(), roots);

    let trace = &traces[42];
    let by_id = t.engine.trace_by_id(&t.tenant, trace[0].trace_id, None, 10_000).await.unwrap();
    let mut got = Parents::new();
    for b in &by_id {
        let b = b.project(&[b.schema().index_of("span_id").unwrap(), b.schema().index_of("parent_span_id").unwrap()]);
        got.extend(parents_of(&[b.unwrap()]));
    }
    assert_eq!(got, trace.iter().map(|s| (s.span_id, s.parent)).collect::<Parents>());
}
