//! The block lifecycle on a shard's leader: leasing merges to compactors and swapping their
//! output in, retiring blocks past retention, deleting retired files after a grace period,
//! keeping the object-store indexes equal to the catalog, and sweeping files nothing commits.
//!
//! Every catalog change is one Raft entry, so every replica agrees on which blocks are live.
//! Files are deleted only once no entry can ever name them again: retired blocks after
//! `delete_grace` (queries that listed them before can finish), never-committed flush output
//! once its range is flushed, never-committed compaction output once its lease has ended.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use spindle_storage::index::{index_path, read_index, write_index};
use spindle_storage::{
    block_dir, compacted_block_path, parse_block_file_name, parse_compacted_file_name, BlockMeta, StorageError,
    TenantId,
};
use spindle_storage_api::{ApiError, CompactionJob, CompactionPolicy};

use super::Shard;
use crate::raft_types::{ShardCommand, ShardResponse};
use crate::shard_sm::{self, CompactionLease};
use crate::{now_unix_ms, NodeError};

/// A time window: `(start unix ms, length ms)`.
pub type Window = (i64, u64);

/// Blocks worth merging under `policy`, and the window `(start ms, length ms)` they are in: in
/// the oldest window holding at least two blocks smaller than the target (and not in `busy`,
/// the windows leased to a job), the smallest of them, up to about the target size.
pub fn pick_inputs(
    blocks: &[BlockMeta],
    policy: &CompactionPolicy,
    busy: &[Window],
) -> Option<(Vec<BlockMeta>, Window)> {
    let window_ms = policy.window_ms.max(1);
    let window_ns = (window_ms as i64).saturating_mul(1_000_000);
    let mut windows: BTreeMap<i64, Vec<&BlockMeta>> = BTreeMap::new();
    for b in blocks.iter().filter(|b| b.bytes < policy.target_bytes) {
        windows.entry(b.min_time_ns.div_euclid(window_ns)).or_default().push(b);
    }
    for (index, mut group) in windows {
        let window = (index.saturating_mul(window_ms as i64), window_ms);
        let taken = busy.iter().any(|(start, len)| {
            *start < window.0.saturating_add(window_ms as i64) && window.0 < start.saturating_add(*len as i64)
        });
        if group.len() < 2 || taken {
            continue;
        }
        group.sort_by_key(|b| (b.bytes, b.id.clone()));
        let mut picked = Vec::new();
        let mut bytes = 0;
        for b in group {
            picked.push(b.clone());
            bytes += b.bytes;
            if bytes >= policy.target_bytes || picked.len() >= policy.max_inputs.max(2) {
                break;
            }
        }
        if picked.len() >= 2 {
            return Some((picked, window));
        }
    }
    None
}

fn unavailable(shard: u32, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("shard {shard}: {e}"))
}

impl Shard {
    /// Proposes a lifecycle command and waits for its result.
    async fn propose(&self, command: ShardCommand) -> Result<ShardResponse, NodeError> {
        let written = tokio::time::timeout(self.config.commit_timeout, self.raft.client_write(command))
            .await
            .map_err(|_| NodeError::Raft(format!("no commit within {:?}", self.config.commit_timeout)))?
            .map_err(NodeError::raft)?;
        Ok(written.data)
    }

    fn leader_cluster(&self) -> Result<String, ApiError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        if !self.is_settled_leader() {
            return Err(unavailable(self.id, "the leader is still applying its predecessor's entries"));
        }
        self.cluster_id().ok_or_else(|| unavailable(self.id, "the cluster id is not known yet"))
    }

    /// Leases the next merge worth doing to `policy.holder`, if any.
    pub async fn plan_compaction(&self, policy: &CompactionPolicy) -> Result<Option<CompactionJob>, ApiError> {
        let cluster = self.leader_cluster()?;
        let now = now_unix_ms();
        let candidates: Vec<(String, (Vec<BlockMeta>, Window))> = {
            let s = shard_sm::read(&self.state);
            s.tenants
                .iter()
                .filter_map(|(name, t)| {
                    let busy: Vec<Window> =
                        t.leases.iter().filter(|l| l.until_unix_ms > now).map(|l| l.window).collect();
                    pick_inputs(&t.blocks, policy, &busy).map(|picked| (name.clone(), picked))
                })
                .collect()
        };
        for (tenant, (inputs, window)) in candidates {
            let tenant_id = TenantId::new(&tenant).map_err(|e| ApiError::Internal(e.to_string()))?;
            let job = uuid::Uuid::now_v7().simple().to_string();
            let until = now + policy.lease_ms;
            let lease = CompactionLease {
                job: job.clone(),
                holder: policy.holder.clone(),
                inputs: inputs.iter().map(|b| b.id.clone()).collect(),
                window,
                until_unix_ms: until,
            };
            let command = ShardCommand::LeaseCompaction { tenant: tenant.clone(), lease, now_unix_ms: now };
            match self.propose(command).await.map_err(|e| unavailable(self.id, e))? {
                ShardResponse::Leased => {
                    return Ok(Some(CompactionJob {
                        shard: self.id,
                        output_id: format!("{cluster}-{}-c-{job}", self.id),
                        output_path: compacted_block_path(&tenant_id, &cluster, self.id, until, &job).to_string(),
                        tenant,
                        job,
                        holder: policy.holder.clone(),
                        inputs,
                        lease_until_unix_ms: until,
                    }))
                }
                other => {
                    tracing::debug!(shard = self.id, tenant = %tenant, answer = ?other, "compaction lease refused")
                }
            }
        }
        Ok(None)
    }

    /// Swaps a leased job's inputs for `output` in one catalog step, then lists it in the index.
    pub async fn commit_compaction(&self, job: CompactionJob, output: BlockMeta) -> Result<(), ApiError> {
        let cluster = self.leader_cluster()?;
        if output.path != job.output_path || output.id != job.output_id || output.shard != self.id {
            return Err(ApiError::InvalidArgument("the merged block does not carry the job's id and path".into()));
        }
        let tenant = TenantId::new(&job.tenant).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let command = ShardCommand::Compacted {
            tenant: job.tenant.clone(),
            job: job.job.clone(),
            inputs: job.inputs.iter().map(|b| b.id.clone()).collect(),
            output: Box::new(output.clone()),
            now_unix_ms: now_unix_ms(),
        };
        match self.propose(command).await.map_err(|e| unavailable(self.id, e))? {
            ShardResponse::Compacted => {
                self.metrics.compactions.inc();
                if let Err(e) = self.update_index(&tenant, &cluster, vec![output]).await {
                    tracing::warn!(shard = self.id, tenant = %tenant, error = %e, "index not updated after compaction; will retry");
                    self.index_synced.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
            ShardResponse::Refused(why) => Err(ApiError::InvalidArgument(format!("compaction refused: {why}"))),
            other => Err(ApiError::Internal(format!("unexpected answer to a compaction: {other:?}"))),
        }
    }

    /// Retires blocks past their tenant's retention, and deletes retired blocks whose grace
    /// period is over (then forgets them). Returns how many blocks were retired and purged.
    pub(super) async fn enforce_lifecycle(&self) -> Result<(usize, usize), NodeError> {
        let Ok(cluster) = self.leader_cluster() else {
            return Ok((0, 0));
        };
        let now = now_unix_ms();
        let policy = self.config.retention.get();
        let grace = self.config.delete_grace.as_millis() as u64;
        let (expired, due) = {
            let s = shard_sm::read(&self.state);
            let mut expired = Vec::new();
            let mut due = Vec::new();
            for (name, t) in &s.tenants {
                if let Some(keep) = policy.for_tenant(name) {
                    let cutoff_ns = (now.saturating_sub(keep.as_millis() as u64) as i64).saturating_mul(1_000_000);
                    let ids: Vec<String> =
                        t.blocks.iter().filter(|b| b.max_time_ns < cutoff_ns).map(|b| b.id.clone()).collect();
                    if !ids.is_empty() {
                        expired.push((name.clone(), ids));
                    }
                }
                let gone: Vec<BlockMeta> = t
                    .retired
                    .iter()
                    .filter(|r| r.retired_unix_ms.saturating_add(grace) <= now)
                    .map(|r| r.block.clone())
                    .collect();
                if !gone.is_empty() {
                    due.push((name.clone(), gone));
                }
            }
            (expired, due)
        };
        let mut retired = 0;
        for (tenant, blocks) in expired {
            retired += blocks.len();
            tracing::info!(shard = self.id, tenant = %tenant, blocks = blocks.len(), "retiring blocks past retention");
            self.propose(ShardCommand::Retire { tenant: tenant.clone(), blocks, now_unix_ms: now }).await?;
            self.update_index(&TenantId::new(&tenant)?, &cluster, Vec::new()).await?;
        }
        let mut purged = 0;
        for (tenant, blocks) in due {
            for b in &blocks {
                match self.store.delete(&Path::from(b.path.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(StorageError::from(e).into()),
                }
            }
            purged += blocks.len();
            let ids = blocks.into_iter().map(|b| b.id).collect();
            self.propose(ShardCommand::Purge { tenant, blocks: ids }).await?;
        }
        self.metrics.blocks_retired.inc_by(retired as u64);
        self.metrics.blocks_deleted.inc_by(purged as u64);
        Ok((retired, purged))
    }

    /// Makes a tenant's index list exactly its live blocks: adds `added` (with their Bloom
    /// filters), drops retired ones, and adds live blocks it lacks (without filters).
    pub(super) async fn update_index(
        &self,
        tenant: &TenantId,
        cluster: &str,
        added: Vec<BlockMeta>,
    ) -> Result<(), NodeError> {
        let _one_writer = self.index_lock.lock().await;
        let path = index_path(tenant, cluster, self.id);
        let live: Vec<BlockMeta> =
            shard_sm::read(&self.state).tenants.get(tenant.as_str()).map(|t| t.blocks.clone()).unwrap_or_default();
        let live_ids: HashSet<&str> = live.iter().map(|b| b.id.as_str()).collect();
        let current = read_index(self.store.as_ref(), &path).await?;
        let summary = |blocks: &[BlockMeta]| -> Vec<(String, bool)> {
            blocks.iter().map(|b| (b.id.clone(), b.trace_bloom.is_some())).collect()
        };
        let before = summary(&current);
        let mut next: Vec<BlockMeta> = Vec::with_capacity(live.len());
        let mut listed: HashSet<String> = HashSet::new();
        for b in added.into_iter().chain(current).chain(live.iter().cloned()) {
            if live_ids.contains(b.id.as_str()) && listed.insert(b.id.clone()) {
                next.push(b);
            }
        }
        let unchanged = before == summary(&next);
        if !unchanged {
            write_index(self.store.as_ref(), &path, &next).await?;
        }
        Ok(())
    }

    /// Brings every tenant's index in line with the catalog (after a leader change, or an
    /// index write that failed).
    pub(super) async fn sync_indexes(&self) -> Result<(), NodeError> {
        let Some(cluster) = self.cluster_id() else {
            return Ok(());
        };
        let tenants: Vec<String> = shard_sm::read(&self.state).tenants.keys().cloned().collect();
        for tenant in tenants {
            self.update_index(&TenantId::new(&tenant)?, &cluster, Vec::new()).await?;
        }
        Ok(())
    }

    /// Deletes block files of this shard that no committed block names and that no entry can
    /// commit any more, once older than the grace period: flush output whose range starts at
    /// or below the tenant's flushed-through index (which only grows, so its `BlockFlushed`
    /// would be refused), and compaction output whose lease has ended. Safe even on a leader
    /// that has been cut off: it deletes nothing any log could still commit. Returns how many
    /// went.
    pub async fn sweep_orphans(&self) -> Result<usize, NodeError> {
        let Some(cluster) = self.cluster_id() else {
            return Ok(0);
        };
        let catalog: Vec<(String, u64, HashSet<String>)> = shard_sm::read(&self.state)
            .tenants
            .iter()
            .map(|(t, s)| {
                let named =
                    s.blocks.iter().map(|b| b.path.clone()).chain(s.retired.iter().map(|r| r.block.path.clone()));
                (t.clone(), s.flushed_through, named.collect())
            })
            .collect();
        let grace = self.config.orphan_grace;
        let now = now_unix_ms();
        let mut removed = 0;
        for (tenant, flushed_through, committed) in catalog {
            let tenant = TenantId::new(&tenant)?;
            let listed: Vec<_> = self.store.list(Some(&block_dir(&tenant, &cluster, self.id))).collect().await;
            for object in listed {
                let object = object.map_err(StorageError::from)?;
                if committed.contains(object.location.as_ref()) {
                    continue;
                }
                let name = object.location.filename().unwrap_or_default();
                let can_never_commit = match (parse_block_file_name(name), parse_compacted_file_name(name)) {
                    (Some((first, _)), _) => first <= flushed_through,
                    (None, Some(lease_until)) => lease_until.saturating_add(grace.as_millis() as u64) <= now,
                    (None, None) => false,
                };
                let age = SystemTime::now().duration_since(object.last_modified.into()).unwrap_or_default();
                if can_never_commit && age >= grace {
                    tracing::info!(shard = self.id, path = %object.location, "deleting a block file that was never committed");
                    self.store.delete(&object.location).await.map_err(StorageError::from)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, min_time_ns: i64, bytes: u64) -> BlockMeta {
        BlockMeta { min_time_ns, max_time_ns: min_time_ns + 1, bytes, ..crate::shard_sm::test_block(id) }
    }

    fn policy(target_bytes: u64) -> CompactionPolicy {
        CompactionPolicy { holder: "c".into(), target_bytes, window_ms: 1000, max_inputs: 3, lease_ms: 1000 }
    }

    #[test]
    fn merges_small_blocks_of_one_window_only() {
        let hour = 1_000_000_000;
        let blocks = vec![block("a", 0, 10), block("b", hour, 10), block("c", 10, 20), block("big", 20, 500)];
        let (picked, window) = pick_inputs(&blocks, &policy(100), &[]).unwrap();
        assert_eq!(picked.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(window, (0, 1000));
        assert!(pick_inputs(&blocks, &policy(100), &[(0, 1000)]).is_none(), "the window is leased");
        assert!(pick_inputs(&blocks[..2], &policy(100), &[]).is_none(), "one block per window: nothing to merge");
        let many: Vec<_> = (0..10).map(|i| block(&format!("b{i}"), i, 10)).collect();
        assert_eq!(pick_inputs(&many, &policy(1000), &[]).unwrap().0.len(), 3, "at most max_inputs");
        assert_eq!(pick_inputs(&many, &policy(15), &[]).unwrap().0.len(), 2, "stops once the target is reached");
    }
}
