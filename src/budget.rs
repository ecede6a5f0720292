//! Rate budgets: flood control (lines a second per connection) and the error budget (refused
//! lines a minute). Pure logic: the time is always passed in as [`Millis`] on a monotonic
//! clock, so tests drive it by hand, and nothing here depends on the calendar. The bundled
//! client paces piped lines with the same [`TokenBucket`].
//!
//! A bucket does not hold its [`Limit`]: every connection has buckets but they all share the
//! server's limits, and an idle connection should cost as little as possible.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point on a monotonic clock, in milliseconds since the clock's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Now, on this process's monotonic clock (it starts at its first use).
    pub fn now() -> Millis {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        Millis(start.elapsed().as_millis() as u64)
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The fraction of a token that buckets count in: 1/60,000, so that both a rate a second
/// and a count a minute refill a whole number of units every millisecond, and arithmetic is
/// exact (no drift from adding up fractions).
const UNITS_PER_TOKEN: u64 = 60_000;

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Units added per millisecond.
    per_ms: u64,
    /// Most units held.
    burst: u64,
}

impl Limit {
    /// `rate` a second after a burst of `burst` (at least 1); `None` when `rate` is 0, which
    /// means unlimited.
    pub fn per_second(rate: u32, burst: u32) -> Option<Limit> {
        (rate > 0).then(|| Limit {
            per_ms: u64::from(rate) * UNITS_PER_TOKEN / 1000,
            burst: u64::from(burst.max(1)) * UNITS_PER_TOKEN,
        })
    }

    /// One token every `interval` (a divisor of a minute, at least 1 ms) after a burst of
    /// `burst` (at least 1).
    pub fn every(interval: Duration, burst: u32) -> Limit {
        let ms = (interval.as_millis() as u64).clamp(1, UNITS_PER_TOKEN);
        Limit {
            per_ms: (UNITS_PER_TOKEN / ms).max(1),
            burst: u64::from(burst.max(1)) * UNITS_PER_TOKEN,
        }
    }

    /// `count` a minute, all of which may come at once; `None` when `count` is 0 (unlimited).
    pub fn per_minute(count: u32) -> Option<Limit> {
        (count > 0).then(|| Limit {
            per_ms: u64::from(count) * UNITS_PER_TOKEN / 60_000,
            burst: u64::from(count) * UNITS_PER_TOKEN,
        })
    }
}

/// A token bucket: it holds up to `burst` tokens, refilled continuously at the limit's rate;
/// each event takes one token, and an event that finds none is over the limit. The default,
/// empty bucket is for no limit at all: it is never consulted.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenBucket {
    /// In units of 1/[`UNITS_PER_TOKEN`] of a token.
    units: u64,
    /// When `units` was last brought up to date.
    at: Millis,
}

impl TokenBucket {
    /// A full bucket: a burst may come at once.
    pub fn full(limit: &Limit, now: Millis) -> TokenBucket {
        TokenBucket {
            units: limit.burst,
            at: now,
        }
    }

    /// A bucket holding `tokens` (at most the burst).
    pub fn with_tokens(limit: &Limit, tokens: u32, now: Millis) -> TokenBucket {
        TokenBucket {
            units: (u64::from(tokens) * UNITS_PER_TOKEN).min(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: &Limit, now: Millis) {
        let earned = now.since(self.at).saturating_mul(limit.per_ms);
        self.units = self.units.saturating_add(earned).min(limit.burst);
        self.at = self.at.max(now);
    }

    /// Takes a token if there is one: true if the event is within the limit.
    pub fn try_take(&mut self, limit: &Limit, now: Millis) -> bool {
        self.refill(limit, now);
        if self.units >= UNITS_PER_TOKEN {
            self.units -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for an event that turned out not to count.
    pub fn put_back(&mut self, limit: &Limit) {
        self.units = (self.units + UNITS_PER_TOKEN).min(limit.burst);
    }

    /// True if the bucket is full at `now`: it remembers nothing worth keeping.
    pub fn is_full(&self, limit: &Limit, now: Millis) -> bool {
        let mut later = *self;
        later.refill(limit, now);
        later.units >= limit.burst
    }

    /// How long until a token will be there (zero if one is).
    pub fn until_next(&self, limit: &Limit, now: Millis) -> Duration {
        let mut later = *self;
        later.refill(limit, now);
        let missing = UNITS_PER_TOKEN.saturating_sub(later.units);
        Duration::from_millis(missing.div_ceil(limit.per_ms.max(1)))
    }
}

/// Refused lines a connection may cause: a budget of `max_errors` that refills continuously
/// at `max_errors` a minute (a token bucket; no clock minute resets it); once it is spent,
/// the connection is closed.
#[derive(Debug, Clone, Copy)]
pub struct ErrorBudget(TokenBucket);

impl ErrorBudget {
    pub fn new(limit: &Limit, now: Millis) -> ErrorBudget {
        ErrorBudget(TokenBucket::full(limit, now))
    }

    /// Counts one refused line; false once the budget is spent.
    pub fn charge(&mut self, limit: &Limit, now: Millis) -> bool {
        self.0.try_take(limit, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limit = Limit::per_second(20, 40).unwrap();
        let mut bucket = TokenBucket::full(&limit, Millis(1_000));
        let taken = (0..100)
            .filter(|_| bucket.try_take(&limit, Millis(1_000)))
            .count();
        assert_eq!(taken, 40, "the burst, then nothing at the same instant");
        assert!(
            !bucket.try_take(&limit, Millis(1_049)),
            "20/s: one per 50 ms"
        );
        assert!(bucket.try_take(&limit, Millis(1_050)));
        assert!(!bucket.try_take(&limit, Millis(1_050)));
        // Exact: a thousand steps of 50 ms earn a thousand tokens, not one fewer.
        let taken = (1..=1000)
            .filter(|i| bucket.try_take(&limit, Millis(1_050 + i * 50)))
            .count();
        assert_eq!(taken, 1000);
        // A long pause refills up to the burst, never beyond.
        let taken = (0..100)
            .filter(|_| bucket.try_take(&limit, Millis(900_000)))
            .count();
        assert_eq!(taken, 40);
    }

    #[test]
    fn time_never_runs_backwards() {
        let limit = Limit::per_second(10, 1).unwrap();
        let mut bucket = TokenBucket::full(&limit, Millis(5_000));
        assert!(bucket.try_take(&limit, Millis(5_000)));
        // An earlier reading (another thread's clock read) earns nothing and costs nothing.
        assert!(!bucket.try_take(&limit, Millis(4_000)));
        assert!(bucket.try_take(&limit, Millis(5_100)));
    }

    #[test]
    fn unlimited_is_no_limit() {
        assert!(Limit::per_second(0, 40).is_none());
        assert!(Limit::per_minute(0).is_none());
    }

    #[test]
    fn until_next_says_when_a_token_comes() {
        let limit = Limit::per_second(4, 1).unwrap();
        let mut bucket = TokenBucket::with_tokens(&limit, 0, Millis(0));
        assert_eq!(
            bucket.until_next(&limit, Millis(0)),
            Duration::from_millis(250)
        );
        assert_eq!(
            bucket.until_next(&limit, Millis(100)),
            Duration::from_millis(150)
        );
        assert_eq!(bucket.until_next(&limit, Millis(300)), Duration::ZERO);
        assert!(bucket.try_take(&limit, Millis(300)));
    }

    /// The budget refills continuously: no calendar minute's boundary resets it.
    #[test]
    fn the_error_budget_refills_continuously() {
        let limit = Limit::per_minute(30).unwrap();
        // Start just before what would be a minute boundary on a calendar clock.
        let start = Millis(59_990);
        let mut budget = ErrorBudget::new(&limit, start);
        for i in 0..30 {
            assert!(budget.charge(&limit, Millis(start.0 + i)), "error {i}");
        }
        // 20 ms later a calendar minute would have begun; the budget is still spent.
        assert!(!budget.charge(&limit, Millis(60_010)));
        // A steady 30 a minute stays within it.
        let mut budget = ErrorBudget::new(&limit, Millis(0));
        for i in 0..300u64 {
            assert!(budget.charge(&limit, Millis(i * 2_000)), "error {i}");
        }
    }
}
