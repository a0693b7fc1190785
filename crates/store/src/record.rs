//! Token rows as domain values, and the inputs of the store's operations.

use std::collections::BTreeMap;

use apitoken_domain::{Role, TokenState, event::EventKind, hash::SecretHash, name::TokenName};
use chrono::{DateTime, Utc};

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Internal row id; the keyset cursor of listings (newest is highest).
    pub id: i64,
    /// Public unique identifier.
    pub uid: String,
    /// The token's name.
    pub name: TokenName,
    /// Human-readable name.
    pub display_name: String,
    /// Free text.
    pub description: String,
    /// The role.
    pub role: Role,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Resource name of the creator, or `bootstrap`.
    pub creator: String,
    /// Expiry, if any.
    pub expire_time: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoke_time: Option<DateTime<Utc>>,
    /// Resource name of the revoker, if revoked.
    pub revoker: Option<String>,
    /// Hash of the current secret.
    pub secret_hash: SecretHash,
    /// Prefix and first characters of the current secret.
    pub secret_hint: String,
    /// Last authenticated use, to within the usage flush interval.
    pub last_use_time: Option<DateTime<Utc>>,
    /// Authenticated uses.
    pub use_count: i64,
    /// Incremented by every change; the source of the etag.
    pub version: i64,
    /// Last change.
    pub update_time: DateTime<Utc>,
    /// Per-token rate limit (requests a minute); `None`: the role's default.
    pub rate_limit: Option<u32>,
    /// Address of the caller of the last use.
    pub last_use_ip: Option<String>,
}

impl TokenRecord {
    /// The state at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> TokenState {
        TokenState::at(self.revoke_time, self.expire_time, now)
    }

    /// The etag: opaque to clients, changes with every change of the token.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// A token to insert. Validated by the caller.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The name (namespace and id).
    pub name: TokenName,
    /// Human-readable name.
    pub display_name: String,
    /// Free text.
    pub description: String,
    /// The role.
    pub role: Role,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Resource name of the creator, or `bootstrap`.
    pub creator: String,
    /// Expiry, if any.
    pub expire_time: Option<DateTime<Utc>>,
    /// Hash of the secret.
    pub secret_hash: SecretHash,
    /// Prefix and first characters of the secret.
    pub secret_hint: String,
    /// Per-token rate limit; `None`: the role's default.
    pub rate_limit: Option<u32>,
    /// Creation time.
    pub now: DateTime<Utc>,
}

/// Changes to apply to a token; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenChanges {
    /// New display name.
    pub display_name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New labels (replacing all).
    pub labels: Option<BTreeMap<String, String>>,
    /// New expiry (only ever earlier; checked by the caller).
    pub expire_time: Option<DateTime<Utc>>,
    /// New role (only ever lower; checked by the caller).
    pub role: Option<Role>,
}

impl TokenChanges {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == TokenChanges::default()
    }
}

/// A page of a namespace's tokens, newest first.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// The namespace.
    pub namespace: String,
    /// Conditions every token must meet.
    pub filter: apitoken_domain::filter::ListFilter,
    /// Include revoked tokens.
    pub include_revoked: bool,
    /// Only tokens older than this row id (the page token's cursor).
    pub before_id: Option<i64>,
    /// At most this many rows.
    pub limit: u64,
    /// "Now", for the derived expired state.
    pub now: DateTime<Utc>,
}

/// Uses of one token since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// Namespace of the token (reports never cross namespaces).
    pub namespace: String,
    /// Uid of the token.
    pub uid: String,
    /// Uses since the last flush.
    pub count: i64,
    /// Latest use.
    pub last_use_time: DateTime<Utc>,
    /// Caller address at the latest use, if known.
    pub last_use_ip: Option<String>,
}

/// A stored token event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event's sequence.
    pub sequence: i64,
    /// What happened.
    pub kind: EventKind,
    /// The token's name.
    pub name: TokenName,
    /// The token's uid.
    pub uid: String,
    /// When.
    pub event_time: DateTime<Utc>,
}
