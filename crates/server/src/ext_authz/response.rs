//! `CheckResponse`s: allowed (`OkHttpResponse`: who called, for the
//! upstream; `x-ratelimit-*` for the client) and denied
//! (`DeniedHttpResponse`).
//!
//! A denial starts from the `tonic::Status` that the one mapping
//! ([`apitoken_domain::status`]) makes of the error, so it says exactly
//! what the gRPC API and the interceptor say: its code becomes the HTTP
//! status (401, 403, 429, 400, 503, ...), its `google.rpc` details become
//! the JSON body (`{"error": {"code", "message", "status", "details"}}`, the
//! AIP-193 shape, with the `ErrorInfo` reason) and `CheckResponse.status`.
//! `retry-after` and `x-ratelimit-*` go along; `www-authenticate` with a
//! 401. For a gRPC call the reply also carries `grpc-status`,
//! `grpc-message` and `grpc-status-details-bin`, so a gRPC client decodes
//! the same status (reason included) as from the interceptor.

use apitoken_domain::status::code_name;
use apitoken_domain::{Principal, ratelimit::Decision};
use base64::Engine as _;
use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
        },
        r#type::v3::HttpStatus,
    },
    google::{protobuf::BoolValue, rpc},
};
use prost::Message as _;
use serde_json::{Map, Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use apitoken_domain::access::AccessPolicy;

/// Longest `grpc-message` sent (before percent-encoding).
const MAX_GRPC_MESSAGE: usize = 512;

/// A header that replaces any of the same name.
#[allow(deprecated)] // `append` is deprecated, but older Envoys read only it.
fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

fn rate_headers(decision: Option<&Decision>) -> impl Iterator<Item = HeaderValueOption> {
    decision
        .into_iter()
        .flat_map(Decision::headers)
        .map(|(name, value)| header(name, value))
}

/// The request may go on: `principal` (none on a public route) named to
/// the upstream in the policy's headers, the `x-ratelimit-*` headers for
/// the client.
pub(crate) fn allowed(
    policy: &AccessPolicy,
    principal: Option<&Principal>,
    decision: Option<&Decision>,
) -> CheckResponse {
    let names = policy.headers();
    let mut ok = OkHttpResponse::default();
    match principal {
        Some(principal) => {
            ok.headers = vec![
                header(&names.name, principal.name.to_string()),
                header(&names.uid, principal.uid.clone()),
                header(&names.namespace, principal.namespace()),
                header(&names.role, principal.role.as_str()),
            ];
        }
        // A client must not name itself to the upstream.
        None => ok.headers_to_remove = names.all().map(str::to_owned).to_vec(),
    }
    if policy.strip_authorization() {
        ok.headers_to_remove.push("authorization".to_owned());
    }
    ok.response_headers_to_add = rate_headers(decision).collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: 0,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: None,
    }
}

/// The request is refused with `status`, as the interceptor would refuse
/// it; `grpc`: the request is a gRPC call.
pub(crate) fn denied(status: &Status, grpc: bool, decision: Option<&Decision>) -> CheckResponse {
    let wire = wire_status(status);
    let mut headers: Vec<HeaderValueOption> = rate_headers(decision).collect();
    if let Some(seconds) = apitoken_domain::status::retry_after(status) {
        headers.push(header(
            apitoken_domain::status::RETRY_AFTER,
            seconds.to_string(),
        ));
    }
    if status.code() == Code::Unauthenticated {
        headers.push(header("www-authenticate", www_authenticate(status)));
    }
    let body = if grpc {
        headers.push(header("content-type", "application/grpc"));
        headers.push(header("grpc-status", (status.code() as i32).to_string()));
        headers.push(header("grpc-message", grpc_message(status.message())));
        if !status.details().is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.details());
            headers.push(header("grpc-status-details-bin", encoded));
        }
        status.message().to_owned()
    } else {
        headers.push(header("content-type", "application/json"));
        json_body(status).to_string()
    };
    CheckResponse {
        status: Some(wire),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status(status.code()),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

/// `google.rpc.Status` of `status`, details included (tonic keeps them
/// encoded as exactly that message).
fn wire_status(status: &Status) -> rpc::Status {
    rpc::Status::decode(status.details())
        .ok()
        .filter(|wire| wire.code == status.code() as i32)
        .unwrap_or_else(|| rpc::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        })
}

/// The HTTP status of a gRPC code (google.rpc.Code's mapping).
pub(crate) fn http_status(code: Code) -> i32 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// `Bearer realm="apitoken"`, with RFC 6750's `invalid_token` when a token
/// was given.
fn www_authenticate(status: &Status) -> String {
    let missing = status
        .get_details_error_info()
        .is_some_and(|info| info.reason == "TOKEN_MISSING");
    if missing {
        "Bearer realm=\"apitoken\"".to_owned()
    } else {
        "Bearer realm=\"apitoken\", error=\"invalid_token\"".to_owned()
    }
}

/// gRPC's percent-encoding of a status message.
fn grpc_message(message: &str) -> String {
    let message = apitoken_domain::input::truncate(message, MAX_GRPC_MESSAGE);
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The AIP-193 JSON error of `status`, with its known `google.rpc` details.
fn json_body(status: &Status) -> Value {
    let details = status.get_error_details();
    let mut listed: Vec<Value> = Vec::new();
    let typed = |name: &str, mut fields: Map<String, Value>| {
        fields.insert(
            "@type".to_owned(),
            Value::String(format!("type.googleapis.com/google.rpc.{name}")),
        );
        Value::Object(fields)
    };
    let object = |value: Value| match value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Some(info) = details.error_info() {
        listed.push(typed(
            "ErrorInfo",
            object(
                json!({"reason": info.reason, "domain": info.domain, "metadata": info.metadata}),
            ),
        ));
    }
    if let Some(quota) = details.quota_failure() {
        let violations: Vec<Value> = quota
            .violations
            .iter()
            .map(|v| json!({"subject": v.subject, "description": v.description}))
            .collect();
        listed.push(typed(
            "QuotaFailure",
            object(json!({"violations": violations})),
        ));
    }
    if let Some(retry) = details.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        let seconds = format!("{}.{:03}s", delay.as_secs(), delay.subsec_millis());
        listed.push(typed("RetryInfo", object(json!({"retryDelay": seconds}))));
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        listed.push(typed(
            "BadRequest",
            object(json!({"fieldViolations": violations})),
        ));
    }
    json!({
        "error": {
            "code": http_status(status.code()),
            "message": status.message(),
            "status": code_name(status.code()),
            "details": listed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitoken_domain::{AuthFailure, Error};

    #[test]
    fn denials_carry_the_interceptors_status() {
        let status = Status::from(Error::Unauthenticated(AuthFailure::Revoked));
        let response = denied(&status, false, None);
        let wire = response.status.expect("status");
        assert_eq!(wire.code, Code::Unauthenticated as i32);
        assert_eq!(wire.details.len(), 1);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not denied");
        };
        assert_eq!(denied.status.map(|s| s.code), Some(401));
        let body: Value = serde_json::from_str(&denied.body).expect("json");
        assert_eq!(body["error"]["details"][0]["reason"], "TOKEN_REVOKED");
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("a b%c\u{e9}"), "a b%25c%C3%A9");
    }
}
