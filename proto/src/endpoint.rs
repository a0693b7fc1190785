//! Channels to apitoken that never send a bearer token in clear by accident.
//!
//! [`endpoint`] turns an endpoint URL and [`ConnectOptions`] into a tonic
//! [`Endpoint`]; [`connect`] and [`connect_lazy`] make the [`Channel`].
//!
//! - `https://` always means TLS (rustls on ring). The server is verified
//!   against the given CA ([`ConnectOptions::ca`]) only, or, without one,
//!   against the system's trust store (`/etc/ssl/certs` on Debian). There is
//!   no fallback to plaintext.
//! - `http://` is plaintext. It is allowed to a loopback host (`127.0.0.0/8`,
//!   `::1`, `localhost`); to anything else it is refused before any connection
//!   is attempted, unless [`ConnectOptions::allow_plaintext`] says the
//!   operator wants it (e.g. a service mesh encrypts the hop).
//! - Mutual TLS: [`ConnectOptions::identity`] presents a client certificate.
//! - Endpoints longer than [`MAX_ENDPOINT_LEN`], with another scheme, with a
//!   path, query or user info are refused with an error that names the
//!   endpoint (truncated to [`QUOTED_ENDPOINT_LEN`] characters).
//!
//! Every channel has `TCP_NODELAY` on (set explicitly; tonic's default is on
//! too), TCP keepalive after 60 s idle, and HTTP/2 keepalive pings every
//! 30 s while calls are open (10 s to answer).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pem;

/// The longest endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// How much of an endpoint errors quote.
pub const QUOTED_ENDPOINT_LEN: usize = 64;
/// Default time to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive of every channel.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Interval of HTTP/2 keepalive pings while calls are open.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is
/// considered dead.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM material: a file (read, at most [`pem::MAX_PEM_BYTES`], when the
/// endpoint is built) or bytes already in memory.
#[derive(Clone)]
pub enum Pem {
    /// A PEM file.
    File(PathBuf),
    /// PEM bytes.
    Bytes(Vec<u8>),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            // Could be a private key: never printed.
            Pem::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
        }
    }
}

impl From<PathBuf> for Pem {
    fn from(path: PathBuf) -> Self {
        Pem::File(path)
    }
}

impl From<&std::path::Path> for Pem {
    fn from(path: &std::path::Path) -> Self {
        Pem::File(path.to_owned())
    }
}

impl From<Vec<u8>> for Pem {
    fn from(bytes: Vec<u8>) -> Self {
        Pem::Bytes(bytes)
    }
}

impl From<&[u8]> for Pem {
    fn from(bytes: &[u8]) -> Self {
        Pem::Bytes(bytes.to_vec())
    }
}

impl From<String> for Pem {
    fn from(text: String) -> Self {
        Pem::Bytes(text.into_bytes())
    }
}

impl Pem {
    /// The bytes, reading the file if it is one; `what` names it in errors.
    fn load(&self, what: &str) -> Result<Vec<u8>, EndpointError> {
        match self {
            Pem::File(path) => pem::read_file(what, path).map_err(EndpointError::Tls),
            Pem::Bytes(bytes) => Ok(bytes.clone()),
        }
    }
}

/// A client certificate (chain) and its private key, for mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert: Pem,
    /// The private key.
    pub key: Pem,
}

/// How to reach apitoken.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Trust only this CA bundle for `https://` (default: the system's
    /// trust store).
    pub ca: Option<Pem>,
    /// Present this certificate (mutual TLS).
    pub identity: Option<ClientIdentity>,
    /// Allow `http://` to a host that is not loopback.
    pub allow_plaintext: bool,
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            ca: None,
            identity: None,
            allow_plaintext: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Why no channel was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// The endpoint is longer than [`MAX_ENDPOINT_LEN`].
    TooLong {
        /// The endpoint, truncated.
        endpoint: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Not a URL we accept.
    Invalid {
        /// The endpoint, truncated.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// `http://` to a host that is not loopback, without `allow_plaintext`.
    PlaintextRefused {
        /// The endpoint, truncated.
        endpoint: String,
    },
    /// TLS material (CA, certificate, key) is missing or invalid.
    Tls(String),
    /// The connection failed.
    Connect {
        /// The endpoint, truncated.
        endpoint: String,
        /// The cause, with its sources.
        reason: String,
    },
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::TooLong { endpoint, len } => write!(
                f,
                "endpoint {endpoint:?} is {len} bytes long; the limit is {MAX_ENDPOINT_LEN}"
            ),
            EndpointError::Invalid { endpoint, reason } => {
                write!(f, "endpoint {endpoint:?}: {reason}")
            }
            EndpointError::PlaintextRefused { endpoint } => write!(
                f,
                "endpoint {endpoint:?}: plaintext http:// to a host that is not loopback would \
                 send tokens in clear; use https:// (with a CA certificate if needed), or allow \
                 plaintext explicitly (--plaintext / APITOKEN_PLAINTEXT) if the network \
                 encrypts it (e.g. a service mesh)"
            ),
            EndpointError::Tls(reason) => write!(f, "TLS: {reason}"),
            EndpointError::Connect { endpoint, reason } => {
                write!(f, "cannot connect to {endpoint:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for EndpointError {}

/// `endpoint`, cut to [`QUOTED_ENDPOINT_LEN`] characters for errors.
pub fn quoted(endpoint: &str) -> String {
    match endpoint.char_indices().nth(QUOTED_ENDPOINT_LEN) {
        Some((cut, _)) => format!("{}…", &endpoint[..cut]),
        None => endpoint.to_owned(),
    }
}

/// Whether `host` (as in a URL: brackets around IPv6) is loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.eq_ignore_ascii_case("localhost") || bare.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4: Ipv4Addr| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Whether TLS is used for `endpoint`: `Ok(true)` for `https://`,
/// `Ok(false)` for an allowed `http://`; the checks of [`endpoint`].
pub fn check(endpoint: &str, allow_plaintext: bool) -> Result<bool, EndpointError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(EndpointError::TooLong {
            endpoint: quoted(endpoint),
            len: endpoint.len(),
        });
    }
    let invalid = |reason: &str| EndpointError::Invalid {
        endpoint: quoted(endpoint),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| invalid("not a URL like https://apitoken.internal:50051"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(_) => {
            return Err(invalid(
                "the scheme must be https:// (or http:// to loopback)",
            ));
        }
        None => {
            return Err(invalid(
                "no scheme: write https://host:port (or http://127.0.0.1:port)",
            ));
        }
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("user info is not allowed in the endpoint"));
    }
    if authority.host().is_empty() {
        return Err(invalid("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            "a path or query is not allowed: give scheme, host and port only",
        ));
    }
    if !tls && !allow_plaintext && !is_loopback_host(authority.host()) {
        return Err(EndpointError::PlaintextRefused {
            endpoint: quoted(endpoint),
        });
    }
    Ok(tls)
}

/// The tonic endpoint for `endpoint` with `options`: TLS for `https://`,
/// plaintext for an allowed `http://`, `TCP_NODELAY` and keepalive on.
/// Reads and checks the PEM files; connects nothing.
pub fn endpoint(endpoint: &str, options: &ConnectOptions) -> Result<Endpoint, EndpointError> {
    let tls = check(endpoint, options.allow_plaintext)?;
    if !tls && (options.ca.is_some() || options.identity.is_some()) {
        return Err(EndpointError::Invalid {
            endpoint: quoted(endpoint),
            reason: "a CA or client certificate is set but the endpoint is http://; \
                     use https:// for TLS"
                .to_owned(),
        });
    }
    let mut built = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|err| EndpointError::Invalid {
            endpoint: quoted(endpoint),
            reason: err.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    if tls {
        built = built
            .tls_config(tls_config(options)?)
            .map_err(|err| EndpointError::Tls(error_chain(&err)))?;
    }
    Ok(built)
}

fn tls_config(options: &ConnectOptions) -> Result<ClientTlsConfig, EndpointError> {
    let mut config = ClientTlsConfig::new()
        // gRPC is HTTP/2 only: accept a server (or proxy) that does not
        // answer ALPN.
        .assume_http2(true)
        .timeout(options.connect_timeout);
    config = match &options.ca {
        Some(ca) => {
            let bytes = ca.load("CA certificate")?;
            pem::certificates("CA certificate", &bytes).map_err(EndpointError::Tls)?;
            config.ca_certificate(Certificate::from_pem(bytes))
        }
        None => config.with_native_roots(),
    };
    if let Some(identity) = &options.identity {
        let cert = identity.cert.load("client certificate")?;
        let key = identity.key.load("client key")?;
        pem::certificates("client certificate", &cert).map_err(EndpointError::Tls)?;
        pem::private_key("client key", &key).map_err(EndpointError::Tls)?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(config)
}

/// Connects now: the first connection is made (TLS handshake included)
/// before this returns.
pub async fn connect(
    endpoint_url: &str,
    options: &ConnectOptions,
) -> Result<Channel, EndpointError> {
    endpoint(endpoint_url, options)?
        .connect()
        .await
        .map_err(|err| EndpointError::Connect {
            endpoint: quoted(endpoint_url),
            reason: error_chain(&err),
        })
}

/// A channel that connects on first use (and reconnects as needed).
pub fn connect_lazy(
    endpoint_url: &str,
    options: &ConnectOptions,
) -> Result<Channel, EndpointError> {
    Ok(endpoint(endpoint_url, options)?.connect_lazy())
}

/// `error` and its sources, joined with `: ` (tonic's transport error says
/// only "transport error" on its own).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "localhost",
            "LOCALHOST",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.255.255.1",
            "0.0.0.0",
            "[::]",
            "apitoken",
            "localhost.evil.com",
            "[fe80::1]",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn schemes_and_plaintext() {
        assert_eq!(check("https://apitoken.internal:50051", false), Ok(true));
        assert_eq!(check("http://127.0.0.1:50051", false), Ok(false));
        assert_eq!(check("http://[::1]:50051/", false), Ok(false));
        assert!(matches!(
            check("http://10.255.255.1:50051", false),
            Err(EndpointError::PlaintextRefused { .. })
        ));
        assert!(matches!(
            check("http://apitoken:50051", false),
            Err(EndpointError::PlaintextRefused { .. })
        ));
        assert_eq!(check("http://apitoken:50051", true), Ok(false));
        for bad in [
            "grpc://apitoken:50051",
            "apitoken:50051",
            "https://user:pw@apitoken:50051",
            "https://apitoken:50051/prefix",
            "https://apitoken:50051/?q=1",
            "https://",
            "not a url",
        ] {
            let err = check(bad, true).expect_err(bad);
            assert!(
                matches!(err, EndpointError::Invalid { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn errors_quote_a_bounded_endpoint() {
        let long = format!("https://{}.example:443", "a".repeat(MAX_ENDPOINT_LEN));
        let err = check(&long, false).expect_err("too long");
        let text = err.to_string();
        assert!(text.contains("2048"), "{text}");
        assert!(text.len() < 200, "{text}");
        let err = check(&format!("grpc://{}", "b".repeat(500)), false).expect_err("scheme");
        assert!(err.to_string().len() < 250, "{err}");
    }

    #[test]
    fn plaintext_refusal_names_the_way_out() {
        let err =
            endpoint("http://10.255.255.1:50051", &ConnectOptions::default()).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("10.255.255.1")
                && text.contains("https://")
                && text.contains("--plaintext"),
            "{text}"
        );
    }

    #[test]
    fn tls_material_is_checked_up_front() {
        let options = ConnectOptions {
            ca: Some(Pem::from(b"not a certificate".as_slice())),
            ..ConnectOptions::default()
        };
        let err = endpoint("https://apitoken:50051", &options).expect_err("bad CA");
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let options = ConnectOptions {
            ca: Some(Pem::File("/nonexistent/ca.pem".into())),
            ..ConnectOptions::default()
        };
        let err = endpoint("https://apitoken:50051", &options).expect_err("missing CA");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let options = ConnectOptions {
            ca: Some(Pem::File("/nonexistent/ca.pem".into())),
            ..ConnectOptions::default()
        };
        let err = endpoint("http://127.0.0.1:50051", &options).expect_err("CA on http");
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn pem_bytes_are_not_printed() {
        let pem = Pem::from(b"-----BEGIN PRIVATE KEY-----secret".as_slice());
        assert!(!format!("{pem:?}").contains("secret"));
    }
}
