//! Gauges read when Prometheus scrapes: what the index, the event hub and
//! the database pool hold at that moment, and whether rate limits are
//! shared through Redis. Nothing here runs per call.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use apitoken_domain::clock::SharedClock;
use apitoken_store::TokenStore;

use super::names;
use crate::{events::EventHub, index::TokenIndex};

/// The `namespace` label of the namespaces past the cap.
pub const OTHER_NAMESPACES: &str = "_other";

/// Reads the gauges of one server.
#[derive(Debug)]
pub struct Collector {
    index: Arc<TokenIndex>,
    events: Arc<EventHub>,
    store: TokenStore,
    clock: SharedClock,
    limits: Arc<apitoken_ratelimit::BackendState>,
    max_namespaces: usize,
    /// Namespaces given a series at the last scrape (set to 0 when they
    /// drop out, so a stale figure never lingers).
    shown: Mutex<HashSet<Arc<str>>>,
}

impl Collector {
    /// A collector; at most `max_namespaces` namespaces get their own
    /// `apitoken_active_tokens` series (the largest), the rest are summed
    /// under [`OTHER_NAMESPACES`].
    pub fn new(
        index: Arc<TokenIndex>,
        events: Arc<EventHub>,
        store: TokenStore,
        clock: SharedClock,
        limits: Arc<apitoken_ratelimit::BackendState>,
        max_namespaces: usize,
    ) -> Self {
        Self {
            index,
            events,
            store,
            clock,
            limits,
            max_namespaces,
            shown: Mutex::default(),
        }
    }

    /// Sets every scrape-time gauge.
    pub fn collect(&self) {
        let stats = self.index.stats();
        metrics::gauge!(names::INDEX_TOKENS).set(stats.tokens as f64);
        metrics::gauge!(names::RECORD_CACHE_ENTRIES).set(stats.records as f64);
        metrics::gauge!(names::INDEX_CURSOR).set(stats.cursor as f64);
        metrics::gauge!(names::INDEX_LISTENING).set(f64::from(u8::from(stats.listening)));
        metrics::gauge!(names::EVENT_WATCHERS).set(self.events.open_streams() as f64);
        let pool = self.store.pool_stats();
        let busy = pool.open.saturating_sub(pool.idle);
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "busy").set(f64::from(busy));
        metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
        metrics::gauge!(names::DB_POOL_MAX).set(f64::from(pool.max));
        metrics::gauge!(names::REDIS_CONFIGURED).set(f64::from(u8::from(self.limits.configured())));
        metrics::gauge!(names::REDIS_FALLBACK).set(f64::from(u8::from(self.limits.fallback())));
        self.active_tokens();
    }

    fn active_tokens(&self) {
        let mut counts: Vec<(Arc<str>, u64)> = self
            .index
            .active_by_namespace(self.clock.now())
            .into_iter()
            .collect();
        // Largest first; ties by name, so the cut is stable between scrapes.
        counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest: u64 = counts
            .iter()
            .skip(self.max_namespaces)
            .map(|(_, count)| count)
            .sum();
        counts.truncate(self.max_namespaces);
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let now: HashSet<Arc<str>> = counts.iter().map(|(ns, _)| Arc::clone(ns)).collect();
        for gone in shown.difference(&now) {
            metrics::gauge!(names::ACTIVE_TOKENS, "namespace" => gone.to_string()).set(0.0);
        }
        for (namespace, count) in &counts {
            metrics::gauge!(names::ACTIVE_TOKENS, "namespace" => namespace.to_string())
                .set(*count as f64);
        }
        metrics::gauge!(names::ACTIVE_TOKENS, "namespace" => OTHER_NAMESPACES).set(rest as f64);
        *shown = now;
    }
}
