//! TraceQL on DataFusion: spanset filters become predicates of the Parquet scan, spanset
//! operators, pipelines and trace-level intrinsics become window functions over whole traces,
//! and search summaries and metrics are DataFusion aggregates.

pub mod compare;
pub mod fields;
pub mod metrics;
pub mod plan;
pub mod search;
pub mod tree;
pub mod udf;
