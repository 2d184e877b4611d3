//! The block index: one JSON document per (tenant, shard) listing that shard's blocks, so a
//! querier finds a tenant's blocks with a handful of GETs instead of listing the bucket.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::block::BlockMeta;
use crate::tenant::TenantId;
use crate::{Result, StorageError};

/// Object path of the index of one tenant on one shard.
pub fn index_path(tenant: &TenantId, shard: u32) -> Path {
    Path::from(format!("{}/index/shard-{shard:05}.json", tenant.as_str()))
}

/// Reads an index; a missing index is an empty one.
pub async fn read_index(store: &dyn ObjectStore, tenant: &TenantId, shard: u32) -> Result<Vec<BlockMeta>> {
    let path = index_path(tenant, shard);
    match store.get(&path).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|source| StorageError::Index { path: path.to_string(), source })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces an index with `blocks`.
pub async fn write_index(store: &dyn ObjectStore, tenant: &TenantId, shard: u32, blocks: &[BlockMeta]) -> Result<()> {
    let path = index_path(tenant, shard);
    let json = serde_json::to_vec(blocks).map_err(|source| StorageError::Index { path: path.to_string(), source })?;
    store.put(&path, PutPayload::from(json)).await?;
    Ok(())
}
