//! Namespaces' own aggregate limits, as data: an owner may set one
//! (`UpdateNamespaceLimits`) at most as high as the deployment's figure for
//! the namespace (`--namespace-rate-limit`, `--namespace-rate-limits`),
//! which stays the limit in force for namespaces that set none.
//!
//! Each replica keeps every namespace's own limit in memory: a change made
//! through it applies at once; one made through another replica is read
//! within [`REFRESH`] (the table holds one small row per namespace that set
//! a limit). Interceptors learn a namespace's limit from each
//! `VerifyApiToken` answer and keep it with the cached token.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use apitoken_domain::ratelimit::RateLimit;
use apitoken_store::TokenStore;
use tokio::sync::watch;
use tracing::warn;

/// How often every namespace's own limit is read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The own limits of every namespace that set one.
#[derive(Debug)]
pub struct NamespaceLimits {
    store: TokenStore,
    own: RwLock<HashMap<String, RateLimit>>,
}

impl NamespaceLimits {
    /// None known yet (see [`NamespaceLimits::load`]).
    pub fn new(store: TokenStore) -> Self {
        Self {
            store,
            own: RwLock::new(HashMap::new()),
        }
    }

    /// Reads them all.
    pub async fn load(&self) -> Result<(), apitoken_domain::Error> {
        let rows = self.store.namespace_limits().await?;
        let own = rows
            .into_iter()
            .map(|row| (row.namespace, row.rate_limit))
            .collect();
        *self.own.write().unwrap_or_else(PoisonError::into_inner) = own;
        Ok(())
    }

    /// The namespace's own limit, if it set one.
    pub fn own(&self, namespace: &str) -> Option<RateLimit> {
        self.own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .copied()
    }

    /// Applies a change made through this replica (after its commit).
    pub fn set(&self, namespace: &str, limit: Option<RateLimit>) {
        let mut own = self.own.write().unwrap_or_else(PoisonError::into_inner);
        match limit {
            Some(limit) => own.insert(namespace.to_owned(), limit),
            None => own.remove(namespace),
        };
    }

    /// The limit in force: the namespace's own if it is within the
    /// deployment's `ceiling` (an operator may have lowered it since), else
    /// the ceiling.
    pub fn in_force(&self, namespace: &str, ceiling: RateLimit) -> RateLimit {
        self.own(namespace)
            .filter(|own| own.within(ceiling))
            .unwrap_or(ceiling)
    }

    /// Reads them again every [`REFRESH`] until `stopping`.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        mut stopping: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let limits = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REFRESH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopping.changed() => return,
                }
                match limits.load().await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        warn!(error = %error, "cannot read namespace limits: keeping the ones known");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}
