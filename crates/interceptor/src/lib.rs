//! Authenticate every call of a tonic service against apitoken.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use apitoken_interceptor::{ApiTokenAuth, Role};
//!
//! let auth = ApiTokenAuth::builder()
//!     .namespace("team-a", std::env::var("APITOKEN_WATCH_TOKEN")?)
//!     .require("/inventory.v1.InventoryService/DeleteItem", Role::Owner)
//!     .require("/inventory.v1.InventoryService/*", Role::Viewer)
//!     .connect("http://127.0.0.1:50051")
//!     .await?;
//! tonic::transport::Server::builder().layer(auth.layer());
//! # Ok(()) }
//! ```
//!
//! For each call the layer reads `authorization: Bearer`, refuses a
//! malformed token or bad checksum locally, answers known tokens from a
//! bounded in-memory cache (keyed by a keyed hash of the secret, never the
//! secret), verifies the others with `VerifyApiToken` (one call however many
//! requests arrive at once with the same token), checks namespace and role,
//! and hands the handler a [`Principal`] ([`RequestPrincipal::principal`]).
//!
//! The cache never outlives a revocation for long: a background task follows
//! `WatchApiTokenEvents` for each accepted namespace and drops affected
//! tokens; if that stream has been silent for longer than the staleness
//! bound, the cache is not trusted and every call is verified; if apitoken
//! cannot be reached and nothing fresh is cached, calls fail closed with
//! `UNAVAILABLE`. Uses answered from the cache are reported in batches with
//! `ReportApiTokenUsage`, so `use_count` and `last_use_time` stay true.
//!
//! Modules: [`config`] (builder and policy), [`auth`] (the handle and the
//! decision per call), [`cache`], [`verifier`], [`watcher`], [`usage`],
//! [`layer`].
//!
//! Architecture invariant: this crate depends on the wire types
//! (`apitoken-proto`) and the domain rules (`apitoken-domain`) only, never on
//! sea-orm, sqlx or the server.

pub mod auth;
pub mod cache;
pub mod config;
pub mod layer;
pub mod usage;
pub mod verifier;
pub mod watcher;

pub use apitoken_domain::{Principal, Role};
pub use auth::{ApiTokenAuth, StatsSnapshot};
pub use config::{AuthBuilder, BuildError, MethodPolicy, Requirement, Settings};
pub use layer::{ApiTokenLayer, ApiTokenService};

use tonic::Status;

/// Access to the caller of an authenticated request.
pub trait RequestPrincipal {
    /// The token that authenticated this call; `UNAUTHENTICATED` if the
    /// method is public (the layer put no principal in).
    fn principal(&self) -> Result<&Principal, Status>;
}

impl<T> RequestPrincipal for tonic::Request<T> {
    fn principal(&self) -> Result<&Principal, Status> {
        self.extensions().get::<Principal>().ok_or_else(|| {
            apitoken_domain::Error::Unauthenticated(apitoken_domain::AuthFailure::Missing).into()
        })
    }
}
