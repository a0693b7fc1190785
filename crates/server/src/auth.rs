//! Authentication of callers: `authorization: Bearer <secret>` to a
//! [`Principal`], the secret check behind `VerifyApiToken`, the per-token
//! and per-namespace rate limits, and the failed-authentication throttle.
//!
//! Order of checks: header present, `Bearer` scheme, token format and
//! checksum (no lookup at all), then the in-memory index (no database:
//! [`crate::index`]), revocation, expiry and grace; then the rate limits.
//!
//! **The throttle** counts failures per client address (the transport peer,
//! or behind trusted proxies the forwarded client; IPv6 by /64; see
//! [`crate::peer`]). Past the limit, further *failures* from that address
//! are answered `RESOURCE_EXHAUSTED` instead of `UNAUTHENTICATED`, and
//! logged once per burst — but a good token keeps working from a throttled
//! address: one bad client behind a shared proxy does not lock out the
//! others. (Lookups are in memory, so refusing early would save nothing;
//! guessing a 256-bit secret is hopeless whatever the rate.)
//!
//! **Who may name an address**: only a caller presenting an interceptor
//! token (`ApiToken.interceptor`) as its own credential may name the address
//! of the call it verifies (`caller_address`); anyone else is taken to be
//! calling from where it calls.
//!
//! **Bursts are audited** in the namespace of the token that failed when it
//! is known (a revoked or expired token, a dead previous secret), otherwise
//! in the deployment's own audit log (namespace `""`, see
//! [`DEPLOYMENT_AUDIT`]) — never in a namespace the unauthenticated caller
//! merely named, and with the server's own request id.

use std::{cell::Cell, net::IpAddr, sync::Arc};

use apitoken_domain::audit::Action;
use apitoken_domain::{
    AuthFailure, Error, Principal, TokenState,
    clock::SharedClock,
    hash::Keys,
    ratelimit::{Decision, FailureOutcome, RateLimit, Scope, throttle_key},
    token::{Secret, TokenFormat, bearer_secret},
};
use apitoken_ratelimit::{Call, Limiter};
use apitoken_store::{SecretMatch, TokenStore};
use chrono::{DateTime, Utc};
use tonic::Request;
use tracing::{debug, info, warn};

use crate::{
    audit::{Actor, RequestContext},
    index::{AuthView, TokenIndex},
    limits::Limits,
    namespaces::NamespaceLimits,
    peer::TrustedProxies,
    usage::UsageRecorder,
};

/// The namespace column of audit entries about the deployment itself
/// (bursts of unknown tokens): no namespace's log shows them.
pub const DEPLOYMENT_AUDIT: &str = "";

/// A verified secret: its token, and when this secret stops working (the
/// end of a grace period for a previous secret, else the token's expiry).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The token.
    pub view: AuthView,
    /// When the presented secret stops working.
    pub secret_expire_time: Option<DateTime<Utc>>,
}

impl Authenticated {
    /// The principal it stands for.
    pub fn principal(&self) -> Principal {
        principal(&self.view)
    }
}

tokio::task_local! {
    /// The rate-limit decision of the call being handled, for its reply's
    /// `x-ratelimit-*` headers.
    pub static RATE_DECISION: Cell<Option<Decision>>;
}

/// A failed verification: the error, and the token it concerned when known.
struct Failure {
    error: Error,
    known: Option<AuthView>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { error, known: None }
    }
}

/// Turns secrets into tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: TokenStore,
    index: Arc<TokenIndex>,
    format: TokenFormat,
    keys: Keys,
    clock: SharedClock,
    usage: Arc<UsageRecorder>,
    limits: Arc<Limits>,
    limiter: Arc<Limiter>,
    namespaces: Arc<NamespaceLimits>,
    proxies: Arc<TrustedProxies>,
}

/// What [`Authenticator::new`] needs.
#[derive(Debug, Clone)]
pub struct AuthParts {
    /// The store (for writes on first use of a new secret, and audit).
    pub store: TokenStore,
    /// The in-memory index.
    pub index: Arc<TokenIndex>,
    /// The token format.
    pub format: TokenFormat,
    /// Hashing keys.
    pub keys: Keys,
    /// The clock.
    pub clock: SharedClock,
    /// Usage figures.
    pub usage: Arc<UsageRecorder>,
    /// Limits.
    pub limits: Arc<Limits>,
    /// Where limits are counted (this process, or Redis).
    pub limiter: Arc<Limiter>,
    /// Namespaces' own aggregate limits.
    pub namespaces: Arc<NamespaceLimits>,
    /// Trusted proxies.
    pub proxies: Arc<TrustedProxies>,
}

impl Authenticator {
    /// An authenticator over the index.
    pub fn new(parts: AuthParts) -> Self {
        Self {
            limiter: parts.limiter,
            namespaces: parts.namespaces,
            store: parts.store,
            index: parts.index,
            format: parts.format,
            keys: parts.keys,
            clock: parts.clock,
            usage: parts.usage,
            limits: parts.limits,
            proxies: parts.proxies,
        }
    }

    /// The deployment's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The aggregate limit in force for `namespace`: its own (see
    /// [`crate::namespaces`]) within the deployment's figure, or that.
    pub fn namespace_limit(&self, namespace: &str) -> RateLimit {
        self.namespaces
            .in_force(namespace, self.limits.operator_namespace_limit(namespace))
    }

    /// Namespaces' own limits.
    pub fn namespaces(&self) -> &Arc<NamespaceLimits> {
        &self.namespaces
    }

    /// The limit in force for a token.
    pub fn token_limit(&self, view: &AuthView) -> RateLimit {
        self.limits.limit_for(view.role, view.rate_limit)
    }

    /// The in-memory index.
    pub fn index(&self) -> &Arc<TokenIndex> {
        &self.index
    }

    /// The client address of `request` (see [`crate::peer`]).
    pub fn client_address<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        self.proxies.client_address(
            request.remote_addr().map(|addr| addr.ip()),
            request.metadata(),
        )
    }

    /// Whether `address` is one of the trusted proxies (whose word on a
    /// client's address is believed).
    pub fn trusts_proxy(&self, address: IpAddr) -> bool {
        self.proxies.trusts(address)
    }

    /// The audit context of `request`, with its client address.
    pub fn context<T>(&self, request: &Request<T>) -> RequestContext {
        RequestContext::of(request, self.client_address(request))
    }

    /// The caller of `request`, from its bearer token, within its rate limits.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        self.authenticate_verified(request)
            .await
            .map(|authenticated| authenticated.principal())
    }

    /// [`Authenticator::authenticate`], with what was verified.
    pub async fn authenticate_verified<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Authenticated, Error> {
        let client = self.client_address(request);
        let authenticated = self
            .identify(bearer_secret(request.metadata()), client, request)
            .await?;
        self.admit(&authenticated.view).await?;
        Ok(authenticated)
    }

    /// The token of a bearer `secret` (or the reason the credential was
    /// unreadable) presented by `client` in `request`: checked against the
    /// index, counted as a use by `client`, a failure counted against it
    /// (throttle, burst audit). No rate limit yet: [`Authenticator::admit`].
    /// [`Authenticator::authenticate_verified`] is this and `admit`; the
    /// ext_authz `Check` authorizes the route between the two, as the
    /// interceptor does.
    pub async fn identify<T>(
        &self,
        secret: Result<Secret, AuthFailure>,
        client: Option<IpAddr>,
        request: &Request<T>,
    ) -> Result<Authenticated, Error> {
        let result = match secret {
            Ok(secret) => self.check(secret, Some(request)).await,
            Err(failure) => Err(Failure::from(Error::Unauthenticated(failure))),
        };
        let authenticated = match result {
            Ok(authenticated) => authenticated,
            Err(failure) => return Err(self.failed(failure, client, request).await),
        };
        self.record_use(&authenticated.view, client);
        Ok(authenticated)
    }

    /// The interceptor token a call carries as its own credential, if any:
    /// it entitles the caller to name the address of the call it verifies.
    /// Neither rate-limited nor counted as a use or a failure: an
    /// interceptor's verifications act for other callers.
    pub async fn interceptor_of<T>(&self, request: &Request<T>) -> Option<Principal> {
        let secret = bearer_secret(request.metadata()).ok()?;
        let authenticated = self.check(secret, None::<&Request<T>>).await.ok()?;
        authenticated
            .view
            .interceptor
            .then(|| authenticated.principal())
    }

    /// The active token that `secret` belongs to, for a verification on
    /// behalf of `client` (`request` is the verification call itself);
    /// counts as a use by `client`, a failure counts against it.
    pub async fn verify<T>(
        &self,
        secret: Secret,
        client: Option<IpAddr>,
        request: &Request<T>,
    ) -> Result<Authenticated, Error> {
        match self.check(secret, Some(request)).await {
            Ok(authenticated) => {
                self.record_use(&authenticated.view, client);
                Ok(authenticated)
            }
            Err(failure) => Err(self.failed(failure, client, request).await),
        }
    }

    /// Verifies a secret against the index: format, lookup, state, grace.
    async fn check<T>(
        &self,
        secret: Secret,
        request: Option<&Request<T>>,
    ) -> Result<Authenticated, Failure> {
        let well_formed = self.format.parse(secret)?;
        let hash = self.keys.hash_secret(&well_formed);
        let (view, matched) = self
            .index
            .lookup_fresh(&hash)
            .await
            .ok_or(Failure::from(Error::Unauthenticated(AuthFailure::Invalid)))?;
        let now = self.clock.now();
        let refused = |failure| Failure {
            error: Error::Unauthenticated(failure),
            known: Some(view.clone()),
        };
        match TokenState::at(view.revoke_time, view.expire_time, now) {
            TokenState::Revoked => return Err(refused(AuthFailure::Revoked)),
            TokenState::Expired => return Err(refused(AuthFailure::Expired)),
            TokenState::Active => {}
        }
        let grace_until = view
            .previous_secret_expire_time
            .filter(|until| *until > now);
        let secret_expire_time = match matched {
            // A previous secret works only while its grace period lasts.
            SecretMatch::Previous => {
                let until = grace_until.ok_or_else(|| refused(AuthFailure::Invalid))?;
                Some(view.expire_time.map_or(until, |expiry| expiry.min(until)))
            }
            SecretMatch::Current => {
                if view.end_grace_on_first_use && grace_until.is_some() {
                    let context = request.map(|request| self.context(request));
                    self.end_grace(&view, now, context).await?;
                }
                view.expire_time
            }
        };
        crate::metrics::server().verified();
        Ok(Authenticated {
            view,
            secret_expire_time,
        })
    }

    /// The first use of a new secret ends the previous one's grace period.
    async fn end_grace(
        &self,
        view: &AuthView,
        now: DateTime<Utc>,
        context: Option<RequestContext>,
    ) -> Result<(), Error> {
        let record = self.index.record(view).await?;
        let context = context.unwrap_or_else(RequestContext::rule);
        let principal = principal(view);
        let mut entry = context.entry(
            &view.namespace,
            Action::GraceEnd,
            Actor::Token(&principal),
            record.name.to_string(),
            now,
        );
        entry.resource_uid = Some(record.uid.clone());
        entry
            .details
            .insert("reason".into(), "first use of the new secret".into());
        if self.store.end_grace(&record, now, entry).await? {
            info!(token = %record.name, "grace period ended by the first use of the new secret");
        }
        Ok(())
    }

    fn record_use(&self, view: &AuthView, client: Option<IpAddr>) {
        self.usage
            .record(&view.namespace, view.uid, self.clock.now(), client);
    }

    /// Counts a failure against the client; past its budget the caller gets
    /// `RESOURCE_EXHAUSTED` instead. The start of a burst is logged and
    /// audited once.
    async fn failed<T>(
        &self,
        failure: Failure,
        client: Option<IpAddr>,
        request: &Request<T>,
    ) -> Error {
        let Error::Unauthenticated(reason) = &failure.error else {
            return failure.error;
        };
        crate::metrics::server().verify_failed(*reason);
        // Per failure at debug only: a flood of bad tokens must not flood
        // the log (bursts are logged once, and counted in the metrics).
        debug!(reason = reason.reason(), client = ?client, "authentication failed");
        let Some(client) = client else {
            return failure.error;
        };
        let key = throttle_key(client);
        let limit = self
            .limiter
            .failure_limit()
            .map_or_else(|| "none".to_owned(), |limit| limit.to_string());
        match self.limiter.record_failure(client).await {
            FailureOutcome::Counted => failure.error,
            FailureOutcome::BurstStarted => {
                crate::metrics::server().burst();
                warn!(
                    %client,
                    %limit,
                    "failed authentication burst: refusing further failures from this address"
                );
                self.audit_burst(request, client, failure.known.as_ref())
                    .await;
                failure.error
            }
            FailureOutcome::Throttled(wait) => {
                crate::metrics::server().throttled();
                Error::ResourceExhausted {
                    subject: format!("address {key}"),
                    description: format!(
                        "too many failed authentications from {key} (limit {})",
                        describe_limit(self.limiter.failure_limit())
                    ),
                    retry_after: wait,
                }
            }
        }
    }

    async fn audit_burst<T>(&self, request: &Request<T>, client: IpAddr, known: Option<&AuthView>) {
        let context = self.context(request).without_caller_request_id();
        let (namespace, resource) = match known {
            Some(view) => (view.namespace.to_string(), view.name().to_string()),
            None => (DEPLOYMENT_AUDIT.to_owned(), "deployment".to_owned()),
        };
        let mut entry = context.entry(
            &namespace,
            Action::AuthFailureBurst,
            Actor::Named("unauthenticated"),
            resource,
            self.clock.now(),
        );
        entry.resource_uid = known.map(AuthView::uid_string);
        entry
            .details
            .insert("address".into(), throttle_key(client).to_string());
        entry
            .details
            .insert("limit".into(), describe_limit(self.limiter.failure_limit()));
        if let Err(error) = self.store.record_audit(entry).await {
            warn!(error = %error, "could not audit a failed authentication burst");
        }
    }

    /// Applies the token's and its namespace's rate limits; the decision is
    /// kept for the reply's headers (in [`RATE_DECISION`], when the call
    /// runs in its scope).
    pub async fn admit(&self, view: &AuthView) -> Result<(), Error> {
        let namespace = &*view.namespace;
        let uid = view.uid_string();
        let call = Call {
            namespace,
            uid: &uid,
            token: self.token_limit(view),
            namespace_limit: self.namespace_limit(namespace),
        };
        let Some(decision) = self.limiter.check(&call).await else {
            return Ok(());
        };
        let _ = RATE_DECISION.try_with(|cell| cell.set(Some(decision)));
        if decision.allowed {
            return Ok(());
        }
        let subject = match decision.scope {
            Scope::Token => view.name().to_string(),
            Scope::Namespace => format!("namespaces/{namespace}"),
        };
        crate::metrics::server().rate_limited(decision.scope);
        debug!(%subject, limit = %decision.limit, "rate limited");
        Err(Error::ResourceExhausted {
            description: decision.describe(&subject),
            subject,
            retry_after: decision.retry_after,
        })
    }
}

/// "20 a minute", "5 a second", or "none".
pub fn describe_limit(limit: Option<apitoken_domain::ratelimit::Limit>) -> String {
    match limit {
        Some(limit) => format!("{} a {}", limit.count, limit.window.word()),
        None => "none".to_owned(),
    }
}

/// The principal a token stands for.
pub fn principal(view: &AuthView) -> Principal {
    Principal {
        name: view.name(),
        uid: view.uid_string(),
        role: view.role,
        expire_time: view.expire_time,
        interceptor: view.interceptor,
        display_name: String::new(),
        labels: Default::default(),
    }
}
