//! Per-tenant share of a process's upload slots. A customer bucket that answers slowly (or not at
//! all until the attempt timeout) would otherwise fill every slot with its own jobs and hold up
//! every other tenant behind it.
//!
//! A tenant gets `share` slots at once. It may take more only while its bucket has shown itself
//! fast: its last finished upload was stored within `FAST_UPLOAD` and none of its running uploads
//! has taken longer. So a large tenant with a burst of parts can use the whole process, while a
//! tenant that is new, failing or slow never holds more than its share; its further jobs wait in
//! the first retry tier while other tenants' jobs go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// An upload stored within this long shows the tenant's bucket healthy.
pub const FAST_UPLOAD: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct TenantState {
    /// Start times of the tenant's running uploads.
    running: Vec<Instant>,
    /// Whether its last finished upload was stored within `FAST_UPLOAD`.
    fast: bool,
}

/// Uploads in flight per tenant and how the tenant's bucket behaved lately.
#[derive(Debug, Clone)]
pub struct TenantSlots {
    share: usize,
    tenants: Arc<Mutex<HashMap<String, TenantState>>>,
}

/// One of a tenant's running uploads; dropped without `finish`, it leaves the tenant's
/// standing as it was.
#[derive(Debug)]
pub struct TenantSlot {
    tenant: String,
    started: Instant,
    tenants: Arc<Mutex<HashMap<String, TenantState>>>,
}

impl TenantSlots {
    pub fn new(share: usize) -> Self {
        Self {
            share: share.max(1),
            tenants: Arc::default(),
        }
    }

    /// A slot for an upload of `tenant` starting `now`, or `None` when it must wait.
    pub fn try_take(&self, tenant: &str, now: Instant) -> Option<TenantSlot> {
        let mut tenants = lock(&self.tenants);
        let state = tenants.entry(tenant.to_owned()).or_default();
        let proven_fast = state.fast
            && state
                .running
                .iter()
                .all(|started| now.saturating_duration_since(*started) < FAST_UPLOAD);
        if state.running.len() >= self.share && !proven_fast {
            if state.running.is_empty() {
                tenants.remove(tenant);
            }
            return None;
        }
        state.running.push(now);
        Some(TenantSlot {
            tenant: tenant.to_owned(),
            started: now,
            tenants: self.tenants.clone(),
        })
    }

    /// Tenants the process keeps state for, for tests.
    pub fn tracked_tenants(&self) -> usize {
        lock(&self.tenants).len()
    }
}

impl TenantSlot {
    /// Records how the upload ended: `stored` when the object is in the bucket.
    pub fn finish(self, stored: bool, now: Instant) {
        let mut tenants = lock(&self.tenants);
        if let Some(state) = tenants.get_mut(&self.tenant) {
            state.fast = stored && now.saturating_duration_since(self.started) < FAST_UPLOAD;
        }
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut tenants = lock(&self.tenants);
        if let Some(state) = tenants.get_mut(&self.tenant) {
            if let Some(at) = state.running.iter().position(|s| *s == self.started) {
                state.running.swap_remove(at);
            }
            // A tenant that is idle and not proven fast is the same as an unknown one.
            if state.running.is_empty() && !state.fast {
                tenants.remove(&self.tenant);
            }
        }
    }
}

/// Every update is one step, so the map stays consistent through a panic elsewhere.
fn lock(
    tenants: &Mutex<HashMap<String, TenantState>>,
) -> MutexGuard<'_, HashMap<String, TenantState>> {
    tenants.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tenant_gets_its_share_and_others_are_unaffected() {
        let slots = TenantSlots::new(2);
        let now = Instant::now();
        let _first = slots.try_take("new", now).expect("first");
        let _second = slots.try_take("new", now).expect("second");
        assert!(slots.try_take("new", now).is_none(), "the third must wait");
        assert!(
            slots.try_take("other", now).is_some(),
            "another tenant runs"
        );
    }

    #[test]
    fn a_tenant_whose_uploads_are_fast_may_use_more_than_its_share() {
        let slots = TenantSlots::new(1);
        let now = Instant::now();
        let slot = slots.try_take("big", now).expect("first");
        slot.finish(true, now + Duration::from_millis(40));
        let later = now + Duration::from_millis(50);
        let held: Vec<_> = (0..5).map(|_| slots.try_take("big", later)).collect();
        assert!(
            held.iter().all(Option::is_some),
            "a fast bucket takes a burst"
        );
    }

    #[test]
    fn a_fast_tenant_falls_back_to_its_share_once_an_upload_runs_long() {
        let slots = TenantSlots::new(1);
        let now = Instant::now();
        slots.try_take("t", now).expect("first").finish(true, now);
        let _running = slots.try_take("t", now).expect("running");
        let _second = slots.try_take("t", now).expect("still fast");
        let much_later = now + FAST_UPLOAD;
        assert!(slots.try_take("t", much_later).is_none());
    }

    #[test]
    fn a_slow_or_failed_upload_takes_the_tenant_back_to_its_share() {
        let slots = TenantSlots::new(1);
        let now = Instant::now();
        slots.try_take("t", now).expect("first").finish(true, now);
        slots
            .try_take("t", now)
            .expect("second")
            .finish(true, now + FAST_UPLOAD);
        let _one = slots.try_take("t", now).expect("its share");
        assert!(slots.try_take("t", now).is_none(), "slow: only its share");
        drop(_one);
        slots.try_take("t", now).expect("again").finish(false, now);
        let _one = slots.try_take("t", now).expect("its share");
        assert!(slots.try_take("t", now).is_none(), "failed: only its share");
    }

    #[test]
    fn idle_tenants_without_a_fast_record_are_forgotten() {
        let slots = TenantSlots::new(1);
        let now = Instant::now();
        drop(slots.try_take("gone", now));
        assert!(slots.try_take("refused", now).is_some_and(|s| {
            drop(s);
            true
        }));
        assert_eq!(slots.tracked_tenants(), 0);
        slots.try_take("kept", now).expect("slot").finish(true, now);
        assert_eq!(
            slots.tracked_tenants(),
            1,
            "a proven-fast tenant is remembered"
        );
    }
}
