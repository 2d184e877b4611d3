//! Differential test of TraceQL metrics: for generated traces split over blocks and unflushed
//! data, `rate`, `count_over_time`, `min/max/sum/avg_over_time`, `quantile_over_time`,
//! `histogram_over_time`, `by(...)`, `topk`/`bottomk` and comparisons of the values (`> 1`, before and after topk/bottomk), over simple filters and over queries
//! that need whole traces, must equal a direct computation from the reference evaluator.

mod support;

use std::collections::BTreeMap;

use spindle_otlp::otlp::common::v1::{any_value::Value, AnyValue};
use spindle_query::traceql::metrics::{MetricsRequest, Series};
use spindle_traceql::{Field, MetricsFunction, MetricsStage, ValueType};
use support::data::{self, T0};
use support::reference::{self, RV};

const S: i64 = 1_000_000_000;

fn label(v: &RV) -> Option<String> {
    Some(match v {
        RV::Nil | RV::Array(_) => return None,
        RV::Str(s) => format!("s:{s}"),
        RV::Status(s) | RV::Kind(s) => format!("s:{s}"),
        RV::Int(i) => format!("i:{i}"),
        RV::Float(f) => format!("f:{f}"),
        RV::Bool(b) => format!("b:{b}"),
        RV::Dur(d) => format!("s:{}", spindle_traceql::format_duration(*d)),
    })
}

fn any_text(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => format!("s:{s}"),
        Some(Value::IntValue(i)) => format!("i:{i}"),
        Some(Value::DoubleValue(f)) => format!("f:{f}"),
        Some(Value::BoolValue(b)) => format!("b:{b}"),
        other => format!("{other:?}"),
    }
}

fn quantile(q: f64, buckets: &BTreeMap<i64, u64>, scale: f64) -> f64 {
    let total: u64 = buckets.values().sum();
    if total == 0 {
        return 0.0;
    }
    let wanted = ((q * total as f64).ceil() as u64).max(1);
    let mut cum = 0;
    let mut prev: Option<i64> = None;
    for (&e, &n) in buckets {
        let before = cum;
        cum += n;
        let max_v = e as f64 + scale.log2();
        if cum == wanted {
            return 2f64.powf(max_v);
        }
        if cum > wanted {
            let min_v = prev.map_or(max_v - 1.0, |p| p as f64 + scale.log2());
            return 2f64.powf(min_v + (max_v - min_v) * (wanted - before) as f64 / n as f64);
        }
        prev = Some(e);
    }
    0.0
}

/// The expected series, as `labels -> (timestamp -> value)`.
fn expected(traces: &[Vec<data::TSpan>], request: &MetricsRequest) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let m = request.query.metrics.as_ref().unwrap();
    let (first, step, n) = if request.instant {
        (request.start_ns, request.end_ns - request.start_ns, 1)
    } else {
        let first = request.start_ns - request.start_ns.rem_euclid(request.step_ns) - request.step_ns;
        let last = (request.end_ns + request.step_ns - 1).div_euclid(request.step_ns) * request.step_ns;
        (first, request.step_ns, (last - first) / request.step_ns)
    };
    let field = m.function.field();
    let duration = field.is_some_and(|f| f.value_type() == ValueType::Duration);
    // series -> interval -> values
    let mut cells: BTreeMap<String, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for t in traces {
        let r = reference::evaluate(t, &request.query.spans, Some((first + 1, first + n * step))).unwrap();
        for set in &r.spansets {
            for &i in &set.spans {
                let s = &t[i];
                let interval = (s.start - first - 1) / step;
                let mut labels: Vec<String> =
                    m.by.iter()
                        .filter_map(|f| label(&reference::field_value(t, i, f)).map(|v| format!("{f}={v}")))
                        .collect();
                if labels.is_empty() && !m.by.is_empty() {
                    labels.push(format!("{}=s:nil", m.by[0]));
                }
                let value = match field {
                    None => 1.0,
                    Some(f) => match reference::field_value(t, i, f) {
                        RV::Int(v) => v as f64,
                        RV::Dur(v) => v as f64,
                        RV::Float(v) => v,
                        _ => continue,
                    },
                };
                let bucketed = matches!(
                    m.function,
                    MetricsFunction::QuantileOverTime { .. } | MetricsFunction::HistogramOverTime(_)
                );
                if bucketed && value < 2.0 {
                    continue; // below every power-of-two bucket, as in Tempo
                }
                cells.entry(labels.join(",")).or_default().entry(interval).or_default().push(value);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (labels, intervals) in cells {
        let ts = |i: i64| (first + (i + 1) * step) / 1_000_000;
        let with = |extra: String| {
            if labels.is_empty() {
                extra
            } else if extra.is_empty() {
                labels.clone()
            } else {
                format!("{labels},{extra}")
            }
        };
        match &m.function {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => {
                let mut s = BTreeMap::new();
                for i in 0..n {
                    let c = intervals.get(&i).map_or(0, |v| v.len()) as f64;
                    s.insert(
                        ts(i),
                        if matches!(m.function, MetricsFunction::Rate) { c / (step as f64 / 1e9) } else { c },
                    );
                }
                let name = if m.by.is_empty() { format!("__name__=s:{}", m.function.name()) } else { String::new() };
                out.insert(if name.is_empty() { labels.clone() } else { with(name) }, s);
            }
            MetricsFunction::QuantileOverTime { quantiles, .. } => {
                for q in quantiles {
                    let mut s = BTreeMap::new();
                    for i in 0..n {
                        let mut b: BTreeMap<i64, u64> = BTreeMap::new();
                        for v in intervals.get(&i).into_iter().flatten() {
                            if *v >= 2.0 {
                                *b.entry(v.log2().ceil() as i64).or_default() += 1;
                            }
                        }
                        s.insert(ts(i), quantile(*q, &b, if duration { 1e-9 } else { 1.0 }));
                    }
                    out.insert(with(format!("p=f:{q}")), s);
                }
            }
            MetricsFunction::HistogramOverTime(_) => {
                let mut per: BTreeMap<i64, BTreeMap<i64, f64>> = BTreeMap::new();
                for (i, vs) in &intervals {
                    for v in vs {
                        if *v >= 2.0 {
                            *per.entry(v.log2().ceil() as i64).or_default().entry(ts(*i)).or_default() += 1.0;
                        }
                    }
                }
                for (e, mut s) in per {
                    for i in 0..n {
                        s.entry(ts(i)).or_insert(0.0);
                    }
                    let bound = 2f64.powi(e as i32) * if duration { 1e-9 } else { 1.0 };
                    out.insert(with(format!("__bucket=f:{bound}")), s);
                }
            }
            f => {
                let scale = if duration { 1e-9 } else { 1.0 };
                let mut s = BTreeMap::new();
                for (i, vs) in &intervals {
                    if *i < 0 || *i >= n || vs.is_empty() {
                        continue;
                    }
                    let v = match f {
                        MetricsFunction::MinOverTime(_) => vs.iter().cloned().fold(f64::INFINITY, f64::min),
                        MetricsFunction::MaxOverTime(_) => vs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                        MetricsFunction::SumOverTime(_) => vs.iter().sum(),
                        _ => vs.iter().sum::<f64>() / vs.len() as f64,
                    };
                    s.insert(ts(*i), v * scale);
                }
                if !s.is_empty() {
                    let name =
                        if m.by.is_empty() { format!("__name__=s:{}", m.function.name()) } else { String::new() };
                    out.insert(if name.is_empty() { labels.clone() } else { with(name) }, s);
                }
            }
        }
    }
    out
}

fn engine_series(series: &[Series]) -> BTreeMap<String, BTreeMap<i64, f64>> {
    series
        .iter()
        .map(|s| {
            let labels = s.labels.iter().map(|(k, v)| format!("{k}={}", any_text(v))).collect::<Vec<_>>().join(",");
            (labels, s.samples.iter().copied().collect())
        })
        .collect()
}

/// `topk`/`bottomk`: with at most k series nothing changes; otherwise at each timestamp the
/// engine keeps k series whose values are the k highest (lowest) there, with their values
/// (ties at the cut may go either way).
/// The model's own reading of a comparison stage: a sample stays when it compares so (NaN never).
fn passes(op: spindle_traceql::BinaryOp, threshold: f64, v: f64) -> bool {
    use spindle_traceql::BinaryOp as B;
    !v.is_nan()
        && match op {
            B::Eq => v == threshold,
            B::Ne => v != threshold,
            B::Gt => v > threshold,
            B::Ge => v >= threshold,
            B::Lt => v < threshold,
            B::Le => v <= threshold,
            other => panic!("not a comparison: {other:?}"),
        }
}

fn top_k_agrees(
    want: &BTreeMap<String, BTreeMap<i64, f64>>,
    got: &BTreeMap<String, BTreeMap<i64, f64>>,
    stage: MetricsStage,
    after: &[(spindle_traceql::BinaryOp, f64)],
) -> bool {
    let keeps = |v: f64| after.iter().all(|(op, threshold)| passes(*op, *threshold, v));
    let (k, top) = match stage {
        MetricsStage::TopK(k) => (k as usize, true),
        MetricsStage::BottomK(k) => (k as usize, false),
        MetricsStage::Compare { .. } => unreachable!("comparisons are applied to the model"),
    };
    if want.len() <= k {
        let mut want = want.clone();
        for s in want.values_mut() {
            s.retain(|_, v| keeps(*v));
        }
        want.retain(|_, s| !s.is_empty());
        return agree(&want, got);
    }
    let mut times: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for s in want.values() {
        for (t, v) in s {
            times.entry(*t).or_default().push(*v);
        }
    }
    for (t, mut values) in times {
        values.sort_by(|a, b| if top { b.total_cmp(a) } else { a.total_cmp(b) });
        values.truncate(k);
        // Comparisons after topk/bottomk filter what it kept.
        values.retain(|v| keeps(*v));
        let mut kept: Vec<f64> = Vec::new();
        for (l, s) in got {
            if let Some(v) = s.get(&t) {
                if !want.get(l).and_then(|w| w.get(&t)).is_some_and(|w| close(*w, *v)) {
                    return false;
                }
                kept.push(*v);
            }
        }
        kept.sort_by(|a, b| if top { b.total_cmp(a) } else { a.total_cmp(b) });
        if kept.len() != values.len() || kept.iter().zip(&values).any(|(a, b)| !close(*a, *b)) {
            return false;
        }
    }
    got.keys().all(|l| want.contains_key(l))
}

fn agree(want: &BTreeMap<String, BTreeMap<i64, f64>>, got: &BTreeMap<String, BTreeMap<i64, f64>>) -> bool {
    want.len() == got.len()
        && want.iter().all(|(l, w)| {
            got.get(l)
                .is_some_and(|g| g.len() == w.len() && w.iter().all(|(t, v)| g.get(t).is_some_and(|x| close(*x, *v))))
        })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_reference() {
    let traces = data::traces(21, 160);
    let (blocks, unflushed) = data::spread(&traces, 3, 4);
    let engine = support::engine(blocks, unflushed).await;
    let filters = [
        "{ }",
        r#"{ resource.service.name = "api" }"#,
        "{ status = error || span.http.status_code >= 500 }",
        "{ kind = server } >> { }",
        "{ } | count() > 2",
        "{ childCount > 0 }",
        "{ .mixed != nil } &> { kind = client }",
        "{ parent.kind = server && parent.duration > duration }",
    ];
    let functions = [
        "rate()",
        "count_over_time()",
        "min_over_time(duration)",
        "max_over_time(span.ratio)",
        "sum_over_time(.retries)",
        "avg_over_time(duration)",
        "avg_over_time(traceDuration)",
        "quantile_over_time(duration, 0.5, .9, 0.99)",
        "quantile_over_time(span.http.status_code, .5)",
        "histogram_over_time(duration)",
        "max_over_time(parent.duration)",
    ];
    let bys = [
        "",
        " by (resource.service.name)",
        " by (kind, .mixed)",
        " by (span.user.id)",
        " by (parent.resource.service.name)",
    ];
    // Comparisons (Tempo 3.0) before and after topk/bottomk.
    let seconds = [
        "",
        " | topk(2)",
        " | bottomk(1)",
        " > 1",
        " != 0 | topk(2)",
        " <= 0.5",
        " | topk(2) > 1",
        " | bottomk(2) <= 0.5",
    ];
    let (mut ran, mut failures) = (0, Vec::new());
    let mut i = 0usize;
    for f in filters {
        for func in functions {
            for by in bys {
                i += 1;
                let second = seconds[i % seconds.len()];
                let q = format!("{f} | {func}{by}{second}");
                let query = spindle_traceql::compile(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
                let instant = i.is_multiple_of(5);
                let request = MetricsRequest {
                    query,
                    start_ns: T0 + 61 * S,
                    end_ns: T0 + 539 * S,
                    step_ns: if instant { 478 * S } else { 30 * S },
                    instant,
                    exemplars: 10,
                    max_series: 10_000,
                };
                let got = engine.engine.metrics(&engine.tenant, &request).await.unwrap_or_else(|e| panic!("{q}: {e}"));
                ran += 1;
                let want = expected(&traces, &request);
                let got_map = engine_series(&got.series);
                let m = request.query.metrics.as_ref().unwrap();
                // Comparisons before a topk/bottomk filter the model's samples as the engine
                // must; one topk/bottomk is checked by its own rule (ties may pick either
                // series), with the comparisons after it applied to what it keeps.
                let mut want = want;
                let mut top = None;
                let mut after = Vec::new();
                for stage in &m.stages {
                    match *stage {
                        MetricsStage::Compare { op, value } if top.is_some() => after.push((op, value)),
                        MetricsStage::Compare { op, value } => {
                            for s in want.values_mut() {
                                s.retain(|_, v| passes(op, value, *v));
                            }
                            want.retain(|_, s| !s.is_empty());
                        }
                        other => top = Some(other),
                    }
                }
                let same = match top {
                    None => agree(&want, &got_map),
                    Some(stage) => top_k_agrees(&want, &got_map, stage, &after),
                };
                if !same {
                    let only_got: Vec<_> = got_map.keys().filter(|k| !want.contains_key(*k)).collect();
                    let only_want: Vec<_> = want.keys().filter(|k| !got_map.contains_key(*k)).collect();
                    let differ: Vec<_> = want
                        .iter()
                        .filter_map(|(k, w)| {
                            got_map
                                .get(k)
                                .filter(|g| {
                                    !agree(
                                        &BTreeMap::from([(k.clone(), w.clone())]),
                                        &BTreeMap::from([(k.clone(), (*g).clone())]),
                                    )
                                })
                                .map(|g| (k, w, g))
                        })
                        .take(2)
                        .collect();
                    failures.push(format!("{q} (instant {instant}): only in engine {only_got:?}, only expected {only_want:?}, values differ {differ:?}"));
                }
                // Every exemplar names a trace that has spans in the answer.
                for s in &got.series {
                    for e in &s.exemplars {
                        let id = any_text(e.labels[0].value.as_ref().unwrap());
                        assert!(
                            traces.iter().any(|t| format!("s:{}", reference::trace_hex(&t[0].trace_id)) == id),
                            "{q}: exemplar {id}"
                        );
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} queries differ:\n{}", failures.len(), failures.join("\n"));
    let _ = Field::Intrinsic(spindle_traceql::Intrinsic::Duration);
}

/// `compare()`: per attribute value, counts of selected and other spans, and their totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_counts_attribute_values() {
    let traces = data::traces(5, 80);
    let (blocks, unflushed) = data::spread(&traces, 2, 3);
    let engine = support::engine(blocks, unflushed).await;
    for q in ["{ } | compare({ status = error }, 3)", "{ kind = server } >> { } | compare({ span.flag = true })"] {
        let query = spindle_traceql::compile(q).unwrap();
        let MetricsFunction::Compare { selection, top_n, .. } = query.metrics.as_ref().unwrap().function.clone() else {
            unreachable!()
        };
        let request = MetricsRequest {
            query: query.clone(),
            start_ns: T0,
            end_ns: T0 + 600 * S,
            step_ns: 600 * S,
            instant: true,
            exemplars: 0,
            max_series: 10_000,
        };
        let got = engine.engine.metrics(&engine.tenant, &request).await.unwrap();
        // Expected: (meta, key, value) -> count over the one interval.
        let mut counts: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for t in &traces {
            let r = reference::evaluate(t, &query.spans, Some((T0 + 1, T0 + 600 * S))).unwrap();
            let sel = spindle_traceql::SpansetExpr::Filter(selection.clone());
            let chosen = reference::evaluate(t, &sel, None).unwrap();
            let chosen: Vec<usize> = chosen.spansets.iter().flat_map(|s| s.spans.clone()).collect();
            for set in &r.spansets {
                for &i in &set.spans {
                    let meta = if chosen.contains(&i) { "selection" } else { "baseline" };
                    let s = &t[i];
                    let mut pairs: Vec<(String, String)> = vec![
                        ("name".into(), format!("s:{}", s.name)),
                        ("status".into(), format!("s:{}", ["unset", "ok", "error"][s.status as usize])),
                        ("statusMessage".into(), format!("s:{}", s.status_message)),
                        (
                            "kind".into(),
                            format!(
                                "s:{}",
                                ["unspecified", "internal", "server", "client", "producer", "consumer"]
                                    [s.kind as usize]
                            ),
                        ),
                    ];
                    for (scope, attrs) in [("resource", &s.resource), ("span", &s.attrs)] {
                        for (k, v) in attrs.iter() {
                            let v = match v {
                                data::Val::Str(x) => format!("s:{x}"),
                                data::Val::Int(x) => format!("i:{x}"),
                                data::Val::Float(x) => format!("f:{x}"),
                                data::Val::Bool(x) => format!("b:{x}"),
                                // compare() counts scalar values only.
                                data::Val::Array(_) => continue,
                            };
                            pairs.push((format!("{scope}.{k}"), v));
                        }
                    }
                    for (k, v) in pairs {
                        *counts.entry((meta.into(), k.clone(), v)).or_default() += 1.0;
                        *counts.entry((format!("{meta}_total"), k, "s:nil".into())).or_default() += 1.0;
                    }
                }
            }
        }
        let got: BTreeMap<(String, String, String), f64> = got
            .series
            .iter()
            .map(|s| {
                let meta = any_text(&s.labels[0].1)[2..].to_string();
                ((meta, s.labels[1].0.clone(), any_text(&s.labels[1].1)), s.samples[0].1)
            })
            .collect();
        for ((meta, key, value), n) in &got {
            assert_eq!(counts.get(&(meta.clone(), key.clone(), value.clone())), Some(n), "{q}: {meta} {key}={value}");
        }
        // Each key keeps its top N values (ties aside, every kept count is at least the N-th).
        for ((meta, key, _), _) in counts.iter().filter(|((m, _, _), _)| m.ends_with("_total")) {
            let side = meta.trim_end_matches("_total");
            let kept = got.keys().filter(|(m, k, _)| m == side && k == key).count();
            let all = counts.keys().filter(|(m, k, _)| m == side && k == key).count();
            assert_eq!(kept, all.min(top_n as usize), "{q}: {side} {key}");
        }
    }
}
