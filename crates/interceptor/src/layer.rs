//! The tower layer: for each request, the decision of [`crate::ApiTokenAuth`],
//! then either the inner service (with the [`Principal`] in the request
//! extensions) or the refusal as a gRPC status. One tracing span per
//! authentication records the method, the token's name and the outcome,
//! never the secret.
//!
//! The hot path — a token answered from the cache — is decided without
//! waiting and without boxing: the call goes straight to the inner service,
//! and only the rate-limit headers are added to its response. A token that
//! needs a verification takes the slow path (one boxed future per call).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use apitoken_domain::ratelimit::Decision;
use apitoken_domain::{Error, Principal};
use tonic::Status;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty, info_span};

use crate::auth::{Shared, Step, StopOnDrop, Verdict};

/// Adds authentication to a service (see [`crate::ApiTokenAuth::layer`]).
#[derive(Debug, Clone)]
pub struct ApiTokenLayer {
    shared: Arc<Shared>,
    stop: Arc<StopOnDrop>,
}

impl ApiTokenLayer {
    pub(crate) fn new(shared: Arc<Shared>, stop: Arc<StopOnDrop>) -> Self {
        Self { shared, stop }
    }
}

impl<S> Layer<S> for ApiTokenLayer {
    type Service = ApiTokenService<S>;

    fn layer(&self, inner: S) -> ApiTokenService<S> {
        ApiTokenService {
            inner,
            shared: Arc::clone(&self.shared),
            _stop: Arc::clone(&self.stop),
        }
    }
}

/// A service whose calls are authenticated.
#[derive(Debug, Clone)]
pub struct ApiTokenService<S> {
    inner: S,
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

fn outcome(result: &Result<Option<Arc<Principal>>, Error>) -> &'static str {
    match result {
        Ok(Some(_)) => "allowed",
        Ok(None) => "public",
        Err(Error::Unauthenticated(failure)) => failure.reason(),
        Err(Error::PermissionDenied { reason, .. }) => reason.reason(),
        Err(Error::Unavailable(_)) => "UNAVAILABLE",
        Err(Error::ResourceExhausted { .. }) => "RESOURCE_EXHAUSTED",
        Err(_) => "ERROR",
    }
}

/// Adds `x-ratelimit-limit`, `x-ratelimit-remaining` and
/// `x-ratelimit-reset` (Unix seconds), as the apitoken server does.
fn add_rate_headers(headers: &mut http::HeaderMap, decision: &Decision) {
    headers.insert("x-ratelimit-limit", decision.limit.count.into());
    headers.insert("x-ratelimit-window", decision.limit.window.seconds().into());
    headers.insert("x-ratelimit-remaining", decision.remaining.into());
    headers.insert("x-ratelimit-reset", decision.reset_unix.into());
    headers.insert(
        "x-ratelimit-scope",
        http::HeaderValue::from_static(decision.scope.as_str()),
    );
}

mod future {
    //! The response future (its fields are the enum's own business).
    #![allow(missing_docs)]

    use std::{future::Future, pin::Pin};

    use apitoken_domain::ratelimit::Decision;
    use pin_project_lite::pin_project;

    pin_project! {
        /// The response future of [`super::ApiTokenService`]: decided at
        /// once (the inner call, then the rate-limit headers), refused at
        /// once, or a verification first.
        #[project = AuthFutureProj]
        pub enum AuthFuture<F, R, E> {
            Inner {
                #[pin]
                future: F,
                decision: Option<Decision>,
            },
            Refused {
                response: Option<R>,
            },
            Verifying {
                future: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>,
            },
        }
    }
}

pub use future::AuthFuture;
use future::AuthFutureProj;

impl<F, ResBody, E> Future for AuthFuture<F, http::Response<ResBody>, E>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { future, decision } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(decision) = decision {
                    add_rate_headers(response.headers_mut(), decision);
                }
                Poll::Ready(Ok(response))
            }
            AuthFutureProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            AuthFutureProj::Verifying { future } => future.as_mut().poll(cx),
        }
    }
}

/// The span of one authentication (nothing is formatted unless a
/// subscriber wants it).
fn span(path: &str) -> Span {
    info_span!(
        "apitoken.authenticate",
        method = path,
        token = Empty,
        outcome = Empty
    )
}

/// Applies a verdict: the inner call with the principal, or the refusal.
fn apply<S, B, ResBody>(
    inner: &mut S,
    mut request: http::Request<B>,
    verdict: Verdict,
    span: &Span,
) -> AuthFuture<S::Future, http::Response<ResBody>, S::Error>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    span.record("outcome", outcome(&verdict.result));
    match verdict.result {
        Ok(principal) => {
            if let Some(principal) = principal {
                span.record("token", tracing::field::display(&principal.name));
                request.extensions_mut().insert(principal);
            }
            AuthFuture::Inner {
                future: inner.call(request),
                decision: verdict.decision,
            }
        }
        Err(error) => {
            let mut response = Status::from(error).into_http::<ResBody>();
            if let Some(decision) = &verdict.decision {
                add_rate_headers(response.headers_mut(), decision);
            }
            AuthFuture::Refused {
                response: Some(response),
            }
        }
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for ApiTokenService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, http::Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Plaintext and TLS servers put different connect info in.
        let peer = apitoken_proto::peer::remote_addr(request.extensions()).map(|addr| addr.ip());
        // Behind trusted proxies, the client they name (else the peer).
        let peer = self
            .shared
            .settings
            .trusted_proxies
            .client_address_in(peer, request.headers());
        let span = span(request.uri().path());
        crate::trace::link_to_caller(&span, request.headers());
        let step = span.in_scope(|| {
            self.shared
                .decide(request.uri().path(), request.headers(), peer)
        });
        match step {
            Step::Done(verdict) => apply(&mut self.inner, request, verdict, &span),
            Step::Slow(slow) => {
                // The ready service is the one to call; leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let shared = Arc::clone(&self.shared);
                let future = async move {
                    let verdict = shared
                        .resolve(slow, request.headers(), peer)
                        .instrument(span.clone())
                        .await;
                    apply(&mut inner, request, verdict, &span).await
                };
                AuthFuture::Verifying {
                    future: Box::pin(future),
                }
            }
        }
    }
}
