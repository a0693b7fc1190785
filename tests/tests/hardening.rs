//! Hostile input through the real gRPC surface: every defect of the
//! hardening review has its regression test here, on SQLite and PostgreSQL.
//! No caller can crash the server, poison a row, grow its memory, get an
//! unbounded error back, or write where it should not.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use apitoken_domain::{Role, clock::Clock};
use apitoken_tests::{
    NAMESPACE, Options, TestServer, authed, backend_tests, bad_fields, in_seconds, reason,
    v1::{
        self, ApiToken, ApiTokenUsage, CreateApiTokenRequest, GetApiTokenRequest,
        ListApiTokensRequest, ListAuditEventsRequest, RegenerateApiTokenRequest,
        ReportApiTokenUsageRequest, UpdateApiTokenRequest, VerifyApiTokenRequest,
        WatchApiTokenEventsRequest,
    },
};
use tonic::{Code, Status};

backend_tests!(
    huge_filters_are_refused_and_the_server_lives,
    only_interceptors_report_usage,
    usage_reports_cannot_make_a_row_unreadable,
    usage_reports_cannot_move_time,
    out_of_range_times_and_durations_are_refused,
    errors_quote_little_of_what_they_got,
    display_names_are_one_line,
    made_up_paths_do_not_grow_memory,
    event_streams_per_token_are_capped,
    caller_address_is_honoured_only_from_interceptors,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_choose_no_audit_log_sqlite() {
    unauthenticated_callers_choose_no_audit_log(apitoken_tests::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(apitoken_postgres),
    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)"
)]
async fn unauthenticated_callers_choose_no_audit_log_postgres() {
    unauthenticated_callers_choose_no_audit_log(apitoken_tests::Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_through_trusted_proxies_sqlite() {
    forwarded_addresses_count_only_through_trusted_proxies(apitoken_tests::Backend::Sqlite).await;
}

fn parent() -> String {
    format!("namespaces/{NAMESPACE}")
}

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

/// The server still answers (it did not abort or wedge).
async fn still_alive(server: &TestServer) {
    server
        .client()
        .await
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("bootstrap-owner"),
            },
        ))
        .await
        .expect("the server still answers");
}

fn assert_invalid(status: &Status, field: &str, limit: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(status), [field], "{status:?}");
    assert!(
        status.message().contains(limit),
        "{:?} names the limit {limit}",
        status.message()
    );
}

async fn huge_filters_are_refused_and_the_server_lives(server: TestServer) {
    let mut client = server.client().await;
    // Thousands of ANDed conditions overflowed the stack (both backends).
    let thousands = vec!["role = ROLE_VIEWER"; 5000].join(" AND ");
    for filter in [thousands.clone(), "x".repeat(2000)] {
        let status = client
            .list_api_tokens(authed(
                &server.owner,
                ListApiTokensRequest {
                    parent: parent(),
                    filter: filter.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("refused");
        assert_invalid(&status, "filter", "1024 bytes");
        let status = client
            .list_audit_events(authed(
                &server.owner,
                ListAuditEventsRequest {
                    parent: parent(),
                    filter,
                    ..Default::default()
                },
            ))
            .await
            .expect_err("refused");
        assert_invalid(&status, "filter", "1024 bytes");
    }
    // Short conditions within the byte bound, but too many of them.
    let seventeen = vec!["state = active"; 17].join(" AND ");
    assert!(seventeen.len() < 1024);
    let status = client
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                parent: parent(),
                filter: seventeen,
                ..Default::default()
            },
        ))
        .await
        .expect_err("refused");
    assert_invalid(&status, "filter", "16 conditions");
    // Sixteen are fine, on both backends.
    let sixteen = vec!["state = active"; 16].join(" AND ");
    client
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                parent: parent(),
                filter: sixteen,
                ..Default::default()
            },
        ))
        .await
        .expect("sixteen conditions");
    // A huge page token is refused without decoding it.
    let status = client
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                parent: parent(),
                page_token: "A".repeat(100_000),
                ..Default::default()
            },
        ))
        .await
        .expect_err("refused");
    assert_invalid(&status, "page_token", "at most 128 bytes");
    still_alive(&server).await;
}

fn usage(uid: &str, use_count: i64, last_use_time: prost_types::Timestamp) -> ApiTokenUsage {
    ApiTokenUsage {
        uid: uid.to_owned(),
        use_count,
        last_use_time: Some(last_use_time),
        last_use_ip: "192.0.2.10".into(),
    }
}

async fn report(
    server: &TestServer,
    reporter: &str,
    usages: Vec<ApiTokenUsage>,
) -> Result<v1::ReportApiTokenUsageResponse, Status> {
    server
        .client()
        .await
        .report_api_token_usage(authed(
            reporter,
            ReportApiTokenUsageRequest {
                parent: parent(),
                usages,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn get(server: &TestServer, id: &str) -> ApiToken {
    server
        .client()
        .await
        .get_api_token(authed(&server.owner, GetApiTokenRequest { name: name(id) }))
        .await
        .unwrap_or_else(|status| panic!("get {id}: {status:?}"))
        .into_inner()
}

async fn only_interceptors_report_usage(server: TestServer) {
    let (target, _) = server.create("usage-target", Role::Viewer).await;
    let (_, viewer) = server.create("plain-viewer", Role::Viewer).await;
    // The owner of the namespace is not an interceptor either.
    for credential in [&viewer, &server.owner] {
        let status = report(
            &server,
            credential,
            vec![usage(&target.uid, 5, in_seconds(&server, 0))],
        )
        .await
        .expect_err("not an interceptor");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(reason(&status), "INTERCEPTOR_REQUIRED");
    }
    assert_eq!(get(&server, "usage-target").await.use_count, 0);
    // An interceptor of another namespace may not report here.
    let (_, foreign) = server
        .create_token(
            apitoken_tests::OTHER_NAMESPACE,
            &server.other_owner,
            "foreign-interceptor",
            ApiToken {
                role: v1::Role::Viewer.into(),
                interceptor: true,
                ..Default::default()
            },
        )
        .await;
    let status = report(
        &server,
        &foreign,
        vec![usage(&target.uid, 5, in_seconds(&server, 0))],
    )
    .await
    .expect_err("other namespace");
    assert_eq!(reason(&status), "NAMESPACE_MISMATCH");
    // An interceptor token of the namespace may.
    let (interceptor_token, interceptor) = server.create_interceptor("the-interceptor").await;
    assert!(interceptor_token.interceptor);
    report(
        &server,
        &interceptor,
        vec![usage(&target.uid, 5, in_seconds(&server, 0))],
    )
    .await
    .expect("interceptor reports");
    assert_eq!(get(&server, "usage-target").await.use_count, 5);
    assert!(get(&server, "the-interceptor").await.interceptor);
}

async fn usage_reports_cannot_make_a_row_unreadable(server: TestServer) {
    let (target, _) = server.create("counted", Role::Viewer).await;
    let (_, interceptor) = server.create_interceptor("counter").await;
    // Counts are bounded per report...
    for count in [i64::MAX, 1_000_000_001, 0, -1] {
        let status = report(
            &server,
            &interceptor,
            vec![usage(&target.uid, count, in_seconds(&server, 0))],
        )
        .await
        .expect_err("out of range");
        assert_invalid(&status, "usages[0].use_count", "1000000000");
    }
    // ...and the stored count saturates instead of overflowing (which made
    // SQLite store a float and every read of the row fail).
    use sea_orm::{ConnectionTrait, Statement};
    let db = server.store.connection();
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "UPDATE api_tokens SET use_count = {} WHERE uid = '{}'",
            i64::MAX - 10,
            target.uid
        ),
    ))
    .await
    .expect("near the top");
    for _ in 0..3 {
        report(
            &server,
            &interceptor,
            vec![usage(&target.uid, 1_000_000_000, in_seconds(&server, 0))],
        )
        .await
        .expect("report");
    }
    assert_eq!(get(&server, "counted").await.use_count, i64::MAX);
    // Every read path still works: list, verify, revoke.
    let listed = server
        .client()
        .await
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                parent: parent(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.api_tokens.iter().any(|t| t.uid == target.uid));
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            v1::RevokeApiTokenRequest {
                name: name("counted"),
            },
        ))
        .await
        .expect("revoke");
}

async fn usage_reports_cannot_move_time(server: TestServer) {
    let (target, _) = server.create("timed", Role::Viewer).await;
    let (_, interceptor) = server.create_interceptor("timer").await;
    // A use "in 1970" would make a fresh token look unused for decades (and
    // trip the inactivity rule): it counts as the token's creation.
    report(
        &server,
        &interceptor,
        vec![usage(
            &target.uid,
            1,
            prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            },
        )],
    )
    .await
    .expect("report");
    let token = get(&server, "timed").await;
    assert_eq!(token.last_use_time, token.create_time);
    // A use in the future counts as now.
    server.clock.advance(chrono::Duration::seconds(10));
    report(
        &server,
        &interceptor,
        vec![usage(&target.uid, 1, in_seconds(&server, 86_400 * 365))],
    )
    .await
    .expect("report");
    let now = apitoken_server::convert::timestamp(server.clock.now());
    assert_eq!(get(&server, "timed").await.last_use_time, Some(now));
    // Out of the protobuf range: refused, naming the field.
    let status = report(
        &server,
        &interceptor,
        vec![usage(
            &target.uid,
            1,
            prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        )],
    )
    .await
    .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["usages[0].last_use_time"]);
}

async fn out_of_range_times_and_durations_are_refused(server: TestServer) {
    let mut client = server.client().await;
    let create = |id: &str, token: ApiToken, ttl: Option<prost_types::Duration>| {
        authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: parent(),
                api_token_id: id.to_owned(),
                api_token: Some(token),
                ttl,
            },
        )
    };
    let viewer = || ApiToken {
        role: v1::Role::Viewer.into(),
        ..Default::default()
    };
    // A huge ttl panicked (`DateTime + TimeDelta overflowed`): CANCELLED.
    for seconds in [1_000_000_000_000, i64::MAX, 200 * 365 * 86_400] {
        let status = client
            .create_api_token(create(
                "huge-ttl",
                viewer(),
                Some(prost_types::Duration { seconds, nanos: 0 }),
            ))
            .await
            .expect_err("refused");
        assert_invalid(&status, "ttl", "36525 days");
    }
    // Year 10000 was stored, and clients then failed to decode the reply.
    for (seconds, limit) in [
        (253_402_300_800, "9999"),
        (200 * 365 * 86_400 + 1_800_000_000, "36525 days"),
    ] {
        let status = client
            .create_api_token(create(
                "far-future",
                ApiToken {
                    expire_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                    ..viewer()
                },
                None,
            ))
            .await
            .expect_err("refused");
        assert_invalid(&status, "api_token.expire_time", limit);
    }
    // The grace period of a regeneration, likewise.
    server.create("graceful", Role::Viewer).await;
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("graceful"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                end_grace_on_first_use: false,
            },
        ))
        .await
        .expect_err("refused");
    assert_invalid(&status, "previous_secret_ttl", "36525 days");
    // Within the representable range, the deployment's own bound applies
    // (`--max-grace`, 7 days by default), named too.
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("graceful"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: 8 * 86_400,
                    nanos: 0,
                }),
                end_grace_on_first_use: false,
            },
        ))
        .await
        .expect_err("refused");
    assert_invalid(&status, "previous_secret_ttl", "7d");
    // Nothing was created, nothing changed, the server lives.
    for id in ["huge-ttl", "far-future"] {
        let status = client
            .get_api_token(authed(&server.owner, GetApiTokenRequest { name: name(id) }))
            .await
            .expect_err("not created");
        assert_eq!(status.code(), Code::NotFound);
    }
    still_alive(&server).await;
}

async fn errors_quote_little_of_what_they_got(server: TestServer) {
    let mut client = server.client().await;
    let huge = "k".repeat(100_000);
    // Each of these used to come back as a transport error: the message
    // quoting the input outgrew the client's metadata limit.
    let label = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: parent(),
                api_token_id: "labelled".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    labels: [(huge.clone(), "v".into())].into(),
                    ..Default::default()
                }),
                ttl: None,
            },
        ))
        .await
        .expect_err("refused");
    let filter = client
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                parent: parent(),
                filter: format!("role = {}", "r".repeat(1000)),
                ..Default::default()
            },
        ))
        .await
        .expect_err("refused");
    server.create("masked", Role::Viewer).await;
    let mask = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("masked"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![huge.clone()],
                }),
            },
        ))
        .await
        .expect_err("refused");
    let etag = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("masked"),
                    display_name: "new".into(),
                    etag: huge.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("refused");
    let many_paths = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("masked"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into(); 10_000],
                }),
            },
        ))
        .await
        .expect_err("refused");
    for status in [&label, &filter, &mask, &etag, &many_paths] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() <= 512, "{}", status.message().len());
        assert!(
            status
                .get_details_bad_request_len()
                .is_some_and(|fields| fields >= 1),
            "{status:?}"
        );
    }
    assert!(etag.message().contains("64 bytes"), "{}", etag.message());
    assert!(
        many_paths.message().contains("16 paths"),
        "{}",
        many_paths.message()
    );
}

/// Counts violations of a status's `BadRequest`, if any.
trait BadRequestLen {
    fn get_details_bad_request_len(&self) -> Option<usize>;
}

impl BadRequestLen for Status {
    fn get_details_bad_request_len(&self) -> Option<usize> {
        use tonic_types::StatusExt;
        self.get_details_bad_request()
            .map(|bad| bad.field_violations.len())
    }
}

async fn display_names_are_one_line(server: TestServer) {
    let mut client = server.client().await;
    // A newline let a token fake a `role: ROLE_OWNER` line in the CLI.
    for display_name in [
        "viewer\nrole: ROLE_OWNER",
        "tab\there",
        "\u{1b}[31mred",
        "rtl\u{202e}txt.exe",
    ] {
        let status = client
            .create_api_token(authed(
                &server.owner,
                CreateApiTokenRequest {
                    parent: parent(),
                    api_token_id: "spoof".into(),
                    api_token: Some(ApiToken {
                        role: v1::Role::Viewer.into(),
                        display_name: display_name.into(),
                        ..Default::default()
                    }),
                    ttl: None,
                },
            ))
            .await
            .expect_err(display_name);
        assert_eq!(bad_fields(&status), ["api_token.display_name"]);
        assert!(
            !status.message().contains('\n') && !status.message().contains('\u{1b}'),
            "the error does not echo control characters: {:?}",
            status.message()
        );
    }
    // The same rule on update.
    server.create("renamed", Role::Viewer).await;
    let status = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("renamed"),
                    display_name: "viewer\nrole: ROLE_OWNER".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
        ))
        .await
        .expect_err("refused on update");
    assert_eq!(bad_fields(&status), ["api_token.display_name"]);
    assert!(!status.message().contains('\n'), "{:?}", status.message());
    // Descriptions keep their newlines and tabs, and nothing else.
    let (token, _) = server
        .create_token(
            NAMESPACE,
            &server.owner,
            "multiline",
            ApiToken {
                role: v1::Role::Viewer.into(),
                description: "line one\nline two\tindented".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(token.description, "line one\nline two\tindented");
    let status = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("multiline"),
                    description: "bell\u{7}".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(bad_fields(&status), ["api_token.description"]);
}

async fn made_up_paths_do_not_grow_memory(server: TestServer) {
    // 20,000 made-up paths grew a per-path table by 42 MB. Now only the
    // methods the server serves have their own count.
    let channel = server.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..2000 {
        grpc.ready().await.expect("ready");
        let path = format!("/made.up.Service{i}/Method{i}")
            .parse()
            .expect("path");
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("unimplemented");
        assert_eq!(status.code(), Code::Unimplemented);
    }
    assert_eq!(server.requests.count("other"), 2000);
    assert_eq!(server.requests.count("/made.up.Service7/Method7"), 0);
    assert!(
        server.requests.distinct_paths() <= 30,
        "{}",
        server.requests.distinct_paths()
    );
    still_alive(&server).await;
}

async fn event_streams_per_token_are_capped(server: TestServer) {
    // The harness allows 8 streams per token (see Options::default).
    let (_, watcher) = server.create("many-streams", Role::Viewer).await;
    let mut streams = Vec::new();
    let open = |credential: String| {
        let server = &server;
        async move {
            server
                .client()
                .await
                .watch_api_token_events(authed(
                    &credential,
                    WatchApiTokenEventsRequest {
                        parent: parent(),
                        after_sequence: 0,
                    },
                ))
                .await
        }
    };
    for _ in 0..8 {
        streams.push(open(watcher.clone()).await.expect("within the cap"));
    }
    let status = open(watcher.clone()).await.expect_err("over the cap");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("8 event streams"),
        "{}",
        status.message()
    );
    // Another token is not affected.
    let _other = open(server.owner.clone()).await.expect("another token");
    // Closing one frees its slot.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match open(watcher.clone()).await {
            Ok(stream) => {
                streams.push(stream);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn caller_address_is_honoured_only_from_interceptors(server: TestServer) {
    let (_, secret) = server.create("addressed", Role::Viewer).await;
    let verify = |credential: Option<&str>, caller_address: &str| {
        let request = VerifyApiTokenRequest {
            secret: secret.clone(),
            caller_address: caller_address.to_owned(),
        };
        let request = match credential {
            Some(credential) => authed(credential, request),
            None => tonic::Request::new(request),
        };
        let server = &server;
        async move {
            server
                .client()
                .await
                .verify_api_token(request)
                .await
                .expect("verify")
        }
    };
    // Anyone else naming an address is taken to be calling from where it calls.
    verify(None, "198.51.100.7").await;
    server.wait_for_usage(&["addressed"]).await;
    assert_eq!(get(&server, "addressed").await.last_use_ip, "127.0.0.1");
    let (_, viewer) = server.create("not-interceptor", Role::Viewer).await;
    server.clock.advance(chrono::Duration::seconds(1));
    verify(Some(&viewer), "198.51.100.8").await;
    server.wait_for_usage(&["addressed"]).await;
    assert_eq!(get(&server, "addressed").await.last_use_ip, "127.0.0.1");
    // An interceptor names the address of the call it verifies.
    let (_, interceptor) = server.create_interceptor("named-by").await;
    server.clock.advance(chrono::Duration::seconds(1));
    verify(Some(&interceptor), "198.51.100.9").await;
    server.wait_for_usage(&["addressed"]).await;
    assert_eq!(get(&server, "addressed").await.last_use_ip, "198.51.100.9");
    // A malformed address is refused, naming the field.
    let status = server
        .client()
        .await
        .verify_api_token(authed(
            &interceptor,
            VerifyApiTokenRequest {
                secret: secret.clone(),
                caller_address: "x".repeat(10_000),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(bad_fields(&status), ["caller_address"]);
}

/// Audit log entries of `namespace`, as its owner sees them.
async fn audit_log(server: &TestServer, owner: &str, namespace: &str) -> Vec<v1::AuditEvent> {
    server
        .client()
        .await
        .list_audit_events(authed(
            owner,
            ListAuditEventsRequest {
                parent: format!("namespaces/{namespace}"),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events
}

async fn unauthenticated_callers_choose_no_audit_log(backend: apitoken_tests::Backend) {
    let Some(server) = TestServer::start_with(
        backend,
        Options {
            limits: apitoken_server::limits::Limits {
                failed_auth_limit: apitoken_domain::ratelimit::RateLimit::per_minute(3),
                ..apitoken_tests::generous_limits()
            },
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let before = audit_log(
        &server,
        &server.other_owner,
        apitoken_tests::OTHER_NAMESPACE,
    )
    .await;
    // Unknown tokens naming team-b's resources, and a namespace that does
    // not exist, with a chosen request id and a hostile user agent.
    let unknown = apitoken_domain::token::TokenFormat::default()
        .generate()
        .expect("secret")
        .expose()
        .to_owned();
    let mut client = server.client().await;
    for (attempt, parent) in ["namespaces/team-b", "namespaces/never-made"]
        .iter()
        .cycle()
        .take(10)
        .enumerate()
    {
        let mut request = authed(
            &unknown,
            ListApiTokensRequest {
                parent: (*parent).to_owned(),
                ..Default::default()
            },
        );
        request.metadata_mut().insert(
            "x-request-id",
            format!("attacker-{attempt}").parse().unwrap(),
        );
        request
            .metadata_mut()
            .insert("user-agent", "evil/1.0".parse().unwrap());
        let status = client.list_api_tokens(request).await.expect_err("refused");
        assert!(
            matches!(
                status.code(),
                Code::Unauthenticated | Code::ResourceExhausted
            ),
            "{status:?}"
        );
    }
    // Nothing landed in team-b's log, and no namespace was conjured.
    let after = audit_log(
        &server,
        &server.other_owner,
        apitoken_tests::OTHER_NAMESPACE,
    )
    .await;
    assert_eq!(after.len(), before.len(), "{after:?}");
    let team_a = audit_log(&server, &server.owner, NAMESPACE).await;
    assert!(
        team_a
            .iter()
            .all(|event| !event.request_id.starts_with("attacker-")),
        "{team_a:?}"
    );
    // The burst is in the deployment's own log, with the server's request id.
    use sea_orm::{ConnectionTrait, Statement};
    let db = server.store.connection();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT namespace, request_id, user_agent FROM audit_events WHERE action = 8",
        ))
        .await
        .expect("query");
    assert_eq!(rows.len(), 1, "one burst, audited once");
    let namespace: String = rows[0].try_get("", "namespace").expect("namespace");
    let request_id: String = rows[0].try_get("", "request_id").expect("request id");
    assert_eq!(namespace, apitoken_server::auth::DEPLOYMENT_AUDIT);
    assert!(!request_id.starts_with("attacker-"), "{request_id}");
    let namespaces = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT DISTINCT namespace FROM audit_events",
        ))
        .await
        .expect("query");
    assert!(
        namespaces.iter().all(|row| row
            .try_get::<String>("", "namespace")
            .is_ok_and(|namespace| namespace != "never-made")),
        "no namespace conjured"
    );
}

async fn forwarded_addresses_count_only_through_trusted_proxies(backend: apitoken_tests::Backend) {
    let Some(server) = TestServer::start_with(
        backend,
        Options {
            trusted_proxies: apitoken_server::peer::TrustedProxies::parse("127.0.0.1")
                .expect("proxies"),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let (_, secret) = server.create("proxied", Role::Viewer).await;
    let mut request = tonic::Request::new(VerifyApiTokenRequest {
        secret: secret.clone(),
        caller_address: String::new(),
    });
    // The client forged the leftmost entry; the proxy (loopback, trusted)
    // appended the address it saw.
    request.metadata_mut().insert(
        "x-forwarded-for",
        "203.0.113.66, 198.51.100.20".parse().unwrap(),
    );
    server
        .client()
        .await
        .verify_api_token(request)
        .await
        .expect("verify");
    server.wait_for_usage(&["proxied"]).await;
    assert_eq!(get(&server, "proxied").await.last_use_ip, "198.51.100.20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_ignored_from_untrusted_peers() {
    let server = TestServer::start(apitoken_tests::Backend::Sqlite)
        .await
        .expect("sqlite");
    let (_, secret) = server.create("direct", Role::Viewer).await;
    let mut request = tonic::Request::new(VerifyApiTokenRequest {
        secret,
        caller_address: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.20".parse().unwrap());
    server
        .client()
        .await
        .verify_api_token(request)
        .await
        .expect("verify");
    server.wait_for_usage(&["direct"]).await;
    assert_eq!(get(&server, "direct").await.last_use_ip, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cap_is_a_setting() {
    // Options::default gives tests a small cap; the deployment default is 64.
    assert_eq!(
        apitoken_server::events::EventTiming::default().max_streams_per_token,
        64
    );
    assert_eq!(Options::default().events.max_streams_per_token, 8);
}
