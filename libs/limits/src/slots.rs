//! How many queries each tenant may run at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A running query's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// One semaphore per tenant, sized by the tenant's limit (a changed limit takes effect for the
/// queries that start after the change).
#[derive(Debug, Default)]
pub struct TenantSlots {
    tenants: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl TenantSlots {
    /// A place for one more query of `tenant`, or `None` when it already runs `limit` queries.
    pub fn try_acquire(&self, tenant: &str, limit: usize) -> Option<Slot> {
        let semaphore = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            // Forget tenants with nothing running, so the map stays small.
            if tenants.len() > 10_000 {
                tenants.retain(|_, (size, s)| s.available_permits() < *size);
            }
            let entry = tenants.entry(tenant.to_string()).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        semaphore.try_acquire_owned().ok().map(|permit| Slot { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_runs_at_most_its_limit() {
        let slots = TenantSlots::default();
        let a1 = slots.try_acquire("a", 2).unwrap();
        let _a2 = slots.try_acquire("a", 2).unwrap();
        assert!(slots.try_acquire("a", 2).is_none());
        assert!(slots.try_acquire("b", 2).is_some(), "other tenants are not affected");
        drop(a1);
        assert!(slots.try_acquire("a", 2).is_some());
        assert!(slots.try_acquire("a", 0).is_none(), "a limit of 0 refuses queries");
    }
}
