//! Rate limits and quotas of one deployment: per-role defaults, per-token
//! limits (stored on the token, never above the deployment's maximum),
//! namespace aggregates (the operator's figure, which a namespace's owner
//! may lower, see [`crate::namespaces`]), token quotas with per-namespace
//! overrides, and the failed-authentication budget. Every limit is a count
//! per second, minute or hour, or unlimited, and means at most that many in
//! any window of that length ([`apitoken_domain::ratelimit`]).

use std::collections::HashMap;

use apitoken_domain::{
    Role,
    ratelimit::{Decision, RateLimit},
};
use tonic::metadata::MetadataMap;

/// Limits and quotas.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Default limit of a token by role: viewer, editor, owner.
    pub role_rate_limits: [RateLimit; 3],
    /// The most a token's own limit may be (`Unlimited`: no maximum, the
    /// namespace aggregate still binds).
    pub max_token_rate_limit: RateLimit,
    /// Aggregate limit of every namespace.
    pub namespace_rate_limit: RateLimit,
    /// Per-namespace aggregates set by the operator.
    pub namespace_rate_limits: HashMap<String, RateLimit>,
    /// Active tokens per namespace.
    pub token_quota: u32,
    /// Per-namespace overrides of the quota.
    pub token_quotas: HashMap<String, u32>,
    /// Failed authentications per address before it is refused
    /// (`Unlimited`: no throttle).
    pub failed_auth_limit: RateLimit,
}

impl Default for Limits {
    /// The seeds' figures: viewer 120, editor 60, owner 30 a minute; 1,000 a
    /// minute per namespace; 50 active tokens per namespace; 20 failed
    /// authentications a minute per address; no maximum for a token's own
    /// limit beyond its namespace's.
    fn default() -> Self {
        Self {
            role_rate_limits: [
                RateLimit::per_minute(120),
                RateLimit::per_minute(60),
                RateLimit::per_minute(30),
            ],
            max_token_rate_limit: RateLimit::Unlimited,
            namespace_rate_limit: RateLimit::per_minute(1000),
            namespace_rate_limits: HashMap::new(),
            token_quota: 50,
            token_quotas: HashMap::new(),
            failed_auth_limit: RateLimit::per_minute(20),
        }
    }
}

impl Limits {
    /// The default limit of `role`.
    pub fn role_limit(&self, role: Role) -> RateLimit {
        match role {
            Role::Viewer => self.role_rate_limits[0],
            Role::Editor => self.role_rate_limits[1],
            Role::Owner => self.role_rate_limits[2],
        }
    }

    /// The limit in force for a stored token.
    pub fn token_limit(&self, record: &apitoken_store::TokenRecord) -> RateLimit {
        self.limit_for(record.role, record.rate_limit)
    }

    /// The limit in force for a token of `role` with its own `rate_limit`.
    pub fn limit_for(&self, role: Role, rate_limit: Option<RateLimit>) -> RateLimit {
        rate_limit.unwrap_or_else(|| self.role_limit(role))
    }

    /// The operator's aggregate limit of `namespace` (the ceiling of what
    /// its owner may set).
    pub fn operator_namespace_limit(&self, namespace: &str) -> RateLimit {
        self.namespace_rate_limits
            .get(namespace)
            .copied()
            .unwrap_or(self.namespace_rate_limit)
    }

    /// The token quota of `namespace`.
    pub fn quota(&self, namespace: &str) -> u32 {
        self.token_quotas
            .get(namespace)
            .copied()
            .unwrap_or(self.token_quota)
    }
}

/// Adds the `x-ratelimit-*` headers of `decision` to reply metadata.
pub fn add_rate_headers(metadata: &mut MetadataMap, decision: &Decision) {
    for (name, value) in decision.headers() {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    }
}
