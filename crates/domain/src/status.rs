//! The one place where domain errors become `tonic::Status`, with
//! `google.rpc` details: `ErrorInfo` for authentication and permission
//! failures, `BadRequest` for invalid fields, `ResourceInfo` for missing or
//! duplicate resources, `PreconditionFailure` for calls on a revoked token.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{ERROR_DOMAIN, Error, input::truncate};

/// The resource type named in `google.rpc.ResourceInfo`.
const RESOURCE_TYPE: &str = "apitoken.v1.ApiToken";

/// Most characters of a status message. Call sites quote input briefly
/// ([`crate::input::quote`]); this bound holds whatever they do, so that no
/// error outgrows a client's metadata limit (8 KiB by default in many gRPC
/// implementations).
pub const MAX_MESSAGE: usize = 512;
/// Most characters of a field path or a description in `BadRequest`.
const MAX_DETAIL: usize = 160;
/// Most violations listed in one `BadRequest`.
const MAX_VIOLATIONS: usize = 12;

/// The metadata key of a `RESOURCE_EXHAUSTED` refusal's wait, in whole
/// seconds (rounded up), beside its `RetryInfo`.
pub const RETRY_AFTER: &str = "retry-after";

/// The whole seconds `status` says to wait ([`RETRY_AFTER`]), if it says.
pub fn retry_after(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        // Twenty digits overflow a u64 anyway: nothing longer is parsed.
        .filter(|text| text.len() <= 20)
        .and_then(|text| text.parse::<u64>().ok())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = truncate(&error.to_string(), MAX_MESSAGE).to_owned();
        match error {
            Error::Unauthenticated(failure) => Status::with_error_details(
                Code::Unauthenticated,
                message,
                ErrorDetails::with_error_info(failure.reason(), ERROR_DOMAIN, HashMap::new()),
            ),
            Error::PermissionDenied { reason, .. } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                ErrorDetails::with_error_info(reason.reason(), ERROR_DOMAIN, HashMap::new()),
            ),
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in violations.into_iter().take(MAX_VIOLATIONS) {
                    details.add_bad_request_violation(
                        truncate(&violation.field, MAX_DETAIL),
                        truncate(&violation.description, MAX_DETAIL),
                    );
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(resource) => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info(
                    RESOURCE_TYPE,
                    truncate(&resource, MAX_DETAIL),
                    "",
                    "not found",
                ),
            ),
            Error::AlreadyExists(resource) => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_resource_info(
                    RESOURCE_TYPE,
                    truncate(&resource, MAX_DETAIL),
                    "",
                    "already exists",
                ),
            ),
            Error::FailedPrecondition { resource, kind, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message.clone(),
                ErrorDetails::with_precondition_failure_violation(
                    kind,
                    truncate(&resource, MAX_DETAIL),
                    message,
                ),
            ),
            Error::Aborted(_) => Status::new(Code::Aborted, message),
            Error::ResourceExhausted {
                subject,
                description,
                retry_after,
            } => {
                let mut details = ErrorDetails::with_quota_failure_violation(
                    truncate(&subject, MAX_DETAIL),
                    truncate(&description, MAX_DETAIL),
                );
                if let Some(retry_after) = retry_after {
                    details.set_retry_info(Some(retry_after));
                }
                let mut status =
                    Status::with_error_details(Code::ResourceExhausted, message, details);
                if let Some(retry_after) = retry_after {
                    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    if let Ok(value) = seconds.to_string().parse() {
                        status.metadata_mut().insert(RETRY_AFTER, value);
                    }
                }
                status
            }
            Error::OutOfRange(_) => Status::new(Code::OutOfRange, message),
            Error::Unavailable(_) => Status::new(Code::Unavailable, message),
            Error::Internal => Status::new(Code::Internal, message),
        }
    }
}

/// The canonical name of a gRPC code (`UNAUTHENTICATED`, ...): what HTTP
/// bodies, reports and terminals print.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthFailure, DenyReason, error::FieldViolation};

    #[test]
    fn unauthenticated_carries_error_info() {
        let status = Status::from(Error::Unauthenticated(AuthFailure::Revoked));
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "TOKEN_REVOKED");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }

    #[test]
    fn permission_denied_carries_reason() {
        let status = Status::from(Error::denied(DenyReason::RoleEscalation, "no"));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.get_details_error_info().expect("error info").reason,
            "ROLE_ESCALATION"
        );
    }

    #[test]
    fn invalid_argument_lists_fields() {
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation::new("a", "x"),
            FieldViolation::new("b", "y"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = status
            .get_details_bad_request()
            .expect("bad request")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["a", "b"]);
    }

    #[test]
    fn resource_exhausted_carries_quota_retry_info_and_header() {
        let status = Status::from(Error::ResourceExhausted {
            subject: "namespaces/a/apitokens/b".into(),
            description: "rate limit of 60 requests a minute exceeded".into(),
            retry_after: Some(std::time::Duration::from_millis(1500)),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii")),
            Some("2")
        );
        assert_eq!(retry_after(&status), Some(2));
        let details = status.get_error_details();
        assert_eq!(
            details.quota_failure().expect("quota").violations[0].subject,
            "namespaces/a/apitokens/b"
        );
        assert!(details.retry_info().expect("retry").retry_delay.is_some());
    }

    #[test]
    fn statuses_stay_small_whatever_they_quote() {
        let huge = "x".repeat(100_000);
        let status = Status::from(Error::InvalidArgument(
            (0..100)
                .map(|_| FieldViolation::new(huge.clone(), huge.clone()))
                .collect(),
        ));
        assert!(status.message().len() <= MAX_MESSAGE);
        assert!(
            status.details().len() < 5 * 1024,
            "{}",
            status.details().len()
        );
        let status = Status::from(Error::Aborted(huge.clone()));
        assert!(status.message().len() <= MAX_MESSAGE);
    }

    #[test]
    fn internal_reveals_nothing() {
        let status = Status::from(Error::Internal);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
