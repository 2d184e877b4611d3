//! The compactor: merges a tenant's small blocks of one time window into large ones.
//!
//! For each shard, the compactor asks the shard's leader for a job under its policy (the
//! leader picks the blocks and records a lease in the shard's Raft log, so two compactors never
//! get the same blocks), merges the job's blocks into one (sorted by trace id, duplicate spans
//! removed; `spindle_storage::compact`), writes it to the path the job names, and hands it
//! back; the leader swaps inputs for output in one Raft entry. A crash at any point leaves
//! either the inputs or the output live, never both and never neither: an output that was
//! never swapped in is deleted by the leader's sweep once its lease has ended.

mod metrics;

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use spindle_cluster_client::ShardRouter;
use spindle_storage::compact::merge_blocks;
use spindle_storage::{BlockOptions, StorageError};
use spindle_storage_api::{ApiError, CompactionJob, CompactionPolicy};
use tokio::sync::watch;

pub use metrics::CompactorMetrics;

/// How the compactor merges.
#[derive(Debug, Clone)]
pub struct CompactorConfig {
    /// Blocks at least this large are left alone; a job gathers about this many bytes.
    pub target_bytes: u64,
    /// Blocks are merged only with blocks whose earliest span is in the same window.
    pub window: Duration,
    /// Most blocks merged by one job (each open input holds a few batches in memory).
    pub max_inputs: usize,
    /// How long a job may take before its lease ends (and its output is discarded).
    pub lease: Duration,
    /// Pause between rounds over all shards.
    pub interval: Duration,
    /// How merged blocks are written.
    pub block: BlockOptions,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        Self {
            target_bytes: 128 * 1024 * 1024,
            window: Duration::from_secs(3600),
            max_inputs: 16,
            lease: Duration::from_secs(600),
            interval: Duration::from_secs(30),
            block: BlockOptions::default(),
        }
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    /// Reading the inputs or writing the output failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The shard's leader could not be reached or refused.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A compactor process (or the compactor inside `spindle all`).
pub struct Compactor {
    router: Arc<ShardRouter>,
    store: Arc<dyn ObjectStore>,
    config: CompactorConfig,
    holder: String,
    metrics: CompactorMetrics,
}

impl Compactor {
    /// A compactor reaching shard leaders through `router` and blocks in `store`.
    pub fn new(
        router: Arc<ShardRouter>,
        store: Arc<dyn ObjectStore>,
        config: CompactorConfig,
        metrics: CompactorMetrics,
    ) -> Self {
        let holder = format!("compactor-{}", uuid::Uuid::now_v7().simple());
        Self { router, store, config, holder, metrics }
    }

    fn policy(&self) -> CompactionPolicy {
        CompactionPolicy {
            holder: self.holder.clone(),
            target_bytes: self.config.target_bytes,
            window_ms: self.config.window.as_millis() as u64,
            max_inputs: self.config.max_inputs,
            lease_ms: self.config.lease.as_millis() as u64,
        }
    }

    /// Compacts every `interval` until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.compact_all().await;
        }
    }

    /// One round: on every shard, runs jobs until its leader has none left. Returns the jobs
    /// committed.
    pub async fn compact_all(&self) -> usize {
        let policy = self.policy();
        let mut done = 0;
        for shard in self.router.topology().current().shard_ids() {
            // Bounded, so one busy shard cannot starve the others for a whole round.
            for _ in 0..64 {
                let job = match self.router.plan_compaction(shard, &policy).await {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(shard, error = %e, "could not ask for a compaction job");
                        break;
                    }
                };
                match self.run_job(&job).await {
                    Ok(()) => done += 1,
                    Err(e) => {
                        self.metrics.jobs_failed.inc();
                        tracing::warn!(shard, tenant = %job.tenant, job = %job.job, error = %e, "compaction failed");
                        break;
                    }
                }
            }
        }
        done
    }

    /// Merges a job's blocks and hands the result to the shard's leader.
    pub async fn run_job(&self, job: &CompactionJob) -> Result<(), CompactorError> {
        let output = Path::from(job.output_path.as_str());
        let started = std::time::Instant::now();
        let Some((facts, size)) = merge_blocks(self.store.clone(), &job.inputs, &output, &self.config.block).await?
        else {
            // Only empty inputs: nothing to write; the lease simply ends.
            return Ok(());
        };
        let first = job.inputs.iter().map(|b| b.first_index).min().unwrap_or(0);
        let last = job.inputs.iter().map(|b| b.last_index).max().unwrap_or(0);
        let rows_in: u64 = job.inputs.iter().map(|b| b.rows).sum();
        let bytes_in: u64 = job.inputs.iter().map(|b| b.bytes).sum();
        let rows_out = facts.rows;
        let meta = facts.into_meta(job.output_id.clone(), job.shard, (first, last), &output, size);
        match self.router.commit_compaction(job, &meta).await {
            Ok(()) => {
                self.metrics.jobs_done.inc();
                self.metrics.blocks_merged.inc_by(job.inputs.len() as u64);
                self.metrics.bytes_read.inc_by(bytes_in);
                self.metrics.bytes_written.inc_by(size);
                self.metrics.duplicate_spans_removed.inc_by(rows_in.saturating_sub(rows_out));
                tracing::info!(
                    shard = job.shard, tenant = %job.tenant, inputs = job.inputs.len(), rows_in, rows_out, bytes_in,
                    bytes_out = size, elapsed = ?started.elapsed(), "compacted"
                );
                Ok(())
            }
            Err(e @ ApiError::InvalidArgument(_)) => {
                // A definite refusal (the lease ended or the inputs changed): the output can
                // never be committed, so it goes now rather than at the next sweep.
                if let Err(d) = self.store.delete(&output).await {
                    tracing::debug!(path = %output, error = %d, "could not delete a refused compaction output");
                }
                Err(e.into())
            }
            // Unknown outcome: the output stays; the leader's sweep removes it if it was never
            // swapped in.
            Err(e) => Err(e.into()),
        }
    }
}
