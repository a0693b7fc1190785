//! Several replicas on one PostgreSQL database act as one: every change made
//! through one replica (create, revoke, regenerate, grace end, role
//! lowering, purge, the inactivity rule) takes effect on another within
//! 100 ms, with verification served from each replica's memory; a replica
//! started later (cold start) knows everything.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use apitoken_domain::Role;
use apitoken_server::policy::Policy;
use apitoken_tests::{
    Backend, NAMESPACE, Options, Replica, TestServer, authed, reason,
    v1::{
        ApiToken, GetApiTokenRequest, ListApiTokensRequest, RegenerateApiTokenRequest,
        RevokeApiTokenRequest, UpdateApiTokenRequest, VerifyApiTokenRequest,
        WatchApiTokenEventsRequest, api_token_event::Kind,
    },
};
use tonic::Code;

/// Runs each test on PostgreSQL, one at a time (they measure propagation
/// delays), with the fallback poll slowed to 10 s: only the push
/// (`LISTEN/NOTIFY`) can make a change visible quickly.
macro_rules! replica_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(apitoken_postgres), ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)")]
                async fn $name() {
                    let _one_at_a_time = super::SERIAL.lock().await;
                    let mut options = super::Options::default();
                    options.events.poll_interval = std::time::Duration::from_secs(10);
                    if let Some(server) =
                        super::TestServer::start_with(super::Backend::Postgres, options).await
                    {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

replica_tests!(
    a_revocation_reaches_the_other_replica_within_100ms,
    a_creation_reaches_the_other_replica,
    regeneration_and_grace_end_reach_the_other_replica,
    role_lowering_reaches_the_other_replica,
    purge_and_reuse_reach_the_other_replica,
    a_replica_started_later_knows_everything,
    event_streams_of_one_replica_carry_the_others_changes,
    a_namespace_limit_reaches_the_other_replica_within_a_second,
    a_cached_page_on_the_other_replica_follows_a_change_within_100ms,
);

/// The bound the product promises for a change made through another replica.
const PROPAGATION: Duration = Duration::from_millis(100);
/// The bound each single observation must meet even on a loaded machine
/// (the fallback poll is 10 s in these tests, so anything quicker is the
/// push at work).
const HARD: Duration = Duration::from_secs(1);

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

/// Verifies `secret` through `replica` without credentials (on one
/// connection per replica, kept).
async fn verify(replica: &Replica, secret: &str) -> Result<ApiToken, tonic::Status> {
    replica
        .shared_client()
        .await
        .verify_api_token(VerifyApiTokenRequest {
            secret: secret.to_owned(),
            caller_address: String::new(),
        })
        .await
        .map(|reply| reply.into_inner().api_token.expect("token"))
}

/// Polls every 2 ms until `check` holds; returns how long it took; fails
/// past `limit`.
async fn within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn a_revocation_reaches_the_other_replica_within_100ms(server: TestServer) {
    let other = server.replica().await;
    let mut delays = Vec::new();
    for round in 0..9 {
        let id = format!("revoked-{round}");
        let (_, secret) = server.create(&id, Role::Viewer).await;
        within(
            HARD,
            "created token known on the other replica",
            async || verify(&other, &secret).await.is_ok(),
        )
        .await;
        server
            .client()
            .await
            .revoke_api_token(authed(
                &server.owner,
                RevokeApiTokenRequest { name: name(&id) },
            ))
            .await
            .expect("revoke");
        delays.push(
            within(
                HARD,
                "revocation refused by the other replica",
                async || {
                    verify(&other, &secret)
                        .await
                        .is_err_and(|status| reason(&status) == "TOKEN_REVOKED")
                },
            )
            .await,
        );
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    eprintln!(
        "revocation through replica A refused by replica B: median {median:?}, slowest {:?} (9 rounds)",
        delays[delays.len() - 1]
    );
    assert!(
        median < PROPAGATION,
        "median propagation {median:?} over {PROPAGATION:?}: {delays:?}"
    );
    other.stop().await;
}

async fn a_creation_reaches_the_other_replica(server: TestServer) {
    let other = server.replica().await;
    let (_, secret) = server.create("fresh", Role::Editor).await;
    within(HARD, "a new token works on the other replica", async || {
        verify(&other, &secret).await.is_ok()
    })
    .await;
    // And it authenticates calls there (Get is served from memory).
    let token = other
        .client()
        .await
        .get_api_token(authed(
            &secret,
            GetApiTokenRequest {
                name: name("fresh"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(token.display_name, "token fresh");
    other.stop().await;
}

async fn regeneration_and_grace_end_reach_the_other_replica(server: TestServer) {
    let other = server.replica().await;
    let (_, old) = server.create("rotated", Role::Viewer).await;
    // Without grace: the old secret dies everywhere at once.
    let new = server
        .client()
        .await
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("rotated"),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate")
        .into_inner()
        .secret;
    within(
        HARD,
        "old secret refused by the other replica",
        async || {
            verify(&other, &old)
                .await
                .is_err_and(|status| reason(&status) == "TOKEN_INVALID")
        },
    )
    .await;
    within(
        HARD,
        "new secret accepted by the other replica",
        async || verify(&other, &new).await.is_ok(),
    )
    .await;
    // With a grace ended by first use (through the other replica): the
    // previous secret dies on the first replica too.
    let newer = server
        .client()
        .await
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("rotated"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                end_grace_on_first_use: true,
            },
        ))
        .await
        .expect("regenerate")
        .into_inner()
        .secret;
    within(
        HARD,
        "newest secret known on the other replica",
        async || verify(&other, &newer).await.is_ok(),
    )
    .await;
    let first = server.replica().await;
    within(HARD, "grace ended everywhere", async || {
        verify(&first, &new)
            .await
            .is_err_and(|status| reason(&status) == "TOKEN_INVALID")
    })
    .await;
    first.stop().await;
    other.stop().await;
}

async fn role_lowering_reaches_the_other_replica(server: TestServer) {
    let other = server.replica().await;
    let (_, secret) = server.create("lowered", Role::Owner).await;
    within(HARD, "known", async || {
        verify(&other, &secret).await.is_ok()
    })
    .await;
    server
        .client()
        .await
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("lowered"),
                    role: Role::Viewer.to_proto().into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["role".into()],
                }),
            },
        ))
        .await
        .expect("lower");
    within(
        HARD,
        "the lower role applies on the other replica",
        async || {
            // An owner-only call through the other replica is now denied.
            other
                .client()
                .await
                .revoke_api_token(authed(
                    &secret,
                    RevokeApiTokenRequest {
                        name: name("bootstrap-owner"),
                    },
                ))
                .await
                .is_err_and(|status| status.code() == Code::PermissionDenied)
        },
    )
    .await;
    other.stop().await;
}

async fn purge_and_reuse_reach_the_other_replica(server: TestServer) {
    let other = server.replica().await;
    let (_, secret) = server.create("recycled", Role::Viewer).await;
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("recycled"),
            },
        ))
        .await
        .expect("revoke");
    // Past the retention period the sweepers purge it (either replica).
    server.clock.advance(
        chrono::Duration::from_std(Policy::default().token_retention).unwrap()
            + chrono::Duration::days(1),
    );
    within(Duration::from_secs(5), "purged", async || {
        server
            .client()
            .await
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest {
                    name: name("recycled"),
                },
            ))
            .await
            .is_err_and(|status| status.code() == Code::NotFound)
    })
    .await;
    within(HARD, "purged on the other replica", async || {
        verify(&other, &secret)
            .await
            .is_err_and(|status| reason(&status) == "TOKEN_INVALID")
    })
    .await;
    // The id is free: a new token of that name works on both.
    let (_, reused) = server.create("recycled", Role::Viewer).await;
    within(
        HARD,
        "the reused name works on the other replica",
        async || verify(&other, &reused).await.is_ok(),
    )
    .await;
    other.stop().await;
}

async fn a_replica_started_later_knows_everything(server: TestServer) {
    let (_, kept) = server.create("kept", Role::Viewer).await;
    let (_, gone) = server.create("gone", Role::Viewer).await;
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: name("gone") },
        ))
        .await
        .expect("revoke");
    // Cold start: everything is loaded before it serves.
    let later = server.replica().await;
    assert!(verify(&later, &kept).await.is_ok());
    let status = verify(&later, &gone).await.expect_err("revoked");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    later.stop().await;
}

async fn event_streams_of_one_replica_carry_the_others_changes(server: TestServer) {
    let other = server.replica().await;
    server.create("watched", Role::Viewer).await;
    let mut stream = other
        .client()
        .await
        .watch_api_token_events(authed(
            &server.owner,
            WatchApiTokenEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                after_sequence: 0,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a first message within 5 s")
        .expect("ok")
        .expect("open");
    let started = Instant::now();
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("watched"),
            },
        ))
        .await
        .expect("revoke");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within 5 s")
            .expect("ok")
            .expect("open");
        if message
            .events
            .iter()
            .any(|event| event.kind() == Kind::Revoked && event.api_token == name("watched"))
        {
            break;
        }
    }
    eprintln!(
        "revocation through replica A streamed by replica B after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    other.stop().await;
}

#[test]
fn the_fallback_poll_is_slow_in_these_tests() {
    // Replicas reuse the test server's options (and manual clock); the
    // macro slows the poll so that only the push can be quick.
    assert!(Options::default().events.poll_interval < Duration::from_secs(10));
    let _ = Backend::Postgres;
}

async fn a_namespace_limit_reaches_the_other_replica_within_a_second(server: TestServer) {
    let other = server.replica().await;
    let name = format!("namespaces/{NAMESPACE}/limits");
    let lowered = apitoken_domain::ratelimit::to_proto("7/m".parse().unwrap());
    server
        .client()
        .await
        .update_namespace_limits(authed(
            &server.owner,
            apitoken_tests::v1::UpdateNamespaceLimitsRequest {
                namespace_limits: Some(apitoken_tests::v1::NamespaceLimits {
                    name: name.clone(),
                    rate_limit: Some(lowered),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect("update");
    let delay = within(
        Duration::from_secs(2),
        "the namespace limit on the other replica",
        async || {
            other
                .shared_client()
                .await
                .verify_api_token(authed(&server.owner, VerifyApiTokenRequest::default()))
                .await
                .is_ok_and(|reply| reply.into_inner().namespace_limit == Some(lowered))
        },
    )
    .await;
    eprintln!("a namespace limit set through replica A applies on replica B after {delay:?}");
    other.stop().await;
}

/// A page the other replica serves from its page cache follows a change
/// made here as quickly as verification does.
async fn a_cached_page_on_the_other_replica_follows_a_change_within_100ms(server: TestServer) {
    let other = server.replica().await;
    server.create("listed", Role::Viewer).await;
    let request = || {
        authed(
            &server.owner,
            ListApiTokensRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                filter: "role = ROLE_VIEWER".into(),
                ..Default::default()
            },
        )
    };
    let mut client = other.shared_client().await;
    let listed =
        async |client: &mut apitoken_tests::v1::api_token_service_client::ApiTokenServiceClient<
            tonic::transport::Channel,
        >| {
            client
                .list_api_tokens(request())
                .await
                .expect("list")
                .into_inner()
                .api_tokens
                .len()
        };
    within(HARD, "the other replica lists the new token", async || {
        listed(&mut client).await == 1
    })
    .await;
    // Cached now.
    assert_eq!(listed(&mut client).await, 1);
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("listed"),
            },
        ))
        .await
        .expect("revoke");
    let delay = within(
        HARD,
        "the revoked token left the other replica's page",
        async || listed(&mut client).await == 0,
    )
    .await;
    eprintln!("revocation through replica A left replica B's cached page after {delay:?}");
    assert!(delay < PROPAGATION, "{delay:?}");
    other.stop().await;
}
