//! The domain error. Every failure of the product is one of these; the
//! [`crate::status`] module turns it into a `tonic::Status`.

use std::fmt;

/// Why a caller could not be authenticated (`UNAUTHENTICATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No `authorization: Bearer` metadata.
    Missing,
    /// Not a token of this deployment's format (wrong prefix, length, alphabet
    /// or checksum), or not a `Bearer` credential.
    Malformed,
    /// Well-formed but unknown (never issued, or replaced by regeneration).
    Invalid,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl AuthFailure {
    /// The `google.rpc.ErrorInfo` reason.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "TOKEN_MISSING",
            AuthFailure::Malformed => "TOKEN_MALFORMED",
            AuthFailure::Invalid => "TOKEN_INVALID",
            AuthFailure::Expired => "TOKEN_EXPIRED",
            AuthFailure::Revoked => "TOKEN_REVOKED",
        }
    }

    /// The inverse of [`AuthFailure::reason`].
    pub fn from_reason(reason: &str) -> Option<AuthFailure> {
        [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Invalid,
            AuthFailure::Expired,
            AuthFailure::Revoked,
        ]
        .into_iter()
        .find(|failure| failure.reason() == reason)
    }

    /// A human message; never contains the token.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing credentials: send `authorization: Bearer <token>`",
            AuthFailure::Malformed => "malformed token: check for a truncated or mistyped value",
            AuthFailure::Invalid => "invalid token",
            AuthFailure::Expired => "token has expired",
            AuthFailure::Revoked => "token has been revoked",
        }
    }
}

/// Why an authenticated caller may not do something (`PERMISSION_DENIED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The token belongs to another namespace.
    NamespaceMismatch,
    /// The token's role is below what the call needs.
    RoleTooLow,
    /// The call would give a token a role above the caller's own.
    RoleEscalation,
    /// Only an interceptor's token may do this (report usage).
    InterceptorRequired,
    /// No rule of the ext_authz access policy allows the path.
    RouteNotAllowed,
}

impl DenyReason {
    /// The `google.rpc.ErrorInfo` reason.
    pub fn reason(self) -> &'static str {
        match self {
            DenyReason::NamespaceMismatch => "NAMESPACE_MISMATCH",
            DenyReason::RoleTooLow => "ROLE_TOO_LOW",
            DenyReason::RoleEscalation => "ROLE_ESCALATION",
            DenyReason::InterceptorRequired => "INTERCEPTOR_REQUIRED",
            DenyReason::RouteNotAllowed => "ROUTE_NOT_ALLOWED",
        }
    }
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `api_token.display_name`.
    pub field: String,
    /// What is wrong, e.g. `must be at most 100 characters`.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Every failure of the product.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `UNAUTHENTICATED`.
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    /// `PERMISSION_DENIED`.
    #[error("{message}")]
    PermissionDenied {
        /// The machine-readable reason.
        reason: DenyReason,
        /// A human message.
        message: String,
    },
    /// `INVALID_ARGUMENT`, naming each bad field.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// `NOT_FOUND`, naming the resource.
    #[error("{0} not found")]
    NotFound(String),
    /// `ALREADY_EXISTS`, naming the resource.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// `FAILED_PRECONDITION`: the resource is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition {
        /// The resource concerned.
        resource: String,
        /// The machine-readable precondition type, e.g. `TOKEN_REVOKED`.
        kind: &'static str,
        /// A human message.
        message: String,
    },
    /// `ABORTED`: a concurrent change (stale etag).
    #[error("{0}")]
    Aborted(String),
    /// `RESOURCE_EXHAUSTED`: a rate limit or quota. Carries
    /// `google.rpc.QuotaFailure` and, when known, `RetryInfo` and the
    /// `retry-after` header.
    #[error("{description}")]
    ResourceExhausted {
        /// What is exhausted, e.g. `namespaces/team-a/apitokens/ci` or
        /// `namespaces/team-a`.
        subject: String,
        /// A human message naming the limit.
        description: String,
        /// When a retry may succeed.
        retry_after: Option<std::time::Duration>,
    },
    /// `OUT_OF_RANGE`: e.g. a stream cursor beyond the end of the log.
    #[error("{0}")]
    OutOfRange(String),
    /// `UNAVAILABLE`: a dependency is down; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// `INTERNAL`. The detail is logged where it happened, never sent.
    #[error("internal error")]
    Internal,
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// `INVALID_ARGUMENT` for a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// `PERMISSION_DENIED` with a reason.
    pub fn denied(reason: DenyReason, message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            reason,
            message: message.into(),
        }
    }
}

impl From<AuthFailure> for Error {
    fn from(failure: AuthFailure) -> Self {
        Error::Unauthenticated(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for failure in [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Invalid,
            AuthFailure::Expired,
            AuthFailure::Revoked,
        ] {
            assert_eq!(AuthFailure::from_reason(failure.reason()), Some(failure));
        }
        assert_eq!(AuthFailure::from_reason("NOPE"), None);
    }

    #[test]
    fn invalid_argument_message_names_every_field() {
        let error = Error::InvalidArgument(vec![
            FieldViolation::new("parent", "is required"),
            FieldViolation::new("api_token.role", "is required"),
        ]);
        assert_eq!(
            error.to_string(),
            "invalid argument: parent: is required; api_token.role: is required"
        );
    }
}
