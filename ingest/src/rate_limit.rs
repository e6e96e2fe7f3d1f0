//! Optional per-tenant token buckets, so one noisy tenant cannot starve the others.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use common::event::{Event, TenantId};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// One token bucket per tenant, refilled at `rate` events per second up to `burst`.
pub struct TenantRateLimiter {
    limiter: DefaultKeyedRateLimiter<TenantId>,
    burst: NonZeroU32,
    clock: DefaultClock,
}

impl TenantRateLimiter {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            burst,
            clock: DefaultClock::default(),
        }
    }

    /// Takes tokens for every tenant of the request, or refuses the request.
    pub fn admit(&self, events: &[Event]) -> Result<(), ApiError> {
        let mut per_tenant: BTreeMap<&TenantId, u32> = BTreeMap::new();
        for event in events {
            *per_tenant.entry(event.tenant_id()).or_default() += 1;
        }
        for (tenant, count) in per_tenant {
            let Some(n) = NonZeroU32::new(count) else {
                continue;
            };
            match self.limiter.check_key_n(tenant, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(ApiError::RateLimited {
                        tenant: tenant.to_string(),
                        retry_after: not_until.wait_time_from(self.clock.now()),
                    });
                }
                Err(_) => {
                    return Err(ApiError::OverTenantBurst {
                        tenant: tenant.to_string(),
                        count,
                        burst: self.burst.get(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Forgets tenants whose buckets are full again, bounding memory to recently active tenants.
    pub fn forget_idle_tenants(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
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
        assert!(limiter.admit(&events("noisy", 10)).is_ok());
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
