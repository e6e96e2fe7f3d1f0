//! What happens to a job after a failed attempt. Pure: the class, the attempt count and the job's
//! age decide, so every rule is a unit test.

use std::time::Duration;

use crate::error::ErrorClass;

/// Retry limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Number of retry tiers (the delays live in the queue topology).
    pub tiers: usize,
    /// Most attempts in all, the first included.
    pub max_attempts: u32,
    /// Past this age a job is dead-lettered instead of retried.
    pub max_age: Duration,
}

/// The next step for a job whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Wait in retry tier `tier` (0-based), then try again.
    Retry { tier: usize },
    /// Move to the dead-letter queue with the error.
    DeadLetter,
    /// Drop, counted and logged: nobody can receive it.
    Discard,
}

impl RetryPolicy {
    /// `attempts` counts the attempt that just failed; `age` is the time since the job was created.
    pub fn next_step(&self, class: ErrorClass, attempts: u32, age: Duration) -> NextStep {
        match class {
            ErrorClass::Discard => NextStep::Discard,
            // `Unknown` is never a failure's class here; were it one, a person should look.
            ErrorClass::Configuration
            | ErrorClass::Park
            | ErrorClass::InvalidJob
            | ErrorClass::Unknown => NextStep::DeadLetter,
            ErrorClass::Retryable => {
                let retries_done =
                    usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
                if attempts >= self.max_attempts
                    || age >= self.max_age
                    || retries_done >= self.tiers
                {
                    NextStep::DeadLetter
                } else {
                    NextStep::Retry { tier: retries_done }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        tiers: 3,
        max_attempts: 10,
        max_age: Duration::from_secs(3600),
    };
    const YOUNG: Duration = Duration::from_secs(1);

    #[test]
    fn retryable_failures_climb_the_tiers_then_dead_letter() {
        let steps: Vec<_> = (1..=4)
            .map(|attempts| POLICY.next_step(ErrorClass::Retryable, attempts, YOUNG))
            .collect();
        assert_eq!(
            steps,
            [
                NextStep::Retry { tier: 0 },
                NextStep::Retry { tier: 1 },
                NextStep::Retry { tier: 2 },
                NextStep::DeadLetter
            ]
        );
    }

    #[test]
    fn attempt_and_age_limits_end_retries_early() {
        let few = RetryPolicy {
            max_attempts: 2,
            ..POLICY
        };
        assert_eq!(
            few.next_step(ErrorClass::Retryable, 2, YOUNG),
            NextStep::DeadLetter
        );
        assert_eq!(
            POLICY.next_step(ErrorClass::Retryable, 1, Duration::from_secs(3600)),
            NextStep::DeadLetter
        );
    }

    #[test]
    fn other_classes_never_retry() {
        for class in [
            ErrorClass::Configuration,
            ErrorClass::Park,
            ErrorClass::InvalidJob,
        ] {
            assert_eq!(
                POLICY.next_step(class, 1, YOUNG),
                NextStep::DeadLetter,
                "{class}"
            );
        }
        assert_eq!(
            POLICY.next_step(ErrorClass::Discard, 1, YOUNG),
            NextStep::Discard
        );
    }
}
