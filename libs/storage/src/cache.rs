//! A read cache in front of the object store for block files, which never change once
//! written: small range reads (Parquet footers, page indexes, Bloom filters, the pages a point
//! lookup touches) in memory, and optionally whole block files on local disk. Both tiers are
//! size-bounded LRU-ish caches (`moka`). Everything else (writes, listings, indexes, reads with
//! conditions) goes straight to the store.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Largest range kept in the memory tier.
const MAX_MEMORY_RANGE: u64 = 4 << 20;

/// Sizes of the cache tiers.
#[derive(Debug, Clone, Default)]
pub struct CacheOptions {
    /// Bytes of ranges kept in memory (0: no memory tier).
    pub memory_bytes: u64,
    /// Directory for whole block files (`None`: no disk tier). Emptied at start.
    pub disk_dir: Option<PathBuf>,
    /// Bytes of block files kept in `disk_dir`.
    pub disk_bytes: u64,
}

/// A block file kept on local disk.
#[derive(Debug)]
struct DiskEntry {
    file: PathBuf,
    meta: ObjectMeta,
}

impl Drop for DiskEntry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The disk tier.
struct DiskCache {
    dir: PathBuf,
    files: moka::future::Cache<Path, Arc<DiskEntry>>,
    downloading: Mutex<HashSet<Path>>,
}

/// An object store whose block reads are cached (see the module docs).
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    ranges: moka::future::Cache<(Path, u64, u64), (ObjectMeta, Bytes)>,
    disk: Option<Arc<DiskCache>>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedStore({})", self.inner)
    }
}

impl std::fmt::Display for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedStore({})", self.inner)
    }
}

/// Removes everything inside `dir`, keeping `dir`.
fn clear_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl CachedStore {
    /// Caches reads of `inner` as `options` say.
    pub fn new(inner: Arc<dyn ObjectStore>, options: &CacheOptions) -> std::io::Result<Self> {
        let ranges = moka::future::Cache::builder()
            .max_capacity(options.memory_bytes)
            .weigher(|_k: &(Path, u64, u64), v: &(ObjectMeta, Bytes)| v.1.len().try_into().unwrap_or(u32::MAX))
            .build();
        let disk = match &options.disk_dir {
            Some(dir) => {
                // Whatever a previous process left is not trusted (it may be half-written). The
                // directory itself stays: it is often a mount point (a Kubernetes emptyDir) that
                // cannot be removed, under a read-only root filesystem.
                std::fs::create_dir_all(dir)?;
                clear_dir(dir)?;
                let files = moka::future::Cache::builder()
                    .max_capacity(options.disk_bytes / 1024)
                    .weigher(|_k: &Path, v: &Arc<DiskEntry>| (v.meta.size / 1024).try_into().unwrap_or(u32::MAX))
                    .build();
                Some(Arc::new(DiskCache { dir: dir.clone(), files, downloading: Mutex::new(HashSet::new()) }))
            }
            None => None,
        };
        Ok(Self { inner, ranges, disk })
    }

    /// A range of a block: from memory, the disk tier or the store; kept in memory when small
    /// and `remember` is set.
    async fn cached_range(
        &self,
        location: &Path,
        range: Range<u64>,
        remember: bool,
    ) -> object_store::Result<(ObjectMeta, Bytes)> {
        let key = (location.clone(), range.start, range.end);
        if let Some(hit) = self.ranges.get(&key).await {
            return Ok(hit);
        }
        let small = remember && range.end.saturating_sub(range.start) <= MAX_MEMORY_RANGE;
        if let Some(disk) = &self.disk {
            if let Some(entry) = disk.files.get(location).await {
                let file = entry.file.clone();
                let r = range.clone();
                let read = tokio::task::spawn_blocking(move || read_at(&file, r)).await;
                if let Ok(Ok(bytes)) = read {
                    let got = (entry.meta.clone(), bytes);
                    if small {
                        self.ranges.insert(key, got.clone()).await;
                    }
                    return Ok(got);
                }
            }
            disk.fetch_in_background(self.inner.clone(), location.clone());
        }
        let result =
            self.inner.get_opts(location, GetOptions { range: Some(range.into()), ..Default::default() }).await?;
        let meta = result.meta.clone();
        let bytes = result.bytes().await?;
        if small {
            self.ranges.insert(key, (meta.clone(), bytes.clone())).await;
        }
        Ok((meta, bytes))
    }
}

fn read_at(file: &std::path::Path, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    f.read_exact_at(&mut buf, range.start)?;
    Ok(Bytes::from(buf))
}

impl DiskCache {
    /// Downloads a whole block file into the disk tier, unless it is already being fetched.
    fn fetch_in_background(self: &Arc<Self>, store: Arc<dyn ObjectStore>, location: Path) {
        if !self.downloading.lock().unwrap_or_else(|e| e.into_inner()).insert(location.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.download(store, &location).await {
                tracing::debug!(path = %location, error = %e, "could not cache a block file on disk");
            }
            this.downloading.lock().unwrap_or_else(|e| e.into_inner()).remove(&location);
        });
    }

    async fn download(&self, store: Arc<dyn ObjectStore>, location: &Path) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let name = format!("{:016x}.parquet", xxhash_rust::xxh3::xxh3_64(location.as_ref().as_bytes()));
        let (tmp, file) = (self.dir.join(format!("{name}.tmp")), self.dir.join(name));
        let got = store.get(location).await.map_err(std::io::Error::other)?;
        let meta = got.meta.clone();
        let mut out = tokio::fs::File::create(&tmp).await?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(std::io::Error::other)? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        drop(out);
        tokio::fs::rename(&tmp, &file).await?;
        self.files.insert(location.clone(), Arc::new(DiskEntry { file, meta })).await;
        Ok(())
    }
}

fn bytes_result(meta: ObjectMeta, range: Range<u64>, bytes: Bytes) -> GetResult {
    GetResult {
        payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes: Attributes::default(),
    }
}

/// Whether a read can be served from the cache: a plain bounded range of a block file.
fn cacheable(location: &Path, options: &GetOptions) -> Option<Range<u64>> {
    let plain = options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
        && !options.head;
    match &options.range {
        Some(GetRange::Bounded(r)) if plain && location.as_ref().ends_with(".parquet") && r.start < r.end => {
            Some(r.clone())
        }
        _ => None,
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        match cacheable(location, &options) {
            Some(range) => {
                let (meta, bytes) = self.cached_range(location, range.clone(), true).await?;
                Ok(bytes_result(meta, range, bytes))
            }
            None => self.inner.get_opts(location, options).await,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let block = location.as_ref().ends_with(".parquet");
        let mut out: Vec<Option<Bytes>> = vec![None; ranges.len()];
        let mut missing = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let hit = if block { self.ranges.get(&(location.clone(), r.start, r.end)).await } else { None };
            match hit {
                Some((_, bytes)) => out[i] = Some(bytes),
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            // As object_store's own `get_ranges` does: missing ranges less than 1 MiB apart are
            // read as one, at most 10 reads at a time, so reading many small pages costs a few
            // requests, not one request per page all at once. Each range asked for is then
            // cached on its own (copied, so a cached page does not pin the whole read).
            let wanted: Vec<Range<u64>> = missing.iter().map(|&i| ranges[i].clone()).collect();
            let meta = std::sync::Mutex::new(None);
            let fetch = |r: Range<u64>| {
                let meta = &meta;
                async move {
                    if block && r.start < r.end {
                        let (m, bytes) = self.cached_range(location, r, false).await?;
                        *meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
                        Ok(bytes)
                    } else {
                        self.inner.get_range(location, r).await
                    }
                }
            };
            let fetched =
                object_store::coalesce_ranges(&wanted, fetch, object_store::OBJECT_STORE_COALESCE_DEFAULT).await?;
            let meta = meta.into_inner().unwrap_or_else(|e| e.into_inner());
            for (i, bytes) in missing.into_iter().zip(fetched) {
                let r = &ranges[i];
                if let Some(m) = &meta {
                    if r.start < r.end && r.end - r.start <= MAX_MEMORY_RANGE {
                        let copy = Bytes::copy_from_slice(&bytes);
                        self.ranges.insert((location.clone(), r.start, r.end), (m.clone(), copy)).await;
                    }
                }
                out[i] = Some(bytes);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_removed_and_the_directory_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        std::fs::create_dir_all(dir.join("blocks/t1")).unwrap();
        std::fs::write(dir.join("blocks/t1/half-written"), b"x").unwrap();
        std::fs::write(dir.join("stray"), b"y").unwrap();
        // Held open, so a removed directory's inode number cannot be reused by a new one.
        let held = std::fs::File::open(&dir).unwrap();
        let options = CacheOptions { memory_bytes: 0, disk_dir: Some(dir.clone()), disk_bytes: 1 << 20 };
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        CachedStore::new(inner, &options).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "leftovers remain");
        // The same directory (inode), not a new one: a mount point cannot be removed.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().ino(), held.metadata().unwrap().ino());
    }
}
