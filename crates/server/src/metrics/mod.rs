//! Metrics: what the server counts, and the Prometheus endpoint that
//! exports it.
//!
//! Everything is recorded through the [`metrics`] facade, so a process
//! without a recorder (the in-process tests, a library user) pays an atomic
//! no-op. `apitoken-server --metrics-listen ADDR` installs the Prometheus
//! recorder ([`exporter`]) and serves `GET /metrics` in the text exposition
//! format on its own listener.
//!
//! - [`requests`]: every gRPC call by method and code, with latency (and the
//!   per-method counts the tests read to prove a call never reached us);
//! - [`names`]: every metric's name, labels and help text, in one table;
//! - [`collect`]: the gauges read when Prometheus scrapes (index and cache
//!   sizes, active tokens per namespace, event watchers, the database pool,
//!   health checks);
//! - [`server`]: the handles of the counters recorded on hot paths
//!   (verification outcomes, rate-limit refusals, throttling), registered
//!   once so that a call costs one atomic add.
//!
//! **Cardinality is bounded**: labels take values from fixed sets (methods
//! this server serves, gRPC codes, outcomes), never from what a caller
//! sends; namespaces (chosen by operators, not callers) are capped at
//! `--metrics-max-namespaces`, the rest summed under `_other`.

pub mod collect;
pub mod exporter;
pub mod names;
pub mod requests;

use std::sync::LazyLock;

use apitoken_domain::{AuthFailure, ratelimit::Scope};
use metrics::Counter;

pub use requests::{OTHER, RequestCounter, served_methods};

/// Counters recorded on hot paths, registered once.
#[derive(Debug)]
pub struct ServerMetrics {
    verified_ok: Counter,
    verify_failed: [Counter; 5],
    throttled: Counter,
    bursts: Counter,
    rate_limited_token: Counter,
    rate_limited_namespace: Counter,
    record_cache_hit: Counter,
    record_cache_miss: Counter,
    list_cache_hit: Counter,
    list_cache_miss: Counter,
}

/// The label of an authentication failure.
fn failure_label(failure: AuthFailure) -> (usize, &'static str) {
    match failure {
        AuthFailure::Missing => (0, "missing"),
        AuthFailure::Malformed => (1, "malformed"),
        AuthFailure::Invalid => (2, "invalid"),
        AuthFailure::Expired => (3, "expired"),
        AuthFailure::Revoked => (4, "revoked"),
    }
}

impl ServerMetrics {
    fn register() -> Self {
        let outcome =
            |label: &'static str| metrics::counter!(names::VERIFICATIONS, "outcome" => label);
        let failures = [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Invalid,
            AuthFailure::Expired,
            AuthFailure::Revoked,
        ]
        .map(|failure| outcome(failure_label(failure).1));
        Self {
            verified_ok: outcome("ok"),
            verify_failed: failures,
            throttled: outcome("throttled"),
            bursts: metrics::counter!(names::FAILED_AUTH_BURSTS),
            rate_limited_token: metrics::counter!(names::RATE_LIMITED, "scope" => "token"),
            rate_limited_namespace: metrics::counter!(names::RATE_LIMITED, "scope" => "namespace"),
            record_cache_hit: metrics::counter!(names::RECORD_CACHE, "result" => "hit"),
            record_cache_miss: metrics::counter!(names::RECORD_CACHE, "result" => "miss"),
            list_cache_hit: metrics::counter!(names::LIST_CACHE, "result" => "hit"),
            list_cache_miss: metrics::counter!(names::LIST_CACHE, "result" => "miss"),
        }
    }

    /// A secret was verified.
    pub fn verified(&self) {
        self.verified_ok.increment(1);
    }

    /// A verification failed for `failure`.
    pub fn verify_failed(&self, failure: AuthFailure) {
        self.verify_failed[failure_label(failure).0].increment(1);
    }

    /// A failure was answered `RESOURCE_EXHAUSTED` by the throttle.
    pub fn throttled(&self) {
        self.throttled.increment(1);
    }

    /// A burst of failed authentications began from one address.
    pub fn burst(&self) {
        self.bursts.increment(1);
    }

    /// A call was refused by the rate limit of `scope`.
    pub fn rate_limited(&self, scope: Scope) {
        match scope {
            Scope::Token => self.rate_limited_token.increment(1),
            Scope::Namespace => self.rate_limited_namespace.increment(1),
        }
    }

    /// A full record was looked up in the record cache.
    pub fn record_cache(&self, hit: bool) {
        if hit {
            self.record_cache_hit.increment(1);
        } else {
            self.record_cache_miss.increment(1);
        }
    }

    /// A list page was looked up in the page cache.
    pub fn list_cache(&self, hit: bool) {
        if hit {
            self.list_cache_hit.increment(1);
        } else {
            self.list_cache_miss.increment(1);
        }
    }
}

static SERVER: LazyLock<ServerMetrics> = LazyLock::new(ServerMetrics::register);

/// The server's hot-path counters. Registered with whatever recorder is
/// installed at the first call: the binary installs the Prometheus recorder
/// before serving.
pub fn server() -> &'static ServerMetrics {
    &SERVER
}
