//! Per-method request counts: a tower layer in front of every service.
//! Operators read them to see traffic; tests read them to prove that a call
//! never reached the server (an interceptor answered it, or refused it, alone).
//!
//! Paths are chosen by callers, so the table is bounded: only the methods
//! the server serves get their own count ([`RequestCounter::new`]); every
//! other path is counted under [`OTHER`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use tower::{Layer, Service};

/// The count of every path the server does not serve.
pub const OTHER: &str = "other";

/// Counts requests by gRPC method path (`/pkg.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    known: Arc<[String]>,
}

impl RequestCounter {
    /// A counter for `known` paths (`/pkg.Service/Method`), every other path
    /// counted as [`OTHER`].
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        Self {
            counts: Arc::default(),
            known: known.into_iter().collect(),
        }
    }

    /// Requests received so far for `path`.
    pub fn count(&self, path: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// How many distinct paths have a count (bounded by the served methods).
    pub fn distinct_paths(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn record(&self, path: &str) {
        let key = if self.known.iter().any(|known| known == path) {
            path
        } else {
            OTHER
        };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                counts.insert(key.to_owned(), 1);
            }
        }
    }
}

/// Every method this server serves: the apitoken API (read from its
/// descriptor set), health and reflection.
pub fn served_methods() -> Vec<String> {
    use apitoken_proto::prost::Message as _;
    let mut methods: Vec<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(apitoken_proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.push(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    methods
}

impl<S> Layer<S> for RequestCounter {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.counter.record(request.uri().path());
        self.inner.call(request)
    }
}
