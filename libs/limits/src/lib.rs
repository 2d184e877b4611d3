//! Limits that keep one tenant, or one flood of requests, from taking Spindle down.
//!
//! - [`TenantLimits`] / [`LimitsTable`]: the configured defaults with per-tenant overrides,
//!   swapped as a whole when the config file is reloaded.
//! - [`RateLimiter`]: a token bucket of ingest bytes per tenant.
//! - [`TenantSlots`]: how many queries each tenant may run at once.
//! - [`shed`]: tower layers that answer at once (429 / `RESOURCE_EXHAUSTED`) when a listener
//!   has too much in flight, and that bound how long one request may take.

mod rate;
pub mod shed;
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use rate::{RateLimiter, Refused};
pub use slots::{Slot, TenantSlots};

/// The limits of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLimits {
    /// Ingest bytes per second (protobuf size of the requests); 0 means no limit.
    pub ingest_rate_bytes: u64,
    /// Ingest bytes a tenant may send at once above the rate (the bucket's size).
    pub ingest_burst_bytes: u64,
    /// Longest attribute key or string value, span name or status message (bytes); longer
    /// ones are cut at a character boundary.
    pub max_attribute_value_bytes: usize,
    /// Most attributes one span, resource, scope, event or link keeps; the rest are dropped
    /// and added to its `dropped_attributes_count`.
    pub max_attributes_per_span: usize,
    /// Most events one span keeps (the rest counted in `dropped_events_count`).
    pub max_events_per_span: usize,
    /// Most links one span keeps (the rest counted in `dropped_links_count`).
    pub max_links_per_span: usize,
    /// Queries (searches, metrics, SQL, trace lookups) the tenant may run at once.
    pub max_concurrent_queries: usize,
    /// Most tenants one query may name (`a|b|...`) when it names this one: a query runs only
    /// if it names no more tenants than each of its tenants allows.
    pub max_tenants_per_query: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            ingest_rate_bytes: 0,
            ingest_burst_bytes: 64 * 1024 * 1024,
            max_attribute_value_bytes: 64 * 1024,
            max_attributes_per_span: 512,
            max_events_per_span: 1024,
            max_links_per_span: 1024,
            max_concurrent_queries: 16,
            max_tenants_per_query: 16,
        }
    }
}

/// Default limits plus per-tenant overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsPolicy {
    /// Limits of every tenant without an override.
    pub default: TenantLimits,
    /// Complete limits of the tenants that have overrides.
    pub tenants: HashMap<String, TenantLimits>,
}

/// The limits in force, shared by every part of a process and replaced on reload.
#[derive(Debug, Clone, Default)]
pub struct LimitsTable {
    policy: Arc<RwLock<Arc<LimitsPolicy>>>,
}

impl LimitsTable {
    /// A table holding `policy`.
    pub fn new(policy: LimitsPolicy) -> Self {
        Self { policy: Arc::new(RwLock::new(Arc::new(policy))) }
    }

    /// The limits of `tenant`.
    pub fn get(&self, tenant: &str) -> TenantLimits {
        let policy = self.policy.read().unwrap_or_else(|e| e.into_inner()).clone();
        policy.tenants.get(tenant).unwrap_or(&policy.default).clone()
    }

    /// Replaces the policy; true when it changed.
    pub fn set(&self, policy: LimitsPolicy) -> bool {
        let mut current = self.policy.write().unwrap_or_else(|e| e.into_inner());
        if **current == policy {
            return false;
        }
        *current = Arc::new(policy);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_the_default_and_reload_swaps_them() {
        let table = LimitsTable::default();
        assert_eq!(table.get("a"), TenantLimits::default());
        let small = TenantLimits { ingest_rate_bytes: 10, ..TenantLimits::default() };
        let policy =
            LimitsPolicy { default: TenantLimits::default(), tenants: HashMap::from([("a".into(), small.clone())]) };
        assert!(table.set(policy.clone()));
        assert!(!table.set(policy));
        assert_eq!(table.get("a"), small);
        assert_eq!(table.get("b"), TenantLimits::default());
    }
}
