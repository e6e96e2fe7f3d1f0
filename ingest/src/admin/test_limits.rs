//! How often connection tests may run. Each one assumes a customer's role with the vendor's
//! identity and writes to their bucket, so the admin API must not become a way to flood STS or
//! a bucket: each tenant gets ten tests in a row (a customer trying fixes one after another) and
//! then one every six seconds, and all tenants together a bounded rate.

use std::num::NonZeroU32;
use std::time::Duration;

use common::event::TenantId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Tests one tenant may run back to back.
const TENANT_BURST: u32 = 10;
/// Then one per this long.
const TENANT_PERIOD: Duration = Duration::from_secs(6);
/// Tests all tenants together may run back to back, then per second.
const TOTAL_BURST: u32 = 20;
const TOTAL_PER_SECOND: u32 = 5;
/// Past this many tenants with an entry, those whose allowance is full again are forgotten.
const REMEMBERED_TENANTS: usize = 10_000;

/// Which limit refused a test, and when one may run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub scope: &'static str,
    pub retry_after: Duration,
}

pub struct ConnectionTestLimits {
    per_tenant: DefaultKeyedRateLimiter<TenantId>,
    total: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl Default for ConnectionTestLimits {
    fn default() -> Self {
        let burst = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let per_tenant = Quota::with_period(TENANT_PERIOD)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst(TENANT_BURST));
        let total = Quota::per_second(burst(TOTAL_PER_SECOND)).allow_burst(burst(TOTAL_BURST));
        Self {
            per_tenant: RateLimiter::keyed(per_tenant),
            total: RateLimiter::direct(total),
            clock: DefaultClock::default(),
        }
    }
}

impl ConnectionTestLimits {
    /// Takes a test for `tenant`, or says which limit refuses it and for how long.
    pub fn admit(&self, tenant: &TenantId) -> Result<(), Refused> {
        if self.per_tenant.len() > REMEMBERED_TENANTS {
            // Tenants whose allowance is full again need no entry.
            self.per_tenant.retain_recent();
        }
        self.per_tenant
            .check_key(tenant)
            .map_err(|not_until| Refused {
                scope: "this tenant",
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        self.total.check().map_err(|not_until| Refused {
            scope: "all tenants",
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(raw: &str) -> TenantId {
        raw.parse().expect("tenant id")
    }

    #[test]
    fn a_tenant_gets_ten_tests_in_a_row_then_waits_without_holding_up_others() {
        let limits = ConnectionTestLimits::default();
        for _ in 0..TENANT_BURST {
            assert_eq!(limits.admit(&tenant("acme")), Ok(()));
        }
        let refused = limits
            .admit(&tenant("acme"))
            .expect_err("over the tenant's burst");
        assert_eq!(refused.scope, "this tenant");
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= TENANT_PERIOD);
        assert_eq!(limits.admit(&tenant("globex")), Ok(()));
    }

    #[test]
    fn all_tenants_together_are_bounded_too() {
        let limits = ConnectionTestLimits::default();
        for n in 0..TOTAL_BURST {
            assert_eq!(limits.admit(&tenant(&format!("t{n}"))), Ok(()), "test {n}");
        }
        let refused = limits.admit(&tenant("late")).expect_err("over the total");
        assert_eq!(refused.scope, "all tenants");
        assert!(refused.retry_after > Duration::ZERO);
    }
}
