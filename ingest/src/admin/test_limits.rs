//! How often connection tests may run. Each one assumes a customer's role with the vendor's
//! identity and writes to their bucket, so the admin API must not become a way to flood STS or
//! a bucket: each tenant gets ten tests in a row (a customer trying fixes one after another) and
//! then one every six seconds, and all tenants together a bounded rate.

use std::time::{Duration, Instant};

use common::event::TenantId;

use crate::token_bucket::{Shortfall, TokenBuckets};

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
    per_tenant: TokenBuckets<TenantId>,
    total: TokenBuckets<()>,
}

impl Default for ConnectionTestLimits {
    fn default() -> Self {
        Self {
            per_tenant: TokenBuckets::new(1.0 / TENANT_PERIOD.as_secs_f64(), TENANT_BURST),
            total: TokenBuckets::new(f64::from(TOTAL_PER_SECOND), TOTAL_BURST),
        }
    }
}

impl ConnectionTestLimits {
    /// Takes a test for `tenant`, or says which limit refuses it and for how long; a refused
    /// test takes nothing from either limit.
    pub fn admit(&self, tenant: &TenantId) -> Result<(), Refused> {
        let now = Instant::now();
        if self.per_tenant.remembered() > REMEMBERED_TENANTS {
            self.per_tenant.forget_full(now);
        }
        let one_test = [(tenant.clone(), 1)];
        self.per_tenant
            .take_all(&one_test, now)
            .map_err(|shortfall| refused("this tenant", shortfall))?;
        self.total.take_all(&[((), 1)], now).map_err(|shortfall| {
            self.per_tenant.give_back(&one_test, now);
            refused("all tenants", shortfall)
        })
    }
}

fn refused<K>(scope: &'static str, shortfall: Shortfall<K>) -> Refused {
    let retry_after = match shortfall {
        Shortfall::Empty { retry_after, .. } => retry_after,
        // One test never exceeds a burst of at least one.
        Shortfall::OverBurst { .. } => Duration::MAX,
    };
    Refused { scope, retry_after }
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
        // Refused by the total, `late` spent none of its own ten.
        assert_eq!(
            limits
                .per_tenant
                .take_all(&[(tenant("late"), TENANT_BURST)], Instant::now()),
            Ok(())
        );
    }
}
