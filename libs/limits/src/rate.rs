//! A token bucket of bytes per tenant.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are forgotten, so unknown tenants cannot grow the map
/// without bound.
const MAX_BUCKETS: usize = 10_000;

/// A request refused by the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When the same request would be allowed, at the earliest.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Ingest rate limits, one bucket per tenant, each refilled at the tenant's rate up to its
/// burst. A request larger than the burst passes when the bucket is full and leaves it in
/// debt, so no request size is refused forever.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes `bytes` from `tenant`'s bucket (refilled at `rate` bytes/s up to `burst`), or says
    /// when to retry. A rate of 0 allows everything.
    pub fn take(&self, tenant: &str, bytes: u64, rate: u64, burst: u64) -> Result<(), Refused> {
        self.take_at(tenant, bytes, rate, burst, Instant::now())
    }

    fn take_at(&self, tenant: &str, bytes: u64, rate: u64, burst: u64, now: Instant) -> Result<(), Refused> {
        if rate == 0 {
            return Ok(());
        }
        let burst = burst.max(1) as f64;
        let rate = rate as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tenant) {
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: burst, at: now });
        let refilled = bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = refilled.min(burst);
        bucket.at = now;
        let needed = (bytes as f64).min(burst);
        if bucket.tokens >= needed {
            bucket.tokens -= bytes as f64;
            return Ok(());
        }
        let wait = (needed - bucket.tokens) / rate;
        Err(Refused { retry_after: Duration::from_secs_f64(wait.min(3600.0)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert!(limiter.take_at("a", 1000, 100, 1000, t0).is_ok());
        let refused = limiter.take_at("a", 100, 100, 1000, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(limiter.take_at("a", 100, 100, 1000, t0 + Duration::from_secs(1)).is_ok());
        // Another tenant has its own bucket.
        assert!(limiter.take_at("b", 1000, 100, 1000, t0).is_ok());
        // Idle for long: the bucket holds the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert!(limiter.take_at("a", 1000, 100, 1000, later).is_ok());
        assert!(limiter.take_at("a", 1, 100, 1000, later).is_err());
    }

    #[test]
    fn a_request_above_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert!(limiter.take_at("a", 5000, 1000, 1000, t0).is_ok());
        // 4,000 bytes of debt plus 1,000 for the next: five seconds.
        let refused = limiter.take_at("a", 5000, 1000, 1000, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(5));
        assert!(limiter.take_at("a", 0, 0, 0, t0).is_ok(), "rate 0 is no limit");
    }

    #[test]
    fn unknown_tenants_cannot_grow_the_map_forever() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 10) {
            limiter.take_at(&format!("t{i}"), 0, 10, 10, t0 + Duration::from_secs(i as u64)).unwrap();
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
