//! The interceptor in front of the example inventory service, against a real
//! apitoken server: role matrix, namespaces, local refusals, caching, instant
//! revocation, outages, staleness, stream resumption and usage.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use apitoken_domain::Role;
use apitoken_example::pb::{CreateItemRequest, DeleteItemRequest, ListItemsRequest, WhoAmIRequest};
use apitoken_tests::{
    ExampleService, NAMESPACE, OTHER_NAMESPACE, TestServer, authed, backend_tests, fast_settings,
    reason,
    v1::{GetApiTokenRequest, RegenerateApiTokenRequest, RevokeApiTokenRequest},
};
use tonic::Code;

backend_tests!(
    role_matrix_per_method,
    namespaces_are_enforced_by_layer_and_handler,
    malformed_tokens_never_reach_apitoken,
    cached_calls_do_not_reach_apitoken,
    concurrent_first_calls_share_one_verification,
    revocation_is_refused_within_a_second,
    regeneration_is_refused_within_a_second,
    expiry_is_enforced_from_the_cache,
    apitoken_down_serves_cached_and_fails_closed_otherwise,
    stream_resumes_after_apitoken_restarts,
    cached_calls_are_counted_as_usage,
    a_pruned_cursor_makes_the_interceptor_start_over,
    the_outage_policy_serves_verified_tokens_for_its_grace_only,
    a_refused_watch_credential_is_reported,
    handlers_see_display_name_and_labels,
);

fn token_name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

fn list() -> ListItemsRequest {
    ListItemsRequest {
        namespace: NAMESPACE.into(),
    }
}

/// Polls `check` every 10 ms until it holds; returns how long it took.
async fn within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn role_matrix_per_method(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, viewer) = server.create("matrix-viewer", Role::Viewer).await;
    let (_, editor) = server.create("matrix-editor", Role::Editor).await;
    let (_, owner) = server.create("matrix-owner", Role::Owner).await;
    for (secret, role) in [
        (&viewer, Role::Viewer),
        (&editor, Role::Editor),
        (&owner, Role::Owner),
    ] {
        let item = format!("item-{role}");
        let listed = client.list_items(authed(secret, list())).await;
        let created = client
            .create_item(authed(
                secret,
                CreateItemRequest {
                    namespace: NAMESPACE.into(),
                    item: item.clone(),
                },
            ))
            .await;
        let deleted = client
            .delete_item(authed(
                secret,
                DeleteItemRequest {
                    namespace: NAMESPACE.into(),
                    item: "item-editor".into(),
                },
            ))
            .await;
        assert!(listed.is_ok(), "{role} lists");
        assert_eq!(
            created.is_ok(),
            role >= Role::Editor,
            "{role} creates: {created:?}"
        );
        if role < Role::Editor {
            let status = created.expect_err("denied");
            assert_eq!(status.code(), Code::PermissionDenied);
            assert_eq!(reason(&status), "ROLE_TOO_LOW");
        }
        match role {
            Role::Owner => {
                deleted.expect("owner deletes");
            }
            _ => {
                let status = deleted.expect_err("denied");
                assert_eq!(status.code(), Code::PermissionDenied, "{role}");
                assert_eq!(reason(&status), "ROLE_TOO_LOW");
            }
        }
        let me = client
            .who_am_i(authed(secret, WhoAmIRequest {}))
            .await
            .expect("who am i")
            .into_inner();
        assert_eq!(me.role, role.to_string());
        assert_eq!(me.api_token, token_name(&format!("matrix-{role}")));
    }
    // No token: UNAUTHENTICATED on protected methods; health stays public.
    let status = client.list_items(list()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_MISSING");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", example.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    example.stop().await;
}

async fn namespaces_are_enforced_by_layer_and_handler(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    // A token of a namespace the service does not accept.
    let status = client
        .list_items(authed(&server.other_owner, list()))
        .await
        .expect_err("other namespace");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "NAMESPACE_MISMATCH");
    // An accepted token asking about another namespace in its message: the
    // handler's principal.authorize refuses it.
    let status = client
        .list_items(authed(
            &server.owner,
            ListItemsRequest {
                namespace: OTHER_NAMESPACE.into(),
            },
        ))
        .await
        .expect_err("handler check");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "NAMESPACE_MISMATCH");
    example.stop().await;
}

async fn malformed_tokens_never_reach_apitoken(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let before = server.calls("VerifyApiToken");
    let truncated = server.owner[..server.owner.len() - 1].to_owned();
    let mut typo = server.owner.clone().into_bytes();
    let last = typo.len() - 3;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for _ in 0..20 {
        for (secret, expected) in [
            ("garbage", "TOKEN_MALFORMED"),
            (truncated.as_str(), "TOKEN_MALFORMED"),
            (typo.as_str(), "TOKEN_MALFORMED"),
            (
                "vf_tok_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "TOKEN_MALFORMED",
            ),
        ] {
            let status = client
                .list_items(authed(secret, list()))
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(reason(&status), expected);
        }
        let status = client.list_items(list()).await.expect_err("missing");
        assert_eq!(reason(&status), "TOKEN_MISSING");
    }
    assert_eq!(
        server.calls("VerifyApiToken"),
        before,
        "no verification for malformed tokens"
    );
    assert_eq!(example.auth.stats().verifications, 0);
    // Well-formed but unknown tokens are verified once, then refused from
    // the negative cache.
    let unknown = apitoken_domain::token::TokenFormat::default()
        .generate()
        .unwrap()
        .expose()
        .to_owned();
    for _ in 0..10 {
        let status = client
            .list_items(authed(&unknown, list()))
            .await
            .expect_err("unknown");
        assert_eq!(reason(&status), "TOKEN_INVALID");
    }
    assert_eq!(server.calls("VerifyApiToken"), before + 1);
    example.stop().await;
}

async fn cached_calls_do_not_reach_apitoken(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, secret) = server.create("cached", Role::Viewer).await;
    let before = server.calls("VerifyApiToken");
    for _ in 0..25 {
        client
            .list_items(authed(&secret, list()))
            .await
            .expect("allowed");
    }
    assert_eq!(
        server.calls("VerifyApiToken"),
        before + 1,
        "one verification for 25 calls"
    );
    assert_eq!(example.auth.stats().cache_hits, 24);
    example.stop().await;
}

async fn concurrent_first_calls_share_one_verification(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let client = example.client().await;
    let (_, secret) = server.create("stampede", Role::Viewer).await;
    let before = server.calls("VerifyApiToken");
    let calls = (0..32).map(|_| {
        let mut client = client.clone();
        let secret = secret.clone();
        tokio::spawn(async move { client.list_items(authed(&secret, list())).await })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap().expect("allowed");
    }
    assert_eq!(
        server.calls("VerifyApiToken"),
        before + 1,
        "32 concurrent first calls, one verification"
    );
    example.stop().await;
}

async fn revocation_is_refused_within_a_second(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, secret) = server.create("to-revoke", Role::Viewer).await;
    for _ in 0..3 {
        client
            .list_items(authed(&secret, list()))
            .await
            .expect("cached");
    }
    let revoked_at = Instant::now();
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: token_name("to-revoke"),
            },
        ))
        .await
        .expect("revoke");
    let took = within(
        Duration::from_secs(1),
        "revoked token refused",
        async || client.list_items(authed(&secret, list())).await.is_err(),
    )
    .await;
    let status = client
        .list_items(authed(&secret, list()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    eprintln!(
        "revocation refused by the interceptor after {:?} ({took:?} of polling)",
        revoked_at.elapsed()
    );
    example.stop().await;
}

async fn regeneration_is_refused_within_a_second(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, old) = server.create("to-rotate", Role::Viewer).await;
    client
        .list_items(authed(&old, list()))
        .await
        .expect("cached");
    let new = server
        .client()
        .await
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: token_name("to-rotate"),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate")
        .into_inner()
        .secret;
    within(Duration::from_secs(1), "old secret refused", async || {
        client.list_items(authed(&old, list())).await.is_err()
    })
    .await;
    let status = client
        .list_items(authed(&old, list()))
        .await
        .expect_err("refused");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    client
        .list_items(authed(&new, list()))
        .await
        .expect("new secret works");
    example.stop().await;
}

async fn expiry_is_enforced_from_the_cache(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let secret = server
        .client()
        .await
        .create_api_token(authed(
            &server.owner,
            apitoken_tests::v1::CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "brief".into(),
                api_token: Some(apitoken_tests::v1::ApiToken {
                    role: apitoken_tests::v1::Role::Viewer.into(),
                    expire_time: Some(apitoken_tests::in_seconds(&server, 60)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .secret;
    client
        .list_items(authed(&secret, list()))
        .await
        .expect("cached");
    let before = server.calls("VerifyApiToken");
    server.clock.advance(chrono::Duration::seconds(61));
    let status = client
        .list_items(authed(&secret, list()))
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_EXPIRED");
    assert_eq!(
        server.calls("VerifyApiToken"),
        before,
        "expiry decided from the cache"
    );
    example.stop().await;
}

async fn apitoken_down_serves_cached_and_fails_closed_otherwise(mut server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, cached) = server.create("kept", Role::Viewer).await;
    let (_, uncached) = server.create("never-seen", Role::Viewer).await;
    client
        .list_items(authed(&cached, list()))
        .await
        .expect("cached");

    server.stop_in_place().await;
    // Within the staleness bound: cached tokens work, unknown ones fail closed.
    client
        .list_items(authed(&cached, list()))
        .await
        .expect("served from cache while apitoken is down");
    let status = client
        .list_items(authed(&uncached, list()))
        .await
        .expect_err("fail closed");
    assert_eq!(status.code(), Code::Unavailable);
    // Past the staleness bound (2 s here), the cache is not trusted: every
    // call is verified, and fails closed.
    let cached_secret = cached.clone();
    within(
        Duration::from_secs(4),
        "stale cache stops being trusted",
        async || {
            matches!(
                client.list_items(authed(&cached_secret, list())).await,
                Err(status) if status.code() == Code::Unavailable
            )
        },
    )
    .await;
    assert!(!example.auth.is_fresh(NAMESPACE));
    // Back up: the stream resumes and calls succeed again.
    server.restart().await;
    example.wait_until_fresh().await;
    client
        .list_items(authed(&cached, list()))
        .await
        .expect("works again");
    client
        .list_items(authed(&uncached, list()))
        .await
        .expect("verified again");
    example.stop().await;
}

async fn stream_resumes_after_apitoken_restarts(mut server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, secret) = server.create("revoked-while-down", Role::Viewer).await;
    client
        .list_items(authed(&secret, list()))
        .await
        .expect("cached");

    // apitoken stops; the token is revoked meanwhile (through the database,
    // as another replica would); apitoken comes back on the same address.
    server.stop_in_place().await;
    server
        .revoke_in_store("revoked-while-down", chrono::Utc::now())
        .await;
    server.restart().await;

    // The interceptor resumes from its cursor, sees the revocation, refuses.
    within(
        Duration::from_secs(3),
        "revocation seen after resume",
        async || client.list_items(authed(&secret, list())).await.is_err(),
    )
    .await;
    let status = client
        .list_items(authed(&secret, list()))
        .await
        .expect_err("revoked");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    example.stop().await;
}

async fn cached_calls_are_counted_as_usage(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, secret) = server.create("busy", Role::Viewer).await;
    for _ in 0..10 {
        client
            .list_items(authed(&secret, list()))
            .await
            .expect("allowed");
    }
    assert!(server.calls("VerifyApiToken") >= 1);
    let mut apitoken = server.client().await;
    within(Duration::from_secs(5), "use_count reaches 10", async || {
        let token = apitoken
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest {
                    name: token_name("busy"),
                },
            ))
            .await
            .expect("get")
            .into_inner();
        token.use_count == 10 && token.last_use_time.is_some() && token.last_use_ip == "127.0.0.1"
    })
    .await;
    example.stop().await;
}

async fn a_pruned_cursor_makes_the_interceptor_start_over(mut server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let (_, secret) = server.create("pruned-away", Role::Viewer).await;
    client
        .list_items(authed(&secret, list()))
        .await
        .expect("cached");
    // Some event first, so the interceptor resumes from a real cursor (a
    // cursor of 0 would be a fresh start, which drops the cache anyway).
    server.create("throwaway", Role::Viewer).await;
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: token_name("throwaway"),
            },
        ))
        .await
        .expect("revoke");
    within(Duration::from_secs(3), "first event seen", async || {
        example.auth.stats().invalidations >= 1
    })
    .await;

    // While apitoken is down the token is revoked, and the event log is
    // pruned past the revocation: resuming cannot replay it.
    server.stop_in_place().await;
    let now = chrono::Utc::now();
    server.revoke_in_store("pruned-away", now).await;
    server
        .store
        .prune_events(now + chrono::Duration::days(1))
        .await
        .expect("prune");
    server.restart().await;

    // The interceptor is told its cursor is gone, drops the namespace's
    // cache, starts over, and refuses the token.
    within(
        Duration::from_secs(3),
        "revocation seen after starting over",
        async || client.list_items(authed(&secret, list())).await.is_err(),
    )
    .await;
    let status = client
        .list_items(authed(&secret, list()))
        .await
        .expect_err("revoked");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    example.stop().await;
}

async fn the_outage_policy_serves_verified_tokens_for_its_grace_only(mut server: TestServer) {
    // Opt in: tokens already verified are served for 3 s past the
    // staleness bound (2 s) once apitoken is gone.
    let settings = apitoken_interceptor::Settings {
        outage_grace: Some(Duration::from_secs(3)),
        ..fast_settings()
    };
    let example = ExampleService::start(&server, settings).await;
    let mut client = example.client().await;
    let (_, cached) = server.create("survivor", Role::Viewer).await;
    let (_, uncached) = server.create("stranger", Role::Viewer).await;
    client
        .list_items(authed(&cached, list()))
        .await
        .expect("cached");
    server.stop_in_place().await;
    // Past the staleness bound, within the grace: still served...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!example.auth.is_fresh(NAMESPACE));
    client
        .list_items(authed(&cached, list()))
        .await
        .expect("served under the outage policy");
    assert!(example.auth.stats().outage_hits >= 1);
    assert!(example.auth.stats().outage_active, "the gauge says so");
    // ...but a token never verified still fails closed.
    let status = client
        .list_items(authed(&uncached, list()))
        .await
        .expect_err("fail closed");
    assert_eq!(status.code(), Code::Unavailable);
    // Past the grace: fail closed for everyone.
    let cached_secret = cached.clone();
    within(Duration::from_secs(5), "the grace ends", async || {
        matches!(
            client.list_items(authed(&cached_secret, list())).await,
            Err(status) if status.code() == Code::Unavailable
        )
    })
    .await;
    assert!(
        !example.auth.stats().outage_active,
        "the gauge falls back to 0 when the grace ends"
    );
    server.restart().await;
    example.stop().await;
}

async fn a_refused_watch_credential_is_reported(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    // Revoke the service's own credential: the stream ends, reopening it is
    // refused, and that is counted (and logged as an error), not retried in
    // silence.
    let watcher = server
        .client()
        .await
        .list_api_tokens(authed(
            &server.owner,
            apitoken_tests::v1::ListApiTokensRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                filter: "state = active".into(),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner()
        .api_tokens
        .into_iter()
        .find(|token| token.interceptor)
        .expect("the service's credential");
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: watcher.name },
        ))
        .await
        .expect("revoke");
    within(
        Duration::from_secs(5),
        "the refusal is counted",
        async || example.auth.stats().credential_refusals >= 1,
    )
    .await;
    assert!(
        example
            .auth
            .credential_refused(NAMESPACE)
            .is_some_and(|why| why.contains("TOKEN_REVOKED")),
        "{:?}",
        example.auth.credential_refused(NAMESPACE)
    );
    example.stop().await;
}

async fn handlers_see_display_name_and_labels(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let (_, secret) = server
        .create_token(
            NAMESPACE,
            &server.owner,
            "labelled",
            apitoken_tests::v1::ApiToken {
                role: Role::Editor.to_proto().into(),
                display_name: "Nightly job".into(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                ..Default::default()
            },
        )
        .await;
    let me = example
        .client()
        .await
        .who_am_i(authed(&secret, WhoAmIRequest {}))
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(me.display_name, "Nightly job");
    assert_eq!(me.labels.get("env").map(String::as_str), Some("prod"));
    example.stop().await;
}
