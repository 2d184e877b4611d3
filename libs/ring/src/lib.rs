//! The consistent-hash ring that maps (tenant, trace id) to a storage shard.
//!
//! Each shard owns `vnodes` points on a 64-bit hash ring. A tenant is shuffle-sharded onto a
//! small, stable subset of shards (walking the ring from the tenant's hash and taking the first
//! `shards_per_tenant` distinct owners), so one noisy tenant cannot touch every shard. Within the
//! tenant's subset a trace id picks its shard by rendezvous (highest random weight) hashing over
//! the shard ids, so every span of a trace lands on the same shard, and a shard joining the set
//! takes only the traces it wins (about 1/n of them) while every other trace stays where it was,
//! whatever the order of the set.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Identifies a storage shard (one Raft group).
pub type ShardId = u32;

/// Errors building a ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// A ring needs at least one shard.
    #[error("the ring has no shards")]
    Empty,
}

/// The ring: shard ownership of hash points, plus the shuffle-shard size.
#[derive(Debug, Clone)]
pub struct Ring {
    points: BTreeMap<u64, ShardId>,
    shards_per_tenant: usize,
}

const TENANT_SEED: u64 = 0x5350_494e_444c_4531;
const TRACE_SEED: u64 = 0x5350_494e_444c_4532;

impl Ring {
    /// Builds a ring over `shards` with `vnodes` points each; tenants get `shards_per_tenant`
    /// shards (0 means all shards).
    pub fn new(shards: &[ShardId], vnodes: usize, shards_per_tenant: usize) -> Result<Self, RingError> {
        if shards.is_empty() {
            return Err(RingError::Empty);
        }
        let mut points = BTreeMap::new();
        for &shard in shards {
            for v in 0..vnodes.max(1) {
                let key = format!("shard-{shard}-{v}");
                points.insert(xxh3_64_with_seed(key.as_bytes(), TENANT_SEED), shard);
            }
        }
        let mut distinct: Vec<_> = shards.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let shard_count = distinct.len();
        let per_tenant = if shards_per_tenant == 0 { shard_count } else { shards_per_tenant.min(shard_count) };
        Ok(Self { points, shards_per_tenant: per_tenant })
    }

    /// A ring with a single shard (all-in-one mode).
    pub fn single() -> Self {
        // One shard, one point: cannot fail.
        let mut points = BTreeMap::new();
        points.insert(0, 0);
        Self { points, shards_per_tenant: 1 }
    }

    /// The shards a tenant's data lives on, in ring order.
    pub fn tenant_shards(&self, tenant: &str) -> Vec<ShardId> {
        let start = xxh3_64_with_seed(tenant.as_bytes(), TENANT_SEED);
        let mut out = Vec::with_capacity(self.shards_per_tenant);
        for (_, &shard) in self.points.range(start..).chain(self.points.range(..start)) {
            if !out.contains(&shard) {
                out.push(shard);
                if out.len() == self.shards_per_tenant {
                    break;
                }
            }
        }
        out
    }

    /// The shard that stores a trace of a tenant: the shard of `tenant_shards` with the highest
    /// weight for this trace id (rendezvous hashing).
    pub fn shard_for(&self, tenant_shards: &[ShardId], trace_id: &[u8]) -> ShardId {
        if tenant_shards.len() <= 1 {
            return tenant_shards.first().copied().unwrap_or(0);
        }
        let ids: Vec<u64> = tenant_shards.iter().map(|s| u64::from(*s)).collect();
        rendezvous(trace_id, &ids).map_or(0, |i| tenant_shards[i])
    }
}

/// Rendezvous (highest random weight) hashing: the index of the candidate, each named by a
/// 64-bit id, that wins `key` (`None` without candidates). Adding a candidate moves only the
/// keys it wins; the order of the candidates does not matter. Shards of a tenant (by shard
/// id) and metrics generators (by a hash of their address) are chosen this way.
pub fn rendezvous(key: &[u8], candidates: &[u64]) -> Option<usize> {
    let h = xxh3_64_with_seed(key, TRACE_SEED);
    (0..candidates.len()).max_by_key(|&i| (weight(h, candidates[i]), candidates[i]))
}

/// Rendezvous weight of a candidate for a key hash (a 64-bit mix of both).
fn weight(key_hash: u64, candidate: u64) -> u64 {
    let mut x = key_hash ^ candidate.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where traces of tenant "acme" go on an 8-shard ring (computed before `rendezvous` was
    /// shared with the generators: the refactor moved nothing).
    const PINNED: [ShardId; 8] = [0, 0, 1, 4, 5, 3, 6, 0];

    #[test]
    fn tenant_gets_stable_distinct_subset() {
        let ring = Ring::new(&[0, 1, 2, 3, 4, 5, 6, 7], 64, 3).unwrap();
        let a = ring.tenant_shards("acme");
        assert_eq!(a.len(), 3);
        assert_eq!(a, ring.tenant_shards("acme"));
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3);
        // Different tenants usually get different subsets.
        let others: Vec<_> = (0..20).map(|i| ring.tenant_shards(&format!("t{i}"))).collect();
        assert!(others.iter().any(|o| o != &a));
    }

    #[test]
    fn trace_maps_to_one_shard_and_spreads() {
        let ring = Ring::new(&[0, 1, 2, 3], 64, 0).unwrap();
        let shards = ring.tenant_shards("t");
        assert_eq!(shards.len(), 4);
        let mut counts = [0usize; 4];
        for i in 0u64..4000 {
            let id = i.to_be_bytes();
            let s = ring.shard_for(&shards, &id);
            assert_eq!(s, ring.shard_for(&shards, &id));
            counts[s as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 700), "{counts:?}");
    }

    #[test]
    fn adding_a_shard_moves_only_the_traces_it_takes() {
        let ring = Ring::new(&[0, 1, 2, 3, 4], 64, 0).unwrap();
        let ids: Vec<[u8; 8]> = (0u64..5000).map(|i| i.to_le_bytes()).collect();
        // The new shard lands in the middle of the set: placement must not depend on positions.
        let (before, after) = ([0, 1, 3, 4], [0, 1, 2, 3, 4]);
        let mut moved = 0;
        for id in &ids {
            let (a, b) = (ring.shard_for(&before, id), ring.shard_for(&after, id));
            if a != b {
                assert_eq!(b, 2, "a trace may only move to the new shard");
                moved += 1;
            }
        }
        assert!((700..1300).contains(&moved), "moved {moved} of 5000");
    }

    #[test]
    fn rendezvous_ignores_order_and_a_new_candidate_takes_only_what_it_wins() {
        assert_eq!(rendezvous(b"k", &[]), None);
        let ids = [11u64, 22, 33];
        let reversed = [33u64, 22, 11];
        let keys: Vec<[u8; 16]> =
            (0..2000u32).map(|i| [i as u8, (i >> 8) as u8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]).collect();
        let mut moved = 0;
        for k in &keys {
            let a = ids[rendezvous(k, &ids).unwrap()];
            assert_eq!(a, reversed[rendezvous(k, &reversed).unwrap()]);
            let b = [11u64, 22, 33, 44][rendezvous(k, &[11, 22, 33, 44]).unwrap()];
            if b != a {
                assert_eq!(b, 44, "a key moved between old candidates");
                moved += 1;
            }
        }
        assert!((300..700).contains(&moved), "{moved} of 2000 keys moved to the new candidate");
        // Where traces are stored must not change between versions: pinned.
        let ring = Ring::new(&[0, 1, 2, 3, 4, 5, 6, 7], 64, 0).unwrap();
        let shards = ring.tenant_shards("acme");
        let placed: Vec<ShardId> = (0..8u8).map(|i| ring.shard_for(&shards, &[i; 16])).collect();
        assert_eq!(placed, PINNED);
    }

    #[test]
    fn empty_ring_is_an_error() {
        assert_eq!(Ring::new(&[], 8, 1).unwrap_err(), RingError::Empty);
        assert_eq!(Ring::single().tenant_shards("x"), vec![0]);
    }
}
