//! Uses answered from the cache, counted in memory and reported per
//! namespace every `usage_report_interval` with `ReportApiTokenUsage` (and
//! once more at shutdown). A failed report is kept for the next one.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use apitoken_domain::Principal;
use apitoken_proto::v1::{ApiTokenUsage, ReportApiTokenUsageRequest};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::warn;

use crate::auth::{Shared, authorized};

/// Uses per token uid: how many, the latest, and its caller's address.
type Uses = HashMap<String, (i64, DateTime<Utc>, Option<IpAddr>)>;

/// Uses per namespace and token since the last report.
#[derive(Debug, Default)]
pub struct UsageBatch {
    pending: Mutex<HashMap<String, Uses>>,
}

impl UsageBatch {
    /// Counts one use of `principal` at `at` by `ip`. Allocates only for a
    /// token's first use since the last report.
    pub fn record(&self, principal: &Principal, at: DateTime<Utc>, ip: Option<IpAddr>) {
        self.add(principal.namespace(), &principal.uid, 1, at, ip);
    }

    fn add(&self, namespace: &str, uid: &str, count: i64, at: DateTime<Utc>, ip: Option<IpAddr>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !pending.contains_key(namespace) {
            pending.insert(namespace.to_owned(), Uses::new());
        }
        let Some(uses) = pending.get_mut(namespace) else {
            return;
        };
        if !uses.contains_key(uid) {
            uses.insert(uid.to_owned(), (0, at, None));
        }
        let Some(entry) = uses.get_mut(uid) else {
            return;
        };
        entry.0 = entry.0.saturating_add(count);
        if at >= entry.1 {
            entry.1 = at;
            if ip.is_some() {
                entry.2 = ip;
            }
        }
    }

    fn take(&self, namespace: &str) -> Uses {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace)
            .unwrap_or_default()
    }
}

impl Shared {
    /// Reports every namespace's pending uses.
    pub(crate) async fn report_usage(&self) {
        for watch in &self.namespaces {
            let pending = self.usage.take(watch.namespace());
            if pending.is_empty() {
                continue;
            }
            let usages = pending
                .iter()
                .map(|(uid, (count, last, ip))| ApiTokenUsage {
                    uid: uid.clone(),
                    use_count: *count,
                    last_use_time: Some(apitoken_proto::prost_types::Timestamp {
                        seconds: last.timestamp(),
                        nanos: i32::try_from(last.timestamp_subsec_nanos()).unwrap_or(0),
                    }),
                    last_use_ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                })
                .collect();
            let mut request = authorized(
                watch.credential(),
                ReportApiTokenUsageRequest {
                    parent: format!("namespaces/{}", watch.namespace()),
                    usages,
                },
            );
            request.set_timeout(self.settings.call_timeout);
            let mut client = self.verifier.client();
            let sent = tokio::time::timeout(
                self.settings.call_timeout,
                client.report_api_token_usage(request),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                warn!(
                    namespace = watch.namespace(),
                    tokens = pending.len(),
                    "usage report failed; will retry"
                );
                for (uid, (count, last, ip)) in pending {
                    self.usage.add(watch.namespace(), &uid, count, last, ip);
                }
            }
        }
    }
}

/// Reports every interval until `stop`, then once more.
pub(crate) async fn report_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(shared.settings.usage_report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => shared.report_usage().await,
            _ = stop.changed() => break,
        }
    }
    shared.report_usage().await;
}
