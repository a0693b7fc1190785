//! The rate limits of apitoken as one async facade, [`Limiter`], shared by
//! the server and the interceptor:
//!
//! - per-token and per-namespace limits ([`Limiter::check`]), checked
//!   together, all or nothing;
//! - the failed-authentication throttle per address
//!   ([`Limiter::record_failure`], [`Limiter::blocked`]).
//!
//! Both use the sliding window of [`apitoken_domain::ratelimit::window`]:
//! at most `n` accepted in any window of the limit's length.
//!
//! **Where the counts live.** Without Redis, in this process
//! ([`apitoken_domain::ratelimit::LocalLimiter`], `LocalThrottle`). With a
//! Redis URL (feature `redis`), in Redis: one hash per token, per namespace
//! and per address, updated by one atomic Lua script that checks every
//! scope of a call and counts it in all or none, on Redis's own clock, so
//! every replica and interceptor shares one count. Each process also keeps
//! its own share of the traffic in its local store.
//!
//! **When Redis is away** (a call fails or takes longer than the timeout,
//! 50 ms by default): the process falls back to its local limits at once,
//! logs it once, reports it in [`BackendState`] (health, metrics), and a
//! probe (a `PING` a second) brings it back when Redis answers again, also
//! logged once. While in fallback no call waits for Redis: each process
//! enforces the full limits on its own (R replicas: up to R × n in a
//! window), starting from its own recent traffic.

#![forbid(unsafe_code)]

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use apitoken_domain::{
    clock::SharedClock,
    ratelimit::{
        Check, Decision, FailureOutcome, Limit, LocalLimiter, LocalThrottle, RateLimit, Scope,
        throttle_key,
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

#[cfg(feature = "redis")]
mod redis_backend;

/// The default bound of every Redis call.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// The default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "apitoken";

/// Where shared limits live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS, `redis+unix://`).
    pub url: String,
    /// Bound of every call (connect, script, ping); past it the call counts
    /// as failed and the process falls back to local limits.
    pub timeout: Duration,
    /// Prefix of every key (`<prefix>:rl:{namespace}:...`, `<prefix>:fa:...`);
    /// the same on every replica and interceptor that share limits.
    pub key_prefix: String,
    /// How often Redis is pinged (to notice an outage without traffic, and
    /// to come back from one).
    pub probe_interval: Duration,
}

impl RedisConfig {
    /// `url` with the default timeout, prefix and probe interval.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// What a [`Limiter`] enforces and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Failed authentications per address; `Unlimited` turns the throttle off.
    pub failed_auth: RateLimit,
    /// Shared limits, or `None` for this process alone.
    pub redis: Option<RedisConfig>,
}

/// One call to limit: its token and namespace and their limits.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The token's namespace.
    pub namespace: &'a str,
    /// The token's uid.
    pub uid: &'a str,
    /// The token's limit.
    pub token: RateLimit,
    /// The namespace's aggregate limit.
    pub namespace_limit: RateLimit,
}

impl<'a> Call<'a> {
    fn checks(&self) -> [Check<'a>; 2] {
        [
            Check {
                scope: Scope::Token,
                key: self.uid,
                limit: self.token,
            },
            Check {
                scope: Scope::Namespace,
                key: self.namespace,
                limit: self.namespace_limit,
            },
        ]
    }

    /// Whether any of its limits counts (both unlimited: nothing to do).
    pub fn is_limited(&self) -> bool {
        self.token != RateLimit::Unlimited || self.namespace_limit != RateLimit::Unlimited
    }
}

/// Whether limits are shared right now, for health, logs and metrics.
#[derive(Debug)]
pub struct BackendState {
    configured: bool,
    /// [`UNKNOWN`] until the first probe or call, then [`SHARED`] or
    /// [`FALLBACK`].
    mode: AtomicU8,
    detail: Mutex<Option<String>>,
    changes: watch::Sender<bool>,
}

const UNKNOWN: u8 = 0;
const SHARED: u8 = 1;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
const FALLBACK: u8 = 2;

impl BackendState {
    fn new(configured: bool) -> Self {
        Self {
            configured,
            // Until the first probe answers, limits are local.
            mode: AtomicU8::new(UNKNOWN),
            detail: Mutex::new(configured.then(|| "not connected yet".to_owned())),
            changes: watch::Sender::new(configured),
        }
    }

    /// Whether a Redis URL is configured at all.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// Whether Redis is configured but unreachable, so that local limits are
    /// in force (the `redis_fallback` metric, 0 or 1).
    pub fn fallback(&self) -> bool {
        self.configured && self.mode.load(Ordering::Relaxed) != SHARED
    }

    /// Why, while in fallback.
    pub fn detail(&self) -> Option<String> {
        self.detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Follows [`BackendState::fallback`] (`true`: in fallback).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    /// Local limits from now on; logged once per outage.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn enter_fallback(&self, why: &str) {
        *self.detail.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
        if self.mode.swap(FALLBACK, Ordering::Relaxed) != FALLBACK {
            warn!(
                error = why,
                "redis unreachable: falling back to local rate limits"
            );
            self.changes.send_replace(true);
        }
    }

    /// Shared limits again; logged once.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn recover(&self) {
        if self.mode.swap(SHARED, Ordering::Relaxed) != SHARED {
            info!("redis reachable: rate limits are shared");
            *self.detail.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.changes.send_replace(false);
        }
    }
}

/// Rate limits and the failed-authentication throttle of one process,
/// shared through Redis when configured.
#[derive(Debug)]
pub struct Limiter {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    clock: SharedClock,
    local: LocalLimiter,
    throttle: Option<LocalThrottle>,
    failed_auth: RateLimit,
    state: Arc<BackendState>,
    #[cfg(feature = "redis")]
    redis: Option<redis_backend::RedisBackend>,
}

impl Limiter {
    /// Limits of this process alone.
    pub fn local(clock: SharedClock, failed_auth: RateLimit) -> Self {
        Self {
            local: LocalLimiter::new(Arc::clone(&clock)),
            throttle: failed_auth
                .limit()
                .map(|limit| LocalThrottle::new(Arc::clone(&clock), limit)),
            failed_auth,
            state: Arc::new(BackendState::new(false)),
            clock,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Limits as configured. With Redis, connects lazily (a Redis that is
    /// down at start only means local limits until it answers) and starts
    /// the probe, which ends when the limiter is dropped; needs a Tokio
    /// runtime then. Errors: a URL that does not parse, or Redis asked of a
    /// build without the `redis` feature.
    pub fn new(clock: SharedClock, config: &LimiterConfig) -> Result<Arc<Self>, String> {
        let Some(redis) = &config.redis else {
            return Ok(Arc::new(Self::local(clock, config.failed_auth)));
        };
        #[cfg(feature = "redis")]
        {
            let backend = redis_backend::RedisBackend::connect(redis)?;
            let limiter = Arc::new(Self {
                state: Arc::new(BackendState::new(true)),
                redis: Some(backend),
                ..Self::local(clock, config.failed_auth)
            });
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| "shared rate limits need a Tokio runtime".to_owned())?;
            runtime.spawn(probe(Arc::downgrade(&limiter), redis.probe_interval));
            Ok(limiter)
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (redis, clock);
            Err(
                "this build has no Redis support (feature `redis` of apitoken-ratelimit)"
                    .to_owned(),
            )
        }
    }

    /// Whether limits are shared right now: checks then go to Redis (an
    /// await); otherwise [`Limiter::check_local`] decides at once.
    pub fn is_shared(&self) -> bool {
        self.state.configured && !self.state.fallback()
    }

    /// The state of the shared store (health, metrics).
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// The failed-authentication limit, if the throttle is on.
    pub fn failure_limit(&self) -> Option<Limit> {
        self.failed_auth.limit()
    }

    /// Checks one call against its token's and namespace's limits and
    /// counts it in both only if both allow. `None`: nothing limits it.
    pub async fn check(&self, call: &Call<'_>) -> Option<Decision> {
        if !call.is_limited() {
            return None;
        }
        #[cfg(feature = "redis")]
        if self.is_shared()
            && let Some(redis) = &self.redis
        {
            match redis.check(call, self.clock.as_ref()).await {
                Ok(decision) => {
                    if decision.is_some_and(|decision| decision.allowed) {
                        self.local.record(&call.checks());
                    }
                    return decision;
                }
                Err(error) => self.state.enter_fallback(&error),
            }
        }
        self.check_local(call)
    }

    /// [`Limiter::check`] in this process alone, without waiting.
    pub fn check_local(&self, call: &Call<'_>) -> Option<Decision> {
        self.local.check(&call.checks())
    }

    /// Counts a failed authentication from `peer` (IPv6 by its /64).
    pub async fn record_failure(&self, peer: IpAddr) -> FailureOutcome {
        #[cfg(feature = "redis")]
        if let (Some(limit), true, Some(redis)) =
            (self.failed_auth.limit(), self.is_shared(), &self.redis)
        {
            let key = throttle_key(peer);
            match redis.failure(key, limit, true).await {
                Ok(redis_backend::Failure::Counted { started }) => {
                    self.mirror_failure(key);
                    return if started {
                        FailureOutcome::BurstStarted
                    } else {
                        FailureOutcome::Counted
                    };
                }
                Ok(redis_backend::Failure::Refused(wait)) => {
                    return FailureOutcome::Throttled(wait);
                }
                Err(error) => self.state.enter_fallback(&error),
            }
        }
        self.record_failure_local(peer)
    }

    /// [`Limiter::record_failure`] in this process alone.
    pub fn record_failure_local(&self, peer: IpAddr) -> FailureOutcome {
        match &self.throttle {
            Some(throttle) => throttle.record_failure(throttle_key(peer)),
            None => FailureOutcome::Counted,
        }
    }

    #[cfg(feature = "redis")]
    fn mirror_failure(&self, key: IpAddr) {
        // This process's share, so that a fall back starts from it; the
        // shared count decided, so the local outcome does not matter.
        if let Some(throttle) = &self.throttle {
            let _ = throttle.record_failure(key);
        }
    }

    /// If one more failure from `peer` would be refused: how long until it
    /// would be counted.
    pub async fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        #[cfg(feature = "redis")]
        if let (Some(limit), true, Some(redis)) =
            (self.failed_auth.limit(), self.is_shared(), &self.redis)
        {
            match redis.failure(throttle_key(peer), limit, false).await {
                Ok(redis_backend::Failure::Counted { .. }) => return None,
                Ok(redis_backend::Failure::Refused(wait)) => {
                    return Some(wait.unwrap_or_default());
                }
                Err(error) => self.state.enter_fallback(&error),
            }
        }
        self.blocked_local(peer)
    }

    /// [`Limiter::blocked`] in this process alone.
    pub fn blocked_local(&self, peer: IpAddr) -> Option<Duration> {
        self.throttle.as_ref()?.blocked(throttle_key(peer))
    }
}

/// Pings Redis every `interval` while the limiter lives: an answer ends a
/// fallback, a failure starts one (even without traffic).
#[cfg(feature = "redis")]
async fn probe(limiter: std::sync::Weak<Limiter>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        let Some(redis) = &limiter.redis else {
            return;
        };
        match redis.ping().await {
            Ok(()) => limiter.state.recover(),
            Err(error) => limiter.state.enter_fallback(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitoken_domain::clock::ManualClock;

    #[tokio::test]
    async fn local_limits_need_nothing_else() {
        let clock: SharedClock = Arc::new(ManualClock::starting_now());
        let limiter = Limiter::new(
            clock,
            &LimiterConfig {
                failed_auth: "2/m".parse().expect("limit"),
                redis: None,
            },
        )
        .expect("local");
        assert!(!limiter.is_shared());
        assert!(!limiter.state().configured());
        let call = Call {
            namespace: "ns",
            uid: "u",
            token: RateLimit::per_minute(1),
            namespace_limit: RateLimit::Unlimited,
        };
        assert!(limiter.check(&call).await.expect("limited").allowed);
        assert!(!limiter.check(&call).await.expect("limited").allowed);
        let unlimited = Call {
            token: RateLimit::Unlimited,
            ..call
        };
        assert_eq!(limiter.check(&unlimited).await, None);
        let peer: IpAddr = "2001:db8::1".parse().expect("ip");
        let neighbour: IpAddr = "2001:db8::2".parse().expect("ip");
        assert_eq!(limiter.record_failure(peer).await, FailureOutcome::Counted);
        assert_eq!(
            limiter.record_failure(neighbour).await,
            FailureOutcome::BurstStarted,
            "one /64, one budget"
        );
        assert!(limiter.blocked(peer).await.is_some());
    }
}
