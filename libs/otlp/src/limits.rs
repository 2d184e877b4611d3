//! Size limits applied to decoded OTLP spans before they are stored: long strings are cut and
//! extra attributes, events and links dropped, each counted, the way OTLP's `dropped_*_count`
//! fields allow (so nothing is lost silently: the span says what it lost).

use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

/// What one span (and its resource, scope, events and links) may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    /// Longest attribute key, string or bytes value, span/event name or status message (bytes).
    pub max_value_bytes: usize,
    /// Most attributes in one attribute list, and most elements in one array or map value.
    pub max_attributes: usize,
    /// Most events of one span.
    pub max_events: usize,
    /// Most links of one span.
    pub max_links: usize,
}

/// What [`apply`] cut or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Keys, values, names and messages cut to `max_value_bytes`, and arrays or maps cut to
    /// `max_attributes` elements.
    pub values: u64,
    /// Attributes dropped past `max_attributes` (added to the holder's `dropped_attributes_count`).
    pub attributes: u64,
    /// Events dropped (added to the span's `dropped_events_count`).
    pub events: u64,
    /// Links dropped (added to the span's `dropped_links_count`).
    pub links: u64,
}

impl Truncated {
    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Cuts `resource_spans` down to `limits` in place.
pub fn apply(resource_spans: &mut [ResourceSpans], limits: &SpanLimits) -> Truncated {
    let mut t = Truncated::default();
    for rs in resource_spans {
        if let Some(resource) = rs.resource.as_mut() {
            attributes(&mut resource.attributes, &mut resource.dropped_attributes_count, limits, &mut t);
        }
        for ss in &mut rs.scope_spans {
            if let Some(scope) = ss.scope.as_mut() {
                string(&mut scope.name, limits, &mut t);
                string(&mut scope.version, limits, &mut t);
                attributes(&mut scope.attributes, &mut scope.dropped_attributes_count, limits, &mut t);
            }
            for span in &mut ss.spans {
                string(&mut span.name, limits, &mut t);
                string(&mut span.trace_state, limits, &mut t);
                if let Some(status) = span.status.as_mut() {
                    string(&mut status.message, limits, &mut t);
                }
                attributes(&mut span.attributes, &mut span.dropped_attributes_count, limits, &mut t);
                t.events += drop_past(&mut span.events, limits.max_events, &mut span.dropped_events_count);
                for event in &mut span.events {
                    string(&mut event.name, limits, &mut t);
                    attributes(&mut event.attributes, &mut event.dropped_attributes_count, limits, &mut t);
                }
                t.links += drop_past(&mut span.links, limits.max_links, &mut span.dropped_links_count);
                for link in &mut span.links {
                    string(&mut link.trace_state, limits, &mut t);
                    attributes(&mut link.attributes, &mut link.dropped_attributes_count, limits, &mut t);
                }
            }
        }
    }
    t
}

/// Keeps the first `max` items, adding the number dropped to `dropped`; returns that number.
fn drop_past<T>(items: &mut Vec<T>, max: usize, dropped: &mut u32) -> u64 {
    let extra = items.len().saturating_sub(max);
    if extra > 0 {
        items.truncate(max);
        *dropped = dropped.saturating_add(u32::try_from(extra).unwrap_or(u32::MAX));
    }
    extra as u64
}

fn attributes(list: &mut Vec<KeyValue>, dropped: &mut u32, limits: &SpanLimits, t: &mut Truncated) {
    t.attributes += drop_past(list, limits.max_attributes, dropped);
    for kv in list {
        string(&mut kv.key, limits, t);
        if let Some(v) = kv.value.as_mut() {
            any_value(v, limits, t);
        }
    }
}

/// Nested values are as deep as protobuf decoding allowed (prost stops at 100 levels).
fn any_value(v: &mut AnyValue, limits: &SpanLimits, t: &mut Truncated) {
    match v.value.as_mut() {
        Some(Value::StringValue(s)) => string(s, limits, t),
        Some(Value::BytesValue(b)) if b.len() > limits.max_value_bytes => {
            b.truncate(limits.max_value_bytes);
            t.values += 1;
        }
        Some(Value::ArrayValue(a)) => {
            if a.values.len() > limits.max_attributes {
                a.values.truncate(limits.max_attributes);
                t.values += 1;
            }
            for v in &mut a.values {
                any_value(v, limits, t);
            }
        }
        Some(Value::KvlistValue(kvs)) => {
            if kvs.values.len() > limits.max_attributes {
                kvs.values.truncate(limits.max_attributes);
                t.values += 1;
            }
            for kv in &mut kvs.values {
                string(&mut kv.key, limits, t);
                if let Some(v) = kv.value.as_mut() {
                    any_value(v, limits, t);
                }
            }
        }
        _ => {}
    }
}

/// Cuts `s` to at most `max_value_bytes`, at a character boundary.
fn string(s: &mut String, limits: &SpanLimits, t: &mut Truncated) {
    if s.len() > limits.max_value_bytes {
        let mut end = limits.max_value_bytes;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        t.values += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ScopeSpans, Span};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
    }

    const LIMITS: SpanLimits = SpanLimits { max_value_bytes: 4, max_attributes: 2, max_events: 1, max_links: 0 };

    #[test]
    fn cuts_and_counts_everything_past_the_limits() {
        let span = Span {
            name: "abcdef".into(),
            attributes: vec![
                kv("k", Value::StringValue("hééllo".into())),
                kv("arr", Value::ArrayValue(ArrayValue { values: vec![AnyValue::default(); 3] })),
                kv("extra", Value::IntValue(1)),
            ],
            dropped_attributes_count: 1,
            events: vec![span::Event::default(), span::Event::default()],
            links: vec![span::Link::default()],
            ..Span::default()
        };
        let mut request = vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("svc", Value::StringValue("ok".into()))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans { spans: vec![span], ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }];
        let t = apply(&mut request, &LIMITS);
        assert_eq!(t, Truncated { values: 3, attributes: 1, events: 1, links: 1 });
        let span = &request[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "abcd");
        // "hé" is 3 bytes and the next "é" would end at byte 5: the cut does not split it.
        assert_eq!(span.attributes[0].value.as_ref().unwrap().value, Some(Value::StringValue("hé".into())));
        assert_eq!(span.attributes.len(), 2);
        assert_eq!(span.dropped_attributes_count, 2);
        assert_eq!((span.events.len(), span.dropped_events_count), (1, 1));
        assert_eq!((span.links.len(), span.dropped_links_count), (0, 1));
        let resource = request[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes.len(), 1, "within the limits: untouched");
        assert!(apply(&mut request, &LIMITS).is_empty(), "applying twice changes nothing more");
    }
}
