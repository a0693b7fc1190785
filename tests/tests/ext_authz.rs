//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`)
//! through the real server, with requests shaped like Envoy's HTTP filter
//! sends them (headers in `attributes.request.http.headers` with lowercase
//! keys, the path with its query, the client in
//! `attributes.source.address.socket_address`), for HTTP and gRPC
//! upstreams, on the main port and on `--ext-authz-listen`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use apitoken_domain::{Role, ratelimit::RateLimit};
use apitoken_server::{App, AppConfig, ext_authz::ExtAuthzConfig, limits::Limits};
use apitoken_tests::{
    Backend, NAMESPACE, OTHER_NAMESPACE, Options, TestServer, authed,
    envoy::{bearer, check, check_on, denied, envoy_request, headers, ok, refusal},
    v1::{self, ApiToken, ListAuditEventsRequest, VerifyApiTokenRequest, audit_event::Action},
};
use base64::Engine as _;
use envoy_types::pb::google::rpc;
use prost::Message as _;
use tonic::Code;

const POLICY: &str = "\
# team-a's shop, and one route of team-b
namespace team-a
require /shop.v1.Shop/*         viewer
require /shop.v1.Shop/Delete    owner
require /api/orders/**          editor
require /api/b/**               viewer  namespace=team-b
require /api/items/**           editor
require /api/items/**           viewer  methods=GET,HEAD
public  /healthz
header  name  x-caller
";

macro_rules! ext_authz_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(apitoken_tests::Backend::Sqlite).await; } )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(apitoken_postgres), ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)")]
            async fn $name() { super::$name(apitoken_tests::Backend::Postgres).await; }
        )* }
    };
}

ext_authz_tests!(
    allows_with_upstream_and_rate_limit_headers,
    refuses_as_the_interceptor_would,
    rate_limits_with_retry_after,
    public_routes_need_no_token_and_drop_forged_identities,
    usage_and_audit_follow_the_trusted_client_address,
    reflection_and_grpcurl_see_check,
    without_a_policy_check_is_not_served,
);

/// A server with `POLICY` (or `policy`), `limits`, trusted `proxies`, and
/// a Check port of its own.
async fn server(
    backend: Backend,
    policy: &str,
    limits: Limits,
    proxies: &str,
) -> Option<(TestServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("dir");
    let policy_file = dir.path().join("policy.txt");
    std::fs::write(&policy_file, policy).expect("policy");
    let server = TestServer::start_with(
        backend,
        Options {
            limits,
            trusted_proxies: apitoken_server::peer::TrustedProxies::parse(proxies).expect("cidr"),
            ext_authz: Some(ExtAuthzConfig {
                policy_file,
                listen: Some("127.0.0.1:0".parse().expect("addr")),
            }),
            ..Options::default()
        },
    )
    .await?;
    Some((server, dir))
}

/// A request as Envoy's HTTP filter sends it.
async fn allows_with_upstream_and_rate_limit_headers(backend: Backend) {
    let Some((server, _dir)) = server(backend, POLICY, Limits::default(), "").await else {
        return;
    };
    let (token, secret) = server.create("ci-deploy", Role::Editor).await;
    // An HTTP upstream, on the Check port of its own.
    let auth = bearer(&secret);
    let request = envoy_request(
        "GET",
        "/api/orders/7?expand=items",
        &[("authorization", &auth)],
        "192.0.2.10",
        false,
    );
    let response = check(&server, request.clone()).await;
    let allowed = ok(&response);
    let upstream = headers(&allowed.headers);
    assert_eq!(
        upstream["x-caller"],
        "namespaces/team-a/apitokens/ci-deploy"
    );
    assert_eq!(upstream["x-apitoken-uid"], token.uid);
    assert_eq!(upstream["x-apitoken-namespace"], NAMESPACE);
    assert_eq!(upstream["x-apitoken-role"], "editor");
    #[allow(deprecated)]
    let replaces = allowed
        .headers
        .iter()
        .all(|option| option.append.as_ref().is_some_and(|a| !a.value));
    assert!(
        replaces,
        "identity headers replace what the client sent: {allowed:?}"
    );
    let client = headers(&allowed.response_headers_to_add);
    assert_eq!(
        client["x-ratelimit-limit"], "60",
        "the editor's default: {client:?}"
    );
    assert_eq!(client["x-ratelimit-remaining"], "59");
    assert!(client["x-ratelimit-reset"].parse::<u64>().is_ok());
    assert!(
        !allowed
            .headers_to_remove
            .contains(&"authorization".to_owned())
    );

    // A gRPC upstream, on the main port.
    let grpc = envoy_request(
        "POST",
        "/shop.v1.Shop/List",
        &[("authorization", &auth)],
        "192.0.2.10",
        true,
    );
    let response = check_on(server.addr, grpc).await;
    assert_eq!(headers(&ok(&response).headers)["x-apitoken-role"], "editor");
    assert_eq!(
        headers(&ok(&response).response_headers_to_add)["x-ratelimit-remaining"],
        "58",
        "one limit, whichever port"
    );
    assert_eq!(
        server
            .requests
            .count(apitoken_server::ext_authz::CHECK_PATH),
        2
    );
}

async fn refuses_as_the_interceptor_would(backend: Backend) {
    let Some((server, _dir)) = server(backend, POLICY, apitoken_tests::generous_limits(), "").await
    else {
        return;
    };
    let (_, viewer) = server.create("viewer", Role::Viewer).await;
    let (_, revoked) = server.create("revoked", Role::Owner).await;
    let (_, team_b) = server
        .create_in(
            OTHER_NAMESPACE,
            &server.other_owner,
            "b-editor",
            Role::Editor,
        )
        .await;
    server
        .revoke_in_store(
            "revoked",
            apitoken_domain::clock::Clock::now(&*server.clock),
        )
        .await;
    let at = |path: &str, authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        envoy_request("GET", path, &headers, "192.0.2.10", false)
    };
    let (revoked_auth, viewer_auth) = (bearer(&revoked), bearer(&viewer));
    let (team_b_auth, owner_auth) = (bearer(&team_b), bearer(&server.owner));
    let cases: [(&str, Option<&str>, i32, &str); 13] = [
        ("/api/items/1", Some(&viewer_auth), 200, ""),
        ("/api/orders/1", None, 401, "TOKEN_MISSING"),
        (
            "/api/orders/1",
            Some("Bearer not-a-token"),
            401,
            "TOKEN_MALFORMED",
        ),
        (
            "/api/orders/1",
            Some("Basic dXNlcjpwYXNz"),
            401,
            "TOKEN_MALFORMED",
        ),
        ("/api/orders/1", Some(&revoked_auth), 401, "TOKEN_REVOKED"),
        ("/api/orders/1", Some(&viewer_auth), 403, "ROLE_TOO_LOW"),
        (
            "/api/orders/1",
            Some(&team_b_auth),
            403,
            "NAMESPACE_MISMATCH",
        ),
        ("/shop.v1.Shop/Delete", Some(&owner_auth), 200, ""),
        (
            "/shop.v1.Shop/Delete",
            Some(&viewer_auth),
            403,
            "ROLE_TOO_LOW",
        ),
        ("/api/b/things", Some(&team_b_auth), 200, ""),
        (
            "/api/b/things",
            Some(&viewer_auth),
            403,
            "NAMESPACE_MISMATCH",
        ),
        ("/admin", Some(&owner_auth), 403, "ROUTE_NOT_ALLOWED"),
        ("/healthz/../api/orders/1", None, 400, ""),
    ];
    for (path, authorization, http, reason) in cases {
        let response = check(&server, at(path, authorization)).await;
        if http == 200 {
            ok(&response);
            continue;
        }
        let code = match http {
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            _ => Code::InvalidArgument,
        };
        let (got_http, got_reason, got_code) = refusal(&response);
        assert_eq!(
            (got_http, got_reason.unwrap_or_default(), got_code),
            (http, reason.to_owned(), code as i32),
            "{path}"
        );
    }

    // The method chooses among a path's rules: a viewer may read, not write.
    let post = envoy_request(
        "POST",
        "/api/items/1",
        &[("authorization", &viewer_auth)],
        "192.0.2.10",
        false,
    );
    let (http, reason, _) = refusal(&check(&server, post).await);
    assert_eq!((http, reason.as_deref()), (403, Some("ROLE_TOO_LOW")));

    // The 401 says how to authenticate; the status is the API's own.
    let response = check(&server, at("/api/orders/1", Some(&bearer(&revoked)))).await;
    let denied_headers = headers(&denied(&response).headers);
    assert_eq!(
        denied_headers["www-authenticate"],
        "Bearer realm=\"apitoken\", error=\"invalid_token\""
    );
    assert_eq!(denied_headers["content-type"], "application/json");
    let api = server
        .client()
        .await
        .verify_api_token(authed(&revoked, VerifyApiTokenRequest::default()))
        .await
        .expect_err("revoked");
    assert_eq!(response.status.as_ref().unwrap().message, api.message());
    let info = response
        .status
        .as_ref()
        .unwrap()
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .expect("ErrorInfo in status");
    assert_eq!(
        tonic_types::pb::ErrorInfo::decode(&*info.value)
            .expect("decode")
            .reason,
        "TOKEN_REVOKED"
    );

    // A gRPC call is refused with the gRPC status a client decodes.
    let grpc = envoy_request(
        "POST",
        "/shop.v1.Shop/Delete",
        &[("authorization", &bearer(&viewer))],
        "192.0.2.10",
        true,
    );
    let response = check(&server, grpc).await;
    let denied_headers = headers(&denied(&response).headers);
    assert_eq!(denied(&response).status.as_ref().unwrap().code, 403);
    assert_eq!(denied_headers["grpc-status"], "7");
    assert_eq!(denied_headers["content-type"], "application/grpc");
    assert!(
        denied_headers["grpc-message"].contains("role owner"),
        "{denied_headers:?}"
    );
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&denied_headers["grpc-status-details-bin"])
        .expect("base64");
    let status = rpc::Status::decode(&*details).expect("google.rpc.Status");
    assert_eq!(status.code, Code::PermissionDenied as i32);
    let info = tonic_types::pb::ErrorInfo::decode(&*status.details[0].value).expect("ErrorInfo");
    assert_eq!(info.reason, "ROLE_TOO_LOW");
}

async fn rate_limits_with_retry_after(backend: Backend) {
    let Some((server, _dir)) = server(backend, POLICY, Limits::default(), "").await else {
        return;
    };
    let (_, secret) = server
        .create_token(
            NAMESPACE,
            &server.owner,
            "limited",
            ApiToken {
                role: v1::Role::Editor.into(),
                rate_limit: 2,
                ..Default::default()
            },
        )
        .await;
    let auth = bearer(&secret);
    let request = || envoy_request("POST", "/api/orders/new", &[], "192.0.2.10", false);
    let with_token = || {
        envoy_request(
            "POST",
            "/api/orders/new",
            &[("authorization", &auth)],
            "192.0.2.10",
            false,
        )
    };
    for remaining in ["1", "0"] {
        let response = check(&server, with_token()).await;
        assert_eq!(
            headers(&ok(&response).response_headers_to_add)["x-ratelimit-remaining"],
            remaining
        );
    }
    let response = check(&server, with_token()).await;
    let (http, reason, code) = refusal(&response);
    assert_eq!(
        (http, reason, code),
        (429, None, Code::ResourceExhausted as i32)
    );
    let denied_headers = headers(&denied(&response).headers);
    let retry_after: u64 = denied_headers["retry-after"].parse().expect("seconds");
    assert!((1..=62).contains(&retry_after), "{retry_after}");
    assert_eq!(denied_headers["x-ratelimit-remaining"], "0");
    assert_eq!(denied_headers["x-ratelimit-limit"], "2");
    let body: serde_json::Value = serde_json::from_str(&denied(&response).body).unwrap();
    let types: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["@type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"type.googleapis.com/google.rpc.QuotaFailure"),
        "{types:?}"
    );
    assert!(
        types.contains(&"type.googleapis.com/google.rpc.RetryInfo"),
        "{types:?}"
    );
    assert_eq!(
        body["error"]["details"][0]["violations"][0]["subject"],
        "namespaces/team-a/apitokens/limited"
    );
    // The API counts in the same budget: the token is spent there too.
    let status = server
        .client()
        .await
        .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
        .await
        .expect_err("one budget for Check and the API");
    assert_eq!(status.code(), Code::ResourceExhausted);
    server.clock.advance(chrono::Duration::seconds(62));
    ok(&check(&server, with_token()).await);
    // A request without a token is refused as such, limit or not; and
    // `/api/orders` itself is no path under `/api/orders/**`.
    let (http, reason, _) = refusal(&check(&server, request()).await);
    assert_eq!((http, reason.as_deref()), (401, Some("TOKEN_MISSING")));
    let bare = envoy_request(
        "POST",
        "/api/orders",
        &[("authorization", &auth)],
        "192.0.2.10",
        false,
    );
    let (http, reason, _) = refusal(&check(&server, bare).await);
    assert_eq!((http, reason.as_deref()), (403, Some("ROUTE_NOT_ALLOWED")));
}

async fn public_routes_need_no_token_and_drop_forged_identities(backend: Backend) {
    let policy = format!("{POLICY}strip-authorization yes\n");
    let Some((server, _dir)) =
        server(backend, &policy, apitoken_tests::generous_limits(), "").await
    else {
        return;
    };
    let forged = envoy_request(
        "GET",
        "/healthz",
        &[
            ("x-caller", "namespaces/team-a/apitokens/bootstrap-owner"),
            ("x-apitoken-role", "owner"),
        ],
        "192.0.2.10",
        false,
    );
    let response = check(&server, forged).await;
    let allowed = ok(&response);
    assert!(allowed.headers.is_empty(), "{allowed:?}");
    for name in [
        "x-caller",
        "x-apitoken-uid",
        "x-apitoken-namespace",
        "x-apitoken-role",
        "authorization",
    ] {
        assert!(
            allowed
                .headers_to_remove
                .iter()
                .any(|removed| removed == name),
            "{name} removed: {allowed:?}"
        );
    }
    // A bad token on a public route is no failure either.
    let response = check(
        &server,
        envoy_request(
            "GET",
            "/healthz",
            &[("authorization", "Bearer junk")],
            "192.0.2.10",
            false,
        ),
    )
    .await;
    ok(&response);
    // An allowed call does not pass the secret upstream.
    let auth = bearer(&server.owner);
    let response = check(
        &server,
        envoy_request(
            "GET",
            "/shop.v1.Shop/Get",
            &[("authorization", &auth)],
            "192.0.2.10",
            false,
        ),
    )
    .await;
    assert!(
        ok(&response)
            .headers_to_remove
            .contains(&"authorization".to_owned())
    );
}

async fn usage_and_audit_follow_the_trusted_client_address(backend: Backend) {
    let limits = Limits {
        failed_auth_limit: RateLimit::per_minute(3),
        ..apitoken_tests::generous_limits()
    };
    // Envoy on 127.0.0.1 is a trusted proxy: its word on the client counts.
    let Some((server, _dir)) = server(backend, POLICY, limits.clone(), "127.0.0.0/8").await else {
        return;
    };
    let (_, secret) = server.create("used", Role::Viewer).await;
    let before = server
        .store
        .get(&apitoken_domain::name::TokenName::from_stored(
            NAMESPACE, "used",
        ))
        .await
        .unwrap()
        .use_count;
    let auth = bearer(&secret);
    let forwarded = envoy_request(
        "GET",
        "/shop.v1.Shop/Get",
        &[("authorization", &auth)],
        "198.51.100.7",
        false,
    );
    ok(&check(&server, forwarded).await);
    server.wait_for_usage(&["used"]).await;
    let record = server
        .store
        .get(&apitoken_domain::name::TokenName::from_stored(
            NAMESPACE, "used",
        ))
        .await
        .unwrap();
    assert_eq!(record.use_count, before + 1);
    assert_eq!(record.last_use_ip.as_deref(), Some("198.51.100.7"));

    // A revoked token keeps trying from there: throttled, and the burst is
    // audited with the client's address.
    let (_, revoked) = server.create("revoked", Role::Viewer).await;
    server
        .revoke_in_store(
            "revoked",
            apitoken_domain::clock::Clock::now(&*server.clock),
        )
        .await;
    let auth = bearer(&revoked);
    let attempt = || {
        envoy_request(
            "GET",
            "/shop.v1.Shop/Get",
            &[("authorization", &auth)],
            "198.51.100.7",
            false,
        )
    };
    for _ in 0..3 {
        assert_eq!(refusal(&check(&server, attempt()).await).0, 401);
    }
    let response = check(&server, attempt()).await;
    assert_eq!(refusal(&response).0, 429, "throttled after 3 failures");
    assert!(headers(&denied(&response).headers).contains_key("retry-after"));
    // Another client behind the same Envoy is not throttled.
    let other = envoy_request(
        "GET",
        "/shop.v1.Shop/Get",
        &[("authorization", &auth)],
        "198.51.100.8",
        false,
    );
    assert_eq!(refusal(&check(&server, other).await).0, 401);
    let events = server
        .client()
        .await
        .list_audit_events(authed(
            &server.owner,
            ListAuditEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    let burst = events
        .iter()
        .find(|event| event.action == Action::AuthFailureBurst as i32)
        .expect("the burst is audited");
    assert_eq!(burst.peer_address, "198.51.100.7");
    assert_eq!(
        burst.details.get("address").map(String::as_str),
        Some("198.51.100.7")
    );
    assert_eq!(burst.user_agent, "ext-authz-test/1");
    assert_eq!(burst.resource, "namespaces/team-a/apitokens/revoked");
    server.stop().await;

    // Without trusted proxies the source address is not believed: the
    // caller of Check is the client.
    let Some((server, _dir)) = server_untrusted(backend, limits).await else {
        return;
    };
    let (_, secret) = server.create("used", Role::Viewer).await;
    let auth = bearer(&secret);
    ok(&check(
        &server,
        envoy_request(
            "GET",
            "/shop.v1.Shop/Get",
            &[("authorization", &auth)],
            "198.51.100.7",
            false,
        ),
    )
    .await);
    server.wait_for_usage(&["used"]).await;
    let record = server
        .store
        .get(&apitoken_domain::name::TokenName::from_stored(
            NAMESPACE, "used",
        ))
        .await
        .unwrap();
    assert_eq!(record.last_use_ip.as_deref(), Some("127.0.0.1"));
}

async fn server_untrusted(
    backend: Backend,
    limits: Limits,
) -> Option<(TestServer, tempfile::TempDir)> {
    server(backend, POLICY, limits, "").await
}

async fn reflection_and_grpcurl_see_check(backend: Backend) {
    let Some((server, _dir)) = server(backend, POLICY, apitoken_tests::generous_limits(), "").await
    else {
        return;
    };
    use tonic_reflection::pb::v1;
    for addr in [server.addr, server.ext_authz_addr.expect("port")] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            replies.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names
                .iter()
                .any(|n| n == "envoy.service.auth.v3.Authorization"),
            "{addr}: {names:?}"
        );
    }
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var("APITOKEN_REQUIRE_GRPCURL").is_err(),
            "grpcurl is not on PATH"
        );
        eprintln!("skipped: the grpcurl half (grpcurl is not on PATH)");
        return;
    }
    let body = serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "192.0.2.10", "portValue": 4000}}},
            "request": {"http": {
                "method": "GET",
                "path": "/api/orders/9",
                "headers": {"authorization": bearer(&server.owner)}
            }}
        }
    });
    let addr = server.ext_authz_addr.unwrap().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("grpcurl")
            .args([
                "-plaintext",
                "-d",
                &body.to_string(),
                &addr,
                "envoy.service.auth.v3.Authorization/Check",
            ])
            .output()
            .expect("grpcurl runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"okResponse\""), "{stdout}");
    assert!(
        stdout.contains("namespaces/team-a/apitokens/bootstrap-owner"),
        "{stdout}"
    );
}

async fn without_a_policy_check_is_not_served(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    assert_eq!(server.ext_authz_addr, None);
    let request = envoy_request("GET", "/api/orders/1", &[], "192.0.2.10", false);
    let status =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            server.channel().await,
        )
        .check(request)
        .await
        .expect_err("not served");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

/// A bad policy file stops the start, naming the file, the line and the
/// problem; so does a missing one.
#[tokio::test]
async fn a_bad_policy_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let policy_file = dir.path().join("policy.txt");
    std::fs::write(
        &policy_file,
        "namespace team-a\n\nrequire /shop.v1.Shop/* admin\n",
    )
    .expect("write");
    let start = |policy_file: std::path::PathBuf| {
        let mut config = AppConfig::new(format!(
            "sqlite://{}",
            dir.path().join("db.sqlite").display()
        ));
        config.ext_authz = Some(ExtAuthzConfig {
            policy_file,
            listen: None,
        });
        App::build(
            config,
            std::sync::Arc::new(apitoken_domain::clock::SystemClock),
        )
    };
    let error = start(policy_file.clone())
        .await
        .expect_err("bad policy")
        .to_string();
    let expected = format!("{}:3: `admin` is not a role", policy_file.display());
    assert!(error.contains(&expected), "{error}");
    assert!(error.contains("--ext-authz-policy"), "{error}");
    let missing = dir.path().join("nope.txt");
    let error = start(missing.clone())
        .await
        .expect_err("missing")
        .to_string();
    assert!(
        error.contains(&format!("{}: cannot read", missing.display())),
        "{error}"
    );
    std::fs::write(&policy_file, "namespace team-a\nrequire /a/* viewer\n").expect("write");
    assert!(start(policy_file).await.is_ok(), "a good one starts");
}
