//! What the layer counts, through the [`metrics`] facade: a service that
//! installs a recorder (e.g. `metrics-exporter-prometheus`) exports these
//! with its own metrics; without one they cost an atomic add.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `apitoken_interceptor_cache_hits_total` | | calls answered from the cache |
//! | `apitoken_interceptor_verifications_total` | | `VerifyApiToken` calls made (cache misses; one per secret however many calls waited) |
//! | `apitoken_interceptor_local_refusals_total` | | calls refused without asking apitoken |
//! | `apitoken_interceptor_unavailable_total` | | calls failed closed: apitoken could not answer |
//! | `apitoken_interceptor_invalidations_total` | | token events received |
//! | `apitoken_interceptor_outage_hits_total` | | calls served under the outage policy |
//! | `apitoken_interceptor_credential_refusals_total` | | times apitoken refused the service's own credential |
//! | `apitoken_interceptor_cache_entries` | | tokens cached |
//! | `apitoken_interceptor_outage_active` | | 1 while cached tokens are served under the outage policy |
//! | `apitoken_interceptor_stream_up` | `namespace` | 1 while the namespace's event stream is fresh |
//!
//! Labels come from the service's own configuration (its namespaces),
//! never from callers.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// A count kept twice: in an atomic the service reads
/// ([`crate::ApiTokenAuth::stats`]) and in the installed recorder.
#[derive(Debug)]
pub struct Tally {
    count: AtomicU64,
    counter: Counter,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self {
            count: AtomicU64::new(0),
            counter: metrics::counter!(name),
        }
    }

    /// Adds one; the count before.
    pub fn add(&self) -> u64 {
        self.counter.increment(1);
        self.count.fetch_add(1, Ordering::Relaxed)
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Counters of what the layer did.
#[derive(Debug)]
pub struct Stats {
    /// Calls answered from the cache.
    pub cache_hits: Tally,
    /// Remote verifications made (one per secret, however many calls waited).
    pub verifications: Tally,
    /// Calls refused without asking apitoken (malformed, cached refusal,
    /// expired in cache, throttled).
    pub local_refusals: Tally,
    /// Calls failed closed because apitoken could not answer.
    pub unavailable: Tally,
    /// Token events received.
    pub invalidations: Tally,
    /// Calls served from the cache under the outage policy.
    pub outage_hits: Tally,
    /// Times apitoken refused this service's own credential.
    pub credential_refusals: Tally,
}

impl Stats {
    /// Counters registered with the installed recorder.
    pub fn new() -> Self {
        Self {
            cache_hits: Tally::new("apitoken_interceptor_cache_hits_total"),
            verifications: Tally::new("apitoken_interceptor_verifications_total"),
            local_refusals: Tally::new("apitoken_interceptor_local_refusals_total"),
            unavailable: Tally::new("apitoken_interceptor_unavailable_total"),
            invalidations: Tally::new("apitoken_interceptor_invalidations_total"),
            outage_hits: Tally::new("apitoken_interceptor_outage_hits_total"),
            credential_refusals: Tally::new("apitoken_interceptor_credential_refusals_total"),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets the number of cached tokens.
pub(crate) fn cache_entries(entries: usize) {
    metrics::gauge!("apitoken_interceptor_cache_entries").set(entries as f64);
}

/// Sets whether the outage policy is serving calls.
pub(crate) fn outage_active(active: bool) {
    metrics::gauge!("apitoken_interceptor_outage_active").set(f64::from(u8::from(active)));
}

/// Sets whether `namespace`'s event stream is fresh.
pub(crate) fn stream_up(namespace: &str, up: bool) {
    metrics::gauge!("apitoken_interceptor_stream_up", "namespace" => namespace.to_owned())
        .set(f64::from(u8::from(up)));
}
