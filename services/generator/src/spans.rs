//! Typed access to the columns of a span batch the processors read, and attribute lookup by
//! name across the dedicated columns and the typed attribute maps.

use std::borrow::Cow;

use arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeBinaryArray, Int64Array, MapArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use spindle_schema::{attr_map_column, col, dedicated_column, AttrScope, AttrType, SPAN_KINDS, STATUS_CODES};

use crate::GeneratorError;

/// The columns of one span batch that the processors need.
pub struct SpanColumns<'a> {
    batch: &'a RecordBatch,
    /// 16-byte trace ids.
    pub trace_id: &'a FixedSizeBinaryArray,
    /// 8-byte span ids.
    pub span_id: &'a FixedSizeBinaryArray,
    /// 8-byte parent ids, null for roots.
    pub parent: &'a FixedSizeBinaryArray,
    /// Span names.
    pub name: &'a StringArray,
    /// Span kinds (`server`, `client`, ...).
    pub kind: &'a StringArray,
    /// Durations (ns).
    pub duration: &'a Int64Array,
    /// Status codes (`unset`, `ok`, `error`).
    pub status: &'a StringArray,
    /// `service.name`.
    pub service: &'a StringArray,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, GeneratorError> {
    batch.column_by_name(name).map(|a| a.as_ref()).ok_or(GeneratorError::MissingColumn(name.to_string()))
}

fn typed<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, GeneratorError> {
    column(batch, name)?.as_any().downcast_ref::<T>().ok_or(GeneratorError::MissingColumn(name.to_string()))
}

impl<'a> SpanColumns<'a> {
    /// The columns of `batch` (a span-schema batch).
    pub fn new(batch: &'a RecordBatch) -> Result<Self, GeneratorError> {
        Ok(Self {
            batch,
            trace_id: typed(batch, col::TRACE_ID)?,
            span_id: typed(batch, col::SPAN_ID)?,
            parent: typed(batch, col::PARENT_SPAN_ID)?,
            name: typed(batch, col::NAME)?,
            kind: typed(batch, col::KIND)?,
            duration: typed(batch, col::DURATION_NS)?,
            status: typed(batch, col::STATUS_CODE)?,
            service: typed(batch, col::SERVICE_NAME)?,
        })
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether there are no spans.
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// The trace id of row `i`.
    pub fn trace_id(&self, i: usize) -> [u8; 16] {
        self.trace_id.value(i).try_into().unwrap_or([0; 16])
    }

    /// The span id of row `i`.
    pub fn span_id(&self, i: usize) -> [u8; 8] {
        self.span_id.value(i).try_into().unwrap_or([0; 8])
    }

    /// The parent span id of row `i` (`None` for a root span).
    pub fn parent(&self, i: usize) -> Option<[u8; 8]> {
        if self.parent.is_null(i) {
            return None;
        }
        self.parent.value(i).try_into().ok()
    }

    /// The `service.name` of row `i` (empty when absent).
    pub fn service(&self, i: usize) -> &'a str {
        if self.service.is_valid(i) {
            self.service.value(i)
        } else {
            ""
        }
    }

    /// Duration of row `i` in seconds.
    pub fn duration_seconds(&self, i: usize) -> f64 {
        self.duration.value(i).max(0) as f64 / 1e9
    }

    /// Looks up attribute `key`: resource attributes first, then span attributes (as Tempo does).
    pub fn attribute(&self, key: &str) -> Attribute<'a> {
        let mut sources = Vec::new();
        for scope in [AttrScope::Resource, AttrScope::Span] {
            if let Some(d) = dedicated_column(scope, key) {
                if let Some(a) = self.batch.column_by_name(d.column) {
                    match a.data_type() {
                        DataType::Utf8 => sources.push(Source::Str(a.as_string::<i32>())),
                        DataType::Int64 => sources.push(Source::Int(a.as_primitive::<Int64Type>())),
                        _ => {}
                    }
                }
            }
            for ty in [AttrType::Str, AttrType::Int, AttrType::Float, AttrType::Bool] {
                if let Some(map) = self.batch.column_by_name(&attr_map_column(scope, ty)).and_then(|a| a.as_map_opt()) {
                    sources.push(Source::Map(map));
                }
            }
        }
        Attribute { key: key.to_string(), sources }
    }
}

enum Source<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
    Map(&'a MapArray),
}

/// One attribute looked up by name across the places it can be stored.
pub struct Attribute<'a> {
    key: String,
    sources: Vec<Source<'a>>,
}

impl<'a> Attribute<'a> {
    /// The attribute's value on row `i` as text, if the span or its resource has it.
    pub fn value(&self, i: usize) -> Option<Cow<'a, str>> {
        for source in &self.sources {
            match source {
                Source::Str(a) if a.is_valid(i) => return Some(Cow::Borrowed(a.value(i))),
                Source::Int(a) if a.is_valid(i) => return Some(Cow::Owned(a.value(i).to_string())),
                Source::Map(m) => {
                    if let Some(v) = map_value(m, i, &self.key) {
                        return Some(v);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

fn map_value<'a>(map: &'a MapArray, row: usize, key: &str) -> Option<Cow<'a, str>> {
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    if start == end {
        return None;
    }
    let keys = map.keys().as_string_opt::<i32>()?;
    let at = (start..end).find(|&j| keys.value(j) == key)?;
    let values = map.values();
    if values.is_null(at) {
        return None;
    }
    if let Some(s) = values.as_string_opt::<i32>() {
        return Some(Cow::Borrowed(s.value(at)));
    }
    if let Some(v) = values.as_primitive_opt::<Int64Type>() {
        return Some(Cow::Owned(v.value(at).to_string()));
    }
    if let Some(v) = values.as_primitive_opt::<Float64Type>() {
        return Some(Cow::Owned(v.value(at).to_string()));
    }
    if let Some(v) = values.as_any().downcast_ref::<BooleanArray>() {
        return Some(Cow::Borrowed(if v.value(at) { "true" } else { "false" }));
    }
    None
}

/// Tempo's label value for a stored span kind (`server` -> `SPAN_KIND_SERVER`): the OTLP enum name.
pub fn kind_label(kind: &str) -> &'static str {
    let code = SPAN_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as i32;
    SpanKind::try_from(code).unwrap_or(SpanKind::Unspecified).as_str_name()
}

/// Tempo's label value for a stored status code (`error` -> `STATUS_CODE_ERROR`): the OTLP enum name.
pub fn status_label(status: &str) -> &'static str {
    let code = STATUS_CODES.iter().position(|c| *c == status).unwrap_or(0) as i32;
    StatusCode::try_from(code).unwrap_or(StatusCode::Unset).as_str_name()
}
