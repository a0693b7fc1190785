//! The lifecycle sweeper: applies the [`Policy`] over time, every sweep
//! interval, on every replica (each step claims its rows, so nothing is done
//! twice): expiry warnings once per token per lead time, the optional
//! inactivity rule, and the purge of revoked and expired tokens (and of
//! audit events older than their retention whose token is gone). Each step
//! writes its event and audit entry in the same transaction as its change.

use std::{sync::Arc, time::Duration};

use apitoken_domain::{Error, audit::Action, clock::SharedClock};
use apitoken_store::TokenStore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    audit::{Actor, RequestContext},
    events::EventHub,
    policy::{Policy, human},
};

/// Most rows one step handles per sweep.
const BATCH: u64 = 500;

/// The actor of expiry warnings.
pub const WARNING_RULE: &str = "rule:expiry-warning";
/// The actor (and revoker) of the inactivity rule.
pub const INACTIVITY_RULE: &str = "rule:inactivity";
/// The actor of purges.
pub const RETENTION_RULE: &str = "rule:retention";

/// Applies the policy.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    store: TokenStore,
    clock: SharedClock,
    policy: Arc<Policy>,
    events: Arc<EventHub>,
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Lifecycle {
    /// A sweeper over `store`.
    pub fn new(
        store: TokenStore,
        clock: SharedClock,
        policy: Arc<Policy>,
        events: Arc<EventHub>,
    ) -> Self {
        Self {
            store,
            clock,
            policy,
            events,
        }
    }

    /// One sweep of the time-driven rules: expiry warnings and inactivity.
    pub async fn sweep(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let context = RequestContext::rule();
        let mut changed = false;
        for (index, lead) in self.policy.leads().into_iter().enumerate() {
            let level = i16::try_from(index + 1).unwrap_or(i16::MAX);
            let warned = self
                .store
                .sweep_expiry_warnings(now, level, chrono_duration(lead), BATCH, |record| {
                    let mut entry = context.entry(
                        record.name.namespace().as_str(),
                        Action::ExpiryWarning,
                        Actor::Named(WARNING_RULE),
                        record.name.to_string(),
                        now,
                    );
                    entry.resource_uid = Some(record.uid.clone());
                    entry.details.insert("lead_time".into(), human(lead));
                    if let Some(expiry) = record.expire_time {
                        entry
                            .details
                            .insert("expire_time".into(), expiry.to_rfc3339());
                    }
                    entry
                })
                .await?;
            for record in &warned {
                info!(token = %record.name, lead = %human(lead), "expiry warning");
            }
            changed |= !warned.is_empty();
        }
        if let Some(period) = self.policy.revoke_unused_after {
            for record in self
                .store
                .inactive_since(now - chrono_duration(period), now, BATCH)
                .await?
            {
                let mut entry = context.entry(
                    record.name.namespace().as_str(),
                    Action::Revoke,
                    Actor::Named(INACTIVITY_RULE),
                    record.name.to_string(),
                    now,
                );
                entry.details.insert("rule".into(), "inactivity".into());
                entry.details.insert("unused_for".into(), human(period));
                self.store
                    .revoke(&record.name, INACTIVITY_RULE, now, entry)
                    .await?;
                info!(token = %record.name, unused_for = %human(period), "revoked by the inactivity rule");
                changed = true;
            }
        }
        if changed {
            self.events.appended();
        }
        Ok(())
    }

    /// The retention steps: purge revoked and expired tokens, drop old
    /// audit events, prune the event log. They scan by time, so they run on
    /// their own, slower interval.
    pub async fn sweep_retention(&self) -> Result<(), Error> {
        // The planner's statistics follow the table's growth (SQLite).
        if let Err(error) = self.store.optimize().await {
            warn!(error = %error, "could not refresh the planner's statistics");
        }
        let now = self.clock.now();
        let context = RequestContext::rule();
        let purged = self
            .store
            .purge(
                now,
                now - chrono_duration(self.policy.token_retention),
                now - chrono_duration(self.policy.audit_retention),
                BATCH,
                |record| {
                    let mut entry = context.entry(
                        record.name.namespace().as_str(),
                        Action::Purge,
                        Actor::Named(RETENTION_RULE),
                        record.name.to_string(),
                        now,
                    );
                    entry.resource_uid = Some(record.uid.clone());
                    entry
                        .details
                        .insert("retention".into(), human(self.policy.token_retention));
                    entry
                },
            )
            .await?;
        for record in &purged {
            info!(token = %record.name, "purged after retention");
        }
        let pruned = self
            .store
            .prune_events(now - chrono_duration(self.policy.event_retention))
            .await?;
        if pruned > 0 {
            info!(through = pruned, "token events pruned after retention");
        }
        Ok(())
    }

    /// Sweeps every `interval`, and applies retention every
    /// `policy.retention_interval`, until `stopping`.
    pub fn spawn(
        self,
        interval: Duration,
        mut stopping: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut sweeps = tokio::time::interval(interval);
            sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut retention = tokio::time::interval(self.policy.retention_interval);
            retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let result = tokio::select! {
                    _ = sweeps.tick() => self.sweep().await,
                    _ = retention.tick() => self.sweep_retention().await,
                    _ = stopping.changed() => return,
                };
                if let Err(error) = result {
                    warn!(error = %error, "lifecycle sweep failed; will retry");
                }
            }
        })
    }
}
