//! The apitoken gRPC server.
//!
//! - [`config`]: command line and environment (`serve`, `migrate`, `bootstrap`).
//! - [`app`]: wiring: store, health, reflection, graceful shutdown.
//! - [`service`]: the `ApiTokenService` handlers.
//! - [`auth`]: bearer-token authentication of callers, rate limits and
//!   failed-authentication throttling.
//! - [`limits`]: rate limits and quotas of the deployment.
//! - [`convert`]: domain values to and from wire types.
//! - [`usage`]: batched `last_use_time` / `use_count` writes.
//! - [`events`]: the token event stream and the expiry sweeper.
//! - [`ext_authz`]: Envoy's external authorization (`Check`) by the
//!   access policy file.
//! - [`health`]: the health checks (database, schema, shutdown).
//! - [`index`]: verification served from memory, kept exact by the event
//!   log (and `LISTEN/NOTIFY` on PostgreSQL).
//! - [`metrics`]: per-method request counts.
//! - [`peer`]: where a call comes from (trusted proxies, `x-forwarded-for`).
//! - [`audit`]: audit entries of requests.
//! - [`policy`]: expiry policy, grace, warnings, inactivity and retention.
//! - [`lifecycle`]: the sweeper applying that policy over time.
//! - [`bootstrap`]: the first owner token, made straight in the database.
//! - [`telemetry`]: logging setup.
//! - [`transport`]: the connections: accept loop, TCP_NODELAY, connection
//!   cap, handshake and idle timeouts, HTTP/2 limits, plaintext policy.
//! - [`tls`]: TLS and mutual TLS from PEM files, reloaded without restart.
//! - [`web`]: the web console's listener (`--web-listen`, `apitoken-web`).
//!
//! Errors are `apitoken_domain::Error` throughout and become `tonic::Status`
//! only through `apitoken_domain::status`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod convert;
pub mod events;
pub mod ext_authz;
pub mod health;
pub mod index;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod namespaces;
pub use apitoken_domain::peer;
pub mod policy;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod usage;
pub mod web;

pub use app::{App, AppConfig};
