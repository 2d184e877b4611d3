//! Compactor metrics (`spindle_compactor_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters of a compactor.
#[derive(Debug, Clone, Default)]
pub struct CompactorMetrics {
    /// Jobs committed.
    pub jobs_done: Counter,
    /// Jobs that failed (retried at a later round).
    pub jobs_failed: Counter,
    /// Blocks merged away.
    pub blocks_merged: Counter,
    /// Bytes of blocks read.
    pub bytes_read: Counter,
    /// Bytes of merged blocks written.
    pub bytes_written: Counter,
    /// Spans dropped because they were already present (same trace and span id).
    pub duplicate_spans_removed: Counter,
}

impl CompactorMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("spindle_compactor");
        r.register("jobs_done", "Compaction jobs committed", m.jobs_done.clone());
        r.register("jobs_failed", "Compaction jobs that failed", m.jobs_failed.clone());
        r.register("blocks_merged", "Blocks merged away", m.blocks_merged.clone());
        r.register("bytes_read", "Bytes of blocks read by compaction", m.bytes_read.clone());
        r.register("bytes_written", "Bytes of merged blocks written", m.bytes_written.clone());
        r.register(
            "duplicate_spans_removed",
            "Duplicate spans dropped by compaction",
            m.duplicate_spans_removed.clone(),
        );
        m
    }
}
