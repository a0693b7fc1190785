//! What the web console's tests share: the real server in-process (gRPC
//! on `127.0.0.1:0`, the console on another `127.0.0.1:0`) and a real
//! HTTP/1.1 client (hyper) that keeps cookies like a browser.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    dead_code,
    unreachable_pub
)]

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use apitoken_domain::{
    Role,
    clock::{SharedClock, SystemClock},
};
use apitoken_server::{
    App, AppConfig,
    bootstrap::{BootstrapRequest, bootstrap_token},
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::oneshot};

pub struct Server {
    pub web: SocketAddr,
    pub owner: String,
    pub viewer: String,
    pub other: String,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server with the default settings.
pub async fn start() -> Server {
    start_with(|_| {}).await
}

/// A server whose settings `configure` changes.
pub async fn start_with(configure: impl FnOnce(&mut AppConfig)) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("web.db").display());
    let clock: SharedClock = Arc::new(SystemClock);
    let mut config = AppConfig::new(url);
    configure(&mut config);
    let app = App::build(config, Arc::clone(&clock))
        .await
        .expect("builds");
    let mint = |namespace: &str, id: &str, role: Role| BootstrapRequest {
        namespace: namespace.into(),
        token_id: id.into(),
        role,
        ttl: None,
        interceptor: false,
    };
    let mut secrets = Vec::new();
    for request in [
        mint("team-a", "owner-a", Role::Owner),
        mint("team-a", "viewer-a", Role::Viewer),
        mint("team-b", "owner-b", Role::Owner),
    ] {
        let (_, secret) = bootstrap_token(app.store(), app.format(), app.keys(), &clock, &request)
            .await
            .expect("bootstrap");
        secrets.push(secret.expose().to_owned());
    }
    let web = TcpListener::bind("127.0.0.1:0").await.expect("bind web");
    let web_addr = web.local_addr().expect("addr");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.with_web_listener(web).serve(grpc, async {
        let _ = stopped.await;
    }));
    Server {
        web: web_addr,
        owner: secrets[0].clone(),
        viewer: secrets[1].clone(),
        other: secrets[2].clone(),
        stop: Some(stop),
        _dir: dir,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key == "set-cookie")
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The first `name="csrf" value="…"` of the page.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a csrf field") + marker.len();
        self.body[start..start + 64].to_owned()
    }

    /// Everything the client saw, for "never in a response" checks.
    pub fn everything(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{}\n{}", headers.join("\n"), self.body)
    }
}

/// A cookie-keeping HTTP/1.1 client, over TLS when given a connector.
pub struct Browser {
    pub addr: SocketAddr,
    pub cookies: BTreeMap<String, String>,
    pub seen: Vec<String>,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// Sends `request` over `io` (plain or TLS) with HTTP/1.1.
async fn exchange<T>(
    io: T,
    request: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("response")
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            cookies: BTreeMap::new(),
            seen: Vec::new(),
            tls: None,
        }
    }

    /// A browser that speaks TLS (ALPN `http/1.1` only) and trusts `ca`.
    pub fn with_tls(
        addr: SocketAddr,
        ca: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    ) -> Self {
        use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("ca");
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
            ..Self::new(addr)
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("user-agent", "web-test/1.0");
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header("cookie", cookie.join("; "));
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let body = match form {
            Some(pairs) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                let mut serializer = form_urlencoded::Serializer::new(String::new());
                for (key, value) in pairs {
                    serializer.append_pair(key, value);
                }
                serializer.finish()
            }
            None => String::new(),
        };
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let response = match &self.tls {
            None => exchange(stream, request).await,
            Some(connector) => {
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let stream = connector
                    .connect(name, stream)
                    .await
                    .expect("TLS handshake");
                exchange(stream, request).await
            }
        };
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let reply = Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        for line in reply.set_cookies() {
            let pair = line.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || line.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        self.seen.push(reply.everything());
        reply
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None, &[]).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send("POST", path, Some(form), &[]).await
    }

    pub async fn sign_in(&mut self, token: &str) -> Reply {
        let page = self.get("/sign-in").await;
        assert_eq!(page.status, 200);
        let csrf = page.csrf();
        self.post("/sign-in", &[("csrf", &csrf), ("token", token)])
            .await
    }

    /// The session's CSRF token, from the token list's sign-out form.
    pub async fn csrf(&mut self) -> String {
        self.get("/tokens").await.csrf()
    }
}

pub async fn create(browser: &mut Browser, id: &str, role: &str, extra: &[(&str, &str)]) -> Reply {
    let csrf = browser.csrf().await;
    // The first value of a field counts: `extra` goes first to override.
    let mut form = extra.to_vec();
    form.extend_from_slice(&[
        ("csrf", csrf.as_str()),
        ("api_token_id", id),
        ("role", role),
        ("expiry", "30"),
    ]);
    browser.post("/tokens", &form).await
}

/// A browser signed in as the owner of team-a, who has just created the
/// editor token `ci-deploy` (its secret waiting at `/secret?token=ci-deploy`).
pub async fn owner_with_ci_deploy(server: &Server) -> Browser {
    let mut browser = Browser::new(server.web);
    browser.sign_in(&server.owner).await;
    assert_eq!(
        create(&mut browser, "ci-deploy", "editor", &[])
            .await
            .status,
        303
    );
    browser
}
