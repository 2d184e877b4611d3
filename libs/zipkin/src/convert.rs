//! Zipkin spans to OTLP, following the OpenTelemetry Collector's zipkin receiver
//! (`pkg/translator/zipkin/zipkinv2`, default settings):
//!
//! - ids as sent (64-bit trace ids left-padded); times in microseconds times 1000; a span without
//!   a timestamp starts at 0 and gets `otel.zipkin.absentField.startTime = true`;
//! - kind from `kind`, else from a `span.kind` tag (consumed);
//! - resource: `service.name` from `localEndpoint.serviceName` plus the span's tags that are
//!   resource attributes by OpenTelemetry's conventions (`host.name`, `telemetry.sdk.*`, ...),
//!   moved out of the span; spans with the same resource share one `ResourceSpans`;
//! - scope from `otel.scope.name`/`otel.scope.version` or `otel.library.name`/`otel.library.version`;
//! - status from `otel.status_code` (+ `otel.status_description`) and the `error` tag;
//!   trace state from `w3c.tracestate`;
//! - endpoints: local `net.host.ip`/`net.host.port`; remote `peer.service`, `net.peer.ip`,
//!   `net.peer.port`, and `server.address`/`server.port` on client and producer spans;
//! - annotations to events; other tags to string attributes.
//!
//! Where Spindle differs from the Collector, keeping more of what was sent:
//! - the resource is taken from every span's own tags (the Collector takes it from the first
//!   span of each service and drops it on the others);
//! - the server half of a shared span (`shared: true`, the same id as its client half, as Brave
//!   and zipkin-go send) gets its own id, derived from the shared one (the same every time), with
//!   the client half as its parent: one trace cannot hold two spans with one id (Jaeger's query
//!   service does the same);
//! - `otel.status_code` is read in any case (`OK` from OpenTelemetry's exporters is Ok, not
//!   Unset); an unknown value is kept as an attribute; the `error` tag's text becomes the status
//!   message;
//! - a `span.kind` tag is read in any case and for every kind, when `kind` is absent;
//! - the scope comes from one family of tags, `otel.scope.*` when it has a name, else
//!   `otel.library.*`;
//! - an annotation in the form OpenTelemetry's exporters write (`{"name": {attributes}}` or
//!   `name|{attributes}|dropped`) becomes a named event with its attributes, and any other text
//!   is kept whole as the event name;
//! - a timestamp of 0 counts as absent in protobuf as in JSON.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};

use crate::{Annotation, Endpoint, Kind, Span};

/// Tags that describe the resource (OpenTelemetry's resource conventions), not the span.
const RESOURCE_KEYS: &[&str] = &[
    "service.name",
    "service.namespace",
    "service.instance.id",
    "service.version",
    "deployment.environment",
    "deployment.environment.name",
    "telemetry.sdk.name",
    "telemetry.sdk.language",
    "telemetry.sdk.version",
    "telemetry.auto.version",
    "telemetry.distro.name",
    "telemetry.distro.version",
    "host.id",
    "host.name",
    "host.type",
    "host.arch",
    "host.image.name",
    "host.image.id",
    "host.image.version",
    "os.type",
    "os.description",
    "os.name",
    "os.version",
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "process.command",
    "process.command_line",
    "process.command_args",
    "process.owner",
    "process.runtime.name",
    "process.runtime.version",
    "process.runtime.description",
    "container.name",
    "container.id",
    "container.runtime",
    "container.image.name",
    "container.image.tag",
    "k8s.cluster.name",
    "k8s.node.name",
    "k8s.node.uid",
    "k8s.namespace.name",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.replicaset.uid",
    "k8s.replicaset.name",
    "k8s.deployment.uid",
    "k8s.deployment.name",
    "k8s.statefulset.uid",
    "k8s.statefulset.name",
    "k8s.daemonset.uid",
    "k8s.daemonset.name",
    "k8s.job.uid",
    "k8s.job.name",
    "k8s.cronjob.uid",
    "k8s.cronjob.name",
    "cloud.provider",
    "cloud.account.id",
    "cloud.region",
    "cloud.availability_zone",
    "cloud.platform",
    "faas.name",
    "faas.id",
    "faas.version",
    "faas.instance",
    "faas.max_memory",
    "device.id",
    "device.model.identifier",
    "device.model.name",
    "webengine.name",
    "webengine.version",
    "webengine.description",
];

type Attributes = BTreeMap<String, Value>;
type ResourceKey = Vec<(String, String)>;
type ScopeKey = (String, String);

/// Maps spans to OTLP, one `ResourceSpans` per distinct resource and one `ScopeSpans` per scope
/// within it (both ordered by their attributes; spans keep the order they were sent in).
pub fn to_resource_spans(spans: Vec<Span>) -> Vec<ResourceSpans> {
    let mut groups: BTreeMap<ResourceKey, BTreeMap<ScopeKey, Vec<OtlpSpan>>> = BTreeMap::new();
    for span in spans {
        let (resource, scope, otlp) = convert(span);
        groups.entry(resource).or_default().entry(scope).or_default().push(otlp);
    }
    groups
        .into_iter()
        .map(|(resource, scopes)| ResourceSpans {
            resource: Some(Resource {
                attributes: resource.into_iter().map(|(k, v)| kv(k, Value::StringValue(v))).collect(),
                ..Default::default()
            }),
            scope_spans: scopes
                .into_iter()
                .map(|((name, version), spans)| ScopeSpans {
                    scope: (!name.is_empty() || !version.is_empty()).then(|| InstrumentationScope {
                        name,
                        version,
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect()
}

fn convert(span: Span) -> (ResourceKey, ScopeKey, OtlpSpan) {
    let Span {
        trace_id,
        id,
        parent_id,
        kind,
        name,
        timestamp_us,
        duration_us,
        local_endpoint,
        remote_endpoint,
        annotations,
        mut tags,
        shared,
    } = span;
    let (id, parent_id) = match (shared, kind) {
        (true, Some(Kind::Server)) => (shared_server_id(&trace_id, &id), Some(id)),
        _ => (id, parent_id),
    };
    let mut resource: BTreeMap<String, String> = BTreeMap::new();
    if let Some(service) = local_endpoint.as_ref().map(|e| &e.service_name).filter(|s| !s.is_empty()) {
        resource.insert("service.name".into(), service.clone());
    }
    for key in RESOURCE_KEYS {
        if let Some(v) = tags.remove(*key) {
            resource.insert((*key).to_string(), v);
        }
    }
    let scope_tags = (tags.remove("otel.scope.name"), tags.remove("otel.scope.version"));
    let library_tags = (tags.remove("otel.library.name"), tags.remove("otel.library.version"));
    let (scope_name, scope_version) = match scope_tags {
        (Some(n), v) if !n.is_empty() => (Some(n), v),
        _ => library_tags,
    };
    let scope = (scope_name.unwrap_or_default(), scope_version.unwrap_or_default());
    let trace_state = tags.remove("w3c.tracestate").unwrap_or_default();
    let kind = match kind {
        Some(Kind::Client) => SpanKind::Client,
        Some(Kind::Server) => SpanKind::Server,
        Some(Kind::Producer) => SpanKind::Producer,
        Some(Kind::Consumer) => SpanKind::Consumer,
        None => match tags.get("span.kind").map(|k| k.to_ascii_lowercase()) {
            Some(k) if matches!(k.as_str(), "client" | "server" | "producer" | "consumer" | "internal") => {
                tags.remove("span.kind");
                match k.as_str() {
                    "client" => SpanKind::Client,
                    "server" => SpanKind::Server,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                }
            }
            _ => SpanKind::Unspecified,
        },
    };
    let status = status(&mut tags);
    let mut attributes: Attributes = tags.into_iter().map(|(k, v)| (k, Value::StringValue(v))).collect();
    if let Some(local) = &local_endpoint {
        if let Some(ip) = ip_text(local) {
            attributes.insert("net.host.ip".into(), Value::StringValue(ip));
        }
        if local.port > 0 {
            attributes.insert("net.host.port".into(), Value::IntValue(local.port.into()));
        }
    }
    if let Some(remote) = &remote_endpoint {
        if !remote.service_name.is_empty() {
            attributes.insert("peer.service".into(), Value::StringValue(remote.service_name.clone()));
        }
        let calls_out = matches!(kind, SpanKind::Client | SpanKind::Producer);
        if let Some(ip) = ip_text(remote) {
            if calls_out {
                attributes.insert("server.address".into(), Value::StringValue(ip.clone()));
            }
            attributes.insert("net.peer.ip".into(), Value::StringValue(ip));
        }
        if remote.port > 0 {
            if calls_out {
                attributes.insert("server.port".into(), Value::IntValue(remote.port.into()));
            }
            attributes.insert("net.peer.port".into(), Value::IntValue(remote.port.into()));
        }
    }
    let start = match timestamp_us {
        Some(t) => t.saturating_mul(1000),
        None => {
            attributes.insert("otel.zipkin.absentField.startTime".into(), Value::BoolValue(true));
            0
        }
    };
    let otlp = OtlpSpan {
        trace_id: trace_id.to_vec(),
        span_id: id.to_vec(),
        trace_state,
        parent_span_id: parent_id.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(duration_us.saturating_mul(1000)),
        attributes: attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        events: annotations.iter().map(event).collect(),
        status: Some(status),
        ..Default::default()
    };
    (resource.into_iter().collect(), scope, otlp)
}

/// The id of the server half of a shared span: a hash of the trace and the shared id (never
/// zero), so a retried body gets the same one.
fn shared_server_id(trace_id: &[u8; 16], id: &[u8; 8]) -> [u8; 8] {
    let mut input = [0u8; 24];
    input[..16].copy_from_slice(trace_id);
    input[16..].copy_from_slice(id);
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&input, 0x5a1b_5e72);
    hash.max(1).to_be_bytes()
}

/// The status the tags give (`otel.status_code`, `otel.status_description`, `error`), consuming them.
fn status(tags: &mut BTreeMap<String, String>) -> Status {
    let mut code = StatusCode::Unset;
    if let Some(text) = tags.get("otel.status_code") {
        let upper = text.to_ascii_uppercase();
        let known = match upper.strip_prefix("STATUS_CODE_").unwrap_or(&upper) {
            "UNSET" => Some(StatusCode::Unset),
            "OK" => Some(StatusCode::Ok),
            "ERROR" => Some(StatusCode::Error),
            _ => None,
        };
        if let Some(c) = known {
            code = c;
            tags.remove("otel.status_code");
        }
    }
    let mut message = tags.remove("otel.status_description").unwrap_or_default();
    if let Some(error) = tags.remove("error") {
        code = StatusCode::Error;
        if message.is_empty() && !error.is_empty() && error != "true" {
            message = error;
        }
    }
    Status { message, code: code as i32 }
}

fn ip_text(e: &Endpoint) -> Option<String> {
    e.ipv6.map(|ip| ip.to_string()).or_else(|| e.ipv4.map(|ip| ip.to_string()))
}

fn kv(key: String, value: Value) -> KeyValue {
    KeyValue { key, value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// An annotation as an event: OpenTelemetry exporters' forms carry a name and attributes;
/// anything else is the event's name.
fn event(a: &Annotation) -> Event {
    let time_unix_nano = a.timestamp_us.saturating_mul(1000);
    let plain = || Event { time_unix_nano, name: a.value.clone(), ..Default::default() };
    // OpenTelemetry's Zipkin exporters: `{"<name>": {<attributes>}}`.
    if a.value.starts_with('{') {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&a.value) {
            if let [(name, serde_json::Value::Object(attrs))] = map.iter().collect::<Vec<_>>().as_slice() {
                return Event {
                    time_unix_nano,
                    name: (*name).clone(),
                    attributes: json_attributes(attrs),
                    ..Default::default()
                };
            }
        }
        return plain();
    }
    // The Collector's own exporter: `name|{attributes}|dropped count`.
    let parts: Vec<&str> = a.value.split('|').collect();
    if let [name, middle @ .., dropped] = parts.as_slice() {
        if !middle.is_empty() {
            let json = middle.join("|");
            if let (Ok(serde_json::Value::Object(attrs)), Ok(dropped)) =
                (serde_json::from_str::<serde_json::Value>(&json), dropped.parse::<u32>())
            {
                return Event {
                    time_unix_nano,
                    name: (*name).to_string(),
                    attributes: json_attributes(&attrs),
                    dropped_attributes_count: dropped,
                };
            }
        }
    }
    plain()
}

fn json_attributes(attrs: &serde_json::Map<String, serde_json::Value>) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => Value::StringValue(s.clone()),
                serde_json::Value::Bool(b) => Value::BoolValue(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::IntValue(i),
                    None => Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
                },
                other => Value::StringValue(other.to_string()),
            };
            kv(k.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_json;

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        kvs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    fn string(s: &str) -> Value {
        Value::StringValue(s.into())
    }

    #[test]
    fn the_python_exporters_spans_map_back() {
        // What opentelemetry-exporter-zipkin-json sends for an error span with an event.
        let body = br#"[{"traceId":"0af7651916cd43dd8448eb211c80319c","id":"b7ad6b7169203331","name":"checkout",
          "timestamp":1700000000000000,"duration":1500,"localEndpoint":{"serviceName":"shop","ipv4":"10.1.2.3","port":8080},
          "kind":"CLIENT","remoteEndpoint":{"serviceName":"db","ipv4":"10.9.9.9","port":5432},
          "tags":{"http.method":"GET","service.name":"shop","telemetry.sdk.language":"python","host.name":"h1",
                  "otel.scope.name":"shop.lib","otel.scope.version":null,"otel.library.name":"shop.lib",
                  "otel.status_code":"ERROR","error":"card declined","w3c.tracestate":"k=v"},
          "annotations":[{"timestamp":1700000000000700,"value":"{\"retry\": {\"attempt\": 2, \"why\": \"timeout\"}}"},
                         {"timestamp":1700000000000800,"value":"cs"}],
          "debug":true},
          {"traceId":"0af7651916cd43dd8448eb211c80319c","id":"c7ad6b7169203331","parentId":"b7ad6b7169203331",
           "name":"inner","timestamp":1700000000000100,"duration":10,"kind":null,
           "localEndpoint":{"serviceName":"shop"},"tags":{"service.name":"shop","telemetry.sdk.language":"python","host.name":"h1","span.kind":"internal","otel.scope.name":"shop.lib"}}]"#;
        let rs = to_resource_spans(decode_json(body).unwrap());
        assert_eq!(rs.len(), 1, "same resource, one ResourceSpans");
        let resource = &rs[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attr(resource, "service.name"), Some(&string("shop")));
        assert_eq!(attr(resource, "host.name"), Some(&string("h1")));
        assert_eq!(attr(resource, "telemetry.sdk.language"), Some(&string("python")));
        let scope = &rs[0].scope_spans[0];
        assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some("shop.lib"));
        let [a, b] = scope.spans.as_slice() else { panic!("{scope:?}") };
        assert_eq!(
            (a.start_time_unix_nano, a.end_time_unix_nano),
            (1_700_000_000_000_000_000, 1_700_000_000_001_500_000)
        );
        assert_eq!(a.kind, SpanKind::Client as i32);
        assert_eq!(a.status, Some(Status { code: StatusCode::Error as i32, message: "card declined".into() }));
        assert_eq!(a.trace_state, "k=v");
        assert_eq!(attr(&a.attributes, "http.method"), Some(&string("GET")));
        for gone in ["service.name", "host.name", "otel.scope.name", "otel.library.name", "error", "otel.status_code"] {
            assert_eq!(attr(&a.attributes, gone), None, "{gone}");
        }
        assert_eq!(attr(&a.attributes, "peer.service"), Some(&string("db")));
        assert_eq!(attr(&a.attributes, "net.peer.ip"), Some(&string("10.9.9.9")));
        assert_eq!(attr(&a.attributes, "net.peer.port"), Some(&Value::IntValue(5432)));
        assert_eq!(attr(&a.attributes, "server.address"), Some(&string("10.9.9.9")));
        assert_eq!(attr(&a.attributes, "net.host.ip"), Some(&string("10.1.2.3")));
        assert_eq!(attr(&a.attributes, "net.host.port"), Some(&Value::IntValue(8080)));
        assert_eq!(a.events[0].name, "retry");
        assert_eq!(attr(&a.events[0].attributes, "attempt"), Some(&Value::IntValue(2)));
        assert_eq!(a.events[0].time_unix_nano, 1_700_000_000_000_700_000);
        assert_eq!((a.events[1].name.as_str(), a.events[1].attributes.len()), ("cs", 0));
        assert_eq!(b.parent_span_id, a.span_id);
        assert_eq!(b.kind, SpanKind::Internal as i32);
        assert_eq!(attr(&b.attributes, "span.kind"), None);
        assert_eq!(b.status.as_ref().map(|s| s.code), Some(StatusCode::Unset as i32));
    }

    #[test]
    fn resources_scopes_and_odd_values() {
        let body = br#"[
          {"traceId":"1","id":"1","name":"x","timestamp":5,"localEndpoint":{"serviceName":"b"},"tags":{"otel.status_code":"weird","error":"true"}},
          {"traceId":"1","id":"2","name":"y","localEndpoint":{"serviceName":"a"},"tags":{"otel.library.name":"lib","otel.library.version":"1"},
           "annotations":[{"timestamp":9,"value":"ev|{\"n\":1.5,\"o\":{\"x\":1}}|3"},{"timestamp":9,"value":"a|b"},{"timestamp":9,"value":"{not json"}]},
          {"traceId":"1","id":"3","name":"z","timestamp":5}]"#;
        let rs = to_resource_spans(decode_json(body).unwrap());
        let services: Vec<Option<&Value>> =
            rs.iter().map(|r| attr(&r.resource.as_ref().unwrap().attributes, "service.name")).collect();
        assert_eq!(services, vec![None, Some(&string("a")), Some(&string("b"))]);
        let y = &rs[1].scope_spans[0];
        assert_eq!(y.scope.as_ref().map(|s| (s.name.as_str(), s.version.as_str())), Some(("lib", "1")));
        let y = &y.spans[0];
        assert_eq!(attr(&y.attributes, "otel.zipkin.absentField.startTime"), Some(&Value::BoolValue(true)));
        assert_eq!(y.start_time_unix_nano, 0);
        assert_eq!((y.events[0].name.as_str(), y.events[0].dropped_attributes_count), ("ev", 3));
        assert_eq!(attr(&y.events[0].attributes, "n"), Some(&Value::DoubleValue(1.5)));
        assert_eq!(attr(&y.events[0].attributes, "o"), Some(&string("{\"x\":1}")));
        assert_eq!(y.events[1].name, "a|b");
        assert_eq!(y.events[2].name, "{not json");
        let x = &rs[2].scope_spans[0].spans[0];
        assert_eq!(x.status, Some(Status { code: StatusCode::Error as i32, message: String::new() }));
        assert_eq!(attr(&x.attributes, "otel.status_code"), Some(&string("weird")), "an unknown status is kept");
        assert!(rs[2].scope_spans[0].scope.is_none());
    }

    #[test]
    fn a_shared_server_span_gets_its_own_id_under_the_client() {
        let body = br#"[{"traceId":"1","id":"a","name":"call","kind":"CLIENT","timestamp":5,"localEndpoint":{"serviceName":"c"}},
                        {"traceId":"1","id":"a","name":"serve","kind":"SERVER","shared":true,"timestamp":6,"localEndpoint":{"serviceName":"s"}}]"#;
        let rs = to_resource_spans(decode_json(body).unwrap());
        let span = |i: usize| &rs[i].scope_spans[0].spans[0];
        let (client, server) = (span(0), span(1));
        assert_eq!((client.name.as_str(), server.name.as_str()), ("call", "serve"));
        assert_eq!(server.parent_span_id, client.span_id);
        assert_ne!(server.span_id, client.span_id);
        assert_eq!(to_resource_spans(decode_json(body).unwrap()), rs, "the same id every time");
    }

    #[test]
    fn the_same_body_always_converts_the_same() {
        let body = br#"[{"traceId":"1","id":"1","timestamp":5,"tags":{"b":"1","a":"2","c":"3","host.name":"h"}},
                        {"traceId":"2","id":"1","timestamp":5,"localEndpoint":{"serviceName":"s"}}]"#;
        let first = to_resource_spans(decode_json(body).unwrap());
        for _ in 0..20 {
            assert_eq!(to_resource_spans(decode_json(body).unwrap()), first);
        }
        let keys: Vec<&str> = first[0].scope_spans[0].spans[0].attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }
}
