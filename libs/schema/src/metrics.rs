//! The schema of generated metric samples: the SQL table `metrics`, one row per series per
//! collection, in Prometheus' data model (a histogram is its `_bucket` series with an `le`
//! label, plus `_sum` and `_count`).

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::map_type;

/// Column names of the metrics schema.
pub mod col {
    /// When the sample was collected (milliseconds, UTC).
    pub const TIMESTAMP: &str = "timestamp";
    /// Series name, e.g. `traces_spanmetrics_calls_total`.
    pub const METRIC: &str = "metric";
    /// Labels of the series, `Map<Utf8, Utf8>`.
    pub const LABELS: &str = "labels";
    /// The sample value (cumulative for counters and histograms).
    pub const VALUE: &str = "value";
}

/// The metrics schema. Built once.
pub fn metrics_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::TIMESTAMP, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
                Field::new(col::METRIC, DataType::Utf8, false),
                Field::new(col::LABELS, map_type(DataType::Utf8), false),
                Field::new(col::VALUE, DataType::Float64, false),
            ]))
        })
        .clone()
}
