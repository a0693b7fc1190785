//! Token rows as domain values, and the inputs of the store's operations.

use std::collections::BTreeMap;

use apitoken_domain::{
    Role, TokenState,
    event::EventKind,
    hash::SecretHash,
    name::TokenName,
    ratelimit::{Limit, RateLimit, Window},
};
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
    /// The token's own rate limit; `None`: the role's default.
    pub rate_limit: Option<RateLimit>,
    /// Address of the caller of the last use.
    pub last_use_ip: Option<String>,
    /// Hash of the previous secret, during a grace period.
    pub previous_secret_hash: Option<SecretHash>,
    /// When the previous secret stops working.
    pub previous_secret_expire_time: Option<DateTime<Utc>>,
    /// End the grace period on first use of the current secret.
    pub end_grace_on_first_use: bool,
    /// How many expiry warning lead times were announced.
    pub expiry_warning_level: i16,
    /// The token belongs to an interceptor or proxy: it may report usage
    /// and name the address of the calls it verifies.
    pub interceptor: bool,
}

impl TokenRecord {
    /// The previous secret's grace end, if a grace period is running at `now`.
    pub fn grace_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.previous_secret_expire_time.filter(|until| {
            *until > now && self.previous_secret_hash.is_some() && self.revoke_time.is_none()
        })
    }

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
    /// The token's own rate limit; `None`: the role's default.
    pub rate_limit: Option<RateLimit>,
    /// An interceptor's token.
    pub interceptor: bool,
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
    /// New own rate limit (`Some(None)`: back to the role's default).
    pub rate_limit: Option<Option<RateLimit>>,
}

/// The columns `(rate_limit, rate_limit_window)` of a token's own limit:
/// NULL for the role's default, 0 for unlimited, else the count and the
/// window in seconds.
pub fn encode_rate_limit(limit: Option<RateLimit>) -> (Option<i32>, Option<i32>) {
    match limit {
        None => (None, None),
        Some(RateLimit::Unlimited) => (Some(0), None),
        Some(RateLimit::Limited(limit)) => (
            Some(i32::try_from(limit.count).unwrap_or(i32::MAX)),
            Some(i32::try_from(limit.window.seconds()).unwrap_or(60)),
        ),
    }
}

/// The limit stored as `(rate_limit, rate_limit_window)`; a window that is
/// missing (rows from before the column) is a minute; a negative count or
/// an unknown window reads as the role's default.
pub fn decode_rate_limit(count: Option<i32>, window: Option<i32>) -> Option<RateLimit> {
    let count = u32::try_from(count?).ok()?;
    if count == 0 {
        return Some(RateLimit::Unlimited);
    }
    let window = match window {
        None => Window::Minute,
        Some(seconds) => Window::from_seconds(u32::try_from(seconds).ok()?)?,
    };
    Some(RateLimit::Limited(Limit { count, window }))
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

/// Which secret of a token a lookup matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMatch {
    /// The current secret.
    Current,
    /// The previous secret (a grace period may be running).
    Previous,
}

/// A grace period for the previous secret at regeneration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// When the previous secret stops working.
    pub until: DateTime<Utc>,
    /// Whether the first use of the new secret ends it.
    pub end_on_first_use: bool,
}

/// An audit event to append. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Namespace the event belongs to.
    pub namespace: String,
    /// When.
    pub time: DateTime<Utc>,
    /// What.
    pub action: apitoken_domain::audit::Action,
    /// Who: a token's name, `bootstrap` or `rule:<name>`.
    pub actor: String,
    /// The acting token's uid.
    pub actor_uid: Option<String>,
    /// The resource acted on.
    pub resource: String,
    /// The uid of the token acted on (filled in by the store on create).
    pub resource_uid: Option<String>,
    /// Caller address.
    pub peer_address: Option<String>,
    /// Caller user agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: String,
    /// W3C trace id.
    pub trace_id: Option<String>,
    /// Small facts.
    pub details: BTreeMap<String, String>,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Row id; the keyset cursor (newest is highest).
    pub id: i64,
    /// The event.
    pub entry: AuditEntry,
}
