//! The tower layer: for each request, the decision of [`crate::ApiTokenAuth`],
//! then either the inner service (with the [`Principal`] in the request
//! extensions) or the refusal as a gRPC status. One tracing span per
//! authentication records the method, the token's name and the outcome,
//! never the secret.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use apitoken_domain::ratelimit::Decision;
use apitoken_domain::{Error, Principal};
use tonic::{Status, metadata::MetadataMap};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty, info_span};

use crate::{
    auth::{Shared, StopOnDrop},
    verifier::TRACE_HEADERS,
};

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

/// The metadata authentication reads: credentials and trace context only.
fn relevant_metadata(headers: &http::HeaderMap) -> MetadataMap {
    let mut picked = http::HeaderMap::new();
    for name in std::iter::once("authorization").chain(TRACE_HEADERS) {
        if let Some(value) = headers.get(name) {
            picked.insert(name, value.clone());
        }
    }
    MetadataMap::from_headers(picked)
}

fn outcome(result: &Result<Option<Principal>, Error>) -> &'static str {
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
    for (name, value) in decision.headers() {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let metadata = relevant_metadata(request.headers());
            // Plaintext and TLS servers put different connect info in.
            let peer =
                apitoken_proto::peer::remote_addr(request.extensions()).map(|addr| addr.ip());
            let span =
                info_span!("apitoken.authenticate", method = %path, token = Empty, outcome = Empty);
            let verdict = shared
                .authenticate(&path, &metadata, peer)
                .instrument(span.clone())
                .await;
            span.record("outcome", outcome(&verdict.result));
            let mut response = match verdict.result {
                Ok(Some(principal)) => {
                    span.record("token", principal.name.to_string());
                    request.extensions_mut().insert(principal);
                    inner.call(request).await?
                }
                Ok(None) => inner.call(request).await?,
                Err(error) => Status::from(error).into_http(),
            };
            if let Some(decision) = &verdict.decision {
                add_rate_headers(response.headers_mut(), decision);
            }
            Ok(response)
        })
    }
}
