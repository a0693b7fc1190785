//! [`ApiTokenAuth`]: the shared state behind every layer, the background
//! tasks (event streams, usage reports), and the decision made for each call.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use std::net::IpAddr;

use apitoken_domain::{
    DenyReason, Error, Principal, Role,
    clock::SharedClock,
    ratelimit::{Decision, FailureOutcome, RateLimit, Scope},
    token::{Secret, TokenFormat},
};
use apitoken_ratelimit::{Call, Limiter, LimiterConfig};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, warn};

use crate::{
    cache::{CacheKey, Entry, TokenCache},
    config::{AuthBuilder, BuildError, MethodPolicy, Requirement, Settings},
    layer::ApiTokenLayer,
    metrics::Stats,
    usage::{UsageBatch, report_loop},
    verifier::{Outcome, Verified, Verifier},
    watcher::{NamespaceWatch, follow},
};

/// A copy of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Calls answered from the cache.
    pub cache_hits: u64,
    /// Remote verifications made.
    pub verifications: u64,
    /// Calls refused without asking apitoken.
    pub local_refusals: u64,
    /// Calls failed closed.
    pub unavailable: u64,
    /// Token events received.
    pub invalidations: u64,
    /// Calls served from the cache under the outage policy.
    pub outage_hits: u64,
    /// Times apitoken refused this service's own credential.
    pub credential_refusals: u64,
    /// Whether cached tokens are being served under the outage policy now
    /// (the `outage_active` gauge).
    pub outage_active: bool,
}

/// State shared by the layers and background tasks of one [`ApiTokenAuth`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) format: TokenFormat,
    pub(crate) policy: MethodPolicy,
    pub(crate) settings: Settings,
    pub(crate) clock: SharedClock,
    pub(crate) cache: TokenCache,
    pub(crate) verifier: Verifier,
    pub(crate) namespaces: Vec<NamespaceWatch>,
    pub(crate) usage: UsageBatch,
    pub(crate) stats: Stats,
    pub(crate) limiter: Arc<Limiter>,
    /// Whether cached tokens are being served under the outage policy.
    pub(crate) outage: AtomicBool,
}

/// The decision for one call, with the rate-limit figures for its headers.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// `None` for a public method, the caller for an allowed one, the error
    /// the caller gets otherwise.
    pub(crate) result: Result<Option<Arc<Principal>>, Error>,
    /// The rate-limit decision, once the token was known.
    pub(crate) decision: Option<Decision>,
}

/// Stops the background tasks when the last handle or layer is dropped.
#[derive(Debug)]
pub(crate) struct StopOnDrop(pub(crate) watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Authentication against apitoken for a tonic server: build it with
/// [`ApiTokenAuth::builder`], add [`ApiTokenAuth::layer`] to the server.
/// Cloning is cheap; clones share cache and background tasks.
#[derive(Debug, Clone)]
pub struct ApiTokenAuth {
    shared: Arc<Shared>,
    stop: Arc<StopOnDrop>,
}

/// `message` with `authorization: Bearer <credential>`.
pub(crate) fn authorized<T>(credential: &Secret, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {}", credential.expose()).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl ApiTokenAuth {
    /// A builder with the defaults: viewer for every method, health and
    /// reflection public, prefix `apitoken`.
    pub fn builder() -> AuthBuilder {
        AuthBuilder::default()
    }

    pub(crate) fn start(
        builder: AuthBuilder,
        format: TokenFormat,
        channel: tonic::transport::Channel,
    ) -> Result<Self, BuildError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BuildError("ApiTokenAuth needs a Tokio runtime".to_owned()))?;
        let failed_auth = match builder.settings.failed_auth_per_minute {
            0 => RateLimit::Unlimited,
            count => RateLimit::per_minute(count.min(apitoken_domain::ratelimit::MAX_COUNT)),
        };
        let limiter = Limiter::new(
            Arc::clone(&builder.clock),
            &LimiterConfig {
                failed_auth,
                redis: builder.redis.clone(),
            },
        )
        .map_err(BuildError)?;
        let shared = Arc::new(Shared {
            format,
            policy: builder.policy,
            cache: TokenCache::new(builder.settings.cache_capacity).map_err(BuildError)?,
            verifier: Verifier::new(
                channel,
                builder.settings.call_timeout,
                builder
                    .namespaces
                    .first()
                    .map(|(_, credential)| credential.clone())
                    .ok_or_else(|| BuildError("accept at least one namespace".to_owned()))?,
            ),
            namespaces: builder
                .namespaces
                .into_iter()
                .map(|(namespace, credential)| NamespaceWatch::new(namespace, credential))
                .collect(),
            settings: builder.settings,
            clock: Arc::clone(&builder.clock),
            usage: UsageBatch::default(),
            stats: Stats::new(),
            limiter,
            outage: AtomicBool::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        for index in 0..shared.namespaces.len() {
            runtime.spawn(follow(Arc::clone(&shared), index, stopped.clone()));
        }
        runtime.spawn(report_loop(Arc::clone(&shared), stopped));
        Ok(Self {
            shared,
            stop: Arc::new(StopOnDrop(stop)),
        })
    }

    /// The tower layer for `tonic::transport::Server::builder().layer(...)`.
    pub fn layer(&self) -> ApiTokenLayer {
        ApiTokenLayer::new(Arc::clone(&self.shared), Arc::clone(&self.stop))
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        let stats = &self.shared.stats;
        StatsSnapshot {
            cache_hits: stats.cache_hits.get(),
            verifications: stats.verifications.get(),
            local_refusals: stats.local_refusals.get(),
            unavailable: stats.unavailable.get(),
            invalidations: stats.invalidations.get(),
            outage_hits: stats.outage_hits.get(),
            credential_refusals: stats.credential_refusals.get(),
            outage_active: self.shared.outage.load(Ordering::Relaxed),
        }
    }

    /// Whether Redis is configured ([`crate::AuthBuilder::redis_url`]) but
    /// unreachable, so that this service enforces local limits (the
    /// `redis_fallback` metric).
    pub fn redis_fallback(&self) -> bool {
        self.shared.limiter.state().fallback()
    }

    /// How many tokens are cached.
    pub fn cached_tokens(&self) -> usize {
        self.shared.cache.len()
    }

    /// Whether the event stream of `namespace` is fresh (its cached tokens
    /// are trusted).
    pub fn is_fresh(&self, namespace: &str) -> bool {
        self.shared
            .namespaces
            .iter()
            .find(|watch| watch.namespace() == namespace)
            .is_some_and(|watch| {
                watch.is_fresh(Instant::now(), self.shared.settings.staleness_bound)
            })
    }

    /// Why apitoken refuses this service's credential for `namespace`, if
    /// it does (also logged as an error and counted in
    /// [`StatsSnapshot::credential_refusals`]).
    pub fn credential_refused(&self, namespace: &str) -> Option<String> {
        self.shared
            .namespaces
            .iter()
            .find(|watch| watch.namespace() == namespace)
            .and_then(NamespaceWatch::credential_refused)
    }

    /// Reports pending usage now (it is also reported periodically and when
    /// the last handle is dropped).
    pub async fn flush_usage(&self) {
        self.shared.report_usage().await;
    }
}

impl Shared {
    fn watch(&self, namespace: &str) -> Option<&NamespaceWatch> {
        self.namespaces
            .iter()
            .find(|watch| watch.namespace() == namespace)
    }

    /// The decision for one call to `path` from `peer`, as far as it can be
    /// made without waiting: public methods, local refusals, and tokens
    /// answered from the cache with local limits (the hot path: no
    /// allocation but the shared principal's reference count, no `await`).
    /// What needs a remote answer (a verification, or with shared limits a
    /// Redis check) comes back as [`Step::Slow`].
    pub(crate) fn decide(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Step {
        let required = match self.policy.requirement(path) {
            Requirement::Public => return Step::Done(Verdict::public()),
            Requirement::Role(role) => role,
        };
        let shared = self.limiter.is_shared();
        let local = |error: Error| {
            self.stats.local_refusals.add();
            if shared {
                Step::Slow(Slow::Fail(error))
            } else {
                Step::Done(Verdict::refused(self.failed_local(error, peer)))
            }
        };
        let secret = match bearer_secret_of(headers) {
            Ok(secret) => secret,
            Err(failure) => return local(Error::Unauthenticated(failure)),
        };
        let secret = match self.format.parse(secret) {
            Ok(secret) => secret,
            Err(error) => return local(error),
        };
        let key = self.cache.key_for(&secret);
        let now = Instant::now();
        if let Some(error) = self.cache.refusal(&key, now) {
            return local(error);
        }
        match self.cached(&key, now) {
            Err(error) => local(error),
            // A token known good works even from a throttled address.
            Ok(Some(verified)) => {
                self.stats.cache_hits.add();
                self.usage
                    .record(&verified.principal, self.clock.now(), peer);
                if shared {
                    Step::Slow(Slow::Admit(verified, required))
                } else {
                    Step::Done(self.admit_local(verified, required))
                }
            }
            Ok(None) => {
                // An unknown one from a throttled address is not worth a
                // verification: that is what the throttle spares apitoken
                // (asked of the shared count in the slow path).
                if !shared
                    && let Some(peer) = peer
                    && let Some(wait) = self.limiter.blocked_local(peer)
                {
                    self.stats.local_refusals.add();
                    return Step::Done(Verdict::refused(self.throttled(peer, Some(wait))));
                }
                Step::Slow(Slow::Verify(Pending {
                    key,
                    secret,
                    required,
                }))
            }
        }
    }

    /// The decision for what [`Shared::decide`] could not settle at once.
    pub(crate) async fn resolve(
        &self,
        slow: Slow,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Verdict {
        match slow {
            Slow::Verify(pending) => self.verify_and_decide(pending, headers, peer).await,
            Slow::Admit(verified, required) => self.admit(verified, required).await,
            Slow::Fail(error) => Verdict::refused(self.failed(error, peer, true).await),
        }
    }

    /// The decision for a token that needed a verification.
    async fn verify_and_decide(
        &self,
        pending: Pending,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Verdict {
        if self.limiter.is_shared()
            && let Some(peer) = peer
            && let Some(wait) = self.limiter.blocked(peer).await
        {
            self.stats.local_refusals.add();
            return Verdict::refused(self.throttled(peer, Some(wait)));
        }
        match self
            .verify(pending.key, &pending.secret, headers, peer)
            .await
        {
            Ok(verified) => self.admit(verified, pending.required).await,
            // apitoken counted this failure itself (it was told the
            // caller's address): with a shared count, counting it here too
            // would count it twice.
            Err(error @ Error::Unauthenticated(_)) => {
                let count_here = !self.limiter.is_shared();
                Verdict::refused(self.failed(error, peer, count_here).await)
            }
            Err(error) => Verdict::refused(error),
        }
    }

    /// Authorizes a verified token for `required` and applies its limits
    /// (shared ones when Redis answers).
    async fn admit(&self, verified: Verified, required: Role) -> Verdict {
        if let Err(error) = self.authorize(&verified.principal, required) {
            return Verdict::refused(error);
        }
        let principal = verified.principal;
        let call = Call {
            namespace: principal.namespace(),
            uid: &principal.uid,
            token: verified.token_limit,
            namespace_limit: verified.namespace_limit,
        };
        let decision = self.limiter.check(&call).await;
        limited(principal, decision)
    }

    /// [`Shared::admit`] with local limits, without waiting.
    fn admit_local(&self, verified: Verified, required: Role) -> Verdict {
        if let Err(error) = self.authorize(&verified.principal, required) {
            return Verdict::refused(error);
        }
        let principal = verified.principal;
        let call = Call {
            namespace: principal.namespace(),
            uid: &principal.uid,
            token: verified.token_limit,
            namespace_limit: verified.namespace_limit,
        };
        let decision = self.limiter.check_local(&call);
        limited(principal, decision)
    }

    /// Counts a failed authentication against `peer` (unless `count` is
    /// false: counted elsewhere); a burst is logged once. Past the budget
    /// the caller gets `RESOURCE_EXHAUSTED` instead.
    async fn failed(&self, error: Error, peer: Option<IpAddr>, count: bool) -> Error {
        if !matches!(error, Error::Unauthenticated(_)) || !count {
            return error;
        }
        let Some(peer) = peer else {
            return error;
        };
        let outcome = self.limiter.record_failure(peer).await;
        self.failure_outcome(error, peer, outcome)
    }

    /// [`Shared::failed`] in this process alone, without waiting.
    fn failed_local(&self, error: Error, peer: Option<IpAddr>) -> Error {
        if !matches!(error, Error::Unauthenticated(_)) {
            return error;
        }
        let Some(peer) = peer else {
            return error;
        };
        let outcome = self.limiter.record_failure_local(peer);
        self.failure_outcome(error, peer, outcome)
    }

    fn failure_outcome(&self, error: Error, peer: IpAddr, outcome: FailureOutcome) -> Error {
        debug!(%peer, "authentication failed");
        match outcome {
            FailureOutcome::Counted => error,
            FailureOutcome::BurstStarted => {
                warn!(%peer, limit = %self.failure_limit(), "failed authentication burst: refusing further failures from this address");
                error
            }
            FailureOutcome::Throttled(wait) => self.throttled(peer, wait),
        }
    }

    fn failure_limit(&self) -> String {
        match self.limiter.failure_limit() {
            Some(limit) => format!("{} a {}", limit.count, limit.window.word()),
            None => "none".to_owned(),
        }
    }

    fn throttled(&self, peer: IpAddr, wait: Option<std::time::Duration>) -> Error {
        Error::ResourceExhausted {
            subject: format!("address {peer}"),
            description: format!(
                "too many failed authentications from {peer} (limit {})",
                self.failure_limit()
            ),
            retry_after: wait,
        }
    }

    /// A cached token that may be trusted: verified within `cache_ttl`, its
    /// namespace's stream fresh (or, with the outage policy, silent for no
    /// longer than the staleness bound plus the grace), and not expired
    /// (that is refused locally).
    fn cached(&self, key: &CacheKey, now: Instant) -> Result<Option<Verified>, Error> {
        let Some(entry) = self.cache.get(key) else {
            return Ok(None);
        };
        if now.saturating_duration_since(entry.verified_at) >= self.settings.cache_ttl {
            return Ok(None);
        }
        let Some(watch) = self.watch(entry.principal.namespace()) else {
            return Ok(None);
        };
        let silence = watch.silent_for(now);
        let fresh = silence.is_some_and(|silence| silence < self.settings.staleness_bound);
        if !fresh {
            let within_grace = self.settings.outage_grace.is_some_and(|grace| {
                silence.is_some_and(|silence| silence < self.settings.staleness_bound + grace)
            });
            if !within_grace {
                // The grace is over: nothing is served under the policy
                // any more, whatever the stream does next.
                if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed)
                {
                    crate::metrics::outage_active(false);
                    warn!(
                        namespace = watch.namespace(),
                        "the outage policy's grace is over: failing closed until apitoken's event stream is back"
                    );
                }
                return Ok(None);
            }
            self.stats.outage_hits.add();
            // Read first: a store on every hit would bounce the line
            // between cores.
            if !self.outage.load(Ordering::Relaxed) && !self.outage.swap(true, Ordering::Relaxed) {
                crate::metrics::outage_active(true);
                warn!(
                    namespace = watch.namespace(),
                    "apitoken's event stream is down: serving tokens already verified (outage policy); revocations are not seen until it is back"
                );
            }
        } else {
            // Read first: a store on every hit would bounce the line
            // between cores.
            if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed) {
                crate::metrics::outage_active(false);
            }
        }
        let ends = entry.secret_expire_time.or(entry.principal.expire_time);
        if ends.is_some_and(|end| end <= self.clock.now()) {
            self.cache.remove(key);
            // The token expired, or this was a previous secret whose grace
            // period is over (then it is simply no longer valid).
            let failure = if ends == entry.principal.expire_time {
                apitoken_domain::AuthFailure::Expired
            } else {
                apitoken_domain::AuthFailure::Invalid
            };
            let error = Error::Unauthenticated(failure);
            self.cache
                .refuse(*key, error.clone(), now + self.settings.negative_ttl, now);
            return Err(error);
        }
        Ok(Some(Verified {
            principal: entry.principal,
            token_limit: entry.token_limit,
            namespace_limit: entry.namespace_limit,
            secret_expire_time: entry.secret_expire_time,
        }))
    }

    /// Asks apitoken, caches the answer (unless an event arrived meanwhile).
    async fn verify(
        &self,
        key: CacheKey,
        secret: &apitoken_domain::token::WellFormed,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Verified, Error> {
        let generations: Vec<u64> = self
            .namespaces
            .iter()
            .map(NamespaceWatch::generation)
            .collect();
        let (outcome, initiated) = self.verifier.verify(key, secret, headers, peer).await;
        if initiated {
            self.stats.verifications.add();
        }
        let now = Instant::now();
        match outcome {
            Outcome::Valid(verified) => {
                let principal = &verified.principal;
                let index = self
                    .namespaces
                    .iter()
                    .position(|watch| watch.namespace() == principal.namespace());
                match index {
                    Some(index) if self.namespaces[index].generation() == generations[index] => {
                        self.cache.insert(
                            key,
                            Entry {
                                principal: Arc::clone(principal),
                                token_limit: verified.token_limit,
                                namespace_limit: verified.namespace_limit,
                                secret_expire_time: verified.secret_expire_time,
                                verified_at: now,
                            },
                        );
                        crate::metrics::cache_entries(self.cache.len());
                    }
                    Some(_) => {}
                    None => {
                        // Not a namespace of this service: remember the refusal.
                        let error = namespace_refusal(principal);
                        self.cache.refuse(
                            key,
                            error.clone(),
                            now + self.settings.negative_ttl,
                            now,
                        );
                        return Err(error);
                    }
                }
                if !initiated {
                    // apitoken counted the one call it got; count the others.
                    self.usage.record(principal, self.clock.now(), peer);
                }
                Ok(verified)
            }
            Outcome::Refused(error) => {
                self.cache
                    .refuse(key, error.clone(), now + self.settings.negative_ttl, now);
                Err(error)
            }
            Outcome::Unavailable(error) => {
                self.stats.unavailable.add();
                Err(error)
            }
        }
    }

    fn authorize(&self, principal: &Principal, required: Role) -> Result<(), Error> {
        if self.watch(principal.namespace()).is_none() {
            return Err(namespace_refusal(principal));
        }
        principal.authorize(principal.namespace(), required)
    }
}

/// The bearer secret of a request's headers (the one parsing rule of
/// [`apitoken_domain::token::parse_bearer`], read without copying the
/// headers).
fn bearer_secret_of(headers: &http::HeaderMap) -> Result<Secret, apitoken_domain::AuthFailure> {
    use apitoken_domain::AuthFailure;
    let value = headers.get("authorization").ok_or(AuthFailure::Missing)?;
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    apitoken_domain::token::parse_bearer(value)
}

/// The verdict for an authorized principal under a rate-limit decision.
fn limited(principal: Arc<Principal>, decision: Option<Decision>) -> Verdict {
    match decision {
        Some(decision) if !decision.allowed => {
            let subject = match decision.scope {
                Scope::Token => principal.name.to_string(),
                Scope::Namespace => format!("namespaces/{}", principal.namespace()),
            };
            Verdict {
                result: Err(Error::ResourceExhausted {
                    description: decision.describe(&subject),
                    subject,
                    retry_after: decision.retry_after,
                }),
                decision: Some(decision),
            }
        }
        decision => Verdict {
            result: Ok(Some(principal)),
            decision,
        },
    }
}

/// What a call waits for when its token is not in the cache.
#[derive(Debug)]
pub(crate) struct Pending {
    key: CacheKey,
    secret: apitoken_domain::token::WellFormed,
    required: Role,
}

/// How far [`Shared::decide`] got.
#[derive(Debug)]
pub(crate) enum Step {
    /// Decided.
    Done(Verdict),
    /// A remote answer is needed first ([`Shared::resolve`]).
    Slow(Slow),
}

/// What needs a remote answer.
#[derive(Debug)]
pub(crate) enum Slow {
    /// The token must be verified.
    Verify(Pending),
    /// A known token, checked against the shared limits.
    Admit(Verified, Role),
    /// A failure counted in the shared throttle.
    Fail(Error),
}

impl Verdict {
    fn public() -> Self {
        Verdict {
            result: Ok(None),
            decision: None,
        }
    }

    fn refused(error: Error) -> Self {
        Verdict {
            result: Err(error),
            decision: None,
        }
    }
}

fn namespace_refusal(principal: &Principal) -> Error {
    Error::denied(
        DenyReason::NamespaceMismatch,
        format!(
            "tokens of namespace {:?} are not accepted by this service",
            principal.namespace()
        ),
    )
}
