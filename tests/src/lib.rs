//! Harness of the end-to-end tests: the real apitoken server started
//! in-process on `127.0.0.1:0`, on a fresh SQLite file or a fresh PostgreSQL
//! database, with a manual clock and a bootstrap owner token; a real tonic
//! client talks to it.
//!
//! PostgreSQL: set `APITOKEN_TEST_POSTGRES_URL` to a server URL whose user may
//! create databases (e.g. `postgres://postgres:postgres@127.0.0.1:5432/postgres`);
//! each test gets its own database. Without it (at build time: `build.rs`)
//! the PostgreSQL variants are `#[ignore]`d, so the summary counts them as
//! ignored with the reason; `APITOKEN_REQUIRE_POSTGRES=1` (CI) makes a
//! missing server a failure.
//!
//! TLS: [`pki`] makes real certificates; [`Options::transport`] turns TLS
//! (and the connection limits) on, and [`Options::client`] is how the
//! harness's own clients connect.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use apitoken_domain::{
    Role,
    clock::{ManualClock, SharedClock},
    ratelimit::RateLimit,
};
use apitoken_proto::v1::{
    ApiToken, CreateApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
};
use apitoken_server::{
    App, AppConfig,
    app::StartError,
    bootstrap::{BootstrapRequest, bootstrap_token},
    events::EventTiming,
    limits::Limits,
    metrics::RequestCounter,
    policy::Policy,
};
use apitoken_store::TokenStore;
use sea_orm::{ConnectionTrait, Database};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, Status, transport::Channel};
use tonic_types::StatusExt;

use apitoken_proto::endpoint::ConnectOptions;
pub use apitoken_proto::v1;
/// The server's TLS files and transport settings, for [`Options::transport`].
pub use apitoken_server::{tls::TlsFiles, transport::TransportConfig};

pub mod envoy;
pub mod pki;
pub mod services;

/// The namespace of the bootstrap owner token.
pub const NAMESPACE: &str = "team-a";
/// Another namespace, for isolation tests.
pub const OTHER_NAMESPACE: &str = "team-b";

/// Where the server keeps its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`, or `https://…` when the server serves TLS.
    pub endpoint: String,
    pub backend: Backend,
    pub clock: Arc<ManualClock>,
    pub store: TokenStore,
    /// Secret of the owner token `namespaces/team-a/apitokens/bootstrap-owner`.
    pub owner: String,
    /// Secret of an owner token of `team-b`.
    pub other_owner: String,
    /// The SQLite file, if SQLite.
    pub sqlite_path: Option<PathBuf>,
    pub database_url: String,
    /// Requests the server received, by method.
    pub requests: RequestCounter,
    /// The ext_authz port of its own (`Options::ext_authz` with `listen`).
    pub ext_authz_addr: Option<SocketAddr>,
    options: Options,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

/// Options for [`TestServer::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub usage_flush_interval: Duration,
    pub health_check_interval: Duration,
    pub token_prefix: Option<String>,
    pub events: EventTiming,
    /// Limits: generous by default (the manual clock never refills a budget
    /// by itself); rate-limit tests pass the real ones.
    pub limits: Limits,
    /// The lifecycle policy (the deployment defaults unless changed).
    pub policy: Policy,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: apitoken_server::peer::TrustedProxies,
    /// TLS and connection limits (plaintext and the defaults unless changed).
    pub transport: TransportConfig,
    /// How the harness's clients connect (CA, client certificate).
    pub client: ConnectOptions,
    /// Shared limits (see [`redis_config`]).
    pub redis: Option<apitoken_ratelimit::RedisConfig>,
    /// Envoy's ext_authz (`--ext-authz-policy`, `--ext-authz-listen`).
    pub ext_authz: Option<apitoken_server::ext_authz::ExtAuthzConfig>,
    /// [`apitoken_store::StoreOptions::lock_wait`].
    pub lock_wait: Duration,
}

/// Limits that tests of other features never reach.
pub fn generous_limits() -> Limits {
    Limits {
        role_rate_limits: [RateLimit::Unlimited; 3],
        namespace_rate_limit: RateLimit::Unlimited,
        failed_auth_limit: RateLimit::Unlimited,
        token_quota: 10_000,
        ..Limits::default()
    }
}

/// The Redis of the shared-limit tests (`APITOKEN_TEST_REDIS_URL`, e.g.
/// `redis://127.0.0.1:6379`), or `None` (they print that they were
/// skipped) unless `APITOKEN_REQUIRE_REDIS=1` (CI), which makes a missing
/// one a failure.
pub fn redis_url() -> Option<String> {
    match std::env::var("APITOKEN_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("APITOKEN_REQUIRE_REDIS").is_err(),
                "APITOKEN_REQUIRE_REDIS is set but APITOKEN_TEST_REDIS_URL is not"
            );
            eprintln!("skipped: shared limits (set APITOKEN_TEST_REDIS_URL to run them)");
            None
        }
    }
}

/// Shared limits on `url` under a key prefix of their own (tests never
/// see each other's counts), probed every 50 ms.
pub fn redis_config(url: &str) -> apitoken_ratelimit::RedisConfig {
    apitoken_ratelimit::RedisConfig {
        key_prefix: format!("apitoken-test-{}", uuid::Uuid::new_v4().simple()),
        probe_interval: Duration::from_millis(50),
        timeout: Duration::from_millis(100),
        ..apitoken_ratelimit::RedisConfig::new(url)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            usage_flush_interval: Duration::from_millis(50),
            health_check_interval: Duration::from_millis(100),
            token_prefix: None,
            events: EventTiming {
                poll_interval: Duration::from_millis(100),
                heartbeat_interval: Duration::from_millis(200),
                expiry_sweep_interval: Duration::from_millis(100),
                max_streams_per_token: 8,
                ..EventTiming::default()
            },
            limits: generous_limits(),
            policy: Policy::default(),
            trusted_proxies: Default::default(),
            transport: TransportConfig::default(),
            client: ConnectOptions::default(),
            redis: None,
            ext_authz: None,
            lock_wait: apitoken_store::StoreOptions::default().lock_wait,
        }
    }
}

/// A fresh database URL for `backend`, or `None` when PostgreSQL is not
/// configured (and not required).
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("apitoken.db").display())),
        Backend::Postgres => {
            let Ok(admin_url) = std::env::var("APITOKEN_TEST_POSTGRES_URL") else {
                assert!(
                    std::env::var("APITOKEN_REQUIRE_POSTGRES").is_err(),
                    "APITOKEN_REQUIRE_POSTGRES is set but APITOKEN_TEST_POSTGRES_URL is not"
                );
                eprintln!("skipped: PostgreSQL variant (set APITOKEN_TEST_POSTGRES_URL to run it)");
                return None;
            };
            Some(fresh_postgres_database(&admin_url).await)
        }
    }
}

/// A fresh database on the PostgreSQL server of `admin_url` (whose user may
/// create databases).
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    {
        {
            let admin = Database::connect(admin_url).await.unwrap_or_else(|err| {
                panic!("PostgreSQL at APITOKEN_TEST_POSTGRES_URL is unreachable: {err}")
            });
            let name = format!("apitoken_test_{}", uuid::Uuid::new_v4().simple());
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            admin.close().await.ok();
            let base = admin_url
                .rsplit_once('/')
                .map(|(base, _)| base)
                .expect("URL with a database");
            format!("{base}/{name}")
        }
    }
}

impl TestServer {
    /// Starts a server with default test options.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, Options::default()).await
    }

    /// Starts a server; `None` if the backend is not available here.
    pub async fn start_with(backend: Backend, options: Options) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = fresh_database(backend, dir.path()).await?;
        Some(Self::start_on(backend, database_url, dir, options).await)
    }

    /// Starts a server on a fresh database of the PostgreSQL server of
    /// `admin_url` (a private cluster, say).
    pub async fn start_on_postgres(admin_url: &str, options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = fresh_postgres_database(admin_url).await;
        Self::start_on(Backend::Postgres, database_url, dir, options).await
    }

    async fn start_on(
        backend: Backend,
        database_url: String,
        dir: tempfile::TempDir,
        options: Options,
    ) -> TestServer {
        init_logs();
        let clock = Arc::new(ManualClock::starting_now());
        let app = build_app(&database_url, &options, &clock).await;
        let store = app.store().clone();
        let owner = bootstrap(&app, NAMESPACE, "bootstrap-owner", Role::Owner).await;
        let other_owner = bootstrap(&app, OTHER_NAMESPACE, "bootstrap-owner", Role::Owner).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = app.requests().clone();
        let ext_authz_addr = app.ext_authz_address();
        let (shutdown, handle) = spawn_app(app, listener);
        let scheme = if options.transport.tls.is_some() {
            "https"
        } else {
            "http"
        };
        TestServer {
            addr,
            endpoint: format!("{scheme}://{addr}"),
            backend,
            clock,
            store,
            owner,
            other_owner,
            sqlite_path: (backend == Backend::Sqlite).then(|| dir.path().join("apitoken.db")),
            database_url,
            requests,
            ext_authz_addr,
            options,
            _dir: dir,
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// A client on a new connection.
    pub async fn client(&self) -> ApiTokenServiceClient<Channel> {
        ApiTokenServiceClient::new(self.channel().await)
    }

    /// A new connection (TLS with [`Options::client`] when the server
    /// serves TLS).
    pub async fn channel(&self) -> Channel {
        apitoken_proto::endpoint::connect(&self.endpoint, &self.options.client)
            .await
            .expect("connect")
    }

    /// The options the server was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Creates a token through the API with the team-a owner; returns it and
    /// its secret.
    pub async fn create(&self, id: &str, role: Role) -> (ApiToken, String) {
        self.create_in(NAMESPACE, &self.owner, id, role).await
    }

    /// Creates a token in `namespace` with `owner`.
    pub async fn create_in(
        &self,
        namespace: &str,
        owner: &str,
        id: &str,
        role: Role,
    ) -> (ApiToken, String) {
        self.create_token(
            namespace,
            owner,
            id,
            ApiToken {
                role: role.to_proto().into(),
                display_name: format!("token {id}"),
                ..Default::default()
            },
        )
        .await
    }

    /// Creates an interceptor token (viewer) of team-a.
    pub async fn create_interceptor(&self, id: &str) -> (ApiToken, String) {
        self.create_token(
            NAMESPACE,
            &self.owner,
            id,
            ApiToken {
                role: Role::Viewer.to_proto().into(),
                display_name: format!("interceptor {id}"),
                interceptor: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Creates `token` as `namespace`'s `id` with `owner`.
    pub async fn create_token(
        &self,
        namespace: &str,
        owner: &str,
        id: &str,
        token: ApiToken,
    ) -> (ApiToken, String) {
        let response = self
            .client()
            .await
            .create_api_token(authed(
                owner,
                CreateApiTokenRequest {
                    parent: format!("namespaces/{namespace}"),
                    api_token_id: id.to_owned(),
                    api_token: Some(token),
                    ..Default::default()
                },
            ))
            .await
            .expect("create")
            .into_inner();
        (response.api_token.expect("api_token"), response.secret)
    }

    /// Starts the server again on the same address and database (after
    /// [`TestServer::stop_in_place`]).
    pub async fn restart(&mut self) {
        let app = build_app(&self.database_url, &self.options, &self.clock).await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same address");
        self.requests = app.requests().clone();
        self.ext_authz_addr = app.ext_authz_address();
        let (shutdown, handle) = spawn_app(app, listener);
        self.shutdown = Some(shutdown);
        self.handle = Some(handle);
    }

    /// Another replica: a second server on the same database (PostgreSQL)
    /// with the same options and clock, on its own address.
    pub async fn replica(&self) -> Replica {
        let app = build_app(&self.database_url, &self.options, &self.clock).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, handle) = spawn_app(app, listener);
        let replica = Replica {
            addr,
            endpoint: format!("http://{addr}"),
            channel: tokio::sync::OnceCell::new(),
            shutdown: Some(shutdown),
            handle: Some(handle),
        };
        replica.wait_until_serving().await;
        replica
    }

    /// Calls of `/apitoken.v1.ApiTokenService/<method>` received.
    pub fn calls(&self, method: &str) -> u64 {
        self.requests
            .count(&format!("/apitoken.v1.ApiTokenService/{method}"))
    }

    /// Revokes a token straight in the database (with its event and audit
    /// entry), as another replica would, at `at`.
    pub async fn revoke_in_store(&self, id: &str, at: chrono::DateTime<chrono::Utc>) {
        let name = apitoken_domain::name::TokenName::from_stored(NAMESPACE, id);
        let revoker = format!("namespaces/{NAMESPACE}/apitokens/bootstrap-owner");
        let entry = apitoken_server::audit::RequestContext::rule().entry(
            NAMESPACE,
            apitoken_domain::audit::Action::Revoke,
            apitoken_server::audit::Actor::Named(&revoker),
            name.to_string(),
            at,
        );
        self.store
            .revoke(&name, &revoker, at, entry)
            .await
            .expect("revoke");
    }

    /// Waits (up to 5 s) until uses of the team-a tokens `ids` made at the
    /// clock's current time are flushed; uses may land in different flushes.
    pub async fn wait_for_usage(&self, ids: &[&str]) {
        use apitoken_domain::clock::Clock;
        let used_at = self.clock.now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for id in ids {
            let name = apitoken_domain::name::TokenName::from_stored(NAMESPACE, id);
            while self.store.get(&name).await.expect("get").last_use_time < Some(used_at) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "usage of {id} flushed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    /// Stops the server gracefully, keeping the handle (store, files).
    pub async fn stop_in_place(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// Every byte the database holds, for "never stored in clear" checks:
    /// the SQLite file and its WAL, or every PostgreSQL row as text.
    pub async fn database_dump(&self) -> Vec<u8> {
        match &self.sqlite_path {
            Some(path) => {
                let mut bytes = std::fs::read(path).expect("sqlite file");
                let wal = path.with_extension("db-wal");
                if let Ok(more) = std::fs::read(wal) {
                    bytes.extend(more);
                }
                bytes
            }
            None => {
                let rows = self
                    .store
                    .connection()
                    .query_all_raw(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        "SELECT row_to_json(t)::text AS row FROM api_tokens t",
                    ))
                    .await
                    .expect("dump");
                rows.iter()
                    .flat_map(|row| {
                        row.try_get::<String>("", "row")
                            .expect("row text")
                            .into_bytes()
                    })
                    .collect()
            }
        }
    }
}

async fn build_app(database_url: &str, options: &Options, clock: &Arc<ManualClock>) -> App {
    let mut config = AppConfig::new(database_url);
    config.usage_flush_interval = options.usage_flush_interval;
    config.health_check_interval = options.health_check_interval;
    config.shutdown_grace = Duration::from_millis(500);
    config.events = options.events;
    config.limits = options.limits.clone();
    config.policy = options.policy.clone();
    config.trusted_proxies = options.trusted_proxies.clone();
    config.transport = options.transport.clone();
    config.redis = options.redis.clone();
    config.ext_authz = options.ext_authz.clone();
    config.store.lock_wait = options.lock_wait;
    // Retention runs every 10 minutes in production; tests move the clock
    // and want it applied promptly.
    config.policy.retention_interval = Duration::from_millis(100);
    if let Some(prefix) = &options.token_prefix {
        config.token_prefix = prefix.clone();
    }
    let shared: SharedClock = clock.clone();
    App::build(config, shared).await.expect("server builds")
}

type ServerTask = JoinHandle<Result<(), StartError>>;

fn spawn_app(app: App, listener: TcpListener) -> (oneshot::Sender<()>, ServerTask) {
    let (shutdown, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    (shutdown, handle)
}

async fn bootstrap(app: &App, namespace: &str, id: &str, role: Role) -> String {
    let request = BootstrapRequest {
        namespace: namespace.to_owned(),
        token_id: id.to_owned(),
        role,
        ttl: None,
        interceptor: false,
    };
    let (_, secret) = bootstrap_token(app.store(), app.format(), app.keys(), app.clock(), &request)
        .await
        .expect("bootstrap");
    secret.expose().to_owned()
}

/// `message` with `authorization: Bearer <secret>`.
pub fn authed<T>(secret: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret}").parse().expect("ascii metadata"),
    );
    request
}

/// The `google.rpc.ErrorInfo` reason of a status.
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// The fields named by the `google.rpc.BadRequest` of a status.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

/// A timestamp `seconds` from the server clock's now.
pub fn in_seconds(server: &TestServer, seconds: i64) -> prost_types::Timestamp {
    use apitoken_domain::clock::Clock;
    apitoken_server::convert::timestamp(server.clock.now() + chrono::Duration::seconds(seconds))
}

/// How long one backend test may take before it fails as hung.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Runs `test`, failing (naming it) if it outlasts [`TEST_TIME_LIMIT`]: a
/// wait that never ends fails the one test instead of stalling the suite.
pub async fn bounded(name: &str, test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIME_LIMIT, test).await.is_err() {
        panic!("{name} did not finish within {TEST_TIME_LIMIT:?}: something waits forever");
    }
}

/// Runs each listed `async fn(TestServer)` on SQLite and on PostgreSQL,
/// each within [`TEST_TIME_LIMIT`].
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = $crate::TestServer::start($crate::Backend::Sqlite).await {
                        $crate::bounded(stringify!($name), super::$name(server)).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(apitoken_postgres),
                    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)"
                )]
                async fn $name() {
                    if let Some(server) = $crate::TestServer::start($crate::Backend::Postgres).await {
                        $crate::bounded(stringify!($name), super::$name(server)).await;
                    }
                }
            )*
        }
    };
}

/// Logs of the server under test, on standard error (shown for failing
/// tests). Filter with `APITOKEN_TEST_LOG`; default warnings and errors.
pub fn init_logs() {
    let filter = std::env::var("APITOKEN_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A second server on a [`TestServer`]'s database.
#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    channel: tokio::sync::OnceCell<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl Replica {
    /// A client on a new connection.
    pub async fn client(&self) -> ApiTokenServiceClient<Channel> {
        ApiTokenServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        )
    }

    /// A client on the replica's one kept connection.
    pub async fn shared_client(&self) -> ApiTokenServiceClient<Channel> {
        let channel = self
            .channel
            .get_or_init(|| async {
                Channel::from_shared(format!("http://{}", self.addr))
                    .expect("uri")
                    .connect()
                    .await
                    .expect("connect")
            })
            .await;
        ApiTokenServiceClient::new(channel.clone())
    }

    /// Waits (up to 10 s) until its health is SERVING (index loaded).
    pub async fn wait_until_serving(&self) {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|reply| reply.into_inner().status);
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if status.is_ok_and(|status| status == serving) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

/// Runs each listed `async fn(TestServer)` on PostgreSQL only (several
/// replicas share one database there).
#[macro_export]
macro_rules! postgres_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(apitoken_postgres),
                    ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)"
                )]
                async fn $name() {
                    if let Some(server) = $crate::TestServer::start($crate::Backend::Postgres).await {
                        $crate::bounded(stringify!($name), super::$name(server)).await;
                    }
                }
            )*
        }
    };
}

/// The example inventory service, protected by the interceptor, in front of
/// a [`TestServer`].
#[derive(Debug)]
pub struct ExampleService {
    pub addr: SocketAddr,
    pub auth: apitoken_interceptor::ApiTokenAuth,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>>,
}

/// Interceptor settings for tests: short bounds so tests run fast.
pub fn fast_settings() -> apitoken_interceptor::Settings {
    apitoken_interceptor::Settings {
        staleness_bound: Duration::from_secs(2),
        negative_ttl: Duration::from_millis(200),
        call_timeout: Duration::from_millis(500),
        usage_report_interval: Duration::from_millis(100),
        max_reconnect_backoff: Duration::from_millis(200),
        failed_auth_per_minute: 1_000_000,
        ..Default::default()
    }
}

/// The gRPC health status of `service` at `addr`, or `None` if unknown.
pub async fn health_of(addr: SocketAddr, service: &str) -> Option<i32> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .ok()?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()
        .map(|reply| reply.into_inner().status)
}

/// `SERVING` as the health protocol's number.
pub const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

impl ExampleService {
    /// Starts it with a new viewer token of team-a as its credential, and
    /// waits until its event stream is up.
    pub async fn start(
        server: &TestServer,
        settings: apitoken_interceptor::Settings,
    ) -> ExampleService {
        Self::start_on(server, &server.endpoint, settings, None).await
    }

    /// [`ExampleService::start`] against the replica at `endpoint` (its
    /// credential is made through `server`), sharing limits through
    /// `redis` if given.
    pub async fn start_on(
        server: &TestServer,
        endpoint: &str,
        settings: apitoken_interceptor::Settings,
        redis: Option<apitoken_ratelimit::RedisConfig>,
    ) -> ExampleService {
        let (_, credential) = server
            .create_interceptor(&format!(
                "watcher-{}",
                uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .get(..8)
                    .unwrap_or("x")
            ))
            .await;
        // The replica it follows must know its credential first.
        let channel = apitoken_proto::endpoint::connect(endpoint, &server.options.client)
            .await
            .expect("connect");
        let mut check = ApiTokenServiceClient::new(channel);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while check
            .verify_api_token(v1::VerifyApiTokenRequest {
                secret: credential.clone(),
                caller_address: String::new(),
            })
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "credential never known"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let clock: SharedClock = server.clock.clone();
        let mut builder = apitoken_example::policy(
            apitoken_interceptor::ApiTokenAuth::builder()
                .namespace(NAMESPACE, credential)
                .settings(settings)
                .clock(clock),
        );
        if let Some(redis) = redis {
            builder = builder.redis(redis);
        }
        let client = &server.options.client;
        if let Some(ca) = &client.ca {
            builder = builder.tls_ca(ca.clone());
        }
        if let Some(identity) = &client.identity {
            builder = builder.client_identity(identity.cert.clone(), identity.key.clone());
        }
        let auth = builder
            .connect(endpoint.to_owned())
            .await
            .expect("interceptor builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serving = auth.clone();
        let handle = tokio::spawn(async move {
            apitoken_example::serve(&serving, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let service = ExampleService {
            addr,
            auth,
            shutdown: Some(shutdown),
            handle: Some(handle),
        };
        service.wait_until_fresh().await;
        service
    }

    /// Waits (up to 5 s) until the interceptor's event stream is up.
    pub async fn wait_until_fresh(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.auth.is_fresh(NAMESPACE) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "event stream never came up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client of the inventory.
    pub async fn client(
        &self,
    ) -> apitoken_example::pb::inventory_service_client::InventoryServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        apitoken_example::pb::inventory_service_client::InventoryServiceClient::new(channel)
    }

    /// Stops it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}
