//! Capped exponential backoff with jitter, and a bounded retry helper.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Errors that know whether a retry may succeed (transport errors, timeouts, 5xx).
pub trait Retryable {
    /// True when the same request may succeed later.
    fn is_retryable(&self) -> bool;
}

/// A client error as a [`headcni_core::control::ControlPlaneError`] for `endpoint` (e.g.
/// `"headscale API"`): retryable → `Unreachable` (the node is not ready and retries with
/// backoff), anything else → `Refused`; the reason is the error's message.
pub(crate) fn control_error<E: Retryable + std::fmt::Display>(
    endpoint: &str,
    e: &E,
) -> headcni_core::control::ControlPlaneError {
    use headcni_core::control::ControlPlaneError;
    let (endpoint, reason) = (endpoint.to_owned(), e.to_string());
    if e.is_retryable() {
        ControlPlaneError::Unreachable { endpoint, reason }
    } else {
        ControlPlaneError::Refused { endpoint, reason }
    }
}

/// A capped exponential backoff policy with jitter; every retry loop built on it is bounded by
/// both [`Backoff::max_attempts`] and [`Backoff::max_elapsed`], so it never blocks forever.
///
/// Delay before retry *n* (0-based) = `min(max_delay, initial * multiplier^n)`, then reduced by
/// a random fraction in `[0, jitter]` ("equal jitter" when `jitter = 0.5`).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Cap of a single delay.
    pub max_delay: Duration,
    /// Growth factor per attempt (≥ 1.0).
    pub multiplier: f64,
    /// Fraction (0.0–1.0) of each delay that is randomised away.
    pub jitter: f64,
    /// Total attempts including the first (≥ 1).
    pub max_attempts: u32,
    /// Total time budget: no new attempt starts after it has elapsed.
    pub max_elapsed: Duration,
}

impl Default for Backoff {
    /// 200 ms, ×2, capped at 10 s, 50 % jitter, at most 6 attempts within 30 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: 6,
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// A policy that does not retry (one attempt).
    pub fn none() -> Self {
        Backoff {
            max_attempts: 1,
            ..Backoff::default()
        }
    }

    /// The un-jittered delay before retry `attempt` (0-based): the exponential curve, capped.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let mult = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * mult).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    /// The jittered delay before retry `attempt`: in `[base * (1 - jitter), base]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let j = self.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return base;
        }
        let cut: f64 = rand::rng().random_range(0.0..=j);
        base.mul_f64(1.0 - cut)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error (per `retryable`), or the
    /// attempt/time budget is spent; returns the last error then.
    pub async fn retry_if<T, E, F, Fut, R>(
        &self,
        what: &str,
        mut op: F,
        retryable: R,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        R: Fn(&E) -> bool,
        E: std::fmt::Display,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    attempt += 1;
                    let delay = self.delay(attempt - 1);
                    let out_of_time = start.elapsed() + delay > self.max_elapsed;
                    if !retryable(&e) || attempt >= self.max_attempts.max(1) || out_of_time {
                        return Err(e);
                    }
                    tracing::debug!(what, attempt, ?delay, error = %e, "retrying after error");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// [`Backoff::retry_if`] with the error's own [`Retryable::is_retryable`].
    pub async fn retry<T, E, F, Fut>(&self, what: &str, op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + std::fmt::Display,
    {
        self.retry_if(what, op, |e: &E| e.is_retryable()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn exponential_and_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            ..Backoff::default()
        };
        let d: Vec<u128> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.base_delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_range() {
        let b = Backoff {
            initial: Duration::from_millis(1000),
            jitter: 0.5,
            ..Backoff::default()
        };
        for _ in 0..200 {
            let d = b.delay(0);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[derive(Debug)]
    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e({})", self.0)
        }
    }
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_budget_then_returns_last_error() {
        let b = Backoff {
            max_attempts: 4,
            ..Backoff::default()
        };
        let n = AtomicU32::new(0);
        let r: Result<(), E> = b
            .retry("t", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(E(true))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_stops_at_once_and_success_recovers() {
        let b = Backoff::default();
        let n = AtomicU32::new(0);
        let r: Result<(), E> = b
            .retry("t", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(E(false))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let m = AtomicU32::new(0);
        let r: Result<u32, E> = b
            .retry("t", || async {
                let k = m.fetch_add(1, Ordering::SeqCst);
                if k < 2 { Err(E(true)) } else { Ok(k) }
            })
            .await;
        assert_eq!(r.ok(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn time_budget_bounds_the_loop() {
        let b = Backoff {
            initial: Duration::from_secs(4),
            max_delay: Duration::from_secs(4),
            jitter: 0.0,
            max_attempts: 1000,
            max_elapsed: Duration::from_secs(10),
            ..Backoff::default()
        };
        let n = AtomicU32::new(0);
        let start = Instant::now();
        let _: Result<(), E> = b
            .retry("t", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(E(true))
            })
            .await;
        assert!(start.elapsed() <= Duration::from_secs(10));
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }
}
