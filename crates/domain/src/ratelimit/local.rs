//! The in-process stores: [`LocalLimiter`] (per-token and per-namespace
//! limits) and [`LocalThrottle`] (failed authentications per address), each
//! a map of [`Counter`]s behind one mutex, reading time from the injectable
//! [`Clock`].
//!
//! Memory is bounded: past [`PRUNE_ABOVE`] keys, keys with nothing counted
//! are dropped; the throttle, keyed by addresses that callers choose, never
//! holds more than [`PRUNE_ABOVE`] addresses: when they all still count
//! failures, new ones share one budget.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use super::{
    Check, Decision, FailureOutcome, Limit, RateLimit,
    window::{Admission, Counter},
};
use crate::clock::{Clock, SharedClock};

/// Above this many keys, keys with nothing counted are dropped (and the
/// throttle shares one budget among new addresses).
pub const PRUNE_ABOVE: usize = 100_000;
/// Pruning a full table costs a pass over it: at most once this often
/// (microseconds), so a flood of new keys cannot make every call pay it.
const PRUNE_EVERY: i64 = 1_000_000;
/// The key shared by failing addresses that find the throttle's table full.
const OVERFLOW: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

fn micros(clock: &dyn Clock) -> i64 {
    clock.now().timestamp_micros()
}

fn duration(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Unix seconds, rounded up, `in_micros` after `now`.
fn unix_after(now: i64, in_micros: i64) -> i64 {
    (now + in_micros + 999_999).div_euclid(1_000_000)
}

/// Combines the admissions of several limits into the one decision the
/// headers report: a refusal (the longest wait) if any refused, else the
/// limit with the fewest requests left.
pub fn decide(now: i64, outcomes: &[(Check<'_>, Limit, Admission)]) -> Option<Decision> {
    let refused = outcomes
        .iter()
        .filter(|(_, _, admission)| !admission.allowed)
        .max_by_key(|(_, _, admission)| admission.retry_in);
    let (check, limit, admission) = match refused {
        Some(refused) => refused,
        None => outcomes
            .iter()
            .min_by_key(|(_, _, admission)| admission.remaining)?,
    };
    Some(Decision {
        allowed: refused.is_none(),
        limit: *limit,
        scope: check.scope,
        remaining: if refused.is_some() {
            0
        } else {
            admission.remaining
        },
        reset_unix: unix_after(now, admission.reset_in),
        retry_after: admission.retry_in.map(duration),
    })
}

/// Per-token and per-namespace limits of one process.
#[derive(Debug)]
pub struct LocalLimiter {
    clock: SharedClock,
    counters: Mutex<Table<Group, HashMap<Box<str>, Counter>>>,
}

/// One map of counters per scope and window (a limit whose window changes
/// starts a new count), keyed by token uid or namespace and looked up by
/// `&str`: a check allocates nothing for a key already counted.
type Group = (super::Scope, super::Window);

/// A map and when it was last pruned.
#[derive(Debug)]
struct Table<K, V> {
    map: HashMap<K, V>,
    pruned_at: i64,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            pruned_at: i64::MIN,
        }
    }
}

impl<K, V> Table<K, V> {
    /// Whether a table holding `keys` keys is full and may be pruned now.
    fn should_prune(&mut self, keys: usize, now: i64) -> bool {
        if keys < PRUNE_ABOVE || now.saturating_sub(self.pruned_at) < PRUNE_EVERY {
            return false;
        }
        self.pruned_at = now;
        true
    }
}

impl Table<Group, HashMap<Box<str>, Counter>> {
    fn keys(&self) -> usize {
        self.map.values().map(HashMap::len).sum()
    }

    fn prune_if_full(&mut self, now: i64) {
        let keys = self.keys();
        if self.should_prune(keys, now) {
            for ((_, window), counters) in &mut self.map {
                counters.retain(|_, counter| {
                    counter.expire(now, window.micros());
                    !counter.is_empty()
                });
            }
        }
    }

    fn get_mut(&mut self, check: &Check<'_>, limit: Limit) -> Option<&mut Counter> {
        self.map
            .get_mut(&(check.scope, limit.window))?
            .get_mut(check.key)
    }

    /// The counter of `check`'s key, made if new (the key is copied only
    /// then). Always `Some`.
    fn counter(&mut self, check: &Check<'_>, limit: Limit) -> Option<&mut Counter> {
        let counters = self.map.entry((check.scope, limit.window)).or_default();
        if !counters.contains_key(check.key) {
            counters.insert(check.key.into(), Counter::default());
        }
        counters.get_mut(check.key)
    }
}

impl LocalLimiter {
    /// A limiter reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            counters: Mutex::new(Table::default()),
        }
    }

    /// Checks one request against every limit in `checks` (unlimited ones
    /// are skipped) and counts it in all of them only if all allow. `None`
    /// when nothing limits it.
    pub fn check(&self, checks: &[Check<'_>]) -> Option<Decision> {
        let now = micros(self.clock.as_ref());
        let mut table = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        table.prune_if_full(now);
        let mut outcomes = Vec::with_capacity(checks.len());
        for check in checks {
            let RateLimit::Limited(limit) = check.limit else {
                continue;
            };
            let admission = match table.get_mut(check, limit) {
                Some(counter) => counter.peek(now, limit),
                None => Counter::default().peek(now, limit),
            };
            outcomes.push((*check, limit, admission));
        }
        let decision = decide(now, &outcomes)?;
        if decision.allowed {
            for (check, limit, admission) in &mut outcomes {
                if let Some(counter) = table.counter(check, *limit) {
                    *admission = counter.admit(now, *limit);
                }
            }
        }
        // The figures after counting this request.
        decide(now, &outcomes)
    }

    /// Counts one request in every limited `checks` without checking: a
    /// request the shared store accepted, mirrored here so that a fall back
    /// to local limits starts from this process's own recent traffic.
    pub fn record(&self, checks: &[Check<'_>]) {
        let now = micros(self.clock.as_ref());
        let mut table = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        table.prune_if_full(now);
        for check in checks {
            if let RateLimit::Limited(limit) = check.limit
                && let Some(counter) = table.counter(check, limit)
            {
                counter.record(now, limit.window.micros());
            }
        }
    }

    /// How many keys are held (for tests of the memory bound).
    pub fn keys(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
    }
}

/// Failed authentications per address: at most `limit` counted in any
/// window; past it further failures are refused (not counted) until the
/// window has room again.
#[derive(Debug)]
pub struct LocalThrottle {
    clock: SharedClock,
    limit: Limit,
    peers: Mutex<Table<IpAddr, Peer>>,
}

#[derive(Debug, Default)]
struct Peer {
    counter: Counter,
    /// A burst was reported and the counter has not emptied since.
    in_burst: bool,
}

impl LocalThrottle {
    /// A throttle allowing `limit` failures per address.
    pub fn new(clock: SharedClock, limit: Limit) -> Self {
        Self {
            clock,
            limit,
            peers: Mutex::new(Table::default()),
        }
    }

    /// The limit.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// If one more failure of `peer` would be refused: how long until it
    /// would be counted.
    pub fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        let now = micros(self.clock.as_ref());
        let mut table = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let peers = &mut table.map;
        let full = peers.len() >= PRUNE_ABOVE;
        let key = if !peers.contains_key(&peer) && full {
            OVERFLOW
        } else {
            peer
        };
        let entry = peers.get_mut(&key)?;
        let admission = entry.counter.peek(now, self.limit);
        (!admission.allowed).then(|| duration(admission.retry_in.unwrap_or(0)))
    }

    /// Counts a failure of `peer`.
    pub fn record_failure(&self, peer: IpAddr) -> FailureOutcome {
        let now = micros(self.clock.as_ref());
        let window = self.limit.window.micros();
        let mut table = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let addresses = table.map.len();
        if !table.map.contains_key(&peer) && table.should_prune(addresses, now) {
            table.map.retain(|_, entry| {
                entry.counter.expire(now, window);
                !entry.counter.is_empty()
            });
        }
        let peers = &mut table.map;
        // Still full (a flood from many addresses): new addresses share one
        // budget rather than grow the table.
        let key = if peers.len() >= PRUNE_ABOVE && !peers.contains_key(&peer) {
            OVERFLOW
        } else {
            peer
        };
        let entry = peers.entry(key).or_default();
        entry.counter.expire(now, window);
        if entry.counter.is_empty() {
            // Nothing counted for a whole window: a later burst is a new one.
            entry.in_burst = false;
        }
        let admission = entry.counter.admit(now, self.limit);
        if !admission.allowed {
            return FailureOutcome::Throttled(admission.retry_in.map(duration));
        }
        if admission.remaining == 0 && !entry.in_burst {
            entry.in_burst = true;
            return FailureOutcome::BurstStarted;
        }
        FailureOutcome::Counted
    }

    /// How many addresses are held (for tests of the memory bound).
    pub fn addresses(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::{
        clock::ManualClock,
        ratelimit::{Scope, Window},
    };

    fn limiter() -> (Arc<ManualClock>, LocalLimiter) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        (clock.clone(), LocalLimiter::new(clock))
    }

    fn checks<'a>(uid: &'a str, token: u32, ns: &'a str, namespace: u32) -> [Check<'a>; 2] {
        [
            Check {
                scope: Scope::Token,
                key: uid,
                limit: RateLimit::per_minute(token),
            },
            Check {
                scope: Scope::Namespace,
                key: ns,
                limit: RateLimit::per_minute(namespace),
            },
        ]
    }

    #[test]
    fn a_token_gets_its_limit_then_waits_a_window() {
        let (clock, limiter) = limiter();
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let decision = limiter
                .check(&checks("tok", 3, "ns", 1000))
                .expect("limited");
            assert!(decision.allowed);
            remaining.push(decision.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter
            .check(&checks("tok", 3, "ns", 1000))
            .expect("limited");
        assert!(!refused.allowed);
        assert_eq!(refused.scope, Scope::Token);
        let wait = refused.retry_after.expect("retry after");
        assert!(
            (Duration::from_secs(60)..=Duration::from_millis(61_200)).contains(&wait),
            "{wait:?}"
        );
        clock.advance(chrono::Duration::from_std(wait).expect("wait"));
        assert!(
            limiter
                .check(&checks("tok", 3, "ns", 1000))
                .expect("d")
                .allowed
        );
    }

    #[test]
    fn the_namespace_aggregate_binds_all_tokens() {
        let (_, limiter) = limiter();
        assert!(
            limiter
                .check(&checks("a", 100, "ns", 2))
                .expect("d")
                .allowed
        );
        let second = limiter.check(&checks("b", 100, "ns", 2)).expect("d");
        assert!(second.allowed);
        assert_eq!((second.scope, second.remaining), (Scope::Namespace, 0));
        let third = limiter.check(&checks("c", 100, "ns", 2)).expect("d");
        assert!(!third.allowed);
        assert_eq!(third.scope, Scope::Namespace);
        assert!(
            limiter
                .check(&checks("d", 100, "other", 2))
                .expect("d")
                .allowed
        );
    }

    #[test]
    fn a_refusal_consumes_nothing_anywhere() {
        let (_, limiter) = limiter();
        assert!(limiter.check(&checks("a", 1, "ns", 10)).expect("d").allowed);
        for _ in 0..5 {
            assert!(!limiter.check(&checks("a", 1, "ns", 10)).expect("d").allowed);
        }
        for i in 0..9 {
            assert!(
                limiter
                    .check(&checks(&format!("other-{i}"), 10, "ns", 10))
                    .expect("d")
                    .allowed,
                "call {i}"
            );
        }
    }

    #[test]
    fn unlimited_is_not_counted() {
        let (_, limiter) = limiter();
        let unlimited = [Check {
            scope: Scope::Token,
            key: "free",
            limit: RateLimit::Unlimited,
        }];
        assert_eq!(limiter.check(&unlimited), None);
        assert_eq!(limiter.keys(), 0);
        let token_free = [
            unlimited[0],
            Check {
                scope: Scope::Namespace,
                key: "ns",
                limit: RateLimit::per_minute(1),
            },
        ];
        assert_eq!(
            limiter.check(&token_free).map(|d| (d.allowed, d.scope)),
            Some((true, Scope::Namespace))
        );
        assert!(!limiter.check(&token_free).expect("d").allowed);
    }

    #[test]
    fn reset_is_when_the_budget_is_free_again() {
        let (clock, limiter) = limiter();
        let now = clock.now().timestamp();
        let decision = limiter.check(&checks("a", 60, "ns", 1000)).expect("d");
        assert!(
            (now + 60..=now + 63).contains(&decision.reset_unix),
            "{decision:?} at {now}"
        );
    }

    #[test]
    fn failures_throttle_a_peer_and_report_the_burst_once() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let throttle = LocalThrottle::new(clock.clone(), Limit::per_minute(3));
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let step = |millis| clock.advance(chrono::Duration::milliseconds(millis));
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        step(1_200);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        step(1_200);
        assert_eq!(throttle.blocked(peer), None);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::BurstStarted);
        assert!(throttle.blocked(peer).is_some());
        assert!(matches!(
            throttle.record_failure(peer),
            FailureOutcome::Throttled(Some(_))
        ));
        assert_eq!(throttle.blocked(other), None);
        // A steady attacker gets one failure counted as each bucket leaves
        // the window, but the burst is not reported again.
        step(58_800);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert!(throttle.blocked(peer).is_some());
        // Quiet for a whole window: the next burst is reported again.
        step(63_000);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(throttle.record_failure(peer), FailureOutcome::Counted);
        assert_eq!(
            throttle.record_failure(peer),
            FailureOutcome::BurstStarted,
            "a new burst is reported again"
        );
    }

    #[test]
    fn the_throttle_table_is_bounded() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let throttle = LocalThrottle::new(
            clock,
            Limit {
                count: 1,
                window: Window::Hour,
            },
        );
        for i in 0..(PRUNE_ABOVE as u32 + 500) {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.record_failure(peer);
        }
        assert!(throttle.addresses() <= PRUNE_ABOVE + 1);
        // Newcomers share the overflow budget, which is used up.
        let newcomer: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(throttle.blocked(newcomer).is_some());
    }
}
