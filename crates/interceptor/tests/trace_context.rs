//! The layer's span is the parent of its call to apitoken: with a
//! tracing-opentelemetry subscriber in the service, the `VerifyApiToken`
//! call carries a `traceparent` in the caller's trace whose parent id is the
//! `apitoken.authenticate` span's own id (not the caller's, as when the
//! headers were only passed on).
//!
//! apitoken here is a stand-in that records the metadata it receives and
//! refuses every call, so the test sees exactly what the layer sent.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use apitoken_interceptor::{ApiTokenAuth, Role};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::{body::Body, server::NamedService};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing_subscriber::layer::SubscriberExt;

/// Records every request's headers; answers UNAUTHENTICATED.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl NamedService for Recorder {
    const NAME: &'static str = "apitoken.v1.ApiTokenService";
}

impl tower::Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.seen
            .lock()
            .unwrap()
            .push((request.uri().path().to_owned(), request.headers().clone()));
        std::future::ready(Ok(
            tonic::Status::unauthenticated("unknown token").into_http()
        ))
    }
}

async fn serve<S>(service: S) -> std::net::SocketAddr
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

#[tokio::test(flavor = "current_thread")]
async fn the_verification_call_is_a_child_of_the_layers_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // One thread (current_thread runtime): the default subscriber sees all.
    let _guard = tracing::subscriber::set_default(subscriber);

    let recorder = Recorder::default();
    let apitoken = serve(recorder.clone()).await;
    let format = apitoken_domain::token::TokenFormat::new("apitoken").unwrap();
    let credential = format.generate().unwrap().expose().to_owned();
    let auth = ApiTokenAuth::builder()
        .namespace("team-a", credential)
        .require("/grpc.health.v1.Health/*", Role::Viewer)
        .connect(format!("http://{apitoken}"))
        .await
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(auth.layer())
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{service}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    let caller_token = format.generate().unwrap();
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", caller_token.expose()).parse().unwrap(),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let refused = client.check(request).await.expect_err("unknown token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let traceparent = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|(path, _)| path.ends_with("/VerifyApiToken"))
        .and_then(|(_, headers)| headers.get("traceparent").cloned())
        .expect("the verification carried a traceparent");
    let traceparent = traceparent.to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], caller_trace, "the caller's trace: {traceparent}");
    assert_ne!(parts[2], caller_span, "the layer's span, not the caller's");

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let authenticate = spans
        .iter()
        .find(|span| span.name == "apitoken.authenticate")
        .expect("the layer's span was exported");
    assert_eq!(
        authenticate.span_context.trace_id().to_string(),
        caller_trace
    );
    assert_eq!(authenticate.parent_span_id.to_string(), caller_span);
    assert_eq!(
        authenticate.span_context.span_id().to_string(),
        parts[2],
        "apitoken's call is a child of apitoken.authenticate"
    );
}
