//! Digests that recognise a retried push.
//!
//! A shard's leader remembers the digest of every push it committed recently, so a client's
//! retry after an unknown outcome is acknowledged instead of stored twice. A push from an
//! ingester can carry the spans of several exports (concurrent exports to the same shard travel
//! together); each export's rows are then a [`PushPart`] with the digest of their content, so a
//! retried export is recognised whatever it was pushed with the first time.

use arrow::array::{ArrayData, RecordBatch};
use xxhash_rust::xxh3::Xxh3;

/// xxh3-128 of a tenant and some bytes, as two words.
pub type Digest = [u64; 2];

/// One export's rows inside a push: the next `rows` rows of the batch, and their digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushPart {
    /// [`of_rows`] of the rows.
    pub digest: Digest,
    /// How many rows.
    pub rows: u32,
}

/// The digest of a push sent as encoded bytes only (one part): the tenant and the bytes.
pub fn of_bytes(tenant: &str, bytes: &[u8]) -> Digest {
    let mut h = Xxh3::new();
    h.update(tenant.as_bytes());
    h.update(&[0]);
    h.update(bytes);
    finish(&h)
}

/// The digest of a tenant's span batch, from its Arrow buffers: the same rows built the same
/// way (a retried export converted again) give the same digest, without encoding them.
pub fn of_rows(tenant: &str, batch: &RecordBatch) -> Digest {
    let mut h = Xxh3::new();
    h.update(tenant.as_bytes());
    h.update(&[1]);
    h.update(&(batch.num_rows() as u64).to_le_bytes());
    for column in batch.columns() {
        hash_data(&mut h, &column.to_data());
    }
    finish(&h)
}

fn hash_data(h: &mut Xxh3, data: &ArrayData) {
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(&(data.offset() as u64).to_le_bytes());
    match data.nulls() {
        Some(nulls) => {
            h.update(&[1]);
            h.update(&(nulls.offset() as u64).to_le_bytes());
            h.update(nulls.buffer().as_slice());
        }
        None => h.update(&[0]),
    }
    for buffer in data.buffers() {
        h.update(&(buffer.len() as u64).to_le_bytes());
        h.update(buffer.as_slice());
    }
    for child in data.child_data() {
        hash_data(h, child);
    }
}

fn finish(h: &Xxh3) -> Digest {
    let d = h.digest128();
    [d as u64, (d >> 64) as u64]
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(values: &[&str]) -> RecordBatch {
        let schema =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let n = Int64Array::from_iter_values(0..values.len() as i64);
        let s: StringArray = values.iter().map(|v| (!v.is_empty()).then_some(*v)).collect();
        RecordBatch::try_new(schema, vec![Arc::new(n), Arc::new(s)]).unwrap()
    }

    #[test]
    fn equal_rows_built_again_have_the_same_digest_and_any_change_another() {
        let a = of_rows("t", &batch(&["x", "", "yy"]));
        assert_eq!(a, of_rows("t", &batch(&["x", "", "yy"])));
        assert_ne!(a, of_rows("u", &batch(&["x", "", "yy"])));
        assert_ne!(a, of_rows("t", &batch(&["x", "y", "yy"])));
        assert_ne!(a, of_rows("t", &batch(&["x", "", "y"])));
        assert_ne!(a, of_rows("t", &batch(&["x", ""])));
        // Slices of one batch (a part cut in chunks) differ from each other and repeat.
        let b = batch(&["a", "b", "c", "d"]);
        assert_ne!(of_rows("t", &b.slice(0, 2)), of_rows("t", &b.slice(2, 2)));
        assert_eq!(of_rows("t", &b.slice(2, 2)), of_rows("t", &batch(&["a", "b", "c", "d"]).slice(2, 2)));
        assert_ne!(of_bytes("t", b"abc"), of_bytes("t", b"abd"));
    }
}
