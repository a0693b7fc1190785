//! The sliding window with sub-buckets: the arithmetic every store (local,
//! Redis) applies, with no clock and no IO.
//!
//! A window of length `W` is cut into [`SUB_BUCKETS`] buckets of `W / K`
//! (K = 50: 20 ms for a second, 1.2 s for a minute, 72 s for an hour).
//! A key keeps one count per bucket that saw accepted requests. A request at
//! time `s`, in bucket `b`, is accepted if the buckets `b - K ..= b` hold
//! fewer than `n` accepted requests; then it is counted in bucket `b`.
//!
//! **The bound, with no tolerance**: take any window `[t, t + W)` and its
//! last accepted request `s` (bucket `b`). Every accepted request `r` of the
//! window has `r > s - W`, so its bucket is at least `bucket(s - W) = b - K`:
//! when `s` was accepted, all the earlier ones were among the counted
//! buckets, and `s` was accepted only if they were fewer than `n`. So no
//! window of length `W` ever holds more than `n` accepted requests.
//!
//! **The price**: the check looks back over `K + 1` buckets, between `W`
//! and `W + W / K`, so a client that used its whole budget at once waits up
//! to `W / K` (2 %) longer than `W` for it to come back, and a client
//! sending exactly `n` per `W` at an even pace may see about one refusal in
//! 50. The converse also holds (tested): a request is refused only if `n`
//! accepted requests lie within the `W + W / K` before it.
//!
//! A clock that steps back is treated as standing still (a request is never
//! counted in a bucket older than the newest one), so the bound holds in the
//! clock's own terms.

use std::collections::VecDeque;

use super::Limit;

/// Buckets per window.
pub const SUB_BUCKETS: i64 = 50;

/// The width of one bucket of a `window_micros` window, in microseconds
/// (integral for every supported window).
pub const fn bucket_width(window_micros: i64) -> i64 {
    window_micros / SUB_BUCKETS
}

/// The counts of one key: `(bucket, accepted)` for every bucket within the
/// look-back that saw accepted requests, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    buckets: VecDeque<(i64, u32)>,
    total: u64,
}

/// What [`Counter::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Accepted (and counted).
    pub allowed: bool,
    /// Requests left under the limit after this one.
    pub remaining: u32,
    /// Microseconds from now until the whole budget is free again.
    pub reset_in: i64,
    /// When refused: microseconds until a request would be accepted.
    pub retry_in: Option<i64>,
}

impl Counter {
    /// Accepted requests within the look-back at `now`.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether nothing is counted any more.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The bucket of `now` (never older than the newest counted one).
    fn bucket(&self, now: i64, width: i64) -> i64 {
        let bucket = now.div_euclid(width);
        self.buckets
            .back()
            .map_or(bucket, |(newest, _)| bucket.max(*newest))
    }

    /// Forgets the buckets that left the look-back of bucket `current`.
    fn trim(&mut self, current: i64) {
        while let Some((bucket, count)) = self.buckets.front().copied() {
            if bucket >= current - SUB_BUCKETS {
                break;
            }
            self.total -= u64::from(count);
            self.buckets.pop_front();
        }
    }

    /// Forgets what the look-back at `now` no longer covers (to free
    /// memory: [`Counter::is_empty`] afterwards means the key may go).
    pub fn expire(&mut self, now: i64, window_micros: i64) {
        let width = bucket_width(window_micros);
        let current = self.bucket(now, width);
        self.trim(current);
    }

    /// Whether one more request at `now` would fit; changes nothing but
    /// forgetting expired buckets.
    pub fn peek(&mut self, now: i64, limit: Limit) -> Admission {
        self.decide(now, limit, false)
    }

    /// One request at `now`: accepted and counted if it fits.
    pub fn admit(&mut self, now: i64, limit: Limit) -> Admission {
        self.decide(now, limit, true)
    }

    /// Counts one request at `now` without checking (a request another
    /// store accepted, mirrored here).
    pub fn record(&mut self, now: i64, window_micros: i64) {
        let width = bucket_width(window_micros);
        let current = self.bucket(now, width);
        self.trim(current);
        self.add(current);
    }

    fn add(&mut self, bucket: i64) {
        self.total += 1;
        match self.buckets.back_mut() {
            Some((newest, count)) if *newest == bucket => *count = count.saturating_add(1),
            _ => self.buckets.push_back((bucket, 1)),
        }
    }

    fn decide(&mut self, now: i64, limit: Limit, consume: bool) -> Admission {
        let width = bucket_width(limit.window.micros());
        let current = self.bucket(now, width);
        self.trim(current);
        let count = u64::from(limit.count);
        let fits = self.total < count;
        if fits && consume {
            self.add(current);
        }
        let used = self.total + u64::from(fits && !consume);
        let remaining = u32::try_from(count.saturating_sub(used)).unwrap_or(u32::MAX);
        // A bucket `j` leaves the look-back when bucket `j + K + 1` starts.
        let leaves = |bucket: i64| ((bucket + SUB_BUCKETS + 1) * width - now).max(0);
        let reset_in = self.buckets.back().map_or(0, |(newest, _)| leaves(*newest));
        let retry_in = (!fits).then(|| {
            // The oldest buckets leave first; wait until enough have left
            // that one more fits.
            let mut left = self.total;
            for (bucket, accepted) in &self.buckets {
                left -= u64::from(*accepted);
                if left < count {
                    return leaves(*bucket);
                }
            }
            reset_in
        });
        Admission {
            allowed: fits,
            remaining,
            reset_in,
            retry_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Window;

    const MINUTE: i64 = 60_000_000;

    fn per_minute(count: u32) -> Limit {
        Limit::per_minute(count)
    }

    #[test]
    fn a_full_budget_comes_back_one_bucket_after_the_window() {
        let mut counter = Counter::default();
        let start = 1_000 * MINUTE;
        for left in (0..3).rev() {
            let admission = counter.admit(start, per_minute(3));
            assert!(admission.allowed);
            assert_eq!(admission.remaining, left);
        }
        let refused = counter.admit(start, per_minute(3));
        assert!(!refused.allowed);
        // 60 s plus one 1.2 s bucket.
        assert_eq!(refused.retry_in, Some(61_200_000));
        assert_eq!(refused.reset_in, 61_200_000);
        assert!(!counter.admit(start + 61_199_999, per_minute(3)).allowed);
        let later = counter.admit(start + 61_200_000, per_minute(3));
        assert!(later.allowed);
        assert_eq!(later.remaining, 2);
    }

    #[test]
    fn retry_after_waits_for_the_oldest_bucket_only() {
        let mut counter = Counter::default();
        let start = 1_000 * MINUTE;
        assert!(counter.admit(start, per_minute(2)).allowed);
        assert!(counter.admit(start + 30_000_000, per_minute(2)).allowed);
        let refused = counter.admit(start + 31_000_000, per_minute(2));
        assert_eq!(refused.retry_in, Some(61_200_000 - 31_000_000));
        // Reset: when the newer one (bucket 25 after the start) leaves.
        assert_eq!(refused.reset_in, 30_000_000 + 61_200_000 - 31_000_000);
    }

    #[test]
    fn a_clock_stepping_back_counts_in_the_newest_bucket() {
        let mut counter = Counter::default();
        let limit = Limit {
            count: 2,
            window: Window::Second,
        };
        assert!(counter.admit(10_000_000, limit).allowed);
        assert!(counter.admit(9_000_000, limit).allowed);
        assert!(!counter.admit(9_500_000, limit).allowed);
    }

    #[test]
    fn peek_consumes_nothing() {
        let mut counter = Counter::default();
        let limit = per_minute(1);
        assert!(counter.peek(0, limit).allowed);
        assert_eq!(counter.peek(0, limit).remaining, 0);
        assert!(counter.admit(0, limit).allowed);
        assert!(!counter.peek(0, limit).allowed);
    }
}
