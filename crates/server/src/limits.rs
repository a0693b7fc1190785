//! Rate limits and quotas of one deployment: per-role defaults, per-token
//! overrides (stored on the token), namespace aggregates and token quotas
//! with per-namespace overrides, and the failed-authentication budget.

use std::collections::HashMap;

use apitoken_domain::{Role, ratelimit::Decision};
use apitoken_store::TokenRecord;
use tonic::metadata::MetadataMap;

/// Largest per-token override.
pub const MAX_TOKEN_RATE_LIMIT: u32 = 100_000;

/// Limits and quotas.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests a minute by role: viewer, editor, owner.
    pub role_rate_limits: [u32; 3],
    /// Aggregate requests a minute per namespace.
    pub namespace_rate_limit: u32,
    /// Per-namespace overrides of the aggregate.
    pub namespace_rate_limits: HashMap<String, u32>,
    /// Active tokens per namespace.
    pub token_quota: u32,
    /// Per-namespace overrides of the quota.
    pub token_quotas: HashMap<String, u32>,
    /// Failed authentications a minute per peer address before it is refused.
    pub failed_auth_per_minute: u32,
}

impl Default for Limits {
    /// The seeds' figures: viewer 120, editor 60, owner 30 a minute; 1,000 a
    /// minute per namespace; 50 active tokens per namespace.
    fn default() -> Self {
        Self {
            role_rate_limits: [120, 60, 30],
            namespace_rate_limit: 1000,
            namespace_rate_limits: HashMap::new(),
            token_quota: 50,
            token_quotas: HashMap::new(),
            failed_auth_per_minute: 20,
        }
    }
}

impl Limits {
    /// The default limit of `role`.
    pub fn role_limit(&self, role: Role) -> u32 {
        match role {
            Role::Viewer => self.role_rate_limits[0],
            Role::Editor => self.role_rate_limits[1],
            Role::Owner => self.role_rate_limits[2],
        }
    }

    /// The limit in force for a token.
    pub fn token_limit(&self, record: &TokenRecord) -> u32 {
        self.limit_for(record.role, record.rate_limit)
    }

    /// The limit in force for a token of `role` with its own `rate_limit`.
    pub fn limit_for(&self, role: Role, rate_limit: Option<u32>) -> u32 {
        rate_limit.unwrap_or_else(|| self.role_limit(role))
    }

    /// The aggregate limit of `namespace`.
    pub fn namespace_limit(&self, namespace: &str) -> u32 {
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

/// Adds `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`
/// (Unix seconds) to reply metadata.
pub fn add_rate_headers(metadata: &mut MetadataMap, decision: &Decision) {
    for (name, value) in decision.headers() {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    }
}
