//! Attribute storage: dedicated columns, typed residual maps, and encoded `AnyValue`s.

use std::collections::HashMap;
use std::sync::OnceLock;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, MapArray, MapBuilder,
    StringBuilder,
};
use arrow::datatypes::{Float64Type, Int64Type};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use prost::Message;
use spindle_schema::{AttrScope, AttrType, DEDICATED_COLUMNS};

/// Index of the dedicated column for (scope, key), if any.
pub(crate) fn dedicated_index(scope: AttrScope, key: &str) -> Option<usize> {
    static INDEX: OnceLock<HashMap<(AttrScope, &'static str), usize>> = OnceLock::new();
    INDEX
        .get_or_init(|| DEDICATED_COLUMNS.iter().enumerate().map(|(i, d)| ((d.scope, d.key), i)).collect())
        .get(&(scope, key))
        .copied()
}

/// Encodes a value that has no typed map of its own (bytes, array, kvlist, or empty).
pub(crate) fn encode_any(value: &AnyValue) -> Vec<u8> {
    value.encode_to_vec()
}

/// Decodes a value written by [`encode_any`] (attributes of scopes, events and links, and the
/// `*_attrs_other` maps); undecodable bytes come back as a bytes value.
pub fn decode_any(bytes: &[u8]) -> AnyValue {
    AnyValue::decode(bytes).unwrap_or_else(|_| AnyValue { value: Some(Value::BytesValue(bytes.to_vec())) })
}

/// Builders for one scope's five residual attribute maps.
pub(crate) struct AttrMapsBuilder {
    pub s: MapBuilder<StringBuilder, StringBuilder>,
    pub i: MapBuilder<StringBuilder, Int64Builder>,
    pub f: MapBuilder<StringBuilder, Float64Builder>,
    pub b: MapBuilder<StringBuilder, BooleanBuilder>,
    pub o: MapBuilder<StringBuilder, BinaryBuilder>,
}

impl AttrMapsBuilder {
    pub fn new() -> Self {
        Self {
            s: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            i: MapBuilder::new(None, StringBuilder::new(), Int64Builder::new()),
            f: MapBuilder::new(None, StringBuilder::new(), Float64Builder::new()),
            b: MapBuilder::new(None, StringBuilder::new(), BooleanBuilder::new()),
            o: MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new()),
        }
    }

    /// Appends one key/value to the map of its type (the row stays open).
    pub fn push(&mut self, key: &str, value: Option<&AnyValue>) {
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => {
                self.s.keys().append_value(key);
                self.s.values().append_value(s);
            }
            Some(Value::IntValue(v)) => {
                self.i.keys().append_value(key);
                self.i.values().append_value(*v);
            }
            Some(Value::DoubleValue(v)) => {
                self.f.keys().append_value(key);
                self.f.values().append_value(*v);
            }
            Some(Value::BoolValue(v)) => {
                self.b.keys().append_value(key);
                self.b.values().append_value(*v);
            }
            _ => {
                self.o.keys().append_value(key);
                let encoded = match value {
                    Some(v) => encode_any(v),
                    None => Vec::new(),
                };
                self.o.values().append_value(encoded);
            }
        }
    }

    /// Closes the current row of all five maps.
    pub fn end_row(&mut self) -> Result<(), arrow::error::ArrowError> {
        self.s.append(true)?;
        self.i.append(true)?;
        self.f.append(true)?;
        self.b.append(true)?;
        self.o.append(true)
    }

    /// Finishes the five maps in [`AttrType::ALL`] order.
    pub fn finish(&mut self) -> [ArrayRef; 5] {
        [
            std::sync::Arc::new(self.s.finish()),
            std::sync::Arc::new(self.i.finish()),
            std::sync::Arc::new(self.f.finish()),
            std::sync::Arc::new(self.b.finish()),
            std::sync::Arc::new(self.o.finish()),
        ]
    }
}

/// Builder for a `Map<Utf8, Binary>` of encoded `AnyValue`s (scope, event and link attributes).
pub(crate) fn encoded_map_builder() -> MapBuilder<StringBuilder, BinaryBuilder> {
    MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new())
}

/// Appends a full attribute list as one row of an encoded map.
pub(crate) fn push_encoded_row(
    builder: &mut MapBuilder<StringBuilder, BinaryBuilder>,
    attrs: &[KeyValue],
) -> Result<(), arrow::error::ArrowError> {
    for kv in attrs {
        builder.keys().append_value(&kv.key);
        builder.values().append_value(encode_any(kv.value.as_ref().unwrap_or(&AnyValue::default())));
    }
    builder.append(true)
}

/// Reads row `row` of an encoded map back into key/values.
pub(crate) fn read_encoded_row(map: &MapArray, row: usize, out: &mut Vec<KeyValue>) {
    let entries = map.value(row);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_binary::<i32>();
    for i in 0..entries.len() {
        let value = if values.is_null(i) { AnyValue::default() } else { decode_any(values.value(i)) };
        out.push(kv(keys.value(i), value));
    }
}

/// Reads row `row` of a typed residual map of type `ty` back into key/values.
pub(crate) fn read_typed_row(map: &MapArray, ty: AttrType, row: usize, out: &mut Vec<KeyValue>) {
    let entries = map.value(row);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1);
    for i in 0..entries.len() {
        if values.is_null(i) {
            out.push(kv(keys.value(i), AnyValue::default()));
            continue;
        }
        let value = match ty {
            AttrType::Str => Value::StringValue(values.as_string::<i32>().value(i).to_string()),
            AttrType::Int => Value::IntValue(values.as_primitive::<Int64Type>().value(i)),
            AttrType::Float => Value::DoubleValue(values.as_primitive::<Float64Type>().value(i)),
            AttrType::Bool => Value::BoolValue(values.as_boolean().value(i)),
            AttrType::Other => {
                out.push(kv(keys.value(i), decode_any(values.as_binary::<i32>().value(i))));
                continue;
            }
        };
        out.push(kv(keys.value(i), AnyValue { value: Some(value) }));
    }
}

/// Builds an OTLP key/value.
pub(crate) fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(value), ..Default::default() }
}
