//! A trace survives OTLP -> Arrow -> IPC -> Parquet block -> Arrow -> OTLP unchanged.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use spindle_otlp::from_arrow::batches_to_resource_spans;
use spindle_otlp::to_arrow::resource_spans_to_batch;
use spindle_schema::ipc;
use spindle_storage::block::{decode_block, encode_block};
use spindle_storage::BlockOptions;

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(x: &str) -> Value {
    Value::StringValue(x.into())
}

fn sample() -> Vec<ResourceSpans> {
    let trace_a = [0xab; 16];
    let mut trace_b = [0x01; 16];
    trace_b[15] = 2;
    let resource = |svc: &str| Resource {
        attributes: vec![
            kv("service.name", s(svc)),
            kv("k8s.pod.name", s("pod-1")),
            kv("host.cpus", Value::IntValue(8)),
            kv("cloud.region", s("eu-west-1")),
            kv("load", Value::DoubleValue(0.75)),
            kv("debug", Value::BoolValue(false)),
        ],
        dropped_attributes_count: 2,
        ..Default::default()
    };
    let root = Span {
        trace_id: trace_a.to_vec(),
        span_id: vec![1; 8],
        trace_state: "vendor=x".into(),
        parent_span_id: vec![],
        flags: 0x101,
        name: "GET /checkout".into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            kv("http.method", s("GET")),
            kv("http.status_code", Value::IntValue(500)),
            // Same key as a dedicated int column but a string value: stays in the residual map.
            kv("http.route", Value::IntValue(7)),
            kv("user.id", s("u-42")),
            kv("ratio", Value::DoubleValue(1.5)),
            kv("cached", Value::BoolValue(true)),
            kv("payload", Value::BytesValue(vec![0, 1, 2, 255])),
            kv(
                "tags",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: Some(s("a")) }, AnyValue { value: Some(Value::IntValue(3)) }],
                }),
            ),
            kv("nested", Value::KvlistValue(KeyValueList { values: vec![kv("inner", s("v"))] })),
            KeyValue { key: "empty".into(), value: Some(AnyValue { value: None }), ..Default::default() },
        ],
        dropped_attributes_count: 1,
        events: vec![span::Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.type", s("Boom")), kv("exception.count", Value::IntValue(2))],
            dropped_attributes_count: 3,
        }],
        dropped_events_count: 4,
        links: vec![span::Link {
            trace_id: trace_b.to_vec(),
            span_id: vec![9; 8],
            trace_state: "t=1".into(),
            attributes: vec![kv("link.kind", s("follows"))],
            dropped_attributes_count: 5,
            flags: 1,
        }],
        dropped_links_count: 6,
        status: Some(Status { message: "failed".into(), code: 2 }),
    };
    let child = Span {
        trace_id: trace_a.to_vec(),
        span_id: vec![2; 8],
        parent_span_id: vec![1; 8],
        name: "SELECT orders".into(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_010_000_000,
        end_time_unix_nano: 1_700_000_000_020_000_000,
        attributes: vec![kv("db.system", s("postgresql")), kv("db.statement", s("SELECT 1"))],
        // Spans come back with a status even when sent without (as from Tempo).
        status: Some(Status::default()),
        ..Default::default()
    };
    let other = Span {
        trace_id: trace_b.to_vec(),
        span_id: vec![3; 8],
        name: "consume".into(),
        kind: 5,
        start_time_unix_nano: 1_700_000_001_000_000_000,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        status: Some(Status { message: String::new(), code: 1 }),
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "checkout".into(),
        version: "1.2.3".into(),
        attributes: vec![kv("lib", s("otel"))],
        dropped_attributes_count: 1,
    };
    vec![
        ResourceSpans {
            resource: Some(resource("shop")),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope.clone()),
                spans: vec![root, child],
                schema_url: "https://scope".into(),
            }],
            schema_url: "https://resource".into(),
        },
        ResourceSpans {
            resource: Some(resource("worker")),
            scope_spans: vec![ScopeSpans { scope: Some(scope), spans: vec![other], schema_url: String::new() }],
            schema_url: String::new(),
        },
    ]
}

/// Attribute order is not meaningful in OTLP: sort lists so they compare as sets.
fn normalise(mut list: Vec<ResourceSpans>) -> Vec<(Vec<u8>, Span, Resource)> {
    let mut out = Vec::new();
    for rs in list.drain(..) {
        let mut resource = rs.resource.unwrap_or_default();
        resource.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        for ss in rs.scope_spans {
            for mut span in ss.spans {
                span.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                for e in &mut span.events {
                    e.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
                out.push((span.span_id.clone(), span, resource.clone()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn otlp_survives_arrow_ipc_and_parquet() {
    let input = sample();
    let converted = resource_spans_to_batch(&input).unwrap();
    assert_eq!(converted.rejected, 0);
    assert_eq!(converted.batch.num_rows(), 3);

    let ipc_batches = ipc::decode(&ipc::encode(std::slice::from_ref(&converted.batch)).unwrap()).unwrap();
    let encoded = encode_block(&ipc_batches, &BlockOptions::default()).unwrap().unwrap();
    assert_eq!(encoded.facts.rows, 3);
    let from_parquet = decode_block(bytes::Bytes::from(encoded.parquet)).unwrap();

    let back = batches_to_resource_spans(&from_parquet).unwrap();
    assert_eq!(back.len(), 2, "spans regroup under their two resources");
    assert_eq!(normalise(back), normalise(input.clone()));
    // Scopes come back too.
    let scope = batches_to_resource_spans(&ipc_batches).unwrap()[0].scope_spans[0].scope.clone().unwrap();
    assert_eq!(scope, input[0].scope_spans[0].scope.clone().unwrap());
}

#[test]
fn invalid_spans_are_rejected_not_stored() {
    let mut input = sample();
    input[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];
    input[0].scope_spans[0].spans[1].span_id = vec![0; 8];
    let converted = resource_spans_to_batch(&input).unwrap();
    assert_eq!(converted.rejected, 2);
    assert_eq!(converted.batch.num_rows(), 1);
    assert!(converted.first_error.unwrap().contains("trace id"));
}

#[test]
fn blocks_are_sorted_by_trace_then_start() {
    let input = sample();
    let batch = resource_spans_to_batch(&input).unwrap().batch;
    let encoded = encode_block(&[batch], &BlockOptions::default()).unwrap().unwrap();
    assert_eq!(encoded.facts.min_trace_id, hex_of([0x01; 15], 2));
    assert_eq!(encoded.facts.max_trace_id, "ab".repeat(16));
    assert_eq!(encoded.facts.min_time_ns, 1_700_000_000_000_000_000);
    assert!(encoded.facts.trace_bloom.may_contain(&[0xab; 16]));
    assert!(!encoded.facts.trace_bloom.may_contain(&[0x55; 16]));
}

fn hex_of(prefix: [u8; 15], last: u8) -> String {
    let mut s: String = prefix.iter().map(|b| format!("{b:02x}")).collect();
    s.push_str(&format!("{last:02x}"));
    s
}

#[test]
fn a_resource_repeated_per_span_cannot_blow_up_memory() {
    let mut input = sample();
    input[0].resource.as_mut().unwrap().attributes.push(kv("huge", s(&"x".repeat(1 << 20))));
    let template = input[0].scope_spans[0].spans[1].clone();
    input[0].scope_spans[0].spans = (0..1000u32)
        .map(|i| {
            let mut sp = template.clone();
            sp.span_id = [&[1u8; 4][..], &i.to_be_bytes()[..]].concat();
            sp
        })
        .collect();
    let err = resource_spans_to_batch(&input).unwrap_err();
    assert!(matches!(err, spindle_otlp::ConvertError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("limit"));
}

#[tokio::test]
async fn blocks_carry_their_tags_in_the_footer() {
    let batch = resource_spans_to_batch(&sample()).unwrap().batch;
    let store: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(object_store::memory::InMemory::new());
    let tenant = spindle_storage::TenantId::default_tenant();
    let meta =
        spindle_storage::write_block(store.clone(), &tenant, "c", 0, (1, 2), vec![batch], &BlockOptions::default())
            .await
            .unwrap()
            .unwrap();
    let summary = spindle_storage::tags::read_summary(store, &meta.path, meta.bytes).await.unwrap().expect("a summary");
    let resource = &summary.scopes["resource"];
    assert!(resource.complete);
    assert!(resource.keys["service.name"].values.iter().any(|(ty, _)| ty == "string"));
    assert!(!summary.scopes["span"].keys.is_empty());
    assert!(summary.scopes["intrinsic"].keys["name"].complete);
}
