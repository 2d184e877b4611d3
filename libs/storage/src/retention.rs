//! How long each tenant's blocks are kept: a default plus per-tenant overrides, swappable at
//! run time (the config file is reloaded without a restart).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Retention windows. `None` keeps blocks forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Window of every tenant without an override.
    pub default: Option<Duration>,
    /// Per-tenant windows.
    pub tenants: HashMap<String, Duration>,
}

impl RetentionPolicy {
    /// The window of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Option<Duration> {
        self.tenants.get(tenant).copied().or(self.default)
    }
}

/// A shared, replaceable [`RetentionPolicy`].
#[derive(Debug, Clone, Default)]
pub struct Retention(Arc<RwLock<RetentionPolicy>>);

impl Retention {
    /// A handle holding `policy`.
    pub fn new(policy: RetentionPolicy) -> Self {
        Self(Arc::new(RwLock::new(policy)))
    }

    /// The current policy.
    pub fn get(&self) -> RetentionPolicy {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the policy (every holder of the handle sees the new one); whether it changed.
    pub fn set(&self, policy: RetentionPolicy) -> bool {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != policy;
        *current = policy;
        changed
    }
}
