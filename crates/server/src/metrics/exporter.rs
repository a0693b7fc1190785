//! The Prometheus recorder and the `GET /metrics` listener.
//!
//! [`install`] makes the Prometheus recorder the process's global one (once;
//! later calls return the same handle). [`serve`] answers on its own
//! listener, HTTP/1.1 only: `GET /metrics` gives the text exposition format
//! (gauges read at that moment, see [`super::collect`]), any other path 404,
//! any other method 405. No request body is read; headers must arrive within
//! [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections are served at
//! once (more are closed at accept). Metrics hold no secret, but namespace
//! and method names: expose the listener to the monitoring network only.

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};

use super::{collect::Collector, names};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time for a request's headers to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histograms are folded and idle data dropped.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the global one and describes every
/// metric; the same handle on later calls. Call before building the
/// [`crate::App`], so its counters register with it.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_DURATION.to_owned()),
                    names::DURATION_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(names::EVENT_DELIVERY_LAG.to_owned()),
                        names::DURATION_BUCKETS,
                    )
                })
                .map_err(|error| format!("metrics: {error}"))?;
            let handle = builder
                .install_recorder()
                .map_err(|error| format!("cannot install the metrics recorder: {error}"))?;
            names::describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Ok(handle)
        })
        .clone()
}

/// Serves `GET /metrics` on `listener` until `stopping`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    collector: Arc<Collector>,
    mut stopping: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "serving Prometheus metrics on /metrics");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticker.tick().await;
                handle.run_upkeep();
            }
        })
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let collector = Arc::clone(&collector);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let response = respond(&request, &handle, &collector);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A whole connection is bounded too: a slow reader cannot hold
            // a slot for ever.
            match tokio::time::timeout(Duration::from_secs(60), connection).await {
                Ok(Err(error)) => debug!(%error, "metrics connection ended"),
                Err(_) => debug!(%peer, "metrics connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
    upkeep.abort();
}

fn respond<B>(
    request: &Request<B>,
    handle: &PrometheusHandle,
    collector: &Collector,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
    }
    collector.collect();
    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
