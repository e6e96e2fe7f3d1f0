//! Optional per-tenant token buckets, so one noisy tenant cannot starve the others. A request
//! spends its tenants' tokens only if it is accepted: refused by another tenant's limit, or not
//! acknowledged by Kafka, it gives them back.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Instant;

use common::event::{Event, TenantId};

use crate::error::ApiError;
use crate::token_bucket::{Shortfall, TokenBuckets};

/// One token bucket per tenant, refilled at `rate` events per second up to `burst`.
pub struct TenantRateLimiter {
    buckets: TokenBuckets<TenantId>,
}

/// Tokens taken for one request: given back when dropped, unless [`Admission::keep`] says the
/// request was accepted.
#[must_use = "dropping an admission gives its tokens back"]
#[derive(Debug)]
pub struct Admission<'a> {
    buckets: &'a TokenBuckets<TenantId>,
    taken: Vec<(TenantId, u32)>,
}

impl Admission<'_> {
    /// The request was accepted: its tokens stay spent.
    pub fn keep(mut self) {
        self.taken.clear();
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.taken.is_empty() {
            self.buckets.give_back(&self.taken, Instant::now());
        }
    }
}

impl TenantRateLimiter {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            buckets: TokenBuckets::new(f64::from(rate.get()), burst.get()),
        }
    }

    /// Takes tokens for every tenant of the request, or refuses the request and takes none.
    pub fn admit(&self, events: &[Event]) -> Result<Admission<'_>, ApiError> {
        let mut per_tenant: BTreeMap<&TenantId, u32> = BTreeMap::new();
        for event in events {
            *per_tenant.entry(event.tenant_id()).or_default() += 1;
        }
        let wanted: Vec<(TenantId, u32)> = per_tenant
            .into_iter()
            .map(|(tenant, count)| (tenant.clone(), count))
            .collect();
        match self.buckets.take_all(&wanted, Instant::now()) {
            Ok(()) => Ok(Admission {
                buckets: &self.buckets,
                taken: wanted,
            }),
            Err(Shortfall::Empty { key, retry_after }) => Err(ApiError::RateLimited {
                tenant: key.to_string(),
                retry_after,
            }),
            Err(Shortfall::OverBurst { key, wanted, burst }) => Err(ApiError::OverTenantBurst {
                tenant: key.to_string(),
                count: wanted,
                burst,
            }),
        }
    }

    /// Forgets tenants whose buckets are full again, bounding memory to recently active tenants.
    pub fn forget_idle_tenants(&self) {
        self.buckets.forget_full(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(tenant: &str, n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::from_value(
                    serde_json::json!({"id": i.to_string(), "tenant_id": tenant, "type": "t",
                                       "occurred_at": "2026-11-27T10:00:00Z"}),
                    1024,
                )
                .expect("valid")
            })
            .collect()
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[test]
    fn a_noisy_tenant_is_limited_without_touching_another() {
        let limiter = TenantRateLimiter::new(nz(1), nz(10));
        limiter
            .admit(&events("noisy", 10))
            .expect("admitted")
            .keep();
        match limiter.admit(&events("noisy", 1)) {
            Err(ApiError::RateLimited {
                tenant,
                retry_after,
            }) => {
                assert_eq!(tenant, "noisy");
                assert!(retry_after.as_millis() > 0);
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.admit(&events("quiet", 10)).is_ok());
    }

    #[test]
    fn a_refused_request_spends_nothing() {
        let limiter = TenantRateLimiter::new(nz(1), nz(10));
        limiter
            .admit(&events("noisy", 10))
            .expect("admitted")
            .keep();
        // Refused on `noisy`: `quiet`'s share of the request is not taken either.
        let mixed: Vec<Event> = events("quiet", 10)
            .into_iter()
            .chain(events("noisy", 1))
            .collect();
        assert!(matches!(
            limiter.admit(&mixed),
            Err(ApiError::RateLimited { tenant, .. }) if tenant == "noisy"
        ));
        // Admitted, then not acknowledged (the admission dropped without `keep`).
        drop(limiter.admit(&events("quiet", 10)).expect("admitted"));
        limiter
            .admit(&events("quiet", 10))
            .expect("all ten tokens are still there")
            .keep();
    }

    #[test]
    fn a_request_larger_than_the_burst_can_never_pass() {
        let limiter = TenantRateLimiter::new(nz(5), nz(5));
        assert!(matches!(
            limiter.admit(&events("acme", 6)),
            Err(ApiError::OverTenantBurst {
                count: 6,
                burst: 5,
                ..
            })
        ));
    }
}
