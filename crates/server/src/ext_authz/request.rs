//! What `Check` reads of Envoy's `CheckRequest`, bounded: the request's
//! path (without its query, refused unless normalized), whether it is a
//! gRPC call, its headers (lowercase keys, in `headers` or, with Envoy's
//! `encode_raw_headers`, in `header_map`), and the client address Envoy
//! saw (`attributes.source.address.socket_address`).
//!
//! **The client address** is believed only from a trusted proxy
//! (`--trusted-proxies`): when the caller of `Check` is one, the source
//! address it names stands for the transport peer of the original request
//! (and if that is a trusted proxy too, its `x-forwarded-for` is walked as
//! for any call: [`crate::peer`]); otherwise the caller of `Check` itself is
//! the client. The result is a stand-in [`tonic::Request`] carrying that
//! peer and the request's `user-agent`, `x-request-id`, `traceparent` and
//! `x-forwarded-for`, so that authentication, the failed-authentication
//! throttle, usage and audit read it exactly as they read a gRPC call.

use std::net::{IpAddr, SocketAddr};

use apitoken_domain::{Error, error::FieldViolation};
use envoy_types::pb::envoy::{
    config::core::v3::{address, socket_address::PortSpecifier},
    service::auth::v3::{AttributeContext, CheckRequest, attribute_context::HttpRequest},
};
use tonic::{Request, metadata::MetadataValue, transport::server::TcpConnectInfo};

/// Longest request path (with its query) accepted.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest header value read (`authorization`, `user-agent`, ...).
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
/// Most headers in a `CheckRequest`.
pub const MAX_HEADERS: usize = 256;

/// Headers copied to the stand-in request, for audit and the client address.
const CONTEXT_HEADERS: [&str; 4] = [
    "user-agent",
    "x-request-id",
    "traceparent",
    "x-forwarded-for",
];

/// The parts of a `CheckRequest` that `Check` decides on.
#[derive(Debug)]
pub(crate) struct Attributes<'a> {
    http: &'a HttpRequest,
    /// The path, without query or fragment.
    pub(crate) path: &'a str,
    /// The HTTP method (`GET`, ...; `POST` for gRPC).
    pub(crate) method: &'a str,
    /// Whether the request is a gRPC call (`content-type: application/grpc…`).
    pub(crate) grpc: bool,
    source: Option<SocketAddr>,
}

impl<'a> Attributes<'a> {
    /// Reads and bounds `request`; a request Envoy could not have sent, or
    /// a path that is not normalized, is `INVALID_ARGUMENT`.
    pub(crate) fn of(request: &'a CheckRequest) -> Result<Attributes<'a>, Error> {
        let attributes = request
            .attributes
            .as_ref()
            .ok_or_else(|| Error::invalid("attributes", "is required"))?;
        let http = attributes
            .request
            .as_ref()
            .and_then(|request| request.http.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    "attributes.request.http",
                    "is required (apitoken answers Envoy's HTTP ext_authz filter)",
                )
            })?;
        let header_count =
            http.headers.len() + http.header_map.as_ref().map_or(0, |map| map.headers.len());
        if header_count > MAX_HEADERS {
            return Err(Error::invalid(
                "attributes.request.http.headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        let path = normalized_path(&http.path)?;
        let mut attributes = Attributes {
            http,
            path,
            method: &http.method,
            grpc: false,
            source: source_address(attributes),
        };
        if attributes.method.is_empty() {
            attributes.method = attributes.header(":method")?.unwrap_or_default();
        }
        attributes.grpc = attributes
            .header("content-type")?
            .is_some_and(|kind| kind.starts_with("application/grpc"));
        Ok(attributes)
    }

    /// The value of header `name` (lowercase), bounded by
    /// [`MAX_HEADER_VALUE`].
    pub(crate) fn header(&self, name: &str) -> Result<Option<&'a str>, Error> {
        let value = match self.http.headers.get(name) {
            Some(value) => Some(value.as_str()),
            None => self.http.header_map.as_ref().and_then(|map| {
                map.headers
                    .iter()
                    .find(|header| header.key == name)
                    .and_then(|header| {
                        if header.value.is_empty() {
                            std::str::from_utf8(&header.raw_value).ok()
                        } else {
                            Some(header.value.as_str())
                        }
                    })
            }),
        };
        match value {
            Some(value) if value.len() > MAX_HEADER_VALUE => Err(Error::invalid(
                format!("attributes.request.http.headers[{name}]"),
                format!("at most {MAX_HEADER_VALUE} bytes"),
            )),
            value => Ok(value),
        }
    }

    /// The stand-in for the original request that authentication reads:
    /// the client's transport peer (see the module documentation) and the
    /// headers of [`CONTEXT_HEADERS`]; the server's request id of the
    /// `Check` call comes along for audit entries.
    pub(crate) fn stand_in<T>(
        &self,
        check: &Request<T>,
        trusted: impl Fn(IpAddr) -> bool,
    ) -> Request<()> {
        let caller = check.remote_addr();
        let peer = match (caller, self.source) {
            (Some(caller), Some(source)) if trusted(caller.ip()) => Some(source),
            (caller, _) => caller,
        };
        let mut stand_in = Request::new(());
        stand_in.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: peer,
        });
        if let Some(id) = check
            .extensions()
            .get::<crate::telemetry::ServerRequestId>()
        {
            stand_in.extensions_mut().insert(id.clone());
        }
        for name in CONTEXT_HEADERS {
            if let Ok(Some(value)) = self.header(name)
                && let Ok(value) = MetadataValue::try_from(value)
            {
                stand_in.metadata_mut().insert(name, value);
            }
        }
        stand_in
    }
}

/// The path of `target` without query and fragment, if it is absolute and
/// normalized: no `.` or `..` segment, no `//`, no backslash, no encoded
/// `/`, `\` or `.` (what an upstream might resolve differently from the
/// policy's patterns), visible ASCII only.
fn normalized_path(target: &str) -> Result<&str, Error> {
    const FIELD: &str = "attributes.request.http.path";
    if target.len() > MAX_PATH_LEN {
        return Err(Error::invalid(
            FIELD,
            format!("at most {MAX_PATH_LEN} bytes"),
        ));
    }
    let path = target
        .split_once(['?', '#'])
        .map_or(target, |(path, _)| path);
    if !path.starts_with('/') {
        return Err(Error::invalid(FIELD, "must start with `/`"));
    }
    let lower_has = |needle: &str| {
        path.as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
    };
    let dot_segment = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !path.bytes().all(|b| b.is_ascii_graphic())
        || path.contains('\\')
        || path.contains("//")
        || dot_segment
        || lower_has("%2f")
        || lower_has("%5c")
        || lower_has("%2e")
    {
        return Err(Error::InvalidArgument(vec![FieldViolation::new(
            FIELD,
            "must be a normalized path (no `.`/`..` segments, `//`, `\\` or encoded `/`, `\\`, `.`): \
             set Envoy's normalize_path and merge_slashes",
        )]));
    }
    Ok(path)
}

/// The client address Envoy saw, if it is an IP address.
fn source_address(attributes: &AttributeContext) -> Option<SocketAddr> {
    let address::Address::SocketAddress(socket) = attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?
    else {
        return None;
    };
    let ip: IpAddr = socket.address.parse().ok()?;
    let port = match socket.port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(port).unwrap_or(0),
        _ => 0,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_maps_are_read_too() {
        use envoy_types::pb::envoy::{
            config::core::v3::{HeaderMap, HeaderValue},
            service::auth::v3::attribute_context::Request as AttrRequest,
        };
        let raw = |key: &str, value: &str| HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        path: "/pkg.Svc/Get".to_owned(),
                        header_map: Some(HeaderMap {
                            headers: vec![
                                raw("authorization", "Bearer x"),
                                raw("content-type", "application/grpc+proto"),
                            ],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let attributes = Attributes::of(&request).expect("valid");
        assert_eq!(
            attributes.header("authorization").ok().flatten(),
            Some("Bearer x")
        );
        assert!(attributes.grpc);
        assert_eq!(attributes.header("user-agent").ok().flatten(), None);
        assert!(Attributes::of(&CheckRequest::default()).is_err());
    }

    #[test]
    fn paths_must_be_normalized() {
        assert_eq!(
            normalized_path("/api/orders?id=1").ok(),
            Some("/api/orders")
        );
        assert_eq!(
            normalized_path("/pkg.Svc/Method").ok(),
            Some("/pkg.Svc/Method")
        );
        assert_eq!(normalized_path("/a#frag").ok(), Some("/a"));
        for bad in [
            "",
            "api",
            "/public/../admin",
            "/public/./x",
            "/a//b",
            "/a%2Fb",
            "/a%2e%2e/b",
            "/a\\b",
            "/a b",
            "/caf\u{e9}",
        ] {
            assert!(normalized_path(bad).is_err(), "{bad:?}");
        }
        assert!(normalized_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }
}
