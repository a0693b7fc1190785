//! Everything that can go wrong, the exit status of each, and how it is
//! told on standard error: in plain words, with the gRPC code, the
//! `google.rpc` reason and offending fields, and a hint when there is one.
//! Every text that came from the server is [escaped](crate::escape::escape).

use std::{fmt::Write as _, io, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{connect::ConnectError, escape::escape, show_duration};

/// The exit statuses, for `--help`.
pub(crate) const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  any other error
  2  usage: a bad flag, value or endpoint URL, revoke without --yes and no
     terminal, or an argument the server refused (INVALID_ARGUMENT)
  3  unauthenticated: no token, or it is malformed, unknown, expired or revoked
  4  permission denied: the token's role or namespace does not allow it
  5  not found
  6  unavailable: the server cannot be reached, did not answer in time, or is
     not serving
  7  conflict: the token already exists, is revoked or expired
     (FAILED_PRECONDITION), or changed since --etag (ABORTED)
  8  rate limited or over quota: retry after the time printed";

/// Exit status: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: any other error.
pub(crate) const EXIT_OTHER: u8 = 1;
/// Exit status: the command line (or an argument) is wrong.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status: not authenticated.
pub(crate) const EXIT_UNAUTHENTICATED: u8 = 3;
/// Exit status: permission denied.
pub(crate) const EXIT_PERMISSION_DENIED: u8 = 4;
/// Exit status: not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 5;
/// Exit status: the server cannot be reached or is not serving.
pub(crate) const EXIT_UNAVAILABLE: u8 = 6;
/// Exit status: already exists, failed precondition, aborted.
pub(crate) const EXIT_CONFLICT: u8 = 7;
/// Exit status: rate limited or over quota.
pub(crate) const EXIT_EXHAUSTED: u8 = 8;

/// A failed command.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line is wrong.
    Usage(String),
    /// No token was given.
    NoToken,
    /// The token cannot be sent.
    BadToken(String),
    /// No connection.
    Connect(ConnectError),
    /// A call got no answer in time.
    Timeout {
        /// The server.
        endpoint: String,
        /// The per-call timeout.
        after: Duration,
    },
    /// The server answered with an error.
    Status {
        /// The error.
        status: Box<Status>,
        /// The server.
        endpoint: String,
    },
    /// The person answered no.
    Declined(String),
    /// Standard output failed.
    Output(io::Error),
}

/// The canonical name of a gRPC code.
pub(crate) fn code_name(code: Code) -> &'static str {
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

/// The exit status of a gRPC code.
pub(crate) fn code_exit(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument | Code::OutOfRange => EXIT_USAGE,
        Code::Unauthenticated => EXIT_UNAUTHENTICATED,
        Code::PermissionDenied => EXIT_PERMISSION_DENIED,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => EXIT_CONFLICT,
        Code::ResourceExhausted => EXIT_EXHAUSTED,
        _ => EXIT_OTHER,
    }
}

impl Failure {
    /// The exit status.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::NoToken | Failure::BadToken(_) => EXIT_UNAUTHENTICATED,
            Failure::Connect(ConnectError::BadEndpoint { .. }) => EXIT_USAGE,
            Failure::Connect(ConnectError::Unreachable { .. } | ConnectError::Lost { .. })
            | Failure::Timeout { .. } => EXIT_UNAVAILABLE,
            Failure::Status { status, .. } => code_exit(status.code()),
            Failure::Declined(_) | Failure::Output(_) => EXIT_OTHER,
        }
    }

    /// What to print on standard error, ending with a newline.
    pub(crate) fn report(&self) -> String {
        match self {
            Failure::Usage(message) => {
                format!("error: {message}\n\nFor more information, try '--help'.\n")
            }
            Failure::NoToken => {
                "error: no token: set APITOKEN_TOKEN (or pass --token)\n".to_owned()
            }
            Failure::BadToken(why) => format!("error: the token {why}\n"),
            Failure::Connect(error @ ConnectError::BadEndpoint { .. }) => {
                format!(
                    "error: {error}\nhint: set APITOKEN_ENDPOINT (or --endpoint) to http://host:port\n"
                )
            }
            Failure::Connect(error) => format!(
                "error: {error}\nhint: check APITOKEN_ENDPOINT (or --endpoint), and that the server runs\n"
            ),
            Failure::Timeout { endpoint, after } => format!(
                "error: the apitoken server at {} did not answer within {} (--timeout)\n",
                crate::escape::quote(endpoint, 100),
                show_duration(*after)
            ),
            Failure::Status { status, endpoint } => status_report(status, endpoint),
            Failure::Declined(message) => format!("{message}\n"),
            Failure::Output(error) => format!("error: cannot write the output: {error}\n"),
        }
    }
}

fn status_report(status: &Status, endpoint: &str) -> String {
    let mut out = format!(
        "error: {}: {}\n",
        code_name(status.code()),
        escape(status.message())
    );
    let details = status.get_error_details();
    let reason = details.error_info().map(|info| info.reason.clone());
    if let Some(reason) = &reason {
        let _ = writeln!(out, "reason: {}", escape(reason));
    }
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            let _ = writeln!(
                out,
                "field {}: {}",
                escape(&violation.field),
                escape(&violation.description)
            );
        }
    }
    if let Some(retry) = status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
    {
        let _ = writeln!(out, "retry after: {} s", escape(retry));
    }
    let hint = match (status.code(), reason.as_deref()) {
        (Code::Unauthenticated, Some("TOKEN_MISSING")) => {
            "set APITOKEN_TOKEN (or pass --token)".to_owned()
        }
        (Code::Unauthenticated, _) => {
            "the token in APITOKEN_TOKEN (or --token) cannot be used".to_owned()
        }
        (Code::PermissionDenied, Some("NAMESPACE_MISMATCH")) => {
            "a token only acts on its own namespace".to_owned()
        }
        (Code::PermissionDenied, Some("ROLE_TOO_LOW")) => {
            "create, update, regenerate, revoke and audit need an owner token".to_owned()
        }
        (Code::Aborted, _) => {
            "the token changed since you read its etag: get it again and retry".to_owned()
        }
        (Code::Unavailable, _) => format!(
            "the apitoken server at {} is not serving: try again later",
            crate::escape::quote(endpoint, 100)
        ),
        _ => String::new(),
    };
    if !hint.is_empty() {
        let _ = writeln!(out, "hint: {hint}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_documented_statuses() {
        assert_eq!(code_exit(Code::Unauthenticated), 3);
        assert_eq!(code_exit(Code::PermissionDenied), 4);
        assert_eq!(code_exit(Code::NotFound), 5);
        assert_eq!(code_exit(Code::Unavailable), 6);
        assert_eq!(code_exit(Code::DeadlineExceeded), 6);
        assert_eq!(code_exit(Code::InvalidArgument), 2);
        assert_eq!(code_exit(Code::AlreadyExists), 7);
        assert_eq!(code_exit(Code::Aborted), 7);
        assert_eq!(code_exit(Code::ResourceExhausted), 8);
        assert_eq!(code_exit(Code::Internal), 1);
        for code in 1..=8 {
            assert!(EXIT_STATUS_HELP.contains(&format!("\n  {code}  ")));
        }
    }

    #[test]
    fn server_text_is_escaped() {
        let failure = Failure::Status {
            status: Box::new(Status::not_found("no \u{1b}[2Jtoken\nrole: x")),
            endpoint: "http://x:1".into(),
        };
        let report = failure.report();
        assert_eq!(report, "error: NOT_FOUND: no \\x1b[2Jtoken\\nrole: x\n");
        assert_eq!(failure.exit_code(), EXIT_NOT_FOUND);
    }
}
