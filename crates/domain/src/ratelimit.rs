//! Rate limits with GCRA (the generic cell rate algorithm): smooth, one
//! integer of state per key, a few arithmetic operations per check.
//!
//! A limit of `n` per minute lets a quiet caller burst `n` requests, then one
//! every `60 s / n`. [`RateLimiter::check`] tests a token's limit and its
//! namespace's aggregate limit together and consumes from both only if both
//! allow. [`FailureThrottle`] counts failed authentications per peer address.
//!
//! Limits are per process: each server replica and each interceptor keeps its
//! own counters (time comes from the injectable [`Clock`]).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use crate::clock::{Clock, SharedClock};

const MINUTE_MICROS: i64 = 60_000_000;
/// Above this many keys, keys whose budget is full again are dropped.
const PRUNE_ABOVE: usize = 100_000;
/// The key shared by failing addresses that find the throttle's table full.
const OVERFLOW: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Which limit a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The token's own limit.
    Token,
    /// The namespace's aggregate limit.
    Namespace,
}

/// The outcome of a check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit reported: the most restrictive one (requests per minute).
    pub limit: u32,
    /// Which limit that is.
    pub scope: Scope,
    /// Requests left right now under that limit.
    pub remaining: u32,
    /// Unix time (seconds) at which that limit's budget is full again.
    pub reset_unix: i64,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// The reply headers that report this decision: `x-ratelimit-limit`,
    /// `x-ratelimit-remaining` and `x-ratelimit-reset` (Unix seconds). The
    /// server and the interceptor both send exactly these.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_unix.to_string()),
        ]
    }
}

/// GCRA state of one key: the theoretical arrival time, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Cell {
    tat: i64,
}

/// One limit's view of a key at `now`.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: i64,
    tolerance: i64,
}

impl Gcra {
    fn per_minute(limit: u32) -> Self {
        let limit = i64::from(limit.max(1));
        let interval = (MINUTE_MICROS / limit).max(1);
        Self {
            interval,
            tolerance: interval * (limit - 1),
        }
    }

    /// `Ok(new_tat)` if a request at `now` fits, else `Err(wait)`.
    fn admit(&self, tat: Option<i64>, now: i64) -> Result<i64, i64> {
        let tat = tat.unwrap_or(now).max(now);
        let earliest = tat - self.tolerance;
        if now < earliest {
            Err(earliest - now)
        } else {
            Ok(tat + self.interval)
        }
    }

    fn remaining(&self, tat: i64, now: i64) -> u32 {
        let room = (now + self.tolerance + self.interval - tat.max(now)) / self.interval;
        u32::try_from(room.max(0)).unwrap_or(u32::MAX)
    }
}

fn micros(clock: &dyn Clock) -> i64 {
    clock.now().timestamp_micros()
}

fn reset_unix(tat: i64, now: i64) -> i64 {
    // Round up: the budget is full at the end of that second.
    (tat.max(now) + 999_999).div_euclid(1_000_000)
}

/// Per-token and per-namespace limits.
#[derive(Debug)]
pub struct RateLimiter {
    clock: SharedClock,
    cells: Mutex<Cells>,
}

#[derive(Debug, Default)]
struct Cells {
    tokens: HashMap<String, Cell>,
    namespaces: HashMap<String, Cell>,
}

impl RateLimiter {
    /// A limiter reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            cells: Mutex::new(Cells::default()),
        }
    }

    /// Checks one request of token `uid` (limit `token_limit` a minute) in
    /// `namespace` (aggregate `namespace_limit` a minute); consumes from both
    /// only if both allow.
    pub fn check(
        &self,
        uid: &str,
        token_limit: u32,
        namespace: &str,
        namespace_limit: u32,
    ) -> Decision {
        let now = micros(self.clock.as_ref());
        let token = Gcra::per_minute(token_limit);
        let aggregate = Gcra::per_minute(namespace_limit);
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let token_tat = cells.tokens.get(uid).map(|cell| cell.tat);
        let namespace_tat = cells.namespaces.get(namespace).map(|cell| cell.tat);
        let decision = match (
            token.admit(token_tat, now),
            aggregate.admit(namespace_tat, now),
        ) {
            (Ok(new_token), Ok(new_namespace)) => {
                set(&mut cells.tokens, uid, new_token);
                set(&mut cells.namespaces, namespace, new_namespace);
                let by_token = (
                    token.remaining(new_token, now),
                    token_limit,
                    Scope::Token,
                    new_token,
                );
                let by_namespace = (
                    aggregate.remaining(new_namespace, now),
                    namespace_limit,
                    Scope::Namespace,
                    new_namespace,
                );
                let (remaining, limit, scope, tat) = if by_namespace.0 < by_token.0 {
                    by_namespace
                } else {
                    by_token
                };
                Decision {
                    allowed: true,
                    limit,
                    scope,
                    remaining,
                    reset_unix: reset_unix(tat, now),
                    retry_after: None,
                }
            }
            (Err(wait), _) => refused(
                wait,
                token_limit,
                Scope::Token,
                token_tat.unwrap_or(now),
                now,
            ),
            (Ok(_), Err(wait)) => refused(
                wait,
                namespace_limit,
                Scope::Namespace,
                namespace_tat.unwrap_or(now),
                now,
            ),
        };
        if cells.tokens.len() > PRUNE_ABOVE || cells.namespaces.len() > PRUNE_ABOVE {
            cells.tokens.retain(|_, cell| cell.tat > now);
            cells.namespaces.retain(|_, cell| cell.tat > now);
        }
        decision
    }
}

fn refused(wait: i64, limit: u32, scope: Scope, tat: i64, now: i64) -> Decision {
    Decision {
        allowed: false,
        limit,
        scope,
        remaining: 0,
        reset_unix: reset_unix(tat, now),
        retry_after: Some(Duration::from_micros(u64::try_from(wait).unwrap_or(0))),
    }
}

fn set(cells: &mut HashMap<String, Cell>, key: &str, tat: i64) {
    match cells.get_mut(key) {
        Some(cell) => cell.tat = tat,
        None => {
            cells.insert(key.to_owned(), Cell { tat });
        }
    }
}

/// What [`FailureThrottle::record_failure`] observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Still under the limit.
    Counted,
    /// This failure used up the budget: a burst starts (reported once).
    BurstStarted,
    /// Already throttled.
    Throttled,
}

/// Failed authentications per peer address: past `limit` a minute, the peer
/// is refused before any lookup until its budget refills.
#[derive(Debug)]
pub struct FailureThrottle {
    clock: SharedClock,
    gcra: Gcra,
    limit: u32,
    peers: Mutex<HashMap<IpAddr, (Cell, bool)>>,
    unclaimed_bursts: Mutex<Vec<IpAddr>>,
}

impl FailureThrottle {
    /// A throttle allowing `limit` failures a minute per peer.
    pub fn new(clock: SharedClock, limit: u32) -> Self {
        Self {
            clock,
            gcra: Gcra::per_minute(limit),
            limit,
            peers: Mutex::new(HashMap::new()),
            unclaimed_bursts: Mutex::new(Vec::new()),
        }
    }

    /// Whether a burst of `peer` started and nobody claimed it yet; claims
    /// it (so it is reported once).
    pub fn burst_started_now(&self, peer: IpAddr) -> bool {
        let mut unclaimed = self
            .unclaimed_bursts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match unclaimed.iter().position(|candidate| *candidate == peer) {
            Some(index) => {
                unclaimed.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// The limit, per minute.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// If `peer` is throttled, how long until it may try again.
    pub fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        let now = micros(self.clock.as_ref());
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let (cell, _) = peers.get(&peer).or_else(|| {
            // Counted in the overflow when the table was full.
            (peers.len() >= PRUNE_ABOVE)
                .then(|| peers.get(&OVERFLOW))
                .flatten()
        })?;
        self.gcra
            .admit(Some(cell.tat), now)
            .err()
            .map(|wait| Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
    }

    /// Counts a failure of `peer`.
    pub fn record_failure(&self, peer: IpAddr) -> FailureOutcome {
        let now = micros(self.clock.as_ref());
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.len() >= PRUNE_ABOVE && !peers.contains_key(&peer) {
            peers.retain(|_, (cell, _)| cell.tat > now);
        }
        // Still full (a flood from many addresses): new addresses share one
        // budget rather than grow the table.
        let peer = if peers.len() >= PRUNE_ABOVE && !peers.contains_key(&peer) {
            OVERFLOW
        } else {
            peer
        };
        let entry = peers.entry(peer).or_insert((Cell { tat: now }, false));
        if entry.0.tat <= now {
            // Budget full again: a later burst is a new one.
            entry.1 = false;
        }
        match self.gcra.admit(Some(entry.0.tat), now) {
            Ok(tat) => {
                entry.0.tat = tat;
                if self.gcra.admit(Some(tat), now).is_err() && !entry.1 {
                    entry.1 = true;
                    let mut unclaimed = self
                        .unclaimed_bursts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if unclaimed.len() < 1024 && !unclaimed.contains(&peer) {
                        unclaimed.push(peer);
                    }
                    FailureOutcome::BurstStarted
                } else {
                    FailureOutcome::Counted
                }
            }
            Err(_) => FailureOutcome::Throttled,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::clock::ManualClock;

    fn limiter() -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        (clock.clone(), RateLimiter::new(clock))
    }

    #[test]
    fn a_quiet_token_bursts_its_limit_then_waits() {
        let (clock, limiter) = limiter();
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let decision = limiter.check("tok", 3, "ns", 1000);
            assert!(decision.allowed);
            remaining.push(decision.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check("tok", 3, "ns", 1000);
        assert!(!refused.allowed);
        assert_eq!(refused.scope, Scope::Token);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(20)));
        clock.advance(chrono::Duration::seconds(20));
        assert!(
            limiter.check("tok", 3, "ns", 1000).allowed,
            "retry-after honoured"
        );
        assert!(!limiter.check("tok", 3, "ns", 1000).allowed);
    }

    #[test]
    fn the_namespace_aggregate_binds_all_tokens() {
        let (_, limiter) = limiter();
        assert!(limiter.check("a", 100, "ns", 2).allowed);
        let second = limiter.check("b", 100, "ns", 2);
        assert!(second.allowed);
        assert_eq!((second.scope, second.remaining), (Scope::Namespace, 0));
        let third = limiter.check("c", 100, "ns", 2);
        assert!(!third.allowed);
        assert_eq!(third.scope, Scope::Namespace);
        assert!(
            limiter.check("d", 100, "other", 2).allowed,
            "other namespaces unaffected"
        );
    }

    #[test]
    fn a_refusal_consumes_nothing() {
        let (clock, limiter) = limiter();
        assert!(limiter.check("a", 1, "ns", 10).allowed);
        for _ in 0..5 {
            assert!(!limiter.check("a", 1, "ns", 10).allowed);
        }
        // The namespace was not charged for a's refused calls.
        for i in 0..9 {
            assert!(
                limiter.check(&format!("other-{i}"), 10, "ns", 10).allowed,
                "call {i}"
            );
        }
        clock.advance(chrono::Duration::seconds(60));
        assert!(limiter.check("a", 1, "ns", 10).allowed);
    }

    #[test]
    fn reset_is_when_the_budget_is_full_again() {
        let (clock, limiter) = limiter();
        let now = clock.now().timestamp();
        let decision = limiter.check("a", 60, "ns", 1000);
        // One request of 60/min: full again after one second.
        assert!(
            (now + 1..=now + 2).contains(&decision.reset_unix),
            "{decision:?} at {now}"
        );
    }

    #[test]
    fn failures_throttle_a_peer_and_report_the_burst_once() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let throttle = FailureThrottle::new(clock.clone(), 3);
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(throttle.blocked(peer), None);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::BurstStarted);
        assert!(throttle.blocked(peer).is_some());
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Throttled);
        assert_eq!(throttle.blocked(other), None);
        clock.advance(chrono::Duration::seconds(20));
        assert_eq!(throttle.blocked(peer), None, "one failure's worth refilled");
        clock.advance(chrono::Duration::seconds(60));
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(
            throttle.record_failure(peer),
            FailureOutcome::BurstStarted,
            "a new burst is reported again"
        );
    }
}
