//! Operating the server: health (overall and per service, database outage,
//! the schema version, shutdown), reflection v1 and v1alpha, graceful shutdown, usage figures.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use apitoken_domain::Role;
use apitoken_tests::{
    Backend, NAMESPACE, Options, TestServer, authed, backend_tests,
    v1::{GetApiTokenRequest, RevokeApiTokenRequest, VerifyApiTokenRequest},
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

backend_tests!(
    health_reports_serving_per_service,
    reflection_lists_the_services,
    shutdown_reports_not_serving_and_ends_open_streams,
    usage_is_counted_and_flushed,
);

async fn status(server: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|response| response.into_inner().status())
}

async fn health_reports_serving_per_service(server: TestServer) {
    assert_eq!(
        status(&server, "").await.expect("overall"),
        ServingStatus::Serving
    );
    assert_eq!(
        status(&server, "apitoken.v1.ApiTokenService")
            .await
            .expect("service"),
        ServingStatus::Serving
    );
    assert_eq!(
        status(&server, "no.such.Service")
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
}

async fn reflection_lists_the_services(server: TestServer) {
    use tonic_reflection::pb::{v1, v1alpha};
    let expected = ["apitoken.v1.ApiTokenService", "grpc.health.v1.Health"];
    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = replies
        .next()
        .await
        .expect("reply")
        .expect("ok")
        .message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in expected {
        assert!(
            names.iter().any(|name| name == service),
            "v1 lists {service}: {names:?}"
        );
    }

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "apitoken.v1.ApiTokenService".into(),
            ),
        ),
    };
    let mut replies = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha")
        .into_inner();
    let reply = replies.next().await.expect("reply").expect("ok");
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "v1alpha describes the service"
    );
}

async fn shutdown_reports_not_serving_and_ends_open_streams(mut server: TestServer) {
    // A watcher (as a load balancer would keep) sees SERVING, then
    // NOT_SERVING when shutdown begins; the open stream does not keep the
    // server from stopping.
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("ok");
    assert_eq!(first.status(), ServingStatus::Serving);
    let addr = server.addr;
    let stopping = tokio::spawn(async move {
        server.stop_in_place().await;
        server
    });
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("update before the deadline")
        .expect("an update")
        .expect("ok");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let server = tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("server stops despite the open stream")
        .expect("join");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(server);
}

async fn usage_is_counted_and_flushed(server: TestServer) {
    let mut client = server.client().await;
    let (token, secret) = server.create("counted", Role::Viewer).await;
    assert_eq!(token.use_count, 0);
    assert!(token.last_use_time.is_none());
    for _ in 0..3 {
        client
            .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
            .await
            .expect("use");
    }
    // The flush interval is 50 ms in tests: poll the API until it shows.
    let name = format!("namespaces/{NAMESPACE}/apitokens/counted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let fetched = client
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest { name: name.clone() },
            ))
            .await
            .expect("get")
            .into_inner();
        if fetched.use_count == 3 {
            assert!(fetched.last_use_time.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "use_count stuck at {}",
            fetched.use_count
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Uses are also flushed at graceful shutdown, even with a long interval.
    let backend = server.backend;
    drop(server);
    let Some(mut slow) = TestServer::start_with(
        backend,
        Options {
            usage_flush_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let (_, secret) = slow.create("flushed-at-exit", Role::Viewer).await;
    let mut client = slow.client().await;
    for _ in 0..4 {
        client
            .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
            .await
            .expect("use");
    }
    drop(client);
    slow.stop_in_place().await;
    let record = slow
        .store
        .get(&apitoken_domain::name::TokenName::from_stored(
            NAMESPACE,
            "flushed-at-exit",
        ))
        .await
        .expect("stored");
    assert_eq!(record.use_count, 4);
    assert!(record.last_use_time.is_some());
}

/// PostgreSQL only: a write that cannot get the event lock (held by a
/// session that never lets go) fails as UNAVAILABLE after the configured
/// wait instead of hanging, and succeeds once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(apitoken_postgres),
    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)"
)]
async fn a_held_event_lock_fails_writes_in_time_instead_of_hanging() {
    let Some(server) = TestServer::start_with(
        Backend::Postgres,
        Options {
            lock_wait: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let (_, secret) = server.create("held", Role::Viewer).await;
    let holder = sea_orm::Database::connect(server.database_url.as_str())
        .await
        .expect("connect");
    let txn = sea_orm::TransactionTrait::begin(&holder)
        .await
        .expect("begin");
    sea_orm::ConnectionTrait::execute_unprepared(
        &txn,
        &format!(
            "SELECT pg_advisory_xact_lock({})",
            apitoken_store::EVENT_LOCK_KEY
        ),
    )
    .await
    .expect("lock");
    let revoke = || async {
        server
            .client()
            .await
            .revoke_api_token(authed(
                &server.owner,
                RevokeApiTokenRequest {
                    name: format!("namespaces/{NAMESPACE}/apitokens/held"),
                },
            ))
            .await
    };
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(5), revoke())
        .await
        .expect("answered, not hung")
        .expect_err("refused while the lock is held");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after {:?}",
        started.elapsed()
    );
    // Nothing half-written: the token still verifies.
    let verified = server
        .client()
        .await
        .verify_api_token(VerifyApiTokenRequest {
            secret: secret.clone(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.api_token.is_some(), "still active");
    txn.rollback().await.expect("release");
    tokio::time::timeout(Duration::from_secs(5), revoke())
        .await
        .expect("answered")
        .expect("revoked once the lock is free");
}

/// PostgreSQL only: dropping the database under the server turns health to
/// NOT_SERVING and calls to UNAVAILABLE, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(apitoken_postgres),
    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)"
)]
async fn postgres_outage_turns_health_not_serving() {
    let Some(server) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    assert_eq!(
        status(&server, "").await.expect("overall"),
        ServingStatus::Serving
    );
    let admin_url =
        std::env::var("APITOKEN_TEST_POSTGRES_URL").expect("set when the server started");
    let database = server
        .database_url
        .rsplit('/')
        .next()
        .expect("db name")
        .to_owned();
    let admin = sea_orm::Database::connect(admin_url.as_str())
        .await
        .expect("admin");
    sea_orm::ConnectionTrait::execute_unprepared(
        &admin,
        &format!("DROP DATABASE {database} WITH (FORCE)"),
    )
    .await
    .expect("drop database");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let overall = status(&server, "").await.expect("health answers");
        let service = status(&server, "apitoken.v1.ApiTokenService")
            .await
            .expect("health answers");
        if overall == ServingStatus::NotServing && service == ServingStatus::NotServing {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {overall:?}/{service:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = server
        .client()
        .await
        .verify_api_token(authed(&server.owner, VerifyApiTokenRequest::default()))
        .await
        .expect_err("no database");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Internal),
        "{status:?}"
    );
}

/// `serve --no-migrate` on a database without the schema: NOT_SERVING
/// (naming nothing to the caller), every call fails cleanly, and once
/// `migrate` runs the server turns SERVING by itself.
async fn health_needs_the_expected_schema(backend: Backend) {
    use std::sync::Arc;

    use apitoken_domain::clock::{SharedClock, SystemClock};
    use apitoken_server::{App, AppConfig};

    let dir = tempfile::tempdir().expect("dir");
    let Some(url) = apitoken_tests::fresh_database(backend, dir.path()).await else {
        return;
    };
    let mut config = AppConfig::new(url.clone());
    config.migrate = false;
    config.health_check_interval = Duration::from_millis(100);
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::build(config, clock)
        .await
        .expect("builds without migrating");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let check = |service: &'static str| {
        let channel = channel.clone();
        async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|response| response.into_inner().status())
        }
    };
    for service in ["", "apitoken.v1.ApiTokenService"] {
        assert_eq!(
            check(service).await.expect("health answers"),
            ServingStatus::NotServing,
            "{service:?} without the schema"
        );
    }
    // A call fails with a clean status, not a crash or a hang.
    let mut client =
        apitoken_tests::v1::api_token_service_client::ApiTokenServiceClient::new(channel.clone());
    let refused = client
        .get_api_token(authed(
            "apitoken_0000000000000000000000000000000000000000000000000",
            GetApiTokenRequest {
                name: "namespaces/team-a/apitokens/x".into(),
            },
        ))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            refused.code(),
            Code::Unauthenticated | Code::Unavailable | Code::Internal
        ),
        "{refused:?}"
    );

    let store = apitoken_store::TokenStore::connect(&url, &apitoken_store::StoreOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check("").await.ok() == Some(ServingStatus::Serving) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING after migrate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_the_expected_schema_sqlite() {
    health_needs_the_expected_schema(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(apitoken_postgres),
    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL"
)]
async fn health_needs_the_expected_schema_postgres() {
    health_needs_the_expected_schema(Backend::Postgres).await;
}
