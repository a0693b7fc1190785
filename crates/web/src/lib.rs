//! The web console of apitoken: "Settings > API tokens" for namespace
//! owners, served by `apitoken-server` on a listener of its own.
//!
//! Pages are rendered on the server (askama templates, escaped
//! automatically) and work without JavaScript; one small embedded script
//! adds the copy button of a new secret. Every page calls the same
//! `ApiTokenService` implementation as the gRPC API, in-process, with the
//! signed-in token as bearer token ([`api`]), so authentication,
//! authorization, validation, rate limits and audit are the API's own.
//!
//! - [`session`]: server-side sessions (random 256-bit ids, idle and
//!   absolute expiry, bounded), CSRF tokens.
//! - [`api`]: the `tonic::Request` of a web request; API errors in words.
//! - [`reply`]: request context, cookies, form fields, responses and the
//!   security headers of every response.
//! - [`views`]: the templates and what they show.
//! - [`pages`]: the handlers.
//! - [`serve`]: one HTTP/1.1 or HTTP/2 connection.

pub mod api;
pub mod pages;
pub mod reply;
pub mod serve;
pub mod session;
pub mod views;

use std::{sync::Arc, time::Duration};

use apitoken_domain::{audit::ConsoleSession, clock::SharedClock, expiry::ExpiryPolicy};
use apitoken_proto::v1::api_token_service_server::ApiTokenService;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

pub use serve::{Connection, serve_connection};
pub use session::{SessionConfig, SessionStore};

/// Largest request body accepted (a form is far smaller).
pub const MAX_BODY: usize = 32 * 1024;

/// Settings of the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebConfig {
    /// The console is served over TLS: cookies get `Secure`.
    pub tls: bool,
    /// Session limits.
    pub sessions: SessionConfig,
}

/// Told of every answered web request (the server counts them in its
/// metrics). `route` is the route's pattern (`/tokens/{id}`), or `other`
/// for a path no route serves: never the path a browser sent.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// A request to `route` was answered with `status` after `elapsed`.
    fn answered(&self, route: &str, status: u16, elapsed: Duration);
}

/// The deployment's rules, as the server's policy states them.
pub trait NamespacePolicy: Send + Sync + std::fmt::Debug + 'static {
    /// The expiry rules of `namespace` (the create form offers only the
    /// choices they allow; the service still decides every request).
    fn expiry(&self, namespace: &str) -> ExpiryPolicy;

    /// The longest grace period a regenerated token's previous secret may
    /// get (`--max-grace`); `None`: no bound known here.
    fn max_grace(&self) -> Option<Duration> {
        None
    }
}

/// Audits sessions (the server writes the entries, in the token's
/// namespace; the console only says what happened and from where).
pub trait SessionAudit: Send + Sync + std::fmt::Debug + 'static {
    /// `event` happened to the session of `identity`; `request` carries the
    /// browser's address and user agent as the service reads them.
    fn session(
        &self,
        event: ConsoleSession,
        identity: &session::Identity,
        request: tonic::Request<()>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;
}

/// What the server plugs into the console.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Told of every answered request.
    pub observer: Option<Arc<dyn Observer>>,
    /// Audits sign-in and sign-out.
    pub sessions: Option<Arc<dyn SessionAudit>>,
    /// The expiry rules the create form offers (none: every choice).
    pub policy: Option<Arc<dyn NamespacePolicy>>,
}

/// The route label of requests no route serves.
pub const OTHER_ROUTE: &str = "other";

/// The console over `S`, the service layer of the gRPC API.
#[derive(Debug)]
pub struct Console<S> {
    api: S,
    sessions: SessionStore,
    config: WebConfig,
    clock: SharedClock,
    hooks: Hooks,
}

impl<S: ApiTokenService> Console<S> {
    /// The console calling `api`, with `clock` for badges and expiry
    /// choices.
    pub fn new(api: S, clock: SharedClock, config: WebConfig) -> Arc<Self> {
        Self::hooked(api, clock, config, Hooks::default())
    }

    /// [`Console::new`] with the server's `hooks`.
    pub fn hooked(api: S, clock: SharedClock, config: WebConfig, hooks: Hooks) -> Arc<Self> {
        Arc::new(Self {
            api,
            sessions: SessionStore::new(config.sessions),
            config,
            clock,
            hooks,
        })
    }

    /// Audits `event` of `identity`'s session from the browser of `ctx`.
    pub(crate) async fn audit_session(
        &self,
        event: ConsoleSession,
        identity: &session::Identity,
        ctx: &reply::Ctx,
    ) {
        let Some(audit) = &self.hooks.sessions else {
            return;
        };
        if let Ok(request) = api::request((), None, &ctx.client) {
            audit.session(event, identity, request).await;
        }
    }

    /// The longest grace the service allows, if known.
    pub(crate) fn max_grace(&self) -> Option<Duration> {
        self.hooks
            .policy
            .as_ref()
            .and_then(|policy| policy.max_grace())
    }

    /// The expiry rules of `namespace` (none known: no rule).
    pub(crate) fn expiry_rules(&self, namespace: &str) -> ExpiryPolicy {
        self.hooks
            .policy
            .as_ref()
            .map(|policy| policy.expiry(namespace))
            .unwrap_or_default()
    }

    /// The sessions.
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// The service layer.
    pub(crate) fn api(&self) -> &S {
        &self.api
    }

    /// The settings.
    pub(crate) fn config(&self) -> &WebConfig {
        &self.config
    }

    /// Now, on the server's clock.
    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Every route of the console.
    pub fn router(self: &Arc<Self>) -> Router {
        use pages::{audit, auth, create, tokens};
        Router::new()
            .route("/", get(auth::home::<S>))
            .route(
                "/sign-in",
                get(auth::sign_in_form::<S>).post(auth::sign_in::<S>),
            )
            .route("/sign-out", post(auth::sign_out::<S>))
            .route("/whoami", get(auth::whoami::<S>))
            .route("/tokens", get(tokens::list::<S>).post(create::create::<S>))
            .route("/tokens/new", get(create::form::<S>))
            .route("/secret", get(create::secret::<S>))
            .route("/tokens/{id}", get(tokens::detail::<S>))
            .route("/tokens/{id}/update", post(tokens::update::<S>))
            .route("/tokens/{id}/regenerate", post(tokens::regenerate::<S>))
            .route(
                "/tokens/{id}/revoke",
                get(tokens::revoke_form::<S>).post(tokens::revoke::<S>),
            )
            .route("/audit", get(audit::list::<S>))
            .route("/static/console.css", get(reply::stylesheet))
            .route("/static/console.js", get(reply::script))
            .fallback(reply::not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::map_response(reply::security_headers))
            .layer(axum::middleware::from_fn_with_state(
                self.hooks.observer.clone(),
                observe,
            ))
            .with_state(Arc::clone(self))
    }
}

/// Times each request and tells the observer, by route pattern.
async fn observe(
    axum::extract::State(observer): axum::extract::State<Option<Arc<dyn Observer>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(observer) = observer else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    observer.answered(
        route.as_deref().unwrap_or(OTHER_ROUTE),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
