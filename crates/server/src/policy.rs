//! The lifecycle policy of a deployment, with per-namespace overrides:
//! whether tokens must expire, their longest and default lifetime, the
//! longest grace period of a regeneration, expiry warning lead times, the
//! optional inactivity rule, and retention of revoked/expired tokens and of
//! the audit log.

use std::{collections::HashMap, time::Duration};

pub use apitoken_domain::expiry::ExpiryPolicy;

/// The lifecycle policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The deployment's expiry rules.
    pub expiry: ExpiryPolicy,
    /// Per-namespace expiry rules (replacing the deployment's).
    pub namespace_expiry: HashMap<String, ExpiryPolicy>,
    /// The longest grace period for a previous secret.
    pub max_grace: Duration,
    /// Expiry warning lead times.
    pub warning_leads: Vec<Duration>,
    /// Revoke tokens unused for this long (off when `None`).
    pub revoke_unused_after: Option<Duration>,
    /// Purge revoked and expired tokens after this long.
    pub token_retention: Duration,
    /// Drop audit events older than this (and never while their token exists).
    pub audit_retention: Duration,
    /// Prune token events (the `WatchApiTokenEvents` log) older than this.
    pub event_retention: Duration,
    /// How often retention (purge, audit and event pruning) is applied.
    pub retention_interval: Duration,
}

const DAY: u64 = 86_400;

impl Default for Policy {
    fn default() -> Self {
        Self {
            expiry: ExpiryPolicy::default(),
            namespace_expiry: HashMap::new(),
            max_grace: Duration::from_secs(7 * DAY),
            warning_leads: vec![Duration::from_secs(14 * DAY), Duration::from_secs(3 * DAY)],
            revoke_unused_after: None,
            token_retention: Duration::from_secs(90 * DAY),
            audit_retention: Duration::from_secs(365 * DAY),
            event_retention: Duration::from_secs(7 * DAY),
            retention_interval: Duration::from_secs(600),
        }
    }
}

impl Policy {
    /// The expiry rules of `namespace`.
    pub fn expiry(&self, namespace: &str) -> ExpiryPolicy {
        self.namespace_expiry
            .get(namespace)
            .copied()
            .unwrap_or(self.expiry)
    }

    /// Warning lead times, longest first (level 1 is the longest).
    pub fn leads(&self) -> Vec<Duration> {
        let mut leads = self.warning_leads.clone();
        leads.sort_by(|a, b| b.cmp(a));
        leads.dedup();
        leads
    }
}

/// `90d`, `36h`: a duration in the largest whole unit, for messages.
pub fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds.is_multiple_of(DAY) {
        format!("{}d", seconds / DAY)
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules_replace_the_deployment_ones() {
        let mut policy = Policy::default();
        let strict = ExpiryPolicy {
            required: true,
            max_lifetime: Some(Duration::from_secs(90 * DAY)),
            default_lifetime: None,
        };
        policy.namespace_expiry.insert("payments".into(), strict);
        assert_eq!(policy.expiry("payments"), strict);
        assert_eq!(policy.expiry("sandbox"), ExpiryPolicy::default());
        assert_eq!(
            policy.leads(),
            [Duration::from_secs(14 * DAY), Duration::from_secs(3 * DAY)]
        );
        assert_eq!(human(Duration::from_secs(90 * DAY)), "90d");
        assert_eq!(human(Duration::from_secs(90)), "90s");
    }
}
