//! Authenticate every call of a tonic service against apitoken.
//!
//! A complete program (`cargo test --doc -p apitoken-interceptor` runs it;
//! the hidden lines start a real apitoken server in-process and make the two
//! tokens it needs):
//!
//! ```
//! # use apitoken_interceptor::Role;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::sync::Arc;
//! # use apitoken_server::{App, AppConfig, bootstrap::{BootstrapRequest, bootstrap_token}};
//! # let dir = tempfile::tempdir()?;
//! # let config = AppConfig::new(format!("sqlite://{}", dir.path().join("apitoken.db").display()));
//! # let clock: apitoken_domain::clock::SharedClock = Arc::new(apitoken_domain::clock::SystemClock);
//! # let app = App::build(config, Arc::clone(&clock)).await?;
//! # let token = |id: &str, role, interceptor| BootstrapRequest {
//! #     namespace: "team-a".into(), token_id: id.into(), role, ttl: None, interceptor,
//! # };
//! # let (_, service_token) = bootstrap_token(app.store(), app.format(), app.keys(), &clock,
//! #     &token("inventory-svc", Role::Viewer, true)).await?;
//! # let (_, caller_token) = bootstrap_token(app.store(), app.format(), app.keys(), &clock,
//! #     &token("ci-deploy", Role::Editor, false)).await?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let apitoken_url = format!("http://{}", listener.local_addr()?);
//! # tokio::spawn(app.serve(listener, std::future::pending()));
//! # let service_token = service_token.expose().to_owned();
//! # let caller_token = caller_token.expose().to_owned();
//! use apitoken_interceptor::{ApiTokenAuth, RequestPrincipal};
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//!
//! // This service accepts tokens of namespace team-a. It follows apitoken's
//! // event stream with its own *interceptor token* (`"interceptor": true`
//! // on create, or `apitoken-server bootstrap --interceptor`).
//! let auth = ApiTokenAuth::builder()
//!     .namespace("team-a", service_token)
//!     // Health is public by default; here it needs a viewer.
//!     .require("/grpc.health.v1.Health/*", Role::Viewer)
//!     .connect(apitoken_url)
//!     .await?;
//!
//! // Serve a gRPC service behind the layer.
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .layer(auth.layer())
//!         .add_service(health)
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//!
//! // Without a token: UNAUTHENTICATED, decided by the layer alone.
//! let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
//!     .connect()
//!     .await?;
//! let mut client = HealthClient::new(channel);
//! let refused = client.check(HealthCheckRequest::default()).await.unwrap_err();
//! assert_eq!(refused.code(), tonic::Code::Unauthenticated);
//!
//! // With one: verified once with apitoken, then answered from the cache.
//! let mut request = tonic::Request::new(HealthCheckRequest::default());
//! request
//!     .metadata_mut()
//!     .insert("authorization", format!("Bearer {caller_token}").parse()?);
//! client.check(request).await?;
//!
//! // In a handler: who is calling, and may they touch what they named?
//! fn handler(request: &tonic::Request<()>) -> Result<(), tonic::Status> {
//!     let caller = request.principal()?; // name, uid, role, labels, display name
//!     caller.authorize("team-a", Role::Editor)?; // PERMISSION_DENIED otherwise
//!     Ok(())
//! }
//! # let _ = handler;
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
//! Everything a user needs is here at the root: [`ApiTokenAuth`] and its
//! [`AuthBuilder`], [`Settings`], [`RequestPrincipal`], [`Principal`],
//! [`Role`], [`TokenName`], and the [`Error`] (with [`AuthFailure`] and
//! [`DenyReason`]) that becomes the caller's `tonic::Status`.
//!
//! **Outages.** By default the layer fails closed: once apitoken's event
//! stream has been silent past the staleness bound, cached tokens are not
//! trusted. [`Settings::outage_grace`] opts in to serving tokens already
//! verified for a while longer (counted and logged while it happens).
//!
//! Modules: [`config`] (builder and policy), [`auth`] (the handle and the
//! decision per call), [`cache`], [`verifier`], [`watcher`], [`usage`],
//! [`layer`], [`metrics`] (what it counts, through the `metrics` facade),
//! [`trace`] (W3C trace context: its span is the parent of its call to
//! apitoken).
//!
//! Architecture invariant: this crate depends on the wire types
//! (`apitoken-proto`) and the domain rules (`apitoken-domain`) only, never on
//! sea-orm, sqlx or the server.

pub mod auth;
pub mod cache;
pub mod config;
pub mod layer;
pub mod metrics;
pub mod trace;
pub mod usage;
pub mod verifier;
pub mod watcher;

pub use apitoken_domain::{
    AuthFailure, DenyReason, Error, Principal, Role,
    name::{Namespace, TokenName},
};
pub use apitoken_ratelimit::RedisConfig;
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
        self.extensions()
            .get::<std::sync::Arc<Principal>>()
            .map(|principal| &**principal)
            .ok_or_else(|| Error::Unauthenticated(AuthFailure::Missing).into())
    }
}
