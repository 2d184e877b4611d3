//! Span batches -> OTLP `ResourceSpans`, grouped by resource and instrumentation scope.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{Int64Type, TimestampNanosecondType, UInt32Type};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use spindle_schema::{
    attr_map_column, col, span_schema, AttrScope, AttrType, DEDICATED_COLUMNS, SPAN_KINDS, STATUS_CODES,
};

use crate::attrs::{kv, read_encoded_row, read_typed_row};
use crate::{ConvertError, Result};

/// Casts a batch read from any source (Parquet may hand back view types) to the span schema.
pub fn conform(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = span_schema();
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch
            .column_by_name(field.name())
            .ok_or_else(|| ConvertError::Invalid(format!("batch lacks column {}", field.name())))?;
        columns.push(if column.data_type() == field.data_type() {
            column.clone()
        } else {
            cast(column, field.data_type())?
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Rebuilds OTLP resource spans from span batches. Spans sharing a resource and a scope are
/// grouped together; groups keep the order in which they first appear.
pub fn batches_to_resource_spans(batches: &[RecordBatch]) -> Result<Vec<ResourceSpans>> {
    let mut out: Vec<ResourceSpans> = Vec::new();
    let mut resource_index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut scope_index: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
    for batch in batches {
        let batch = conform(batch)?;
        let reader = RowReader::new(&batch);
        for row in 0..batch.num_rows() {
            let (resource, resource_schema_url) = reader.resource(row);
            let mut key = resource.encode_to_vec();
            key.extend_from_slice(resource_schema_url.as_bytes());
            let ri = *resource_index.entry(key).or_insert_with(|| {
                out.push(ResourceSpans {
                    resource: Some(resource),
                    scope_spans: Vec::new(),
                    schema_url: resource_schema_url.to_string(),
                });
                out.len() - 1
            });
            let (scope, scope_schema_url) = reader.scope(row);
            let mut skey = scope.encode_to_vec();
            skey.extend_from_slice(scope_schema_url.as_bytes());
            let scopes = &mut out[ri].scope_spans;
            let si = *scope_index.entry((ri, skey)).or_insert_with(|| {
                scopes.push(ScopeSpans {
                    scope: Some(scope),
                    spans: Vec::new(),
                    schema_url: scope_schema_url.to_string(),
                });
                scopes.len() - 1
            });
            scopes[si].spans.push(reader.span(row));
        }
    }
    Ok(out)
}

/// Typed access to the columns of one conformed span batch.
struct RowReader<'a> {
    batch: &'a RecordBatch,
}

impl<'a> RowReader<'a> {
    fn new(batch: &'a RecordBatch) -> Self {
        Self { batch }
    }

    fn column(&self, name: &str) -> &'a dyn Array {
        // The batch was conformed to the span schema, so every column exists.
        self.batch.column_by_name(name).map(|c| c.as_ref()).unwrap_or_else(|| unreachable_column(name))
    }

    fn str(&self, name: &str, row: usize) -> &'a str {
        self.column(name).as_string::<i32>().value(row)
    }

    fn u32(&self, name: &str, row: usize) -> u32 {
        self.column(name).as_primitive::<UInt32Type>().value(row)
    }

    fn dedicated(&self, scope: AttrScope, row: usize, out: &mut Vec<KeyValue>) {
        for d in DEDICATED_COLUMNS.iter().filter(|d| d.scope == scope) {
            let column = self.column(d.column);
            if column.is_null(row) {
                continue;
            }
            let value = match d.ty {
                AttrType::Int => Value::IntValue(column.as_primitive::<Int64Type>().value(row)),
                _ => Value::StringValue(column.as_string::<i32>().value(row).to_string()),
            };
            out.push(kv(d.key, AnyValue { value: Some(value) }));
        }
    }

    fn attributes(&self, scope: AttrScope, row: usize) -> Vec<KeyValue> {
        let mut out = Vec::new();
        self.dedicated(scope, row, &mut out);
        for ty in AttrType::ALL {
            read_typed_row(self.column(&attr_map_column(scope, ty)).as_map(), ty, row, &mut out);
        }
        out
    }

    fn resource(&self, row: usize) -> (Resource, &'a str) {
        let resource = Resource {
            attributes: self.attributes(AttrScope::Resource, row),
            dropped_attributes_count: self.u32(col::RESOURCE_DROPPED_ATTRIBUTES_COUNT, row),
            ..Default::default()
        };
        (resource, self.str(col::RESOURCE_SCHEMA_URL, row))
    }

    fn scope(&self, row: usize) -> (InstrumentationScope, &'a str) {
        let mut attributes = Vec::new();
        read_encoded_row(self.column(col::SCOPE_ATTRS).as_map(), row, &mut attributes);
        let scope = InstrumentationScope {
            name: self.str(col::SCOPE_NAME, row).to_string(),
            version: self.str(col::SCOPE_VERSION, row).to_string(),
            attributes,
            dropped_attributes_count: self.u32(col::SCOPE_DROPPED_ATTRIBUTES_COUNT, row),
        };
        (scope, self.str(col::SCOPE_SCHEMA_URL, row))
    }

    fn span(&self, row: usize) -> Span {
        let fsb = |name: &str| {
            let c = self.column(name).as_fixed_size_binary();
            if c.is_null(row) {
                Vec::new()
            } else {
                c.value(row).to_vec()
            }
        };
        let start = self.column(col::START_TIME).as_primitive::<TimestampNanosecondType>().value(row);
        let duration = self.column(col::DURATION_NS).as_primitive::<Int64Type>().value(row);
        let kind = self.str(col::KIND, row);
        let status_code = self.str(col::STATUS_CODE, row);
        let status_message = self.str(col::STATUS_MESSAGE, row);
        // Status is always present (SDKs always send one, and Tempo always returns one).
        let status = Some(Status {
            message: status_message.to_string(),
            code: STATUS_CODES.iter().position(|c| *c == status_code).unwrap_or(0) as i32,
        });
        Span {
            trace_id: fsb(col::TRACE_ID),
            span_id: fsb(col::SPAN_ID),
            trace_state: self.str(col::TRACE_STATE, row).to_string(),
            parent_span_id: fsb(col::PARENT_SPAN_ID),
            flags: self.u32(col::FLAGS, row),
            name: self.str(col::NAME, row).to_string(),
            kind: SPAN_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as i32,
            start_time_unix_nano: start as u64,
            end_time_unix_nano: start.wrapping_add(duration) as u64,
            attributes: self.attributes(AttrScope::Span, row),
            dropped_attributes_count: self.u32(col::DROPPED_ATTRIBUTES_COUNT, row),
            events: self.events(row),
            dropped_events_count: self.u32(col::DROPPED_EVENTS_COUNT, row),
            links: self.links(row),
            dropped_links_count: self.u32(col::DROPPED_LINKS_COUNT, row),
            status,
        }
    }

    fn events(&self, row: usize) -> Vec<span::Event> {
        let list = self.column(col::EVENTS).as_list::<i32>();
        let items = list.value(row);
        let items = items.as_struct();
        let time = items.column(0).as_primitive::<TimestampNanosecondType>();
        let name = items.column(1).as_string::<i32>();
        let attrs = items.column(2).as_map();
        let dropped = items.column(3).as_primitive::<UInt32Type>();
        (0..items.len())
            .map(|i| {
                let mut attributes = Vec::new();
                read_encoded_row(attrs, i, &mut attributes);
                span::Event {
                    time_unix_nano: time.value(i) as u64,
                    name: name.value(i).to_string(),
                    attributes,
                    dropped_attributes_count: dropped.value(i),
                }
            })
            .collect()
    }

    fn links(&self, row: usize) -> Vec<span::Link> {
        let list = self.column(col::LINKS).as_list::<i32>();
        let items = list.value(row);
        let items = items.as_struct();
        let trace_id = items.column(0).as_binary::<i32>();
        let span_id = items.column(1).as_binary::<i32>();
        let trace_state = items.column(2).as_string::<i32>();
        let attrs = items.column(3).as_map();
        let dropped = items.column(4).as_primitive::<UInt32Type>();
        let flags = items.column(5).as_primitive::<UInt32Type>();
        (0..items.len())
            .map(|i| {
                let mut attributes = Vec::new();
                read_encoded_row(attrs, i, &mut attributes);
                span::Link {
                    trace_id: trace_id.value(i).to_vec(),
                    span_id: span_id.value(i).to_vec(),
                    trace_state: trace_state.value(i).to_string(),
                    attributes,
                    dropped_attributes_count: dropped.value(i),
                    flags: flags.value(i),
                }
            })
            .collect()
    }
}

#[cold]
fn unreachable_column(name: &str) -> ! {
    // `conform` guarantees every schema column is present; reaching this is a programming error.
    panic!("conformed span batch lacks column {name}")
}
