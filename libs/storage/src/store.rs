//! Opening the object store that holds blocks and indexes.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::Result;

/// A local-filesystem object store rooted at `dir` (created if missing).
pub fn local_store(dir: &Path) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
}
