//! Calls into the service layer: the same `ApiTokenService` the gRPC API
//! serves, invoked in-process with the request a gRPC client would send.
//!
//! Each call carries `authorization: Bearer <session's token>`, the
//! browser's `user-agent` (and `x-forwarded-for`, believed only from the
//! server's trusted proxies, as on the gRPC path) as metadata, and the
//! browser's connection as `TcpConnectInfo`, so authentication, rate
//! limits, validation and audit entries are the gRPC path's own.

use std::net::SocketAddr;

use apitoken_domain::token::Secret;
use http::{HeaderMap, HeaderValue};
use tonic::{Code, Request, Status, metadata::MetadataMap, transport::server::TcpConnectInfo};
use tonic_types::StatusExt;

/// Where a web request came from.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The browser's end of the connection.
    pub remote: Option<SocketAddr>,
    /// The console's end of the connection.
    pub local: Option<SocketAddr>,
    /// `user-agent`, as sent.
    pub user_agent: Option<HeaderValue>,
    /// `x-forwarded-for`, as sent (the service decides whether to believe it).
    pub forwarded_for: Option<HeaderValue>,
}

/// The `tonic::Request` the gRPC path would see for `message` from
/// `client`, authenticated as `token` when given.
pub fn request<T>(
    message: T,
    token: Option<&Secret>,
    client: &Client,
) -> Result<Request<T>, ApiError> {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| ApiError::new(Code::Unauthenticated, "That token is not well formed."))?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Some(agent) = &client.user_agent {
        headers.insert(http::header::USER_AGENT, agent.clone());
    }
    if let Some(forwarded) = &client.forwarded_for {
        headers.insert("x-forwarded-for", forwarded.clone());
    }
    let mut request = Request::new(message);
    *request.metadata_mut() = MetadataMap::from_headers(headers);
    request.extensions_mut().insert(TcpConnectInfo {
        local_addr: client.local,
        remote_addr: client.remote,
    });
    Ok(request)
}

/// A refusal of the service, in words for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The gRPC code.
    pub code: Code,
    /// What happened.
    pub message: String,
    /// Each offending field and why (from `BadRequest`).
    pub fields: Vec<(String, String)>,
    /// Seconds to wait before trying again (the service's `retry-after`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of the console itself, before any call.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    /// A form field the console refused before calling the service.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidArgument,
            message: "Some fields need attention.".into(),
            fields: vec![(field.into(), reason.into())],
            retry_after: None,
        }
    }

    /// The HTTP status of the page that shows it.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self.code {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let fields: Vec<(String, String)> = status
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|violation| (violation.field, violation.description))
                    .collect()
            })
            .unwrap_or_default();
        let code = status.code();
        // The service's own header; at most a day is shown.
        let retry_after =
            apitoken_domain::status::retry_after(&status).map(|seconds| seconds.min(86_400));
        let message = match code {
            Code::InvalidArgument if !fields.is_empty() => "Some fields need attention.".to_owned(),
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange => sentence(status.message()),
            Code::Aborted => {
                "The token changed since this page was loaded: reload it and try again.".into()
            }
            Code::Unauthenticated => {
                "This token is no longer accepted (revoked, expired or regenerated): sign in again."
                    .into()
            }
            Code::ResourceExhausted => match retry_after {
                Some(seconds) => format!(
                    "Too many requests: try again in {seconds} second{}.",
                    if seconds == 1 { "" } else { "s" }
                ),
                None => "Too many requests: wait a moment and try again.".into(),
            },
            Code::Unavailable => "The service is unavailable right now: try again shortly.".into(),
            _ => "Something went wrong on the server; it has been logged.".into(),
        };
        Self {
            code,
            message,
            fields,
            retry_after,
        }
    }
}

/// `text` as a sentence: capitalized, ending with a full stop.
fn sentence(text: &str) -> String {
    let mut chars = text.trim().chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return "The request was refused.".into(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_names_fields() {
        let status = Status::from(apitoken_domain::Error::invalid(
            "api_token_id",
            "must be 3 to 50 characters",
        ));
        let error = ApiError::from(status);
        assert_eq!(error.code, Code::InvalidArgument);
        assert_eq!(
            error.fields,
            vec![(
                "api_token_id".to_owned(),
                "must be 3 to 50 characters".to_owned()
            )]
        );
    }

    #[test]
    fn sentences() {
        assert_eq!(sentence("token not found"), "Token not found.");
        assert_eq!(sentence(""), "The request was refused.");
    }
}
