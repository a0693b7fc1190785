//! One connection of the console: HTTP/1.1 or HTTP/2 (hyper), with the
//! connection's addresses put in every request for the service layer, a
//! bound on the time to send request headers and on the connection's life.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection (a browser opens another).
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(300);
/// Most header bytes of an HTTP/2 request.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The addresses of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The browser's end.
    pub remote: SocketAddr,
    /// The console's end.
    pub local: Option<SocketAddr>,
}

/// Serves `router` on `io` until the client closes, the connection's life
/// ends or the connection fails (failures are the client's and are not
/// reported).
pub async fn serve_connection<I>(io: I, connection: Connection, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(connection);
        router.clone().oneshot(request)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(32);
    let serving = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, serving).await;
}
