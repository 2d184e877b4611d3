//! Parquet blocks in object storage: writing them, describing them, and finding them.
//!
//! A storage shard turns its buffered spans into a [`block`] (one Parquet file, rows sorted by
//! trace id then start time, zstd, dictionaries, page index, trace-id bloom filter) and records
//! it in the per-tenant, per-shard [`index`] that queriers read instead of listing the bucket.
//! [`tenant`] (from `spindle-types`) validates tenant ids, which become path segments; [`store`] opens the object store.

pub mod block;
pub mod block_writer;
pub mod bloom;
pub mod cache;
pub mod compact;
pub mod index;
pub mod instrumented;
pub mod metric_files;
pub mod parent;
pub mod reader;
pub mod retention;
pub mod store;
pub mod tags;
pub mod upload;

pub use block::{
    block_dir, block_path, compacted_block_path, parse_block_file_name, parse_compacted_file_name, write_block,
    BlockMeta, BlockOptions,
};
pub use retention::{Retention, RetentionPolicy};
pub use spindle_types::tenant::{self, TenantId};

/// Errors of block storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow compute failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A block index could not be parsed.
    #[error("block index {path}: {source}")]
    Index { path: String, source: serde_json::Error },
    /// A tenant id is not usable.
    #[error(transparent)]
    InvalidTenant(#[from] spindle_types::InvalidTenant),
    /// A `--storage-url` is not usable.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidStoreUrl { url: String, reason: &'static str },
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
