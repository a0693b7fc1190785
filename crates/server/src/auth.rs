//! Authentication of callers: `authorization: Bearer <secret>` to a
//! [`Principal`], the secret check behind `VerifyApiToken`, the per-token
//! and per-namespace rate limits, and the per-peer failed-authentication
//! throttle.
//!
//! Order of checks, cheapest first: a throttled peer is refused before
//! anything else; then header present, `Bearer` scheme, token format and
//! checksum (no database access), hash lookup through the unique index,
//! revocation and expiry; then the rate limits. Failures are logged with the
//! reason and peer address, never the token; a peer's burst of failures is
//! logged once, when it starts.

use std::{cell::Cell, net::IpAddr, sync::Arc};

use apitoken_domain::audit::Action;
use apitoken_domain::{
    AuthFailure, Error, Principal, TokenState,
    clock::SharedClock,
    hash::Keys,
    ratelimit::{Decision, FailureOutcome, FailureThrottle, RateLimiter, Scope},
    token::{Secret, TokenFormat, bearer_secret},
};
use apitoken_store::{SecretMatch, TokenRecord, TokenStore};
use chrono::{DateTime, Utc};
use tonic::Request;
use tracing::{info, warn};

use crate::{
    audit::{Actor, RequestContext},
    events::EventHub,
    limits::Limits,
    usage::UsageRecorder,
};

/// A verified secret: its token, and when this secret stops working (the
/// end of a grace period for a previous secret, else the token's expiry).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The token.
    pub record: TokenRecord,
    /// When the presented secret stops working.
    pub secret_expire_time: Option<DateTime<Utc>>,
}

tokio::task_local! {
    /// The rate-limit decision of the call being handled, for its reply's
    /// `x-ratelimit-*` headers.
    pub static RATE_DECISION: Cell<Option<Decision>>;
}

/// Turns secrets into tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: TokenStore,
    format: TokenFormat,
    keys: Keys,
    clock: SharedClock,
    usage: Arc<UsageRecorder>,
    limits: Arc<Limits>,
    limiter: Arc<RateLimiter>,
    throttle: Arc<FailureThrottle>,
    events: Arc<EventHub>,
}

impl Authenticator {
    /// An authenticator over `store`.
    pub fn new(
        store: TokenStore,
        format: TokenFormat,
        keys: Keys,
        clock: SharedClock,
        usage: Arc<UsageRecorder>,
        limits: Arc<Limits>,
        events: Arc<EventHub>,
    ) -> Self {
        Self {
            events,
            limiter: Arc::new(RateLimiter::new(Arc::clone(&clock))),
            throttle: Arc::new(FailureThrottle::new(
                Arc::clone(&clock),
                limits.failed_auth_per_minute,
            )),
            store,
            format,
            keys,
            clock,
            usage,
            limits,
        }
    }

    /// The deployment's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The caller of `request`, from its bearer token, within its rate
    /// limits. `namespace` is the namespace the request is about, if it
    /// names one: a burst of failed authentications is audited there.
    pub async fn authenticate<T>(
        &self,
        request: &Request<T>,
        namespace: Option<&str>,
    ) -> Result<Principal, Error> {
        self.authenticate_verified(request, namespace)
            .await
            .map(|authenticated| principal(&authenticated.record))
    }

    /// [`Authenticator::authenticate`], with what was verified.
    pub async fn authenticate_verified<T>(
        &self,
        request: &Request<T>,
        namespace: Option<&str>,
    ) -> Result<Authenticated, Error> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let context = RequestContext::of(request);
        let result = match bearer_secret(request.metadata()) {
            Ok(secret) => self.verify_from(secret, peer, Some(context.clone())).await,
            Err(failure) => Err(self.failed(Error::Unauthenticated(failure), peer).await),
        };
        let authenticated = match result {
            Ok(authenticated) => authenticated,
            Err(error) => {
                if let (Some(peer), Some(namespace)) = (peer, namespace)
                    && self.throttle.burst_started_now(peer)
                {
                    self.audit_burst(&context, namespace, peer).await;
                }
                return Err(error);
            }
        };
        self.admit(&authenticated.record)?;
        Ok(authenticated)
    }

    async fn audit_burst(&self, context: &RequestContext, namespace: &str, peer: IpAddr) {
        let mut entry = context.entry(
            namespace,
            Action::AuthFailureBurst,
            Actor::Named("unauthenticated"),
            format!("namespaces/{namespace}"),
            self.clock.now(),
        );
        entry.details.insert("peer".into(), peer.to_string());
        entry
            .details
            .insert("limit_per_minute".into(), self.throttle.limit().to_string());
        if let Err(error) = self.store.record_audit(entry).await {
            warn!(error = %error, "could not audit a failed authentication burst");
        }
    }

    /// The interceptor token a call carries as its own credential, if any:
    /// it entitles the caller to name the address of the call it verifies.
    /// Neither rate-limited nor counted as a use or a failure: an
    /// interceptor's verifications act for other callers.
    pub async fn interceptor_of<T>(&self, request: &Request<T>) -> Option<Principal> {
        let secret = bearer_secret(request.metadata()).ok()?;
        let authenticated = self.lookup(secret, None).await.ok()?;
        authenticated
            .record
            .interceptor
            .then(|| principal(&authenticated.record))
    }

    /// The active token that `secret` belongs to; counts as a use by `peer`.
    /// A throttled peer is refused first; a failure counts against it.
    pub async fn verify(
        &self,
        secret: Secret,
        peer: Option<IpAddr>,
    ) -> Result<Authenticated, Error> {
        self.verify_from(secret, peer, None).await
    }

    async fn verify_from(
        &self,
        secret: Secret,
        peer: Option<IpAddr>,
        context: Option<RequestContext>,
    ) -> Result<Authenticated, Error> {
        if let Some(peer) = peer
            && let Some(wait) = self.throttle.blocked(peer)
        {
            return Err(Error::ResourceExhausted {
                subject: format!("peer {peer}"),
                description: format!(
                    "too many failed authentications from {peer} (limit {} a minute)",
                    self.throttle.limit()
                ),
                retry_after: Some(wait),
            });
        }
        match self.lookup(secret, context).await {
            Ok(authenticated) => {
                let record = &authenticated.record;
                let ip = peer.map(|ip| ip.to_string());
                self.usage.record(
                    record.name.namespace().as_str(),
                    &record.uid,
                    self.clock.now(),
                    ip,
                );
                Ok(authenticated)
            }
            Err(error) => Err(self.failed(error, peer).await),
        }
    }

    async fn lookup(
        &self,
        secret: Secret,
        context: Option<RequestContext>,
    ) -> Result<Authenticated, Error> {
        let well_formed = self.format.parse(secret)?;
        let hash = self.keys.hash_secret(&well_formed);
        let (record, matched) = self
            .store
            .find_by_hash(&hash)
            .await?
            .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        let now = self.clock.now();
        match record.state(now) {
            TokenState::Revoked => return Err(Error::Unauthenticated(AuthFailure::Revoked)),
            TokenState::Expired => return Err(Error::Unauthenticated(AuthFailure::Expired)),
            TokenState::Active => {}
        }
        let secret_expire_time = match matched {
            // A previous secret works only while its grace period lasts.
            SecretMatch::Previous => {
                let until = record
                    .grace_until(now)
                    .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
                Some(record.expire_time.map_or(until, |expiry| expiry.min(until)))
            }
            SecretMatch::Current => {
                if record.end_grace_on_first_use && record.grace_until(now).is_some() {
                    self.end_grace(&record, now, context).await?;
                }
                record.expire_time
            }
        };
        Ok(Authenticated {
            record,
            secret_expire_time,
        })
    }

    /// The first use of a new secret ends the previous one's grace period.
    async fn end_grace(
        &self,
        record: &TokenRecord,
        now: DateTime<Utc>,
        context: Option<RequestContext>,
    ) -> Result<(), Error> {
        let context = context.unwrap_or_else(RequestContext::rule);
        let principal = principal(record);
        let mut entry = context.entry(
            record.name.namespace().as_str(),
            Action::GraceEnd,
            Actor::Token(&principal),
            record.name.to_string(),
            now,
        );
        entry.resource_uid = Some(record.uid.clone());
        entry
            .details
            .insert("reason".into(), "first use of the new secret".into());
        if self.store.end_grace(record, now, entry).await? {
            self.events.appended();
            info!(token = %record.name, "grace period ended by the first use of the new secret");
        }
        Ok(())
    }

    /// Logs an authentication failure and counts it against the peer; the
    /// start of a burst is logged once.
    async fn failed(&self, error: Error, peer: Option<IpAddr>) -> Error {
        if let Error::Unauthenticated(failure) = &error {
            info!(reason = failure.reason(), peer = ?peer, "authentication failed");
            if let Some(peer) = peer
                && self.throttle.record_failure(peer) == FailureOutcome::BurstStarted
            {
                warn!(
                    %peer,
                    limit_per_minute = self.throttle.limit(),
                    "failed authentication burst: throttling this address"
                );
            }
        }
        error
    }

    /// Applies the token's and its namespace's rate limits; the decision is
    /// kept for the reply's headers.
    fn admit(&self, record: &TokenRecord) -> Result<(), Error> {
        let namespace = record.name.namespace().as_str();
        let decision = self.limiter.check(
            &record.uid,
            self.limits.token_limit(record),
            namespace,
            self.limits.namespace_limit(namespace),
        );
        let _ = RATE_DECISION.try_with(|cell| cell.set(Some(decision)));
        if decision.allowed {
            return Ok(());
        }
        let subject = match decision.scope {
            Scope::Token => record.name.to_string(),
            Scope::Namespace => format!("namespaces/{namespace}"),
        };
        info!(%subject, limit = decision.limit, "rate limited");
        Err(Error::ResourceExhausted {
            description: format!(
                "rate limit of {} requests a minute exceeded for {subject}",
                decision.limit
            ),
            subject,
            retry_after: decision.retry_after,
        })
    }
}

/// The principal a token record stands for.
pub fn principal(record: &TokenRecord) -> Principal {
    Principal {
        name: record.name.clone(),
        uid: record.uid.clone(),
        role: record.role,
        expire_time: record.expire_time,
        interceptor: record.interceptor,
    }
}
