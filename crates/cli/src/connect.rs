//! The one place that turns an endpoint into a tonic [`Channel`]: the URL is
//! checked first (a bad one is a usage error), then the connection is made
//! within the connect timeout, and failures are said in plain words with the
//! endpoint ("connection refused", "cannot resolve host", "no answer within
//! 5s") instead of tonic's "transport error".

use std::{error::Error as StdError, fmt, io};

use apitoken_proto::endpoint::{ConnectOptions, EndpointError};
use tonic::transport::Channel;

use crate::escape::quote;

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

/// Checks `endpoint`: `https://host[:port]`, or `http://` to loopback (or
/// anywhere with `allow_plaintext`), no path; the rules of
/// [`apitoken_proto::endpoint::check`], said as a bad endpoint.
pub(crate) fn parse_endpoint(endpoint: &str, allow_plaintext: bool) -> Result<(), ConnectError> {
    apitoken_proto::endpoint::check(endpoint, allow_plaintext)
        .map(|_| ())
        .map_err(|error| ConnectError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason_of(&error),
        })
}

/// What is wrong, without the endpoint (the message names it once).
fn reason_of(error: &EndpointError) -> String {
    match error {
        EndpointError::TooLong { len, .. } => format!(
            "{len} bytes long, longer than {} characters",
            apitoken_proto::endpoint::MAX_ENDPOINT_LEN
        ),
        EndpointError::Invalid { reason, .. } => reason.clone(),
        EndpointError::PlaintextRefused { .. } => "plaintext http:// to a host that is not loopback would send the token in clear: use https:// (with --ca-cert if needed), or pass --plaintext if the network encrypts it".to_owned(),
        EndpointError::Tls(reason) => format!("TLS: {reason}"),
        EndpointError::Connect { reason, .. } => reason.clone(),
    }
}

/// Connects to `endpoint` with `options` (TLS for `https://`): the TCP
/// connection, the TLS handshake and the HTTP/2 handshake must all be done
/// within the connect timeout.
pub(crate) async fn connect(
    endpoint: &str,
    options: &ConnectOptions,
) -> Result<Channel, ConnectError> {
    parse_endpoint(endpoint, options.allow_plaintext)?;
    let unreachable = |reason: String| ConnectError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let endpoint_config = apitoken_proto::endpoint::endpoint(endpoint, options)
        .map_err(|error| ConnectError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason_of(&error),
        })?
        .user_agent(concat!("apitoken-cli/", env!("CARGO_PKG_VERSION")))
        .map_err(|error| unreachable(plain_words(&error)))?;
    match tokio::time::timeout(options.connect_timeout, endpoint_config.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(unreachable(plain_words(&error))),
        Err(_) => Err(unreachable(format!(
            "no answer within {}",
            crate::show_duration(options.connect_timeout)
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
        match parse_endpoint(endpoint, false) {
            Err(ConnectError::BadEndpoint { reason, .. }) => reason,
            other => panic!("{endpoint}: {other:?}"),
        }
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(parse_endpoint("http://127.0.0.1:50051", false).is_ok());
        assert!(parse_endpoint("https://apitoken.internal:50051/", false).is_ok());
        assert!(parse_endpoint("http://[::1]:50051", false).is_ok());
        assert!(parse_endpoint("http://apitoken.internal:50051", true).is_ok());
        assert!(reason("http://apitoken.internal:50051").contains("in clear"));
        assert!(reason("127.0.0.1:50051").contains("scheme"));
        assert!(reason("ftp://host").contains("scheme"));
        assert!(reason("http://exa mple").contains("not a URL"));
        assert!(reason("http://127.0.0.1/path").contains("path"));
        assert!(reason("").contains("URL"));
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
