//! Differential test of TraceQL search: for generated traces (nested spans across services,
//! errors, events, links, every attribute type, each trace split over several Parquet blocks
//! and unflushed data), the DataFusion plan's answer must equal the reference evaluator's
//! (`support/reference.rs`) for a large set of generated queries covering every operator and
//! intrinsic. `SPINDLE_TRACEQL_QUERIES=N` runs more random queries.

mod support;

use spindle_otlp::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use spindle_query::traceql::search::{touched_fields, SearchRequest, TraceHit};
use spindle_traceql::{Field, Intrinsic};
use support::data::{self, Rng, TSpan, T0};
use support::reference::{self, RV};

/// Conditions on one span, covering every scope, intrinsic, type and operator.
fn leaves(traces: &[Vec<TSpan>]) -> Vec<String> {
    let t = &traces[3];
    let mut v: Vec<String> = [
        r#"resource.service.name = "api""#,
        r#".service.name != "db""#,
        "span.http.status_code >= 500",
        ".http.status_code = 404",
        r#"span.user.id = "u3""#,
        r#"span.user.id =~ "u1.*""#,
        r#"span.user.id !~ "u[0-3]""#,
        ".retries > 0",
        ".retries = -1",
        "span.ratio < 1.5",
        ".ratio >= 2",
        "span.flag = true",
        "span.flag",
        "!span.flag",
        ".flag != false",
        "span.flag = false",
        r#".shared = "res-a""#,
        r#"span.shared = "res-a""#,
        r#"resource.shared = "res-b""#,
        ".mixed = 1",
        r#".mixed = "1""#,
        ".mixed > 1.5",
        ".mixed != nil",
        "nil != resource.region",
        ".mixed = nil",
        r#"span.arr = "a""#,
        r#".arr != "a""#,
        r#"span.arr =~ "b.*""#,
        r#"span.arr !~ "b.*""#,
        "span.arr > 2",
        "span.arr = 2",
        "span.arr = -1",
        "span.arr < -0.5",
        "span.arr != 2.0",
        "span.arr = true",
        r#""a" = span.arr"#,
        "1 < span.arr",
        "span.arr != nil",
        "span.arr = nil",
        r#"span.arr = "a" && span.arr = 2"#,
        r#"event:name = "exception" && (span.arr = "a" || event.e.code = 1)"#,
        r#"event:name = "retry" && span.arr != nil"#,
        "nil = resource.region",
        "span.mixed = nil && .retries > 0",
        "span.mixed + 1 = 3",
        ".retries * 2 >= 4",
        ".retries / 2 = 1",
        ".retries % 2 = 1",
        ".ratio ^ 2 > 4",
        "2 ^ .retries = 8",
        "-.retries > 0",
        "1 < .retries",
        ".ratio + .retries > 2",
        ".mixed = .retries",
        r#"name = "SELECT""#,
        r#"name =~ "GET.*""#,
        r#"name !~ ".*cart""#,
        r#"name > "q""#,
        "status = error",
        "status != ok",
        "span:status = unset",
        "kind = server",
        "kind != client",
        "span:kind = internal",
        r#"statusMessage = "failed""#,
        r#"span:statusMessage != """#,
        "duration > 100ms",
        "duration < 1ms",
        "duration >= 1s",
        "span:duration <= 1",
        "duration * 2 > 1s",
        "duration = 0",
        "childCount > 1",
        "childCount = 0",
        "span:childCount >= 2",
        r#"rootName = "GET /""#,
        r#"trace:rootName != "render""#,
        r#"rootServiceName = "api""#,
        r#"trace:rootService != "db""#,
        r#"rootServiceName = """#,
        "traceDuration > 2s",
        "trace:duration < 50ms",
        "nestedSetLeft > 2",
        "nestedSetParent < 0",
        "nestedSetRight - nestedSetLeft > 3",
        r#"span:parentID = "0000000000000000""#,
        r#"span:parentID != "0000000000000000""#,
        r#"event:name = "exception""#,
        "event.e.code = 1",
        r#"event.e.msg =~ "bo.*""#,
        "event:timeSinceStart > 1ms",
        r#"event:name = "retry" && event.e.code = 2"#,
        r#"event:name = "log" || span.flag"#,
        r#"!(event:name = "exception")"#,
        r#"link:traceID != """#,
        r#"link.l.kind = "batch""#,
        r#"link:spanID =~ "[0-7].*""#,
        r#"instrumentation:name = "lib-a""#,
        r#"instrumentation:version = "2.1""#,
        r#"instrumentation.scope.attr = "x""#,
        r#"resource.deployment.environment = "prod""#,
        r#"resource.region != "eu""#,
        r#"span.http.route =~ "/a.*""#,
        ".http.route != nil",
        "event.nope = nil",
        "!(.retries = 1)",
        "(.retries = 1) = false",
        "true",
        "false",
        r#"span.user.id = "u3" || span.user.id = "u7""#,
        // The parent's fields (nil without a parent in the trace), and parent compared with nil.
        r#"parent.resource.service.name = "api""#,
        r#"parent.service.name != resource.service.name"#,
        "parent.duration > 1ms",
        "parent.span.http.status_code >= 500",
        "parent.kind = server",
        "parent.status = error || parent.name =~ \"GET.*\"",
        "parent.childCount > 1",
        "parent.retries = nil",
        "parent.span.arr != nil",
        "parent.span.flag",
        "!(parent.ratio < 1.5)",
        "parent.duration - duration > 0",
        "parent = nil",
        "parent != nil",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Ids that exist (one with leading zero bytes), in several spellings.
    let id = reference::trace_hex(&t[0].trace_id);
    v.push(format!(r#"trace:id = "{id}""#));
    v.push(format!(r#"trace:id = "000{}""#, id.to_uppercase()));
    let zeros = &traces[0][0];
    v.push(format!(r#"trace:id = "{}""#, hex::encode(zeros.trace_id)));
    v.push(format!(r#"span:id = "{}""#, hex::encode(t[0].span_id)));
    v.push(format!(r#"trace:id != "{id}""#));
    if let Some(p) = t.iter().find_map(|s| s.parent) {
        v.push(format!(r#"span:parentID = "{}""#, hex::encode(p)));
    }
    v
}

const STRUCTURAL: [&str; 17] =
    ["&&", "||", ">", "<", ">>", "<<", "~", "!>", "!<", "!>>", "!<<", "!~", "&>", "&<", "&>>", "&<<", "&~"];

const STAGES: [&str; 22] = [
    "count() > 1",
    "count() = 1",
    "avg(duration) > 10ms",
    "max(.retries) >= 2",
    "sum(span.ratio) < 3",
    "min(duration) <= 1ms",
    "count() + count() > 3",
    "avg(.http.status_code) > 300",
    "max(childCount) > 1",
    "by(resource.service.name)",
    "by(.mixed)",
    "by(kind)",
    "by(.retries > 1)",
    "coalesce()",
    "select(span.user.id, status)",
    "select(childCount, nestedSetLeft, trace:rootService)",
    "by(parent.resource.service.name)",
    "avg(parent.duration) > 2ms",
    "{ status = error }",
    "{ kind = server } > { }",
    "{ duration > 1ms }",
    "min(.field) < max(duration)",
];

fn random_filter(r: &mut Rng, leaves: &[String]) -> String {
    let pick = |r: &mut Rng| leaves[r.below(leaves.len() as u64) as usize].clone();
    match r.below(5) {
        0 => "{ }".into(),
        1 | 2 => format!("{{ {} }}", pick(r)),
        3 => format!("{{ {} {} {} }}", pick(r), if r.chance(50) { "&&" } else { "||" }, pick(r)),
        _ => format!("{{ !({} && {}) || {} }}", pick(r), pick(r), pick(r)),
    }
}

fn random_query(r: &mut Rng, leaves: &[String]) -> String {
    let mut q = random_filter(r, leaves);
    if r.chance(60) {
        let op = STRUCTURAL[r.below(STRUCTURAL.len() as u64) as usize];
        q = format!("{q} {op} {}", random_filter(r, leaves));
    }
    if r.chance(15) {
        let op = STRUCTURAL[r.below(STRUCTURAL.len() as u64) as usize];
        q = format!("({q}) {op} {}", random_filter(r, leaves));
    }
    for _ in 0..r.below(4) {
        if r.chance(50) {
            q = format!("{q} | {}", STAGES[r.below(STAGES.len() as u64) as usize]);
        }
    }
    q
}

/// Every query the test runs: each leaf alone, each operator and stage once, then random ones.
fn queries(traces: &[Vec<TSpan>], random: usize) -> Vec<String> {
    let leaves = leaves(traces);
    let mut out: Vec<String> = leaves.iter().map(|l| format!("{{ {l} }}")).collect();
    for (i, op) in STRUCTURAL.iter().enumerate() {
        out.push(format!("{{ {} }} {op} {{ {} }}", leaves[i % leaves.len()], leaves[(i * 7 + 3) % leaves.len()]));
        out.push(format!("{{ kind = server }} {op} {{ kind = client }}"));
        out.push(format!("{{ }} {op} {{ }}"));
    }
    for s in STAGES {
        out.push(format!("{{ }} | {s}"));
        out.push(format!("{{ .retries >= 0 }} | by(resource.service.name) | {s}"));
    }
    out.push("count() > 2 | { status = error }".into());
    out.push("by(name) | count() > 1".into());
    out.push("select(span.user.id)".into());
    out.push("({ } | count() > 3 | { kind = client }) >> ({ status = error } | count() > 0)".into());
    out.push("({ } | by(kind)) > { }".into());
    out.push("({ } | by(kind) | coalesce()) > { }".into());
    out.push("{ } | by(kind) | { } > { }".into());
    out.push("3 = 2".into());
    out.push("max(duration) > 3s | { status = error || .http.status_code = 500 }".into());
    // Tempo 3.0's hint: the most recent matching traces, exactly (what every search returns here).
    out.push("{ } with(most_recent=true)".into());
    out.push("{ span.arr != nil } >> { } with(most_recent=true)".into());
    // A span value that is a comparison of booleans, inside an event condition.
    out.push(r#"{ !(event:name = "retry" && span.arr != nil && (.retries = 1) = false) }"#.into());
    out.push(r#"{ event:name = "retry" && parent.kind = server }"#.into());
    let mut r = Rng::new(99);
    for _ in 0..random {
        out.push(random_query(&mut r, &leaves));
    }
    out
}

#[derive(Debug, PartialEq)]
enum Shown {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

fn shown(v: &AnyValue) -> Shown {
    match &v.value {
        Some(Value::StringValue(s)) => Shown::Text(s.clone()),
        Some(Value::IntValue(i)) => Shown::Int(*i),
        Some(Value::DoubleValue(f)) => Shown::Float(*f),
        Some(Value::BoolValue(b)) => Shown::Bool(*b),
        other => Shown::Text(format!("{other:?}")),
    }
}

fn array_value(items: &[RV]) -> spindle_otlp::otlp::common::v1::ArrayValue {
    let any = |v: &RV| spindle_otlp::otlp::common::v1::AnyValue {
        value: Some(match v {
            RV::Str(s) => Value::StringValue(s.clone()),
            RV::Int(i) => Value::IntValue(*i),
            RV::Float(f) => Value::DoubleValue(*f),
            RV::Bool(b) => Value::BoolValue(*b),
            other => unreachable!("generated arrays hold scalars, not {other:?}"),
        }),
    };
    spindle_otlp::otlp::common::v1::ArrayValue { values: items.iter().map(any).collect() }
}

fn shown_rv(v: &RV, ty: &str) -> Shown {
    match (v, ty) {
        (RV::Nil, _) => Shown::Text("nil".into()),
        // Arrays come back as OTLP array values, shown as `shown` shows them.
        (RV::Array(items), _) => Shown::Text(format!("{:?}", Some(Value::ArrayValue(array_value(items))))),
        (RV::Float(f), "int") => Shown::Int(*f as i64),
        (RV::Float(f), "duration") => Shown::Text(spindle_traceql::format_duration(*f as i64)),
        (RV::Str(s), _) => Shown::Text(s.clone()),
        (RV::Status(s) | RV::Kind(s), _) => Shown::Text(s.to_string()),
        (RV::Int(i), _) => Shown::Int(*i),
        (RV::Float(f), _) => Shown::Float(*f),
        (RV::Bool(b), _) => Shown::Bool(*b),
        (RV::Dur(d), _) => Shown::Text(spindle_traceql::format_duration(*d)),
    }
}

fn same(a: &Shown, b: &Shown) -> bool {
    match (a, b) {
        (Shown::Float(x), Shown::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn same_attrs(got: &[KeyValue], want: &[(String, Shown)]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, (k, w))| g.key == *k && g.value.as_ref().is_some_and(|v| same(&shown(v), w)))
}

fn shown_on_span(f: &Field) -> bool {
    !matches!(
        f,
        Field::Intrinsic(
            Intrinsic::Name
                | Intrinsic::Duration
                | Intrinsic::TraceDuration
                | Intrinsic::RootServiceName
                | Intrinsic::RootName
                | Intrinsic::TraceId
                | Intrinsic::SpanId
                | Intrinsic::EventName
                | Intrinsic::EventTimeSinceStart
                | Intrinsic::LinkTraceId
                | Intrinsic::LinkSpanId
                | Intrinsic::Parent
        ) | Field::Attribute(spindle_traceql::Attribute {
            scope: spindle_traceql::AttributeScope::Event | spindle_traceql::AttributeScope::Link,
            ..
        }) | Field::Attribute(spindle_traceql::Attribute { parent: true, .. })
    )
}

/// Compares one engine answer with the reference; `Err` says what differs.
fn check(
    traces: &[Vec<TSpan>],
    query: &spindle_traceql::Query,
    request: &SearchRequest,
    got: &[TraceHit],
) -> Result<(), String> {
    let by_id = reference::by_trace(traces);
    // Reference: every trace, its result, its newest selected span.
    let mut hits = Vec::new();
    for t in traces {
        let r = reference::evaluate(t, &request.spans, request.time_range).map_err(|e| format!("reference: {e:?}"))?;
        if r.spansets.is_empty() {
            continue;
        }
        let newest = r.spansets.iter().flat_map(|s| s.spans.iter()).map(|&i| t[i].start).max().unwrap_or(i64::MIN);
        hits.push((newest, t[0].trace_id, r));
    }
    hits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    hits.truncate(request.limit);
    let mut want_ids: Vec<([u8; 16], i64)> =
        hits.iter().map(|h| (h.1, reference::summary(by_id[&h.1]).start)).collect();
    want_ids.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let got_ids: Vec<[u8; 16]> = got.iter().map(|t| t.trace_id).collect();
    let want: Vec<[u8; 16]> = want_ids.iter().map(|x| x.0).collect();
    if got_ids != want {
        return Err(format!(
            "traces differ: got {:?}, want {:?}",
            got_ids.iter().map(hex::encode).collect::<Vec<_>>(),
            want.iter().map(hex::encode).collect::<Vec<_>>()
        ));
    }
    let mut fields = touched_fields(&query.spans);
    for h in &hits {
        for f in &h.2.selected {
            if !fields.contains(f) {
                fields.push(f.clone());
            }
        }
    }
    let fields: Vec<Field> = fields.into_iter().filter(shown_on_span).collect();
    for g in got {
        let spans = by_id[&g.trace_id];
        let (_, _, r) = hits.iter().find(|h| h.1 == g.trace_id).expect("same ids");
        let s = reference::summary(spans);
        let tid = hex::encode(g.trace_id);
        if (g.root_trace_name.clone(), g.root_service_name.clone(), g.start_ns, g.duration_ns, &g.service_stats)
            != (s.root_name, s.root_service, s.start, s.duration, &s.stats)
        {
            return Err(format!("trace {tid}: summary differs: {g:?}"));
        }
        if g.spansets.len() != r.spansets.len() {
            return Err(format!("trace {tid}: {} spansets, want {}", g.spansets.len(), r.spansets.len()));
        }
        let mut want_sets: Vec<_> = r.spansets.iter().collect();
        let mut got_sets: Vec<_> = g.spansets.iter().collect();
        let first = |ids: Vec<[u8; 8]>| ids;
        let ordered = |rows: &[usize]| {
            let mut v: Vec<usize> = rows.to_vec();
            v.sort_by_key(|&i| (spans[i].start, spans[i].span_id));
            v
        };
        want_sets.sort_by_key(|s| first(ordered(&s.spans).iter().map(|&i| spans[i].span_id).collect()));
        got_sets.sort_by_key(|s| s.spans.iter().map(|x| x.span_id).collect::<Vec<_>>());
        for (gs, ws) in got_sets.iter().zip(&want_sets) {
            let rows = ordered(&ws.spans);
            if gs.matched != rows.len() as u64 {
                return Err(format!("trace {tid}: matched {} want {}", gs.matched, rows.len()));
            }
            let want_spans: Vec<[u8; 8]> =
                rows.iter().take(request.spans_per_spanset).map(|&i| spans[i].span_id).collect();
            let got_spans: Vec<[u8; 8]> = gs.spans.iter().map(|x| x.span_id).collect();
            if got_spans != want_spans {
                return Err(format!("trace {tid}: spans {got_spans:?}, want {want_spans:?}"));
            }
            let want_attrs: Vec<(String, Shown)> =
                ws.attributes.iter().map(|(k, v, ty)| (k.clone(), shown_rv(v, ty))).collect();
            if !same_attrs(&gs.attributes, &want_attrs) {
                return Err(format!("trace {tid}: spanset attributes {:?}, want {want_attrs:?}", gs.attributes));
            }
            for (hit, &row) in gs.spans.iter().zip(&rows) {
                let sp = &spans[row];
                if (hit.name.as_str(), hit.start_ns, hit.duration_ns) != (sp.name.as_str(), sp.start, sp.duration) {
                    return Err(format!("trace {tid}: span fields differ: {hit:?}"));
                }
                let want_attrs: Vec<(String, Shown)> = fields
                    .iter()
                    .filter_map(|f| {
                        let v = reference::field_value(spans, row, f);
                        let key = match f {
                            Field::Attribute(a) => a.name.clone(),
                            Field::Intrinsic(i) => i.name().to_string(),
                        };
                        (v != RV::Nil).then(|| (key, shown_rv(&v, "value")))
                    })
                    .collect();
                if !same_attrs(&hit.attributes, &want_attrs) {
                    return Err(format!(
                        "trace {tid} span {}: attributes {:?}, want {want_attrs:?}",
                        hex::encode(sp.span_id),
                        hit.attributes
                    ));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_matches_the_reference_evaluator() {
    let traces = data::traces(7, 160);
    let (blocks, unflushed) = data::spread(&traces, 3, 11);
    let engine = support::engine(blocks, unflushed).await;
    let random: usize = std::env::var("SPINDLE_TRACEQL_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(250);
    let mut r = Rng::new(5);
    let (mut ran, mut refused, mut answered, mut failures) = (0, 0, 0, Vec::new());
    let mut parent_queries = (0usize, 0usize);
    for q in queries(&traces, random) {
        let query = match spindle_traceql::compile(&q) {
            Ok(query) => query,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        let time_range = match r.below(3) {
            0 => Some((T0 + 120_000_000_000, T0 + 360_000_000_000)),
            _ => None,
        };
        let request = SearchRequest {
            spans: query.spans.clone(),
            time_range,
            limit: 1 + r.below(30) as usize,
            spans_per_spanset: 1 + r.below(4) as usize,
        };
        let reference_error = traces.iter().find_map(|t| reference::evaluate(t, &request.spans, time_range).err());
        let got = engine.engine.search(&engine.tenant, &request).await;
        ran += 1;
        match (got, reference_error) {
            (Err(_), Some(_)) => {}
            (Err(e), None) => failures.push(format!("{q}: engine error {e}")),
            (Ok(_), Some(e)) => failures.push(format!("{q}: engine answered, reference refused: {e:?}")),
            (Ok(got), None) => {
                answered += usize::from(!got.traces.is_empty());
                if q.contains("parent") {
                    parent_queries.0 += 1;
                    parent_queries.1 += usize::from(!got.traces.is_empty());
                }
                if let Err(diff) = check(&traces, &query, &request, &got.traces) {
                    failures.push(format!("{q} (range {time_range:?}, limit {}): {diff}", request.limit));
                }
            }
        }
    }
    println!("{ran} queries ran, {answered} found traces, {refused} generated queries did not compile");
    println!("parent queries: {} ran, {} found traces", parent_queries.0, parent_queries.1);
    assert!(parent_queries.1 * 3 > parent_queries.0 * 2, "parent queries found too little: {parent_queries:?}");
    // Most queries must find something, or agreement proves little.
    assert!(answered * 3 > ran * 2, "only {answered} of {ran} queries found traces");
    assert!(ran > 300, "only {ran} queries ran ({refused} did not compile)");
    assert!(refused * 5 < ran, "{refused} generated queries did not compile");
    assert!(failures.is_empty(), "{} of {ran} queries differ:\n{}", failures.len(), failures.join("\n"));
}
