//! Batched usage figures: every authentication is counted in memory and the
//! counts are written at most once per token per flush interval (and at
//! graceful shutdown), so authentication never waits for a database write.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use apitoken_store::{TokenStore, UsageReport};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::warn;

/// One token's uses since the last flush: no allocation per use (the
/// namespace is the index's interned name, the address a plain `IpAddr`).
#[derive(Debug, Clone)]
struct Pending {
    namespace: Arc<str>,
    count: i64,
    last_use_time: DateTime<Utc>,
    last_use_ip: Option<IpAddr>,
}

impl Pending {
    /// Adds `count` uses, keeping the latest time and the address seen then.
    fn merge(&mut self, count: i64, at: DateTime<Utc>, ip: Option<IpAddr>) {
        self.count = self.count.saturating_add(count);
        if at >= self.last_use_time {
            self.last_use_time = at;
            if ip.is_some() {
                self.last_use_ip = ip;
            }
        }
    }
}

/// Counts uses and flushes them to the store.
#[derive(Debug)]
pub struct UsageRecorder {
    store: TokenStore,
    /// By token uid. At most one entry a token: bounded by the tokens.
    pending: Mutex<HashMap<u128, Pending>>,
}

impl UsageRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: TokenStore) -> Self {
        Self {
            store,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one use of the token `uid` of `namespace` at `at` by `ip`.
    pub fn record(&self, namespace: &Arc<str>, uid: u128, at: DateTime<Utc>, ip: Option<IpAddr>) {
        let mut pending = self.lock();
        merge(&mut pending, uid, namespace, 1, at, ip);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes everything counted so far. On failure the counts are kept for
    /// the next flush: nothing is lost.
    pub async fn flush(&self) {
        // A fresh map: a burst's capacity is given back, not kept.
        let drained = std::mem::take(&mut *self.lock());
        if drained.is_empty() {
            return;
        }
        let batch: Vec<UsageReport> = drained
            .iter()
            .map(|(uid, pending)| UsageReport {
                namespace: pending.namespace.to_string(),
                uid: crate::index::uid_string(*uid),
                count: pending.count,
                last_use_time: pending.last_use_time,
                last_use_ip: pending.last_use_ip.map(|ip| ip.to_string()),
            })
            .collect();
        if let Err(error) = self.store.record_usage(&batch).await {
            warn!(error = %error, tokens = batch.len(), "usage flush failed; will retry");
            let mut pending = self.lock();
            for (uid, kept) in drained {
                merge(
                    &mut pending,
                    uid,
                    &kept.namespace,
                    kept.count,
                    kept.last_use_time,
                    kept.last_use_ip,
                );
            }
        }
    }

    /// Flushes every `interval` until `stop` turns true, then once more.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let recorder = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => recorder.flush().await,
                    _ = stop.changed() => break,
                }
            }
            recorder.flush().await;
        })
    }
}

/// Adds `count` uses of `uid` to its pending figures.
fn merge(
    pending: &mut HashMap<u128, Pending>,
    uid: u128,
    namespace: &Arc<str>,
    count: i64,
    at: DateTime<Utc>,
    ip: Option<IpAddr>,
) {
    match pending.get_mut(&uid) {
        Some(entry) => entry.merge(count, at, ip),
        None => {
            pending.insert(
                uid,
                Pending {
                    namespace: Arc::clone(namespace),
                    count,
                    last_use_time: at,
                    last_use_ip: ip,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_merge_saturating_keeping_the_latest_address() {
        let namespace: Arc<str> = Arc::from("team-a");
        let mut pending = HashMap::new();
        let early = DateTime::from_timestamp(1_000, 0).expect("time");
        let late = DateTime::from_timestamp(2_000, 0).expect("time");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        merge(&mut pending, 7, &namespace, 1, late, Some(a));
        merge(&mut pending, 7, &namespace, i64::MAX, early, Some(b));
        merge(&mut pending, 7, &namespace, 1, late, None);
        let entry = &pending[&7];
        assert_eq!(entry.count, i64::MAX);
        assert_eq!(entry.last_use_time, late);
        assert_eq!(entry.last_use_ip, Some(a), "an earlier use does not win");
        assert_eq!(pending.len(), 1);
    }
}
