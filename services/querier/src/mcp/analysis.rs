//! Summaries of one trace for the MCP tools: its critical path and its errors.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value as AttrValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde_json::{json, Value};

/// Most steps or error spans listed.
const MAX_ITEMS: usize = 50;

struct SpanView<'a> {
    id: &'a [u8],
    parent: &'a [u8],
    service: &'a str,
    name: &'a str,
    start: u64,
    end: u64,
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
}

fn spans(resource_spans: &[ResourceSpans]) -> Vec<SpanView<'_>> {
    let mut out = Vec::new();
    for rs in resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AttrValue::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or("");
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(SpanView {
                    id: &s.span_id,
                    parent: &s.parent_span_id,
                    service,
                    name: &s.name,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano.max(s.start_time_unix_nano),
                    span: s,
                });
            }
        }
    }
    out
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

/// The critical path: from the root, the last child to finish before the point reached blocks
/// its parent until its end; the parent's own time fills the gaps. Each span's share of the
/// trace's duration, longest first.
pub fn critical_path(resource_spans: &[ResourceSpans]) -> Value {
    let spans = spans(resource_spans);
    let index: HashMap<&[u8], usize> = spans.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match index.get(s.parent).filter(|p| **p != i) {
            Some(p) => children.entry(*p).or_default().push(i),
            None => roots.push(i),
        }
    }
    for kids in children.values_mut() {
        kids.sort_by(|a, b| spans[*b].end.cmp(&spans[*a].end).then(a.cmp(b)));
    }
    let Some(root) = roots.into_iter().min_by(|a, b| {
        spans[*a]
            .start
            .cmp(&spans[*b].start)
            .then((spans[*b].end - spans[*b].start).cmp(&(spans[*a].end - spans[*a].start)))
    }) else {
        return json!({ "error": "the trace has no spans" });
    };
    // Iterative walk (traces can be deeper than a thread's stack): (span, point reached, next child).
    let mut share: HashMap<usize, u64> = HashMap::new();
    let mut order = Vec::new();
    let mut stack = vec![(root, spans[root].end, 0usize)];
    order.push(root);
    while let Some(frame) = stack.last_mut() {
        let (span, cursor) = (frame.0, frame.1);
        let kids = children.get(&span).map(Vec::as_slice).unwrap_or_default();
        let mut next = None;
        while frame.2 < kids.len() {
            let child = kids[frame.2];
            frame.2 += 1;
            let child_end = spans[child].end.min(cursor);
            if child_end > spans[child].start.max(spans[span].start) {
                next = Some((child, child_end));
                break;
            }
        }
        match next {
            Some((child, child_end)) => {
                *share.entry(span).or_default() += cursor - child_end;
                frame.1 = spans[child].start.max(spans[span].start);
                if !share.contains_key(&child) {
                    order.push(child);
                }
                stack.push((child, child_end, 0));
            }
            None => {
                *share.entry(span).or_default() += cursor.saturating_sub(spans[span].start);
                stack.pop();
            }
        }
    }
    let total = spans[root].end - spans[root].start;
    let mut steps: Vec<(usize, u64)> = order.iter().map(|i| (*i, share.get(i).copied().unwrap_or(0))).collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.1));
    let listed: Vec<Value> = steps
        .iter()
        .take(MAX_ITEMS)
        .map(|(i, t)| {
            json!({
                "spanId": hex::encode(spans[*i].id),
                "service": spans[*i].service,
                "name": spans[*i].name,
                "timeOnPathMs": ms(*t),
                "percent": if total > 0 { (*t as f64 * 1000.0 / total as f64).round() / 10.0 } else { 0.0 },
            })
        })
        .collect();
    let mut out = json!({
        "rootService": spans[root].service,
        "rootName": spans[root].name,
        "traceDurationMs": ms(total),
        "spansOnPath": steps.len(),
        "path": listed,
    });
    if steps.len() > MAX_ITEMS {
        out["note"] = json!(format!("{} more spans on the path, each shorter, not listed", steps.len() - MAX_ITEMS));
    }
    out
}

fn attribute<'a>(kvs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<&'a str> {
    kvs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| match &v.value {
        Some(AttrValue::StringValue(s)) => Some(s.as_str()),
        _ => None,
    })
}

/// The spans whose status is error, with their messages and recorded exceptions.
pub fn errors(resource_spans: &[ResourceSpans]) -> Value {
    let spans = spans(resource_spans);
    let failing: Vec<&SpanView> =
        spans.iter().filter(|s| s.span.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32)).collect();
    let mut services: Vec<&str> = failing.iter().map(|s| s.service).collect();
    services.sort_unstable();
    services.dedup();
    let listed: Vec<Value> = failing
        .iter()
        .take(MAX_ITEMS)
        .map(|s| {
            let exceptions: Vec<Value> = s
                .span
                .events
                .iter()
                .filter(|e| e.name == "exception")
                .map(|e| {
                    json!({
                        "type": attribute(&e.attributes, "exception.type").unwrap_or(""),
                        "message": attribute(&e.attributes, "exception.message").unwrap_or(""),
                    })
                })
                .collect();
            json!({
                "spanId": hex::encode(s.id),
                "service": s.service,
                "name": s.name,
                "statusMessage": s.span.status.as_ref().map(|st| st.message.as_str()).unwrap_or(""),
                "durationMs": ms(s.end - s.start),
                "exceptions": exceptions,
            })
        })
        .collect();
    let mut out = json!({
        "spans": spans.len(),
        "errorSpans": failing.len(),
        "servicesWithErrors": services,
        "errors": listed,
    });
    if failing.len() > MAX_ITEMS {
        out["note"] = json!(format!("{} more error spans not listed", failing.len() - MAX_ITEMS));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span, Status};

    fn span(id: u8, parent: u8, start: u64, end: u64) -> Span {
        Span {
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: format!("s{id}"),
            start_time_unix_nano: start * 1_000_000,
            end_time_unix_nano: end * 1_000_000,
            ..Default::default()
        }
    }

    fn trace(spans: Vec<Span>) -> Vec<ResourceSpans> {
        vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }]
    }

    #[test]
    fn the_path_follows_the_last_child_to_finish() {
        // root 0-100: child 2 (10-40) then child 3 (50-90) runs sequentially; 4 (55-95) is a child
        // of 3 that outlives it; child 5 (20-30) of the root overlaps 2 and finishes first.
        let t = trace(vec![
            span(1, 0, 0, 100),
            span(2, 1, 10, 40),
            span(3, 1, 50, 90),
            span(4, 3, 55, 95),
            span(5, 1, 20, 30),
        ]);
        let out = critical_path(&t);
        let path: Vec<(String, f64)> = out["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap().to_string(), s["timeOnPathMs"].as_f64().unwrap()))
            .collect();
        let time = |n: &str| path.iter().find(|(name, _)| name == n).map(|p| p.1);
        assert_eq!(time("s1"), Some(30.0), "0-10, 40-50, 90-100");
        assert_eq!(time("s3"), Some(5.0), "50-55 (then its child until 90, clamped)");
        assert_eq!(time("s4"), Some(35.0));
        assert_eq!(time("s2"), Some(30.0));
        assert_eq!(time("s5"), None, "overlapped by s2, not on the path");
        assert_eq!(out["traceDurationMs"], 100.0);
        let total: f64 = path.iter().map(|p| p.1).sum();
        assert_eq!(total, 100.0);
    }

    #[test]
    fn a_deep_chain_does_not_overflow() {
        let spans: Vec<Span> = (1..=100_000u32)
            .map(|i| {
                let id = i.to_be_bytes().repeat(2);
                let parent = if i == 1 { vec![] } else { (i - 1).to_be_bytes().repeat(2) };
                Span {
                    span_id: id,
                    parent_span_id: parent,
                    start_time_unix_nano: u64::from(i),
                    end_time_unix_nano: 1_000_000,
                    ..Default::default()
                }
            })
            .collect();
        assert_eq!(critical_path(&trace(spans))["spansOnPath"], 100_000);
    }

    #[test]
    fn errors_are_listed() {
        let mut bad = span(2, 1, 1, 2);
        bad.status = Some(Status { code: StatusCode::Error as i32, message: "boom".into() });
        let out = errors(&trace(vec![span(1, 0, 0, 3), bad]));
        assert_eq!(out["errorSpans"], 1);
        assert_eq!(out["errors"][0]["statusMessage"], "boom");
    }
}
