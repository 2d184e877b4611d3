//! Block indexes: one JSON document per (cluster, tenant, shard) listing that shard's committed
//! blocks of the tenant, Bloom filters included, so a querier finds a tenant's blocks with one
//! LIST and a handful of GETs instead of listing every block. A tenant's indexes all live under
//! `<tenant>/index/`, whatever cluster or shard wrote them, so blocks stay visible after the
//! shard layout changes.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::block::BlockMeta;
use crate::tenant::TenantId;
use crate::{Result, StorageError};

/// Folder of a tenant's indexes.
pub fn index_dir(tenant: &TenantId) -> Path {
    Path::from(format!("{}/index", tenant.as_str()))
}

/// Object path of the index of one tenant on one shard of one cluster.
pub fn index_path(tenant: &TenantId, cluster: &str, shard: u32) -> Path {
    Path::from(format!("{}/{cluster}.shard-{shard:05}.json", index_dir(tenant)))
}

/// Paths of every index of a tenant (any cluster, any shard).
pub async fn index_paths(store: &dyn ObjectStore, tenant: &TenantId) -> Result<Vec<Path>> {
    let listed: Vec<_> = store.list(Some(&index_dir(tenant))).try_collect().await?;
    let mut paths: Vec<Path> =
        listed.into_iter().map(|m| m.location).filter(|p| p.as_ref().ends_with(".json")).collect();
    paths.sort();
    Ok(paths)
}

/// Reads an index; a missing index is an empty one.
pub async fn read_index(store: &dyn ObjectStore, path: &Path) -> Result<Vec<BlockMeta>> {
    match store.get(path).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|source| StorageError::Index { path: path.to_string(), source })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces an index with `blocks`.
pub async fn write_index(store: &dyn ObjectStore, path: &Path, blocks: &[BlockMeta]) -> Result<()> {
    let json = serde_json::to_vec(blocks).map_err(|source| StorageError::Index { path: path.to_string(), source })?;
    store.put(path, PutPayload::from(json)).await?;
    Ok(())
}
