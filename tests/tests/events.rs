//! WatchApiTokenEvents and ReportApiTokenUsage through the real gRPC surface.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, OTHER_NAMESPACE, TestServer, authed, backend_tests, bad_fields, in_seconds, reason,
    v1::{
        self, ApiToken, ApiTokenUsage, CreateApiTokenRequest, GetApiTokenRequest,
        RegenerateApiTokenRequest, ReportApiTokenUsageRequest, RevokeApiTokenRequest,
        UpdateApiTokenRequest, WatchApiTokenEventsRequest, WatchApiTokenEventsResponse,
        api_token_event::Kind,
    },
};
use tonic::{Code, Streaming};

backend_tests!(
    events_arrive_in_order,
    resuming_from_a_cursor_misses_nothing,
    bad_cursors_and_foreign_namespaces_are_refused,
    expiry_is_announced_exactly_once,
    stream_ends_when_the_watcher_is_revoked,
    usage_reports_add_uses,
    pruned_cursors_are_out_of_range,
);

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

async fn watch(
    server: &TestServer,
    secret: &str,
    after_sequence: i64,
) -> Streaming<WatchApiTokenEventsResponse> {
    server
        .client()
        .await
        .watch_api_token_events(authed(
            secret,
            WatchApiTokenEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                after_sequence,
            },
        ))
        .await
        .expect("watch")
        .into_inner()
}

/// The stream's first message (its heartbeat), within 5 s.
async fn first_message(
    stream: &mut Streaming<WatchApiTokenEventsResponse>,
) -> WatchApiTokenEventsResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a first message within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads messages until `count` events arrived (heartbeats skipped).
/// The next `count` events that may invalidate a cache (creations, which
/// the log streams too, are left out).
async fn events(
    stream: &mut Streaming<WatchApiTokenEventsResponse>,
    count: usize,
) -> Vec<v1::ApiTokenEvent> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        received.extend(
            message
                .events
                .into_iter()
                .filter(|event| event.kind() != Kind::Created),
        );
    }
    received
}

async fn revoke(server: &TestServer, id: &str) {
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: name(id) },
        ))
        .await
        .expect("revoke");
}

async fn events_arrive_in_order(server: TestServer) {
    server.create("ayy", Role::Viewer).await;
    server.create("bee", Role::Editor).await;
    server.create("cee", Role::Editor).await;
    let mut stream = watch(&server, &server.owner, 0).await;
    let first = first_message(&mut stream).await;
    assert!(
        first.events.is_empty(),
        "the stream opens at the end of the log"
    );
    let mut client = server.client().await;
    revoke(&server, "ayy").await;
    client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("bee"),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate");
    client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("cee"),
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect("update");
    let received = events(&mut stream, 3).await;
    let kinds: Vec<_> = received
        .iter()
        .map(|event| (event.kind(), event.api_token.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::Revoked, name("ayy")),
            (Kind::Regenerated, name("bee")),
            (Kind::Updated, name("cee"))
        ]
    );
    assert!(
        received
            .windows(2)
            .all(|pair| pair[0].sequence < pair[1].sequence)
    );
    assert!(received[0].sequence > first.sequence);
    assert!(
        received
            .iter()
            .all(|event| !event.uid.is_empty() && event.event_time.is_some())
    );
    // Another namespace's changes never show up here.
    server
        .create_in(OTHER_NAMESPACE, &server.other_owner, "theirs", Role::Viewer)
        .await;
    client
        .revoke_api_token(authed(
            &server.other_owner,
            RevokeApiTokenRequest {
                name: format!("namespaces/{OTHER_NAMESPACE}/apitokens/theirs"),
            },
        ))
        .await
        .expect("revoke theirs");
    revoke(&server, "cee").await;
    let next = events(&mut stream, 1).await;
    assert_eq!(next[0].api_token, name("cee"));
}

async fn resuming_from_a_cursor_misses_nothing(server: TestServer) {
    for id in ["one", "two", "three", "four"] {
        server.create(id, Role::Viewer).await;
    }
    let mut stream = watch(&server, &server.owner, 0).await;
    first_message(&mut stream).await;
    revoke(&server, "one").await;
    let first = events(&mut stream, 1).await;
    let cursor = first[0].sequence;
    drop(stream);
    // While nobody watches.
    revoke(&server, "two").await;
    revoke(&server, "three").await;
    let mut resumed = watch(&server, &server.owner, cursor).await;
    revoke(&server, "four").await;
    let replayed = events(&mut resumed, 3).await;
    let names: Vec<_> = replayed
        .iter()
        .map(|event| event.api_token.clone())
        .collect();
    assert_eq!(names, [name("two"), name("three"), name("four")]);
}

async fn bad_cursors_and_foreign_namespaces_are_refused(server: TestServer) {
    let mut client = server.client().await;
    let request = |parent: &str, after_sequence| WatchApiTokenEventsRequest {
        parent: parent.into(),
        after_sequence,
    };
    let status = client
        .watch_api_token_events(authed(
            &server.owner,
            request("namespaces/team-a", 1_000_000),
        ))
        .await
        .expect_err("beyond the end");
    assert_eq!(status.code(), Code::OutOfRange);
    let status = client
        .watch_api_token_events(authed(&server.owner, request("namespaces/team-a", -1)))
        .await
        .expect_err("negative");
    assert_eq!(bad_fields(&status), ["after_sequence"]);
    let status = client
        .watch_api_token_events(authed(&server.owner, request("namespaces/team-b", 0)))
        .await
        .expect_err("other namespace");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .watch_api_token_events(request("namespaces/team-a", 0))
        .await
        .expect_err("no token");
    assert_eq!(reason(&status), "TOKEN_MISSING");
}

async fn expiry_is_announced_exactly_once(server: TestServer) {
    let mut stream = watch(&server, &server.owner, 0).await;
    first_message(&mut stream).await;
    let mut client = server.client().await;
    client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "ephemeral".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    expire_time: Some(in_seconds(&server, 30)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create");
    // It expires within both lead times (14 and 3 days): one warning each.
    let warnings = events(&mut stream, 2).await;
    assert!(
        warnings.iter().all(
            |event| event.kind() == Kind::ExpiryWarning && event.api_token == name("ephemeral")
        )
    );
    server.clock.advance(chrono::Duration::seconds(31));
    let expired = events(&mut stream, 1).await;
    assert_eq!(expired[0].kind(), Kind::Expired);
    assert_eq!(expired[0].api_token, name("ephemeral"));
    // Several sweeps later, nothing more about it: the next event is ours.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.create("marker", Role::Viewer).await;
    revoke(&server, "marker").await;
    let next = events(&mut stream, 1).await;
    assert_eq!(
        next[0].api_token,
        name("marker"),
        "no second warning or EXPIRED event"
    );
}

async fn stream_ends_when_the_watcher_is_revoked(server: TestServer) {
    let (_, watcher) = server.create("watcher", Role::Viewer).await;
    let mut stream = watch(&server, &watcher, 0).await;
    first_message(&mut stream).await;
    revoke(&server, "watcher").await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("ends within 5 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_REVOKED");
}

async fn usage_reports_add_uses(server: TestServer) {
    let mut client = server.client().await;
    let (token, _) = server.create("reported", Role::Viewer).await;
    let (theirs, _) = server
        .create_in(
            OTHER_NAMESPACE,
            &server.other_owner,
            "foreign",
            Role::Viewer,
        )
        .await;
    let usage = |uid: &str, use_count| ApiTokenUsage {
        uid: uid.into(),
        use_count,
        last_use_time: Some(in_seconds(&server, 0)),
        last_use_ip: "192.0.2.10".into(),
    };
    let (_, reporter) = server.create_interceptor("reporter").await;
    let reply = client
        .report_api_token_usage(authed(
            &reporter,
            ReportApiTokenUsageRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                usages: vec![usage(&token.uid, 7), usage(&theirs.uid, 5)],
            },
        ))
        .await
        .expect("report")
        .into_inner();
    assert_eq!(reply.accepted, 1, "the other namespace's token is ignored");
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("reported"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.use_count, 7);
    assert!(fetched.last_use_time.is_some());
    let status = client
        .report_api_token_usage(authed(
            &reporter,
            ReportApiTokenUsageRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                usages: vec![ApiTokenUsage {
                    uid: String::new(),
                    use_count: 0,
                    last_use_time: None,
                    last_use_ip: "not-an-ip".into(),
                }],
            },
        ))
        .await
        .expect_err("invalid");
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "usages[0].last_use_time",
            "usages[0].uid",
            "usages[0].use_count"
        ]
    );
}

async fn pruned_cursors_are_out_of_range(server: TestServer) {
    server.create("older-news", Role::Viewer).await;
    server.create("old-news", Role::Viewer).await;
    // An event before the watcher starts, so its cursor is not 0 ("the end").
    revoke(&server, "older-news").await;
    let mut stream = watch(&server, &server.owner, 0).await;
    let start = first_message(&mut stream).await.sequence;
    assert!(start > 0);
    revoke(&server, "old-news").await;
    let revoked = events(&mut stream, 1).await[0].sequence;
    drop(stream);
    // A week (the default event retention) and a day later, the sweeper
    // prunes the log.
    server.clock.advance(chrono::Duration::days(8));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server
        .store
        .events_pruned_through()
        .await
        .expect("watermark")
        < revoked
    {
        assert!(tokio::time::Instant::now() < deadline, "events not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = server.client().await;
    let resume = |after_sequence| {
        authed(
            &server.owner,
            WatchApiTokenEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                after_sequence,
            },
        )
    };
    // A watcher that missed pruned events is told so...
    let status = client
        .watch_api_token_events(resume(start))
        .await
        .expect_err("pruned");
    assert_eq!(status.code(), Code::OutOfRange);
    // ...one that saw everything pruned resumes, and a fresh one starts.
    client
        .watch_api_token_events(resume(revoked))
        .await
        .expect("nothing missed");
    client
        .watch_api_token_events(resume(0))
        .await
        .expect("fresh start");
}
