//! Storage node metrics (`spindle_storage_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of a storage node.
#[derive(Debug, Clone, Default)]
pub struct StorageMetrics {
    /// Spans committed through Raft.
    pub spans_appended: Counter,
    /// Pushes refused because the shard is overloaded.
    pub pushes_rejected_overload: Counter,
    /// Pushes recognised as retries of a committed push and not stored again.
    pub duplicate_pushes: Counter,
    /// Blocks flushed.
    pub flushes: Counter,
    /// Failed flush attempts.
    pub flush_errors: Counter,
    /// Bytes of Parquet written.
    pub block_bytes_written: Counter,
    /// Spans written to blocks.
    pub block_spans_written: Counter,
    /// Committed blocks on the shards of this node.
    pub blocks: Gauge,
    /// In-memory bytes of unflushed spans.
    pub unflushed_bytes: Gauge,
    /// Bytes of Raft logs on disk (the node's shared write-ahead log).
    pub raft_log_bytes: Gauge,
    /// Segment files of the write-ahead log.
    pub wal_segments: Gauge,
    /// Raft entries written to the write-ahead log (all groups).
    pub wal_appends: Counter,
    /// Writes of the write-ahead log (each holds the entries of every group waiting then).
    pub wal_batches: Counter,
    /// `fdatasync` calls of the write-ahead log.
    pub wal_syncs: Counter,
    /// Raft stream frames sent to peers.
    pub raft_frames: Counter,
    /// AppendEntries with entries sent.
    pub raft_appends: Counter,
    /// AppendEntries without entries sent (heartbeats, commit updates, leadership checks).
    pub raft_heartbeats: Counter,
    /// Shard replicas hosted here.
    pub shards_hosted: Gauge,
    /// Shards this node leads.
    pub shards_leading: Gauge,
    /// Hosted shards whose group has no leader now.
    pub shards_without_leader: Gauge,
    /// Leader changes seen by the shards hosted here.
    pub leader_changes: Counter,
    /// Compactions committed by shards this node leads.
    pub compactions: Counter,
    /// Blocks retired because they passed their tenant's retention.
    pub blocks_retired: Counter,
    /// Retired block files deleted.
    pub blocks_deleted: Counter,
}

impl StorageMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("spindle_storage");
        r.register("spans_appended", "Spans committed to a shard's Raft log", m.spans_appended.clone());
        r.register("pushes_rejected_overload", "Pushes refused with backpressure", m.pushes_rejected_overload.clone());
        r.register(
            "duplicate_pushes",
            "Retried pushes acknowledged without storing them again",
            m.duplicate_pushes.clone(),
        );
        r.register("flushes", "Parquet blocks flushed", m.flushes.clone());
        r.register("flush_errors", "Failed flush attempts", m.flush_errors.clone());
        r.register("block_bytes_written", "Bytes of Parquet blocks written", m.block_bytes_written.clone());
        r.register("block_spans_written", "Spans written to Parquet blocks", m.block_spans_written.clone());
        r.register("blocks", "Committed blocks on this node's shards", m.blocks.clone());
        r.register("unflushed_bytes", "In-memory bytes of spans not yet in a block", m.unflushed_bytes.clone());
        r.register("raft_log_bytes", "Bytes of Raft logs on disk", m.raft_log_bytes.clone());
        r.register("wal_segments", "Segment files of the node's write-ahead log", m.wal_segments.clone());
        r.register("wal_appends", "Raft entries written to the write-ahead log, all groups", m.wal_appends.clone());
        r.register(
            "wal_batches",
            "Writes of the write-ahead log (each holds what every group had waiting)",
            m.wal_batches.clone(),
        );
        r.register("wal_syncs", "fdatasync calls of the write-ahead log", m.wal_syncs.clone());
        r.register("raft_frames", "Raft stream frames sent to peers (messages of all groups)", m.raft_frames.clone());
        r.register("raft_appends", "AppendEntries with entries sent to peers", m.raft_appends.clone());
        r.register(
            "raft_heartbeats",
            "AppendEntries without entries sent (heartbeats, commit updates, leadership checks)",
            m.raft_heartbeats.clone(),
        );
        r.register("shards_hosted", "Shard replicas hosted on this node", m.shards_hosted.clone());
        r.register("shards_leading", "Shards this node leads", m.shards_leading.clone());
        r.register("shards_without_leader", "Hosted shards whose group has no leader", m.shards_without_leader.clone());
        r.register("leader_changes", "Shard leader changes seen on this node", m.leader_changes.clone());
        r.register("compactions", "Compactions committed by shards this node leads", m.compactions.clone());
        r.register("blocks_retired", "Blocks retired past their tenant's retention", m.blocks_retired.clone());
        r.register("blocks_deleted", "Retired block files deleted", m.blocks_deleted.clone());
        m
    }
}
