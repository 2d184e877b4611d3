//! How an ingester hands accepted spans to the metrics generator.

use arrow::array::RecordBatch;

use crate::TenantId;

/// Receives a copy of every batch an ingester accepted.
pub trait SpanTee: Send + Sync {
    /// Offers `tenant`'s accepted spans (span schema) and their encoded sizes; never blocks.
    fn offer(&self, tenant: &TenantId, batch: &RecordBatch, sizes: &[u32]);
}
