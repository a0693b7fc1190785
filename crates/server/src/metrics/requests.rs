//! Every gRPC call, by method and code, with its duration: a tower layer in
//! front of every service.
//!
//! Operators read `apitoken_grpc_requests_total{method,code}` and
//! `apitoken_grpc_request_duration_seconds{method}`; tests read
//! [`RequestCounter::count`] to prove that a call never reached the server
//! (an interceptor answered it, or refused it, alone).
//!
//! Paths are chosen by callers, so nothing here is keyed by them: only the
//! methods the server serves get their own series ([`RequestCounter::new`]),
//! every other path is counted under [`OTHER`]. The handles of every
//! series are registered once; a call costs a hash lookup in a fixed table,
//! two clock reads and a few atomic adds, and allocates nothing.
//!
//! The layer also opens each call's span ([`crate::telemetry::request_span`]:
//! method, request id, trace id, on every log line of the call) and sends
//! the request id back in `x-request-id`.
//!
//! The code is read from the response headers (a trailers-only reply, which
//! is how tonic sends every error) or else from the trailers; a body dropped
//! before its trailers (the client went away) counts as `CANCELLED`.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::names;

/// The label and count of every path the server does not serve.
pub const OTHER: &str = "other";

/// gRPC status codes, by number, as labels.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// The series of one method.
#[derive(Debug)]
struct MethodSeries {
    count: AtomicU64,
    codes: [Counter; 17],
    duration: Histogram,
}

impl MethodSeries {
    fn register(method: &str) -> Self {
        let label = method.to_owned();
        Self {
            count: AtomicU64::new(0),
            codes: CODES.map(|code| {
                metrics::counter!(names::REQUESTS, "method" => label.clone(), "code" => code)
            }),
            duration: metrics::histogram!(names::REQUEST_DURATION, "method" => label.clone()),
        }
    }
}

/// Counts requests by gRPC method path (`/pkg.Service/Method`).
#[derive(Debug, Clone)]
pub struct RequestCounter {
    methods: Arc<HashMap<String, usize>>,
    /// One per known method, then [`OTHER`].
    series: Arc<[MethodSeries]>,
}

impl Default for RequestCounter {
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl RequestCounter {
    /// A counter for `known` paths (`/pkg.Service/Method`), every other path
    /// counted as [`OTHER`]. Registers every series with the installed
    /// recorder.
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        let mut methods = HashMap::new();
        let mut series = Vec::new();
        for method in known {
            if let std::collections::hash_map::Entry::Vacant(slot) = methods.entry(method) {
                series.push(MethodSeries::register(slot.key()));
                slot.insert(series.len() - 1);
            }
        }
        series.push(MethodSeries::register(OTHER));
        Self {
            methods: Arc::new(methods),
            series: series.into(),
        }
    }

    /// Requests received so far for `path` ([`OTHER`]: every path not
    /// served).
    pub fn count(&self, path: &str) -> u64 {
        let series = if path == OTHER {
            self.series.last()
        } else {
            self.methods.get(path).map(|index| &self.series[*index])
        };
        series.map_or(0, |series| series.count.load(Ordering::Relaxed))
    }

    /// How many distinct paths have a count (bounded by the served methods).
    pub fn distinct_paths(&self) -> usize {
        self.series
            .iter()
            .filter(|series| series.count.load(Ordering::Relaxed) > 0)
            .count()
    }
}

/// Every method this server serves: the apitoken API (read from its
/// descriptor set), health, reflection and Envoy's `Check`.
pub fn served_methods() -> Vec<String> {
    use apitoken_proto::prost::Message as _;
    let mut methods: Vec<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        crate::ext_authz::CHECK_PATH,
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

/// What a call records when it ends.
#[derive(Debug)]
struct Pending {
    counter: RequestCounter,
    index: usize,
    started: Instant,
}

impl Pending {
    fn finish(self, code: usize) {
        let series = &self.counter.series[self.index];
        series.codes[code.min(CODES.len() - 1)].increment(1);
        series.duration.record(self.started.elapsed().as_secs_f64());
    }
}

/// The code of a `grpc-status` header value.
fn code_of(value: &http::HeaderValue) -> usize {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|code| *code < CODES.len())
        .unwrap_or(UNKNOWN)
}

impl<S, B, ResBody> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Metered<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (span, made_id) =
            crate::telemetry::request_span(request.headers(), request.uri().path());
        let reply_id = match made_id {
            Some(id) => {
                let value = http::HeaderValue::from_str(&id.0).ok();
                request.extensions_mut().insert(id);
                value
            }
            None => request.headers().get("x-request-id").cloned(),
        };
        let path = request.uri().path();
        let index = self
            .counter
            .methods
            .get(path)
            .copied()
            .unwrap_or(self.counter.series.len() - 1);
        self.counter.series[index]
            .count
            .fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(request));
        CountedFuture {
            future,
            span,
            reply_id,
            pending: Some(Pending {
                counter: self.counter.clone(),
                index,
                started,
            }),
        }
    }
}

pin_project! {
    /// The response future of [`Counted`].
    #[derive(Debug)]
    pub struct CountedFuture<F> {
        #[pin]
        future: F,
        // The call's span, entered while it runs; reply_id is sent back.
        span: tracing::Span,
        reply_id: Option<http::HeaderValue>,
        pending: Option<Pending>,
    }
}

impl<F, ResBody, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<Metered<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            std::task::ready!(this.future.poll(cx))
        };
        let pending = this.pending.take();
        Poll::Ready(match result {
            Ok(mut response) => {
                if let Some(id) = this.reply_id.take() {
                    response.headers_mut().insert("x-request-id", id);
                }
                // Trailers-only (every error tonic sends): the code is here.
                let pending = match (response.headers().get("grpc-status"), pending) {
                    (Some(status), Some(pending)) => {
                        pending.finish(code_of(status));
                        None
                    }
                    (_, pending) => pending,
                };
                Ok(response.map(|body| Metered { body, pending }))
            }
            Err(error) => {
                if let Some(pending) = pending {
                    pending.finish(UNKNOWN);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that records its call's code at the trailers (or
    /// `CANCELLED` if dropped before them).
    #[derive(Debug)]
    pub struct Metered<B> {
        #[pin]
        body: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for Metered<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.finish(CANCELLED);
            }
        }
    }
}

impl<B: HttpBody> HttpBody for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(pending) = this.pending.take()
                {
                    pending.finish(trailers.get("grpc-status").map_or(UNKNOWN, code_of));
                }
            }
            Some(Err(_)) | None => {
                if let Some(pending) = this.pending.take() {
                    // Ended without trailers: an aborted stream.
                    pending.finish(if frame.is_none() { UNKNOWN } else { CANCELLED });
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
