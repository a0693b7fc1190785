//! The connections: accept loop, TLS, and the limits of the transport.
//!
//! - Every accepted socket gets `TCP_NODELAY` (small gRPC replies are not
//!   held back by Nagle's algorithm waiting for the peer's delayed ACK).
//! - At most `max_connections` connections are open (handshakes included);
//!   one more is closed at once, and the first refusal of a burst is logged.
//! - The TLS handshake (if any) and the HTTP/2 connection preface must
//!   arrive within `handshake_timeout`, or the connection is closed: a peer
//!   that connects and sends nothing holds a slot for that long at most.
//! - A connection with no call in flight for `idle_timeout` is closed.
//! - HTTP/2 keepalive pings every `http2_keepalive_interval`; a ping not
//!   answered within `http2_keepalive_timeout` closes the connection.
//! - At most `max_concurrent_streams` calls per connection, header lists up
//!   to `max_header_list_size`, request messages up to `max_request_size`:
//!   a larger one is `RESOURCE_EXHAUSTED` naming the limit (tonic alone says
//!   `OUT_OF_RANGE`).
//!
//! Plaintext is for loopback and for running behind a mesh: listening in
//! plaintext on another address needs `plaintext` (`--plaintext`).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use apitoken_domain::Error;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Status, body::Body, transport::server::Connected};
use tower::{Layer, Service};
use tracing::{debug, warn};

use crate::tls::{TlsFiles, TlsReloader};

/// The HTTP/2 connection preface every gRPC client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the server talks to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Serve TLS with these files (plaintext when `None`).
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Allow plaintext on an address that is not loopback (behind a mesh).
    pub plaintext: bool,
    /// Most open connections.
    pub max_connections: usize,
    /// Time for the TLS handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings.
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Most concurrent calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// Largest request message, in bytes.
    pub max_request_size: usize,
    /// Largest header list of a request, in bytes.
    pub max_header_list_size: u32,
    /// `TCP_NODELAY` on accepted sockets; on unless measuring its effect.
    pub tcp_nodelay: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            tls: None,
            tls_reload_interval: Duration::from_secs(5),
            plaintext: false,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 200,
            max_request_size: 4 * 1024 * 1024,
            max_header_list_size: 16 * 1024,
            tcp_nodelay: true,
        }
    }
}

/// Bounds of `--max-connections`: `(smallest, largest)`.
pub const MAX_CONNECTIONS_RANGE: (usize, usize) = (1, 1_000_000);
/// Bounds of `--max-concurrent-streams`.
pub const MAX_CONCURRENT_STREAMS_RANGE: (u32, u32) = (1, 100_000);
/// Bounds of `--max-request-size`: 1 KiB to 64 MiB.
pub const MAX_REQUEST_SIZE_RANGE: (usize, usize) = (1024, 64 * 1024 * 1024);
/// Bounds of `--max-header-list-size`: 1 KiB to 1 MiB.
pub const MAX_HEADER_LIST_SIZE_RANGE: (u32, u32) = (1024, 1024 * 1024);
/// Bounds of every duration: 1 ms to 1 day.
pub const DURATION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(86_400));

impl TransportConfig {
    /// Checks every bound; the error names the flag and the limit.
    pub fn validate(&self) -> Result<(), String> {
        fn within<T: PartialOrd + std::fmt::Debug>(
            flag: &str,
            value: T,
            (low, high): (T, T),
        ) -> Result<(), String> {
            if value < low || value > high {
                return Err(format!(
                    "{flag} is {value:?}; it must be between {low:?} and {high:?}"
                ));
            }
            Ok(())
        }
        within(
            "--max-connections",
            self.max_connections,
            MAX_CONNECTIONS_RANGE,
        )?;
        within(
            "--max-concurrent-streams",
            self.max_concurrent_streams,
            MAX_CONCURRENT_STREAMS_RANGE,
        )?;
        within(
            "--max-request-size",
            self.max_request_size,
            MAX_REQUEST_SIZE_RANGE,
        )?;
        within(
            "--max-header-list-size",
            self.max_header_list_size,
            MAX_HEADER_LIST_SIZE_RANGE,
        )?;
        for (flag, value) in [
            ("--tls-reload-interval", self.tls_reload_interval),
            ("--handshake-timeout", self.handshake_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
            ("--http2-keepalive-timeout", self.http2_keepalive_timeout),
        ] {
            within(flag, value, DURATION_RANGE)?;
        }
        if self.tls.is_some() && self.plaintext {
            return Err("--plaintext and --tls-cert exclude each other".to_owned());
        }
        Ok(())
    }

    /// Refuses plaintext on an address that is not loopback unless asked for.
    pub fn check_listener(&self, address: SocketAddr) -> Result<(), String> {
        if self.tls.is_none() && !self.plaintext && !address.ip().is_loopback() {
            return Err(format!(
                "refusing to serve plaintext on {address}: bearer tokens would cross the \
                 network in clear. Configure TLS (--tls-cert and --tls-key, or APITOKEN_TLS_CERT \
                 and APITOKEN_TLS_KEY), or pass --plaintext (APITOKEN_PLAINTEXT=true) if a mesh \
                 or load balancer encrypts the traffic"
            ));
        }
        Ok(())
    }
}

/// What a call in flight and a connection share: whether the connection
/// is idle, and since when.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// When the connection becomes idle-expired; `None` while calls run.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self
                .last_active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                + timeout,
        )
    }
}

/// Open connections by peer address, so that a call (which knows its peer
/// from tonic's connect info) finds its connection's [`Activity`].
#[derive(Debug, Default)]
pub struct Connections {
    by_peer: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
}

impl Connections {
    fn register(self: &Arc<Self>, peer: SocketAddr) -> Registration {
        let activity = Arc::new(Activity::new());
        self.by_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Arc::clone(&activity));
        Registration {
            connections: Arc::clone(self),
            peer,
            activity,
        }
    }

    fn find(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        self.by_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .cloned()
    }
}

/// A connection's entry in [`Connections`], removed on drop.
#[derive(Debug)]
struct Registration {
    connections: Arc<Connections>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_peer = self
            .connections
            .by_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if by_peer
            .get(&self.peer)
            .is_some_and(|current| Arc::ptr_eq(current, &self.activity))
        {
            by_peer.remove(&self.peer);
        }
    }
}

/// How a TCP connection becomes the stream HTTP/2 is spoken on.
pub(crate) trait Handshake: Clone + Send + Sync + 'static {
    /// The stream.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    /// Turns `tcp` into the stream.
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plaintext: the TCP stream itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// TLS with the current configuration of a [`TlsReloader`].
#[derive(Debug, Clone)]
pub(crate) struct Tls(pub(crate) Arc<TlsReloader>);

impl Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send {
        self.0.acceptor().accept(tcp)
    }
}

/// What the accept loop and connections need to know.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
}

impl From<&TransportConfig> for ConnLimits {
    fn from(config: &TransportConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            tcp_nodelay: config.tcp_nodelay,
        }
    }
}

/// Accepts on `listener` in a task of its own: every connection that
/// completes its handshake and sends the HTTP/2 preface in time comes out
/// of the returned stream. The task (and the listener) ends when the
/// stream is dropped.
pub(crate) fn incoming<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    limits: ConnLimits,
    connections: Arc<Connections>,
) -> impl Stream<Item = io::Result<Conn<H::Io>>> + Send + 'static {
    use tokio_stream::StreamExt as _;
    let (ready_tx, ready) = mpsc::channel::<Conn<H::Io>>(64);
    tokio::spawn(accept_loop(
        listener,
        handshake,
        limits,
        connections,
        ready_tx,
    ));
    ReceiverStream::new(ready).map(Ok)
}

async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    limits: ConnLimits,
    connections: Arc<Connections>,
    ready: mpsc::Sender<Conn<H::Io>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ready.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: do not spin.
                if !matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    warn!(error = %err, "accept failed: pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(tcp);
            if last_refusal_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                warn!(
                    %peer,
                    limit = limits.max_connections,
                    "connection limit reached: closing new connections at once (--max-connections)"
                );
                last_refusal_logged = Some(Instant::now());
            }
            continue;
        };
        if let Err(err) = tcp.set_nodelay(limits.tcp_nodelay) {
            debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        tokio::spawn(establish(
            tcp,
            peer,
            slot,
            handshake.clone(),
            limits.clone(),
            Arc::clone(&connections),
            ready.clone(),
        ));
    }
}

/// Handshake and preface within the timeout, then hand the connection over.
async fn establish<H: Handshake>(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    handshake: H,
    limits: ConnLimits,
    connections: Arc<Connections>,
    ready: mpsc::Sender<Conn<H::Io>>,
) {
    let opened = tokio::time::timeout(limits.handshake_timeout, async {
        let mut io = handshake.handshake(tcp).await?;
        let mut preface = [0u8; PREFACE.len()];
        io.read_exact(&mut preface).await?;
        if &preface != PREFACE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP/2 connection preface (gRPC needs HTTP/2; TLS client to a plaintext \
                 port?)",
            ));
        }
        Ok(io)
    })
    .await;
    let io = match opened {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "connection refused during handshake");
            return;
        }
        Err(_) => {
            debug!(%peer, timeout = ?limits.handshake_timeout, "handshake timed out: closing (--handshake-timeout)");
            return;
        }
    };
    let registration = connections.register(peer);
    let conn = Conn {
        io,
        preface_left: PREFACE.len(),
        idle: Idle::new(Arc::clone(&registration.activity), limits.idle_timeout),
        _registration: registration,
        _slot: slot,
    };
    // Fails only when the server is shutting down: the connection closes.
    let _ = ready.send(conn).await;
}

/// The idle timer of a connection.
#[derive(Debug)]
struct Idle {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    read_since_check: bool,
    expired: bool,
}

impl Idle {
    fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        Self {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            read_since_check: false,
            expired: false,
        }
    }

    /// Whether the connection has been idle too long; registers `cx` with
    /// the timer otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while !self.expired {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let next = match self.activity.idle_deadline(self.timeout) {
                None => now + self.timeout,
                // Bytes arrived since the last look: maybe a new call that
                // has not reached the service yet. Look again shortly.
                Some(deadline) if deadline <= now && self.read_since_check => {
                    now + self.timeout.min(Duration::from_secs(1))
                }
                Some(deadline) if deadline <= now => {
                    self.expired = true;
                    debug!("idle timeout: closing the connection (--idle-timeout)");
                    break;
                }
                Some(deadline) => deadline,
            };
            self.read_since_check = false;
            self.timer.as_mut().reset(next);
        }
        true
    }
}

/// An established connection: the stream, its slot under
/// `max_connections`, the preface to replay, and the idle timer.
#[derive(Debug)]
pub(crate) struct Conn<IO> {
    io: IO,
    preface_left: usize,
    idle: Idle,
    _registration: Registration,
    _slot: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.preface_left > 0 {
            let start = PREFACE.len() - this.preface_left;
            let n = this.preface_left.min(buf.remaining());
            buf.put_slice(&PREFACE[start..start + n]);
            this.preface_left -= n;
            return Poll::Ready(Ok(()));
        }
        if this.idle.poll_expired(cx) {
            // End of stream: HTTP/2 closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.idle.read_since_check = true;
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A call in flight on a connection: the connection is not idle.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The layer in front of every service: marks calls in flight on their
/// connection (for the idle timeout, until the response body ends) and
/// reports an oversized request as `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone)]
pub struct TransportLayer {
    connections: Arc<Connections>,
    max_request_size: usize,
}

impl TransportLayer {
    /// The layer for `connections`.
    pub fn new(connections: Arc<Connections>, max_request_size: usize) -> Self {
        Self {
            connections,
            max_request_size,
        }
    }
}

impl<S> Layer<S> for TransportLayer {
    type Service = TransportService<S>;

    fn layer(&self, inner: S) -> TransportService<S> {
        TransportService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`TransportLayer`].
#[derive(Debug, Clone)]
pub struct TransportService<S> {
    inner: S,
    layer: TransportLayer,
}

impl<S, B> Service<http::Request<B>> for TransportService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = apitoken_proto::peer::remote_addr(request.extensions())
            .and_then(|peer| self.layer.connections.find(peer))
            .map(InFlight::start);
        let limit = self.layer.max_request_size;
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if let Some(status) = oversized(&response, limit) {
                return Ok(status.into_http());
            }
            Ok(match in_flight {
                Some(in_flight) => response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }),
                None => response,
            })
        })
    }
}

/// tonic's own message for a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// `RESOURCE_EXHAUSTED` (gRPC's code for "message larger than the server
/// accepts") for tonic's `OUT_OF_RANGE` about a too large request.
fn oversized(response: &http::Response<Body>, limit: usize) -> Option<Status> {
    let status = response.extensions().get::<Status>()?;
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
        return None;
    }
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map_or_else(String::new, |bytes| format!(" of {bytes} bytes"));
    Some(Status::from(Error::ResourceExhausted {
        subject: "request message".to_owned(),
        description: format!(
            "the request message{found} is larger than the limit of {limit} bytes \
             (--max-request-size)"
        ),
        retry_after: None,
    }))
}

/// A response body that keeps its call in flight until it ends.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
