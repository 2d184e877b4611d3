//! The one Arrow schema for spans, used by every Spindle component.
//!
//! A row is one span, carrying its resource and instrumentation scope, so a block can be read
//! back into OTLP without any side table. Frequent attributes get dedicated columns (see
//! [`DEDICATED_COLUMNS`]); every other attribute lives in a typed map column per value type
//! (`*_attrs_str`, `*_attrs_int`, `*_attrs_float`, `*_attrs_bool`, and `*_attrs_other` holding
//! bytes, arrays and key-value lists as protobuf-encoded OTLP `AnyValue`). Events and links keep
//! their attributes as protobuf-encoded `AnyValue`s. Rows in blocks are sorted by
//! `trace_id`, then `start_time`.

pub mod digest;
pub mod ipc;
pub mod metrics;

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The bytes a batch's rows take in memory: of a slice, its own share only (what
/// `RecordBatch::get_array_memory_size` counts is every buffer the slice shares).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// Column names of the span schema.
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const FLAGS: &str = "flags";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const START_TIME: &str = "start_time";
    pub const DURATION_NS: &str = "duration_ns";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
    pub const DROPPED_EVENTS_COUNT: &str = "dropped_events_count";
    pub const DROPPED_LINKS_COUNT: &str = "dropped_links_count";
    pub const SERVICE_NAME: &str = "service_name";
    pub const RESOURCE_DROPPED_ATTRIBUTES_COUNT: &str = "resource_dropped_attributes_count";
    pub const RESOURCE_SCHEMA_URL: &str = "resource_schema_url";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const SCOPE_VERSION: &str = "scope_version";
    pub const SCOPE_ATTRS: &str = "scope_attrs";
    pub const SCOPE_DROPPED_ATTRIBUTES_COUNT: &str = "scope_dropped_attributes_count";
    pub const SCOPE_SCHEMA_URL: &str = "scope_schema_url";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    /// Block-only column (see [`block_schema`](super::block_schema)): how many rows before this
    /// one its parent span is, within the same trace and row group; 0 when the parent id is
    /// stored in `parent_span_id` instead (or there is none).
    pub const PARENT_OFFSET: &str = "parent_offset";
}

/// Where an attribute lives in OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrScope {
    /// `resource.attributes`.
    Resource,
    /// `span.attributes`.
    Span,
}

impl AttrScope {
    /// Prefix of this scope's residual map columns (`resource_attrs_str`, `span_attrs_int`, ...).
    pub fn prefix(self) -> &'static str {
        match self {
            AttrScope::Resource => "resource",
            AttrScope::Span => "span",
        }
    }
}

/// The value type of a dedicated attribute column or of a residual attribute map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrType {
    /// OTLP `string_value`, Arrow `Utf8`.
    Str,
    /// OTLP `int_value`, Arrow `Int64`.
    Int,
    /// OTLP `double_value`, Arrow `Float64`.
    Float,
    /// OTLP `bool_value`, Arrow `Boolean`.
    Bool,
    /// OTLP `bytes_value`, `array_value`, `kvlist_value`, stored as protobuf-encoded `AnyValue`.
    Other,
}

impl AttrType {
    /// Every residual map type, in column order.
    pub const ALL: [AttrType; 5] = [AttrType::Str, AttrType::Int, AttrType::Float, AttrType::Bool, AttrType::Other];

    /// Suffix of the residual map column for this type.
    pub fn suffix(self) -> &'static str {
        match self {
            AttrType::Str => "str",
            AttrType::Int => "int",
            AttrType::Float => "float",
            AttrType::Bool => "bool",
            AttrType::Other => "other",
        }
    }

    /// The Arrow type of one value.
    pub fn data_type(self) -> DataType {
        match self {
            AttrType::Str => DataType::Utf8,
            AttrType::Int => DataType::Int64,
            AttrType::Float => DataType::Float64,
            AttrType::Bool => DataType::Boolean,
            AttrType::Other => DataType::Binary,
        }
    }
}

/// An attribute promoted to its own column.
#[derive(Debug, Clone, Copy)]
pub struct DedicatedColumn {
    /// Resource or span attribute.
    pub scope: AttrScope,
    /// The OTLP attribute key, e.g. `http.method`.
    pub key: &'static str,
    /// The column name, e.g. `span_http_method`.
    pub column: &'static str,
    /// Values of any other type stay in the residual maps.
    pub ty: AttrType,
}

macro_rules! dedicated {
    ($($scope:ident $key:literal => $col:literal : $ty:ident),* $(,)?) => {
        /// Attributes that get a column of their own: the ones searched and grouped by most.
        pub const DEDICATED_COLUMNS: &[DedicatedColumn] = &[
            $(DedicatedColumn { scope: AttrScope::$scope, key: $key, column: $col, ty: AttrType::$ty }),*
        ];
    };
}

dedicated! {
    Resource "service.name" => "service_name": Str,
    Resource "service.namespace" => "resource_service_namespace": Str,
    Resource "service.version" => "resource_service_version": Str,
    Resource "deployment.environment" => "resource_deployment_environment": Str,
    Resource "host.name" => "resource_host_name": Str,
    Resource "k8s.cluster.name" => "resource_k8s_cluster_name": Str,
    Resource "k8s.namespace.name" => "resource_k8s_namespace_name": Str,
    Resource "k8s.deployment.name" => "resource_k8s_deployment_name": Str,
    Resource "k8s.pod.name" => "resource_k8s_pod_name": Str,
    Resource "k8s.node.name" => "resource_k8s_node_name": Str,
    Span "http.method" => "span_http_method": Str,
    Span "http.request.method" => "span_http_request_method": Str,
    Span "http.route" => "span_http_route": Str,
    Span "http.url" => "span_http_url": Str,
    Span "url.full" => "span_url_full": Str,
    Span "http.status_code" => "span_http_status_code": Int,
    Span "http.response.status_code" => "span_http_response_status_code": Int,
    Span "db.system" => "span_db_system": Str,
    Span "db.name" => "span_db_name": Str,
    Span "db.statement" => "span_db_statement": Str,
    Span "db.operation" => "span_db_operation": Str,
    Span "rpc.system" => "span_rpc_system": Str,
    Span "rpc.service" => "span_rpc_service": Str,
    Span "rpc.method" => "span_rpc_method": Str,
    Span "messaging.system" => "span_messaging_system": Str,
    Span "peer.service" => "span_peer_service": Str,
}

/// The dedicated column for an attribute, if it has one.
pub fn dedicated_column(scope: AttrScope, key: &str) -> Option<&'static DedicatedColumn> {
    DEDICATED_COLUMNS.iter().find(|d| d.scope == scope && d.key == key)
}

/// Name of the residual map column for a scope and a value type, e.g. `span_attrs_int`.
pub fn attr_map_column(scope: AttrScope, ty: AttrType) -> String {
    format!("{}_attrs_{}", scope.prefix(), ty.suffix())
}

/// The Arrow type of a `Map<Utf8, value>` attribute column.
pub fn map_type(value: DataType) -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", value, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// Timestamp type used for span and event times: nanoseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// Fields of one element of the `events` list.
pub fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attrs", map_type(DataType::Binary), false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
    ])
}

/// Fields of one element of the `links` list. Ids are kept as sent (any length).
pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::Binary, false),
        Field::new("span_id", DataType::Binary, false),
        Field::new("trace_state", DataType::Utf8, false),
        Field::new("attrs", map_type(DataType::Binary), false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
        Field::new("flags", DataType::UInt32, false),
    ])
}

/// Item field of the `events` list column.
pub fn event_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(event_fields()), false))
}

/// Item field of the `links` list column.
pub fn link_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(link_fields()), false))
}

/// The span schema. Built once; every batch in Spindle has exactly this schema.
pub fn span_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA.get_or_init(build_schema).clone()
}

/// The schema of a Parquet block: the span schema plus [`col::PARENT_OFFSET`]. A block stores a
/// span's parent as a row offset when the parent is a row of the same trace and row group, and
/// leaves `parent_span_id` null there (an 8-byte random id costs 8 bytes; a small offset, a
/// fraction of one). Readers rebuild `parent_span_id` from the two
/// (`spindle_storage::parent::ParentRebuilder`); blocks of layout 1 have no offset column.
pub fn block_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields: Vec<Field> = span_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(col::PARENT_OFFSET, DataType::Int32, true));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

fn build_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(col::TRACE_ID, DataType::FixedSizeBinary(16), false),
        Field::new(col::SPAN_ID, DataType::FixedSizeBinary(8), false),
        Field::new(col::PARENT_SPAN_ID, DataType::FixedSizeBinary(8), true),
        Field::new(col::TRACE_STATE, DataType::Utf8, false),
        Field::new(col::FLAGS, DataType::UInt32, false),
        Field::new(col::NAME, DataType::Utf8, false),
        Field::new(col::KIND, DataType::Utf8, false),
        Field::new(col::START_TIME, timestamp_type(), false),
        Field::new(col::DURATION_NS, DataType::Int64, false),
        Field::new(col::STATUS_CODE, DataType::Utf8, false),
        Field::new(col::STATUS_MESSAGE, DataType::Utf8, false),
        Field::new(col::DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
        Field::new(col::DROPPED_EVENTS_COUNT, DataType::UInt32, false),
        Field::new(col::DROPPED_LINKS_COUNT, DataType::UInt32, false),
    ];
    for d in DEDICATED_COLUMNS {
        fields.push(Field::new(d.column, d.ty.data_type(), true));
    }
    for scope in [AttrScope::Resource, AttrScope::Span] {
        for ty in AttrType::ALL {
            fields.push(Field::new(attr_map_column(scope, ty), map_type(ty.data_type()), false));
        }
    }
    fields.extend([
        Field::new(col::RESOURCE_DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
        Field::new(col::RESOURCE_SCHEMA_URL, DataType::Utf8, false),
        Field::new(col::SCOPE_NAME, DataType::Utf8, false),
        Field::new(col::SCOPE_VERSION, DataType::Utf8, false),
        Field::new(col::SCOPE_ATTRS, map_type(DataType::Binary), false),
        Field::new(col::SCOPE_DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
        Field::new(col::SCOPE_SCHEMA_URL, DataType::Utf8, false),
        Field::new(col::EVENTS, DataType::List(event_item_field()), false),
        Field::new(col::LINKS, DataType::List(link_item_field()), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// OTLP span kind names as stored in the `kind` column, indexed by the OTLP enum value.
pub const SPAN_KINDS: [&str; 6] = ["unspecified", "internal", "server", "client", "producer", "consumer"];

/// OTLP status code names as stored in the `status_code` column, indexed by the OTLP enum value.
pub const STATUS_CODES: [&str; 3] = ["unset", "ok", "error"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_unique() {
        let schema = span_schema();
        let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn dedicated_lookup() {
        assert_eq!(dedicated_column(AttrScope::Resource, "service.name").map(|d| d.column), Some("service_name"));
        assert!(dedicated_column(AttrScope::Span, "service.name").is_none());
        assert_eq!(attr_map_column(AttrScope::Span, AttrType::Int), "span_attrs_int");
    }
}
