//! What a compactor and a shard leader exchange: the compactor asks for a job under its
//! policy, merges the job's blocks into one, and hands the result back to be swapped in.

use serde::{Deserialize, Serialize};
use spindle_storage::BlockMeta;

use crate::ShardId;

/// How a compactor wants blocks grouped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionPolicy {
    /// Who asks (a compactor's name, unique per process).
    pub holder: String,
    /// Blocks at least this large are left alone; inputs are gathered up to about this size.
    pub target_bytes: u64,
    /// Only blocks whose earliest span falls in the same window of this length (unix-epoch
    /// aligned) are merged together.
    pub window_ms: u64,
    /// Most blocks merged by one job.
    pub max_inputs: usize,
    /// How long the job's lease lasts: the job must commit before then.
    pub lease_ms: u64,
}

/// A merge a shard leader has leased to one compactor: no other compactor gets these blocks
/// until the lease ends or the job commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionJob {
    /// The shard.
    pub shard: ShardId,
    /// The tenant.
    pub tenant: String,
    /// Unique job id.
    pub job: String,
    /// The compactor holding the lease.
    pub holder: String,
    /// The blocks to merge (all of one tenant on one shard, live when leased).
    pub inputs: Vec<BlockMeta>,
    /// Id the merged block must carry.
    pub output_id: String,
    /// Object path the merged block must be written to.
    pub output_path: String,
    /// The lease ends at this time (unix ms, the leader's clock).
    pub lease_until_unix_ms: u64,
}
