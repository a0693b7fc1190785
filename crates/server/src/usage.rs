//! Batched usage figures: every authentication is counted in memory and the
//! counts are written at most once per token per flush interval (and at
//! graceful shutdown), so authentication never waits for a database write.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use apitoken_store::{TokenStore, UsageReport};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::warn;

/// A token: namespace and uid.
type TokenKey = (String, String);
/// Uses since the last flush, the latest of them, and its caller's address.
type Pending = (i64, DateTime<Utc>, Option<String>);

/// Counts uses and flushes them to the store.
#[derive(Debug)]
pub struct UsageRecorder {
    store: TokenStore,
    pending: Mutex<HashMap<TokenKey, Pending>>,
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
    pub fn record(&self, namespace: &str, uid: &str, at: DateTime<Utc>, ip: Option<String>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        merge(
            &mut pending,
            (namespace.to_owned(), uid.to_owned()),
            (1, at, ip),
        );
    }

    /// Writes everything counted so far. On failure the counts are kept for
    /// the next flush: nothing is lost.
    pub async fn flush(&self) {
        let batch: Vec<UsageReport> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending
                .drain()
                .map(
                    |((namespace, uid), (count, last_use_time, last_use_ip))| UsageReport {
                        namespace,
                        uid,
                        count,
                        last_use_time,
                        last_use_ip,
                    },
                )
                .collect()
        };
        if let Err(error) = self.store.record_usage(&batch).await {
            warn!(error = %error, tokens = batch.len(), "usage flush failed; will retry");
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for report in batch {
                merge(
                    &mut pending,
                    (report.namespace, report.uid),
                    (report.count, report.last_use_time, report.last_use_ip),
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

/// Adds uses to a token's pending figures, keeping the latest time and the
/// address seen then.
fn merge(pending: &mut HashMap<TokenKey, Pending>, key: TokenKey, (count, at, ip): Pending) {
    let entry = pending.entry(key).or_insert((0, at, None));
    entry.0 = entry.0.saturating_add(count);
    if at >= entry.1 {
        entry.1 = at;
        if ip.is_some() {
            entry.2 = ip;
        }
    }
}
