//! Test helpers shared by the storage tests.

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use spindle_otlp::to_arrow::resource_spans_to_batch;

/// `spans` of service `svc` as one span-schema batch.
pub fn spans_batch(spans: Vec<Span>) -> RecordBatch {
    let service = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue { value: Some(Value::StringValue("svc".into())) }),
        ..Default::default()
    };
    let rs = ResourceSpans {
        resource: Some(Resource { attributes: vec![service], ..Default::default() }),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    };
    resource_spans_to_batch(&[rs]).unwrap().batch
}
