//! The one place that turns an endpoint into a tonic [`Channel`]: the URL is
//! checked first (a bad one is a usage error), then the connection is made
//! within the connect timeout, and failures are said in plain words with the
//! endpoint ("connection refused", "cannot resolve host", "no answer within
//! 5s") instead of tonic's "transport error".

use std::{error::Error as StdError, fmt, io, time::Duration};

use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::escape::quote;

/// Longest endpoint accepted.
pub(crate) const MAX_ENDPOINT_LEN: usize = 2048;

/// Why there is no channel.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The endpoint is not a URL this client can use.
    BadEndpoint {
        /// The endpoint, as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection broke during a call.
    Lost {
        /// The endpoint.
        endpoint: String,
        /// What happened, in plain words.
        reason: String,
    },
    /// The server could not be reached.
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What happened, in plain words.
        reason: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::BadEndpoint { endpoint, reason } => {
                write!(f, "bad endpoint {}: {reason}", quote(endpoint, 100))
            }
            ConnectError::Lost { endpoint, reason } => write!(
                f,
                "lost the connection to the apitoken server at {}: {reason}",
                quote(endpoint, 100)
            ),
            ConnectError::Unreachable { endpoint, reason } => write!(
                f,
                "cannot reach the apitoken server at {}: {reason}",
                quote(endpoint, 100)
            ),
        }
    }
}

/// Checks that `endpoint` is an `http://host[:port]` URL.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Uri, ConnectError> {
    let bad = |reason: String| ConnectError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(bad(format!("longer than {MAX_ENDPOINT_LEN} characters")));
    }
    let uri: Uri = endpoint
        .parse()
        .map_err(|error| bad(format!("not a URL ({error})")))?;
    let Some(scheme) = uri.scheme_str() else {
        return Err(bad(format!(
            "no scheme: write it as http://{}",
            endpoint.trim_start_matches('/')
        )));
    };
    match scheme {
        "http" => {}
        "https" => {
            return Err(bad(
                "https:// needs TLS, which this build of apitoken does not support yet".to_owned(),
            ));
        }
        other => {
            return Err(bad(format!(
                "unsupported scheme {}: use http://",
                quote(other, 20)
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host".to_owned()));
    }
    if uri
        .path_and_query()
        .is_some_and(|path| path.as_str() != "/")
    {
        return Err(bad("must not have a path: http://host:port".to_owned()));
    }
    Ok(uri)
}

/// Connects to `endpoint`: the TCP connection and the HTTP/2 handshake must
/// both be done within `connect_timeout`.
pub(crate) async fn connect(
    endpoint: &str,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let uri = parse_endpoint(endpoint)?;
    let unreachable = |reason: String| ConnectError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let endpoint_config = Endpoint::from(uri)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("apitoken-cli/", env!("CARGO_PKG_VERSION")))
        .map_err(|error| unreachable(plain_words(&error)))?;
    match tokio::time::timeout(connect_timeout, endpoint_config.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(unreachable(plain_words(&error))),
        Err(_) => Err(unreachable(format!(
            "no answer within {}",
            crate::show_duration(connect_timeout)
        ))),
    }
}

/// A transport error in plain words: the most telling cause in its chain.
pub(crate) fn plain_words(error: &(dyn StdError + 'static)) -> String {
    let mut causes = Vec::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return "connection refused (is the server running, on this port?)".to_owned();
                }
                io::ErrorKind::TimedOut => return "timed out while connecting".to_owned(),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    return "no route to host".to_owned();
                }
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    return "the connection was closed (is it a gRPC server, without TLS?)"
                        .to_owned();
                }
                _ => {}
            }
        }
        let text = cause.to_string();
        if text == "dns error" {
            // tonic wraps hyper's error, both saying "dns error": find why.
            let mut detail = cause.source();
            while let Some(inner) = detail.filter(|inner| inner.to_string() == "dns error") {
                detail = inner.source();
            }
            return format!(
                "cannot resolve the host name ({})",
                detail.map_or_else(|| "lookup failed".to_owned(), ToString::to_string)
            );
        }
        if !text.is_empty() && causes.last() != Some(&text) {
            causes.push(text);
        }
        current = cause.source();
    }
    // The outermost "transport error" says nothing; the rest may.
    causes.retain(|cause| cause != "transport error");
    if causes.is_empty() {
        "the connection failed".to_owned()
    } else {
        causes.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(endpoint: &str) -> String {
        match parse_endpoint(endpoint) {
            Err(ConnectError::BadEndpoint { reason, .. }) => reason,
            other => panic!("{endpoint}: {other:?}"),
        }
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(parse_endpoint("http://127.0.0.1:50051").is_ok());
        assert!(parse_endpoint("http://apitoken.internal:50051/").is_ok());
        assert!(parse_endpoint("http://[::1]:50051").is_ok());
        assert!(reason("127.0.0.1:50051").contains("no scheme"));
        assert!(reason("localhost").contains("no scheme"));
        assert!(reason("ftp://host").contains("unsupported scheme `ftp`"));
        assert!(reason("https://host").contains("TLS"));
        assert!(reason("http://exa mple").contains("not a URL"));
        assert!(reason("http://host/path").contains("path"));
        assert!(reason("").contains("not a URL"));
        assert!(reason(&"x".repeat(3000)).contains("2048"));
    }

    #[test]
    fn messages_name_the_endpoint_safely() {
        let error = ConnectError::Unreachable {
            endpoint: "http://\u{1b}[2Jhost:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            error.to_string(),
            "cannot reach the apitoken server at `http://\\x1b[2Jhost:1`: connection refused"
        );
    }
}
