//! Restart policy: exponential backoff, a cap on restarts, and a circuit breaker.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How the agent restarts a crashed worker. Defaults: 1 s, 2 s, 4 s … capped at 60 s, at most 10
/// restarts, and 5 failures within 5 minutes open the breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Delay before the first restart, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Longest delay between restarts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Restarts after which the worker is given up.
    pub max_restarts: u32,
    /// Failures within the window that open the breaker.
    pub breaker_failures: u32,
    /// Length of the breaker's sliding window, in seconds.
    pub breaker_window_secs: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 1000,
            max_backoff_ms: 60_000,
            max_restarts: 10,
            breaker_failures: 5,
            breaker_window_secs: 300,
        }
    }
}

impl RestartPolicy {
    /// Delay before restart number `attempt` (0-based): initial × 2^attempt, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
        let ms = self
            .initial_backoff_ms
            .saturating_mul(factor)
            .min(self.max_backoff_ms);
        Duration::from_millis(ms)
    }
}

/// Counts failures in a sliding window; opens when `breaker_failures` fall within it.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreaker {
    failures: VecDeque<Instant>,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Restart after this delay.
    RestartIn(Duration),
    /// Too many failures in the window: stop until the operator acts.
    BreakerOpen,
    /// The restart budget is spent.
    GiveUp,
}

impl CircuitBreaker {
    /// Record a failure at `now` and decide, given how many restarts happened already.
    pub fn on_failure(
        &mut self,
        policy: &RestartPolicy,
        restarts: u32,
        now: Instant,
    ) -> AfterFailure {
        let window = Duration::from_secs(policy.breaker_window_secs);
        self.failures.push_back(now);
        while let Some(&first) = self.failures.front() {
            if now.duration_since(first) > window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        if self.failures.len() as u32 >= policy.breaker_failures.max(1) {
            AfterFailure::BreakerOpen
        } else if restarts >= policy.max_restarts {
            AfterFailure::GiveUp
        } else {
            AfterFailure::RestartIn(policy.backoff(restarts))
        }
    }

    /// Forget past failures (the operator restarted the worker by hand).
    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy::default();
        let secs: Vec<u64> = (0..9).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.backoff(200), Duration::from_secs(60));
    }

    #[test]
    fn breaker_opens_on_the_nth_failure_in_window() {
        let p = RestartPolicy {
            breaker_failures: 3,
            breaker_window_secs: 60,
            ..Default::default()
        };
        let mut b = CircuitBreaker::default();
        let t0 = Instant::now();
        assert_eq!(
            b.on_failure(&p, 0, t0),
            AfterFailure::RestartIn(Duration::from_secs(1))
        );
        assert_eq!(
            b.on_failure(&p, 1, t0 + Duration::from_secs(1)),
            AfterFailure::RestartIn(Duration::from_secs(2))
        );
        assert_eq!(
            b.on_failure(&p, 2, t0 + Duration::from_secs(2)),
            AfterFailure::BreakerOpen
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let p = RestartPolicy {
            breaker_failures: 2,
            breaker_window_secs: 10,
            ..Default::default()
        };
        let mut b = CircuitBreaker::default();
        let t0 = Instant::now();
        assert!(matches!(
            b.on_failure(&p, 0, t0),
            AfterFailure::RestartIn(_)
        ));
        assert!(matches!(
            b.on_failure(&p, 1, t0 + Duration::from_secs(11)),
            AfterFailure::RestartIn(_)
        ));
    }

    #[test]
    fn restart_budget_is_finite() {
        let p = RestartPolicy {
            max_restarts: 2,
            breaker_failures: 100,
            ..Default::default()
        };
        let mut b = CircuitBreaker::default();
        assert_eq!(b.on_failure(&p, 2, Instant::now()), AfterFailure::GiveUp);
    }
}
