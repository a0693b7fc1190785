//! Persistence of apitoken on SQLite (the embedded default) or PostgreSQL
//! (production, several replicas), through sea-orm.
//!
//! - [`entity`], [`event_entity`], [`audit_entity`]: the sea-orm entities of
//!   `api_tokens`, `api_token_events` and `audit_events`; [`watermark_entity`]
//!   records how far the event log was pruned; [`namespace_limit_entity`]
//!   holds namespaces' own aggregate limits.
//! - [`record`]: the rows as domain values ([`TokenRecord`]) and what callers
//!   hand in ([`NewToken`], [`TokenChanges`], [`ListQuery`]).
//! - [`store`]: [`TokenStore`], every query the service makes. Each write is
//!   a single conditional statement or one transaction: nothing is ever left
//!   half-written.
//!
//! Architecture invariant: only the hash of a secret reaches this crate.

pub mod audit_entity;
pub mod entity;
pub mod event_entity;
pub mod namespace_limit_entity;
pub mod record;
pub mod store;
pub mod watermark_entity;

pub use record::{
    AuditEntry, AuditRecord, EventRecord, Grace, ListQuery, NewToken, SecretMatch, TokenChanges,
    TokenRecord, UsageReport,
};
pub use store::{
    Change, ChangeObserver, DB_ERRORS, EVENT_CHANNEL, EVENT_LOCK_KEY, PoolStats, StoreOptions,
    TokenStore, auth_rows::AuthRow, events::EventListener,
};
