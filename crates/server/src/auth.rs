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

use apitoken_domain::{
    AuthFailure, Error, Principal, TokenState,
    clock::SharedClock,
    hash::Keys,
    ratelimit::{Decision, FailureOutcome, FailureThrottle, RateLimiter, Scope},
    token::{Secret, TokenFormat, bearer_secret},
};
use apitoken_store::{TokenRecord, TokenStore};
use tonic::Request;
use tracing::{info, warn};

use crate::{limits::Limits, usage::UsageRecorder};

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
    ) -> Self {
        Self {
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

    /// The caller of `request`, from its bearer token, within its rate limits.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let record = match bearer_secret(request.metadata()) {
            Ok(secret) => self.verify(secret, peer).await?,
            Err(failure) => return Err(self.failed(Error::Unauthenticated(failure), peer)),
        };
        let principal = principal(&record);
        self.admit(&record)?;
        Ok(principal)
    }

    /// The active token that `secret` belongs to; counts as a use by `peer`.
    /// A throttled peer is refused first; a failure counts against it.
    pub async fn verify(&self, secret: Secret, peer: Option<IpAddr>) -> Result<TokenRecord, Error> {
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
        match self.lookup(secret).await {
            Ok(record) => {
                let ip = peer.map(|ip| ip.to_string());
                self.usage.record(
                    record.name.namespace().as_str(),
                    &record.uid,
                    self.clock.now(),
                    ip,
                );
                Ok(record)
            }
            Err(error) => Err(self.failed(error, peer)),
        }
    }

    async fn lookup(&self, secret: Secret) -> Result<TokenRecord, Error> {
        let well_formed = self.format.parse(secret)?;
        let hash = self.keys.hash_secret(&well_formed);
        let record = self
            .store
            .find_by_hash(&hash)
            .await?
            .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        match record.state(self.clock.now()) {
            TokenState::Revoked => Err(Error::Unauthenticated(AuthFailure::Revoked)),
            TokenState::Expired => Err(Error::Unauthenticated(AuthFailure::Expired)),
            TokenState::Active => Ok(record),
        }
    }

    /// Logs an authentication failure and counts it against the peer.
    fn failed(&self, error: Error, peer: Option<IpAddr>) -> Error {
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
    }
}
