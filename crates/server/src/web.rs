//! The web console's listener (`--web-listen`): the `apitoken-web` pages
//! over this server's own [`ApiTokenService`], on a port of their own.
//!
//! On by default on `127.0.0.1:50053`; `--web-listen off` turns it off.
//! The default address is best effort (a second server on the machine
//! starts without a console and says so); an address given explicitly
//! must be bound or the server does not start. Plaintext only on loopback
//! unless `--plaintext`, as for gRPC; under `--tls-cert` the console
//! serves TLS with the same certificate (reloaded with it; ALPN `h2` and
//! `http/1.1`, where gRPC offers `h2` only) and its cookies are `Secure`.
//! At most [`MAX_CONNECTIONS`] connections, each with a TLS
//! handshake bound of [`HANDSHAKE_TIMEOUT`]; stops with the server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use apitoken_domain::{audit::ConsoleSession, clock::SharedClock};
use apitoken_web::{
    Connection, Console, Hooks, NamespacePolicy, SessionAudit, WebConfig, session::Identity,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    policy::{ExpiryPolicy, Policy},
    service::ApiTokenService,
    tls::TlsReloader,
};

/// The default address of the console.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:50053";
/// Most console connections at once (more wait in the kernel's backlog).
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the console listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebListen {
    /// Not at all.
    #[default]
    Off,
    /// On the default address, if it is free.
    Default(SocketAddr),
    /// On this address, or the server does not start.
    Explicit(SocketAddr),
}

/// Parses `--web-listen`: `off` or an address.
pub fn parse_web_listen(text: &str) -> Result<WebListen, String> {
    match text.trim() {
        "off" | "none" | "" => Ok(WebListen::Off),
        address => address.parse().map(WebListen::Explicit).map_err(|_| {
            format!("{address:?} is not an address such as 127.0.0.1:50053, nor `off`")
        }),
    }
}

/// The default `--web-listen`.
pub fn default_web_listen() -> WebListen {
    DEFAULT_WEB_LISTEN
        .parse()
        .map(WebListen::Default)
        .unwrap_or(WebListen::Off)
}

/// Binds the console's listener as `listen` says: `Ok(None)` when off, or
/// when the default address is taken.
pub async fn bind(listen: WebListen) -> Result<Option<TcpListener>, String> {
    match listen {
        WebListen::Off => Ok(None),
        WebListen::Default(address) => match TcpListener::bind(address).await {
            Ok(listener) => Ok(Some(listener)),
            Err(error) => {
                warn!(console = %address, %error, "web console off: cannot listen on its default address (set --web-listen)");
                Ok(None)
            }
        },
        WebListen::Explicit(address) => TcpListener::bind(address)
            .await
            .map(Some)
            .map_err(|err| format!("cannot listen on {address} (--web-listen): {err}")),
    }
}

/// The console's requests in the server's metrics
/// (`apitoken_web_requests_total{route,status}` and their durations).
/// Bounded: routes are the console's patterns (or `other`), statuses the
/// console's own replies.
#[derive(Debug)]
struct WebMetrics;

impl apitoken_web::Observer for WebMetrics {
    fn answered(&self, route: &str, status: u16, elapsed: Duration) {
        use crate::metrics::names;
        metrics::counter!(
            names::WEB_REQUESTS,
            "route" => route.to_owned(),
            "status" => status.to_string()
        )
        .increment(1);
        metrics::histogram!(names::WEB_REQUEST_DURATION, "route" => route.to_owned())
            .record(elapsed.as_secs_f64());
    }
}

/// The server's expiry policy as the create form's choices (the service,
/// which owns the rules, still checks every request).
#[derive(Debug)]
struct ConsolePolicy(Arc<Policy>);

impl NamespacePolicy for ConsolePolicy {
    fn expiry(&self, namespace: &str) -> ExpiryPolicy {
        self.0.expiry(namespace)
    }

    fn max_grace(&self) -> Option<Duration> {
        Some(self.0.max_grace)
    }
}

/// Sign-in and sign-out, audited by the service layer.
#[derive(Debug)]
struct ConsoleAudit(ApiTokenService);

impl SessionAudit for ConsoleAudit {
    fn session(
        &self,
        event: ConsoleSession,
        identity: &Identity,
        request: tonic::Request<()>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let service = self.0.clone();
        let (name, uid) = (identity.token_name.clone(), identity.uid.clone());
        Box::pin(async move {
            service
                .audit_console_session(&request, &name, &uid, event)
                .await;
        })
    }
}

/// Serves the console for `service` on `listener` until `stopping`.
pub fn spawn(
    listener: TcpListener,
    service: ApiTokenService,
    clock: SharedClock,
    tls: Option<Arc<TlsReloader>>,
    policy: Arc<Policy>,
    mut stopping: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = WebConfig {
        tls: tls.is_some(),
        ..WebConfig::default()
    };
    let hooks = Hooks {
        observer: Some(Arc::new(WebMetrics)),
        sessions: Some(Arc::new(ConsoleAudit(service.clone()))),
        policy: Some(Arc::new(ConsolePolicy(policy))),
    };
    let router = Console::hooked(service, clock, config, hooks).router();
    let local = listener.local_addr().ok();
    // `console=`, never `address=`: scripts and tests read the gRPC
    // address from the first `address=` of the log.
    if let Some(address) = local {
        info!(console = %address, tls = tls.is_some(), "serving the web console");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.changed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "web console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection { remote, local };
            let router = router.clone();
            let tls = tls.as_ref().map(|tls| tls.web_acceptor());
            let mut stop = stopping.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let serving = async move {
                    match tls {
                        None => apitoken_web::serve_connection(stream, connection, router).await,
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            if let Ok(Ok(stream)) = handshake.await {
                                apitoken_web::serve_connection(stream, connection, router).await;
                            }
                        }
                    }
                };
                tokio::select! {
                    () = serving => {}
                    _ = stop.changed() => {}
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!(parse_web_listen("off"), Ok(WebListen::Off));
        assert!(matches!(
            parse_web_listen("127.0.0.1:8080"),
            Ok(WebListen::Explicit(_))
        ));
        assert!(parse_web_listen("localhost").is_err());
        assert!(matches!(default_web_listen(), WebListen::Default(_)));
    }
}
