//! client-go's two retry limiters as pure functions of a given `now`, so the
//! queue decides when to consult them and tests can check every step.

use std::time::Duration;

use tokio::time::Instant;

/// Per-key exponential backoff (client-go's
/// `ItemExponentialFailureRateLimiter`): a key that keeps failing is retried
/// ever more slowly so one broken object cannot hog the workers. The failure
/// counts live in the queue beside the key; this is only the curve.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// `base * 2^failures`, capped at `max`.
    pub(super) fn delay(&self, failures: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        // Anything that overflows u128 nanoseconds is past any cap.
        let nanos = 1u128
            .checked_shl(failures)
            .and_then(|factor| self.base.as_nanos().checked_mul(factor));
        match nanos {
            Some(n) if n < self.max.as_nanos() => {
                // n < max, so the seconds fit in a u64 as max's do.
                Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32)
            }
            _ => self.max,
        }
    }
}

/// A global token bucket over all keys (client-go's `BucketRateLimiter`,
/// golang.org/x/time/rate's reservation semantics): it bounds how fast the
/// whole queue retries when many keys fail at once, e.g. when the API server
/// is down. Every reservation takes a token, borrowing from the future when
/// the bucket is empty; the delay is how long until that token exists.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Time for one token to refill (1/qps); zero means unlimited.
    interval: Duration,
    /// Time to refill a whole burst.
    window: Duration,
    /// When the bucket is full again; `None` or a past instant means full.
    full_at: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(interval: Duration, burst: u32) -> Self {
        TokenBucket {
            interval,
            window: interval.checked_mul(burst).unwrap_or(Duration::MAX),
            full_at: None,
        }
    }

    /// Takes one token and returns how long to wait before using it.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        let start = match self.full_at {
            Some(t) if t > now => t,
            _ => now,
        };
        let Some(full_at) = start.checked_add(self.interval) else {
            // Only reachable with absurdly low rates: never, in effect.
            return Duration::MAX;
        };
        self.full_at = Some(full_at);
        (full_at - now).saturating_sub(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_base_and_caps() {
        let b = Backoff::new(5 * MS, Duration::from_secs(1000));
        let got: Vec<Duration> = (0..20).map(|n| b.delay(n)).collect();
        let mut want = Vec::new();
        let mut d = 5 * MS;
        for _ in 0..20 {
            want.push(d.min(Duration::from_secs(1000)));
            d *= 2;
        }
        assert_eq!(got, want);
        assert_eq!(got[..4], [5 * MS, 10 * MS, 20 * MS, 40 * MS]);
        // 5 ms * 2^17 = 655.36 s is the last step below the cap.
        assert_eq!(got[17], Duration::from_millis(655_360));
        assert_eq!(got[18], Duration::from_secs(1000));
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let b = Backoff::new(5 * MS, Duration::from_secs(1000));
        for n in [63, 64, 100, 127, 128, 1000, u32::MAX] {
            assert_eq!(b.delay(n), Duration::from_secs(1000), "failures={n}");
        }
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(0), Duration::MAX);
        assert_eq!(huge.delay(1), Duration::MAX);
    }

    #[test]
    fn backoff_with_zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1000));
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_qps() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100 * MS, 100);
        for i in 0..100 {
            assert_eq!(bucket.reserve(t0), Duration::ZERO, "token {i}");
        }
        // Borrowed tokens: each one 100 ms further out.
        assert_eq!(bucket.reserve(t0), 100 * MS);
        assert_eq!(bucket.reserve(t0), 200 * MS);
        // One second refills ten tokens, two of which were already borrowed.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..8 {
            assert_eq!(bucket.reserve(t1), Duration::ZERO, "token {i} after 1s");
        }
        assert_eq!(bucket.reserve(t1), 100 * MS);
        // Idle long enough and the bucket is full again, but no fuller.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..100 {
            assert_eq!(bucket.reserve(t2), Duration::ZERO);
        }
        assert_eq!(bucket.reserve(t2), 100 * MS);
    }

    #[test]
    fn bucket_with_zero_interval_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Duration::ZERO, 1);
        for _ in 0..10_000 {
            assert_eq!(bucket.reserve(t0), Duration::ZERO);
        }
    }

    #[test]
    fn bucket_with_zero_burst_spaces_every_token() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100 * MS, 0);
        assert_eq!(bucket.reserve(t0), 100 * MS);
        assert_eq!(bucket.reserve(t0), 200 * MS);
    }
}
