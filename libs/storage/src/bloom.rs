//! A small Bloom filter over a block's trace ids, kept in the block's metadata so a trace-id
//! lookup skips blocks without opening them (the Parquet bloom filters then prune row groups
//! inside the blocks that remain).

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use xxhash_rust::xxh3::xxh3_128;

/// Bits per trace id: about 1 % false positives with 7 hashes.
const BITS_PER_KEY: usize = 10;
const HASHES: u32 = 7;

/// A Bloom filter of trace ids. Cloning shares the bits: a block's filter (about a bit per span)
/// is copied with its block's metadata into every lookup's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceBloom {
    bits: Arc<Vec<u8>>,
}

impl TraceBloom {
    /// A filter sized for `keys` trace ids.
    pub fn with_capacity(keys: usize) -> Self {
        let bytes = (keys.max(1) * BITS_PER_KEY).div_ceil(8).max(8);
        Self { bits: Arc::new(vec![0; bytes]) }
    }

    /// The bits of `trace_id` in a filter of `bytes` bytes.
    fn positions(bytes: usize, trace_id: &[u8]) -> impl Iterator<Item = usize> {
        let h = xxh3_128(trace_id);
        let (h1, h2) = (h as u64, (h >> 64) as u64 | 1);
        let m = (bytes * 8) as u64;
        (0..HASHES).map(move |i| (h1.wrapping_add((i as u64).wrapping_mul(h2)) % m) as usize)
    }

    /// Adds a trace id.
    pub fn insert(&mut self, trace_id: &[u8]) {
        let bits = Arc::make_mut(&mut self.bits);
        for p in Self::positions(bits.len(), trace_id) {
            bits[p / 8] |= 1 << (p % 8);
        }
    }

    /// Whether the trace id may be in the block (false: certainly not).
    pub fn may_contain(&self, trace_id: &[u8]) -> bool {
        !self.bits.is_empty()
            && Self::positions(self.bits.len(), trace_id).all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }
}

impl Serialize for TraceBloom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.bits.as_slice()))
    }
}

impl<'de> Deserialize<'de> for TraceBloom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bits =
            base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)?;
        Ok(Self { bits: Arc::new(bits) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = TraceBloom::with_capacity(10_000);
        for i in 0u64..10_000 {
            b.insert(&[i.to_le_bytes(), [1; 8]].concat());
        }
        assert!((0u64..10_000).all(|i| b.may_contain(&[i.to_le_bytes(), [1; 8]].concat())));
        let fp = (0u64..10_000).filter(|i| b.may_contain(&[i.to_le_bytes(), [2; 8]].concat())).count();
        assert!(fp < 300, "{fp} false positives");
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<TraceBloom>(&json).unwrap(), b);
    }
}
