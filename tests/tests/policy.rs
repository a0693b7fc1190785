//! Expiry policy, expiry warnings, the inactivity rule and purging, driven
//! by the injectable clock through the real gRPC surface.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{collections::HashMap, time::Duration};

use apitoken_domain::Role;
use apitoken_server::policy::{ExpiryPolicy, Policy};
use apitoken_tests::{
    Backend, NAMESPACE, OTHER_NAMESPACE, Options, TestServer, authed, bad_fields, in_seconds,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListAuditEventsRequest,
        RevokeApiTokenRequest, VerifyApiTokenRequest, audit_event::Action,
    },
};
use tonic::Code;

const DAY: u64 = 86_400;

macro_rules! policy_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(apitoken_tests::Backend::Sqlite).await; } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] #[cfg_attr(not(apitoken_postgres), ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)")] async fn $name() { super::$name(apitoken_tests::Backend::Postgres).await; } )* }
    };
}

policy_tests!(
    expiry_policy_refuses_and_defaults,
    a_maximum_lifetime_refuses_a_token_that_never_expires,
    warnings_are_emitted_once_per_lead_time,
    unused_tokens_are_revoked_by_the_inactivity_rule,
    revoked_and_expired_tokens_are_purged_after_retention,
);

async fn server_with(backend: Backend, policy: Policy) -> Option<TestServer> {
    TestServer::start_with(
        backend,
        Options {
            policy,
            ..Options::default()
        },
    )
    .await
}

fn create(
    id: &str,
    expire_time: Option<prost_types::Timestamp>,
    ttl: Option<Duration>,
) -> CreateApiTokenRequest {
    CreateApiTokenRequest {
        parent: format!("namespaces/{NAMESPACE}"),
        api_token_id: id.into(),
        api_token: Some(ApiToken {
            role: v1::Role::Viewer.into(),
            expire_time,
            ..Default::default()
        }),
        ttl: ttl.map(|ttl| prost_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap(),
            nanos: 0,
        }),
    }
}

async fn audit(server: &TestServer, filter: &str) -> Vec<v1::AuditEvent> {
    server
        .client()
        .await
        .list_audit_events(authed(
            &server.owner,
            ListAuditEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                filter: filter.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events
}

async fn expiry_policy_refuses_and_defaults(backend: Backend) {
    let strict = ExpiryPolicy {
        required: true,
        max_lifetime: Some(Duration::from_secs(90 * DAY)),
        default_lifetime: None,
    };
    let lenient = ExpiryPolicy {
        required: false,
        max_lifetime: None,
        default_lifetime: Some(Duration::from_secs(30 * DAY)),
    };
    let policy = Policy {
        namespace_expiry: HashMap::from([
            (NAMESPACE.to_owned(), strict),
            (OTHER_NAMESPACE.to_owned(), lenient),
        ]),
        ..Policy::default()
    };
    let Some(server) = server_with(backend, policy).await else {
        return;
    };
    let mut client = server.client().await;

    let status = client
        .create_api_token(authed(&server.owner, create("no-expiry", None, None)))
        .await
        .expect_err("required");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["api_token.expire_time"]);
    assert!(
        status.message().contains("expiry policy"),
        "{}",
        status.message()
    );

    let status = client
        .create_api_token(authed(
            &server.owner,
            create("too-long", Some(in_seconds(&server, 91 * 86_400)), None),
        ))
        .await
        .expect_err("too long");
    assert_eq!(bad_fields(&status), ["api_token.expire_time"]);
    assert!(
        status.message().contains("90d"),
        "names the limit: {}",
        status.message()
    );
    let status = client
        .create_api_token(authed(
            &server.owner,
            create("too-long-ttl", None, Some(Duration::from_secs(91 * DAY))),
        ))
        .await
        .expect_err("too long");
    assert_eq!(bad_fields(&status), ["ttl"]);
    let status = client
        .create_api_token(authed(
            &server.owner,
            create(
                "both",
                Some(in_seconds(&server, 60)),
                Some(Duration::from_secs(60)),
            ),
        ))
        .await
        .expect_err("both");
    assert_eq!(bad_fields(&status), ["ttl"]);

    let within = client
        .create_api_token(authed(
            &server.owner,
            create("within", None, Some(Duration::from_secs(30 * DAY))),
        ))
        .await
        .expect("ttl within the policy")
        .into_inner();
    assert_eq!(
        within.api_token.expect("token").expire_time,
        Some(in_seconds(&server, 30 * 86_400))
    );

    // The refusals are audited; nothing was created.
    let refusals = audit(&server, "action = ACTION_POLICY_REFUSAL").await;
    assert_eq!(refusals.len(), 3);
    assert!(
        refusals
            .iter()
            .all(|event| event.actor == "namespaces/team-a/apitokens/bootstrap-owner")
    );
    assert_eq!(
        refusals.last().expect("first").resource,
        "namespaces/team-a/apitokens/no-expiry"
    );
    let status = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: "namespaces/team-a/apitokens/too-long".into(),
            },
        ))
        .await
        .expect_err("not created");
    assert_eq!(status.code(), Code::NotFound);

    // team-b: no expiry given, the default lifetime applies.
    let defaulted = client
        .create_api_token(authed(
            &server.other_owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{OTHER_NAMESPACE}"),
                api_token_id: "defaulted".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        defaulted.api_token.expect("token").expire_time,
        Some(in_seconds(&server, 30 * 86_400))
    );
}

/// `max=90d` alone (not `required`): a token with no expiry would outlive
/// it, so it is refused like one of 91 days; one within it is created.
async fn a_maximum_lifetime_refuses_a_token_that_never_expires(backend: Backend) {
    let capped = ExpiryPolicy {
        required: false,
        max_lifetime: Some(Duration::from_secs(90 * DAY)),
        default_lifetime: None,
    };
    let policy = Policy {
        namespace_expiry: HashMap::from([(NAMESPACE.to_owned(), capped)]),
        ..Policy::default()
    };
    let Some(server) = server_with(backend, policy).await else {
        return;
    };
    let mut client = server.client().await;
    let status = client
        .create_api_token(authed(&server.owner, create("forever", None, None)))
        .await
        .expect_err("never expiring");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["api_token.expire_time"]);
    assert!(status.message().contains("90d"), "{}", status.message());
    let created = client
        .create_api_token(authed(
            &server.owner,
            create("quarterly", None, Some(Duration::from_secs(90 * DAY))),
        ))
        .await
        .expect("within the maximum")
        .into_inner();
    assert_eq!(
        created.api_token.expect("token").expire_time,
        Some(in_seconds(&server, 90 * 86_400))
    );
}

async fn warnings_are_emitted_once_per_lead_time(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut client = server.client().await;
    client
        .create_api_token(authed(
            &server.owner,
            create("expiring", Some(in_seconds(&server, 20 * 86_400)), None),
        ))
        .await
        .expect("create");
    let warnings = || async { audit(&server, "action = ACTION_EXPIRY_WARNING").await };
    // Positive checks poll (the sweeper runs every 100 ms); negative ones
    // give it several rounds first.
    let server = &server;
    let until_count = |count: usize| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = audit(server, "action = ACTION_EXPIRY_WARNING").await;
            if found.len() >= count {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} warnings expected, {} found",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Give the sweeper (every 100 ms here) several rounds at each point.
    let settle = || tokio::time::sleep(Duration::from_millis(400));
    settle().await;
    assert!(warnings().await.is_empty(), "20 days out: no warning yet");
    server.clock.advance(chrono::Duration::days(7));
    let first = until_count(1).await;
    settle().await;
    assert_eq!(warnings().await.len(), 1, "once");
    assert_eq!(first.len(), 1, "13 days out: the 14-day warning");
    assert_eq!(
        first[0].details.get("lead_time").map(String::as_str),
        Some("14d")
    );
    assert_eq!(first[0].actor, "rule:expiry-warning");
    assert_eq!(first[0].resource, "namespaces/team-a/apitokens/expiring");
    server.clock.advance(chrono::Duration::days(5));
    settle().await;
    assert_eq!(warnings().await.len(), 1, "8 days out: nothing new");
    server.clock.advance(chrono::Duration::days(6));
    let both = until_count(2).await;
    assert_eq!(both.len(), 2, "2 days out: the 3-day warning");
    assert_eq!(
        both[0].details.get("lead_time").map(String::as_str),
        Some("3d")
    );
    server.clock.advance(chrono::Duration::hours(47));
    settle().await;
    assert_eq!(warnings().await.len(), 2, "never twice");
}

async fn unused_tokens_are_revoked_by_the_inactivity_rule(backend: Backend) {
    let policy = Policy {
        revoke_unused_after: Some(Duration::from_secs(30 * DAY)),
        ..Policy::default()
    };
    let Some(server) = server_with(backend, policy).await else {
        return;
    };
    let mut client = server.client().await;
    let (_, busy) = server.create("busy", Role::Viewer).await;
    server.create("idle", Role::Viewer).await;
    server.clock.advance(chrono::Duration::days(20));
    client
        .verify_api_token(authed(&busy, VerifyApiTokenRequest::default()))
        .await
        .expect("use");
    client
        .verify_api_token(authed(&server.owner, VerifyApiTokenRequest::default()))
        .await
        .expect("use");
    // Let the usage flush record those uses before time moves on.
    server.wait_for_usage(&["busy", "bootstrap-owner"]).await;
    server.clock.advance(chrono::Duration::days(11));
    let name = "namespaces/team-a/apitokens/idle";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let idle = loop {
        let token = client
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest { name: name.into() },
            ))
            .await
            .expect("get")
            .into_inner();
        if token.state() == v1::api_token::State::Revoked {
            break token;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle token not revoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(idle.revoker, "rule:inactivity");
    let busy_token = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: "namespaces/team-a/apitokens/busy".into(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        busy_token.state(),
        v1::api_token::State::Active,
        "used 11 days ago"
    );
    let revocations = audit(
        &server,
        &format!("action = ACTION_REVOKE AND resource = \"{name}\""),
    )
    .await;
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].actor, "rule:inactivity");
    assert_eq!(
        revocations[0].details.get("rule").map(String::as_str),
        Some("inactivity")
    );
}

async fn revoked_and_expired_tokens_are_purged_after_retention(backend: Backend) {
    let policy = Policy {
        token_retention: Duration::from_secs(10 * DAY),
        ..Policy::default()
    };
    let Some(server) = server_with(backend, policy).await else {
        return;
    };
    let mut client = server.client().await;
    server.create("short-lived", Role::Viewer).await;
    client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: "namespaces/team-a/apitokens/short-lived".into(),
            },
        ))
        .await
        .expect("revoke");
    client
        .create_api_token(authed(
            &server.owner,
            create("lapsing", Some(in_seconds(&server, 86_400)), None),
        ))
        .await
        .expect("create");
    // Within the retention, both stay visible.
    server.clock.advance(chrono::Duration::days(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["short-lived", "lapsing"] {
        client
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest {
                    name: format!("namespaces/team-a/apitokens/{id}"),
                },
            ))
            .await
            .expect("still visible");
    }
    // After it, both are gone and their ids are free again.
    server.clock.advance(chrono::Duration::days(6));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while audit(&server, "action = ACTION_PURGE").await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: "namespaces/team-a/apitokens/short-lived".into(),
            },
        ))
        .await
        .expect_err("purged");
    assert_eq!(status.code(), Code::NotFound);
    server.create("short-lived", Role::Viewer).await;
    // The token's audit trail outlives it.
    let trail = audit(
        &server,
        "resource = \"namespaces/team-a/apitokens/short-lived\"",
    )
    .await;
    let actions: Vec<_> = trail.iter().map(|event| event.action()).collect();
    assert_eq!(
        actions,
        [
            Action::Create,
            Action::Purge,
            Action::Revoke,
            Action::Create
        ]
    );
}
