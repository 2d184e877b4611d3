//! A size-bounded cache whose entries are refreshed in the background: a reader never waits
//! for a slow object store to re-read something it already has, unless the copy is very old.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long entries stay fresh, and how long a stale entry may still be served.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Younger entries are returned as they are.
    pub fresh_for: Duration,
    /// Older entries (but younger than this) are returned while one background task re-reads
    /// them; entries older than this are re-read before answering.
    pub serve_stale_for: Duration,
}

struct Entry<V> {
    value: Arc<V>,
    fetched: Instant,
    refreshing: AtomicBool,
}

/// Values loaded by key, shared between readers, refreshed after [`Freshness::fresh_for`].
pub struct RefreshingCache<K, V> {
    entries: moka::future::Cache<K, Arc<Entry<V>>>,
    freshness: Freshness,
}

impl<K, V> RefreshingCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: u64, freshness: Freshness) -> Self {
        let entries =
            moka::future::Cache::builder().max_capacity(capacity).time_to_live(freshness.serve_stale_for).build();
        Self { entries, freshness }
    }

    /// The value for `key`, loading it with `load` when missing or too old. Concurrent misses of
    /// one key share one load; a failed background refresh keeps the old value.
    pub async fn get<F, Fut, E>(&self, key: &K, load: F) -> Result<Arc<V>, Arc<E>>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        if let Some(entry) = self.entries.get(key).await {
            let age = entry.fetched.elapsed();
            if age < self.freshness.fresh_for {
                return Ok(entry.value.clone());
            }
            if age < self.freshness.serve_stale_for {
                if !entry.refreshing.swap(true, Ordering::AcqRel) {
                    let entries = self.entries.clone();
                    let key = key.clone();
                    let refreshed = entry.clone();
                    tokio::spawn(async move {
                        match load().await {
                            Ok(value) => entries.insert(key, Arc::new(Entry::new(value))).await,
                            Err(_) => refreshed.refreshing.store(false, Ordering::Release),
                        }
                    });
                }
                return Ok(entry.value.clone());
            }
            self.entries.invalidate(key).await;
        }
        let entry = self
            .entries
            .try_get_with(key.clone(), async move { load().await.map(|v| Arc::new(Entry::new(v))) })
            .await?;
        Ok(entry.value.clone())
    }
}

impl<V> Entry<V> {
    fn new(value: V) -> Self {
        Self { value: Arc::new(value), fetched: Instant::now(), refreshing: AtomicBool::new(false) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn serves_stale_values_while_refreshing() {
        let freshness = Freshness { fresh_for: Duration::from_millis(50), serve_stale_for: Duration::from_secs(60) };
        let cache: RefreshingCache<u32, usize> = RefreshingCache::new(10, freshness);
        let loads = Arc::new(AtomicUsize::new(0));
        let load = {
            let loads = loads.clone();
            move || {
                let loads = loads.clone();
                async move { Ok::<_, std::io::Error>(loads.fetch_add(1, Ordering::SeqCst) + 1) }
            }
        };
        assert_eq!(*cache.get(&1, load.clone()).await.unwrap(), 1);
        assert_eq!(*cache.get(&1, load.clone()).await.unwrap(), 1, "fresh: no second load");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(*cache.get(&1, load.clone()).await.unwrap(), 1, "stale: the old value, at once");
        for _ in 0..100 {
            if *cache.get(&1, load.clone()).await.unwrap() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*cache.get(&1, load.clone()).await.unwrap(), 2, "refreshed in the background");
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_old_value() {
        let freshness = Freshness { fresh_for: Duration::from_millis(10), serve_stale_for: Duration::from_secs(60) };
        let cache: RefreshingCache<u32, usize> = RefreshingCache::new(10, freshness);
        assert_eq!(*cache.get(&1, || async { Ok::<_, std::io::Error>(7) }).await.unwrap(), 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let failing = || async { Err::<usize, _>(std::io::Error::other("store down")) };
        assert_eq!(*cache.get(&1, failing).await.unwrap(), 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*cache.get(&1, failing).await.unwrap(), 7);
    }
}
