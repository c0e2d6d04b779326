//! The node reconcile's retry policy (no I/O): while the node is not ready the next pass
//! comes sooner, 1 s doubling up to the reconcile interval; a ready pass resets it and waits
//! the full interval.

use std::time::Duration;

/// The capped exponential backoff between reconcile passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileBackoff {
    interval: Duration,
    retry: Duration,
}

impl ReconcileBackoff {
    /// The first retry delay after a pass that was not ready.
    pub const FIRST_RETRY: Duration = Duration::from_secs(1);

    /// A policy for `interval` (`[daemon] reconcile_interval_secs`; at least
    /// [`Self::FIRST_RETRY`]).
    pub fn new(interval: Duration) -> ReconcileBackoff {
        ReconcileBackoff {
            interval: interval.max(Self::FIRST_RETRY),
            retry: Self::FIRST_RETRY,
        }
    }

    /// The interval between ready passes.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long to wait after a pass that was ready and error-free (`ok`) or not: the
    /// interval after an ok pass (and the retry delay is reset to 1 s); otherwise the current
    /// retry delay (capped at the interval), which then doubles.
    pub fn next_wait(&mut self, ok: bool) -> Duration {
        if ok {
            self.retry = Self::FIRST_RETRY;
            return self.interval;
        }
        let wait = self.retry.min(self.interval);
        self.retry = (self.retry * 2).min(self.interval);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_from_one_second_capped_at_the_interval_and_resets_when_ready() {
        let mut b = ReconcileBackoff::new(secs(10));
        let waits: Vec<u64> = (0..6).map(|_| b.next_wait(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.next_wait(true), secs(10));
        assert_eq!(b.next_wait(false), secs(1), "reset after a ready pass");
        assert_eq!(b.next_wait(false), secs(2));
    }

    #[test]
    fn a_short_interval_caps_the_first_retry_too() {
        let mut b = ReconcileBackoff::new(Duration::ZERO);
        assert_eq!(b.interval(), secs(1));
        assert_eq!(b.next_wait(false), secs(1));
        assert_eq!(b.next_wait(false), secs(1));
        assert_eq!(b.next_wait(true), secs(1));
    }
}
