//! Keyed token buckets that are taken from all or nothing, and can be given back.
//!
//! A request names several tenants, and it is admitted only if every one of them has tokens; it
//! can still fail after admission (Kafka does not acknowledge it). In both cases the request was
//! refused, so it must not have spent anything. `governor` takes tokens one key at a time and
//! never returns them: a request refused on its third tenant would have spent the first two
//! tenants' tokens, and a 503 would have spent all of them. Buckets here are checked together
//! under one lock, then taken, and returned by [`TokenBuckets::give_back`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why tokens were not taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Shortfall<K> {
    /// More tokens than the bucket holds when full: never possible.
    OverBurst { key: K, wanted: u32, burst: u32 },
    /// Not enough tokens now; enough after `retry_after`.
    Empty { key: K, retry_after: Duration },
}

/// A bucket per key, refilled at `per_second` tokens a second up to `burst`. A key without a
/// bucket has a full one: only keys that spent something are remembered.
#[derive(Debug)]
pub struct TokenBuckets<K> {
    per_second: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Eq + Hash + Clone> TokenBuckets<K> {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens from the bucket of every `(key, n)`, or none at all and says which key
    /// is short. Each key is named once.
    pub fn take_all(&self, wanted: &[(K, u32)], now: Instant) -> Result<(), Shortfall<K>> {
        let mut buckets = self.lock();
        for (key, n) in wanted {
            if *n > self.burst {
                return Err(Shortfall::OverBurst {
                    key: key.clone(),
                    wanted: *n,
                    burst: self.burst,
                });
            }
            let tokens = self.level(buckets.get(key), now);
            let missing = f64::from(*n) - tokens;
            if missing > 0.0 {
                return Err(Shortfall::Empty {
                    key: key.clone(),
                    retry_after: Duration::from_secs_f64(missing / self.per_second),
                });
            }
        }
        for (key, n) in wanted {
            let tokens = self.level(buckets.get(key), now) - f64::from(*n);
            buckets.insert(key.clone(), Bucket { tokens, at: now });
        }
        Ok(())
    }

    /// Returns tokens taken by [`Self::take_all`] for something that did not happen.
    pub fn give_back(&self, taken: &[(K, u32)], now: Instant) {
        let mut buckets = self.lock();
        for (key, n) in taken {
            if let Some(bucket) = buckets.get_mut(key) {
                let tokens = self.level(Some(bucket), now) + f64::from(*n);
                *bucket = Bucket {
                    tokens: tokens.min(f64::from(self.burst)),
                    at: now,
                };
            }
        }
    }

    /// Forgets keys whose bucket is full again: they behave as if never seen.
    pub fn forget_full(&self, now: Instant) {
        let burst = f64::from(self.burst);
        let mut buckets = self.lock();
        buckets.retain(|_, bucket| self.level(Some(bucket), now) < burst);
        buckets.shrink_to_fit();
    }

    /// Keys with a bucket that is not full.
    pub fn remembered(&self) -> usize {
        self.lock().len()
    }

    fn level(&self, bucket: Option<&Bucket>, now: Instant) -> f64 {
        let burst = f64::from(self.burst);
        bucket.map_or(burst, |bucket| {
            let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
            (bucket.tokens + refilled).min(burst)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        // The map is consistent between statements: a panic elsewhere cannot leave it half
        // updated.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_bucket_empties_and_refills_at_its_rate_up_to_its_burst() {
        let buckets = TokenBuckets::new(2.0, 4);
        let start = Instant::now();
        assert_eq!(buckets.take_all(&[("a", 4)], start), Ok(()));
        assert_eq!(
            buckets.take_all(&[("a", 1)], start),
            Err(Shortfall::Empty {
                key: "a",
                retry_after: Duration::from_millis(500)
            })
        );
        assert_eq!(buckets.take_all(&[("a", 2)], start + second(1)), Ok(()));
        // A long pause fills the bucket to its burst, not beyond.
        assert_eq!(buckets.take_all(&[("a", 4)], start + second(60)), Ok(()));
        assert!(buckets.take_all(&[("a", 1)], start + second(60)).is_err());
    }

    #[test]
    fn nothing_is_taken_when_one_key_is_short() {
        let buckets = TokenBuckets::new(1.0, 5);
        let now = Instant::now();
        assert_eq!(buckets.take_all(&[("b", 5)], now), Ok(()));
        let refused = buckets.take_all(&[("a", 3), ("b", 1)], now);
        assert!(matches!(refused, Err(Shortfall::Empty { key: "b", .. })));
        // `a` still has all five.
        assert_eq!(buckets.take_all(&[("a", 5)], now), Ok(()));
    }

    #[test]
    fn tokens_given_back_can_be_taken_again_but_never_overfill() {
        let buckets = TokenBuckets::new(1.0, 5);
        let now = Instant::now();
        assert_eq!(buckets.take_all(&[("a", 5)], now), Ok(()));
        buckets.give_back(&[("a", 5)], now);
        assert_eq!(buckets.take_all(&[("a", 5)], now), Ok(()));
        buckets.give_back(&[("a", 5)], now + second(3));
        assert_eq!(buckets.take_all(&[("a", 5)], now + second(3)), Ok(()));
        assert!(buckets.take_all(&[("a", 1)], now + second(3)).is_err());
    }

    #[test]
    fn more_than_the_burst_is_never_possible() {
        let buckets = TokenBuckets::new(100.0, 5);
        assert_eq!(
            buckets.take_all(&[("a", 6)], Instant::now()),
            Err(Shortfall::OverBurst {
                key: "a",
                wanted: 6,
                burst: 5
            })
        );
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let buckets = TokenBuckets::new(1.0, 5);
        let now = Instant::now();
        assert_eq!(buckets.take_all(&[("a", 1), ("b", 5)], now), Ok(()));
        buckets.forget_full(now + second(1));
        assert_eq!(buckets.remembered(), 1, "a is full again, b is not");
        buckets.forget_full(now + second(5));
        assert_eq!(buckets.remembered(), 0);
    }
}
