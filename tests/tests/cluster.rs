//! Many replicas act as one: three server replicas on one PostgreSQL and
//! one Redis, with interceptors (the example service) attached to
//! different replicas.
//!
//! - a revocation through any replica is refused by every replica within
//!   100 ms and by every interceptor within 1 s (figures printed);
//! - a token's limit holds across all replicas and interceptors: no window
//!   of the limit's length holds more than its count of accepted calls
//!   (asserted on the calls' timestamps, tolerance 0), and a per-minute
//!   limit is one budget for all of them;
//! - a Redis outage (the test's own Redis, killed) degrades to local
//!   limits, shows in health (`apitoken.redis` NOT_SERVING, overall still
//!   SERVING) and in `redis_fallback`, and recovers when Redis is back;
//! - a PostgreSQL restart (a private cluster, `pg_ctl restart`) loses
//!   nothing acknowledged.
//!
//! Needs `APITOKEN_TEST_POSTGRES_URL` and `APITOKEN_TEST_REDIS_URL` (each
//! test prints that it was skipped without them, unless CI's
//! `APITOKEN_REQUIRE_*` make that a failure). The tests run one at a time:
//! they measure delays.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apitoken_domain::{Role, ratelimit::RateLimit};
use apitoken_example::pb::ListItemsRequest;
use apitoken_server::limits::Limits;
use apitoken_tests::{
    Backend, ExampleService, NAMESPACE, Options, Replica, SERVING, TestServer, authed,
    fast_settings, generous_limits, health_of, redis_config, redis_url,
    services::{PrivatePostgres, RedisProcess},
    v1::{self, ApiToken, GetApiTokenRequest, RevokeApiTokenRequest, VerifyApiTokenRequest},
};
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound the product promises between replicas.
const PROPAGATION: Duration = Duration::from_millis(100);
/// The bound for interceptors (and for any single observation on a loaded
/// machine).
const HARD: Duration = Duration::from_secs(1);

/// Three replicas (the test server and two more) and two interceptors, on
/// replicas 1 and 2.
struct Cluster {
    server: TestServer,
    replicas: Vec<Replica>,
    examples: Vec<ExampleService>,
    redis: apitoken_ratelimit::RedisConfig,
}

impl Cluster {
    async fn start(redis_url: &str, limits: Limits) -> Option<Cluster> {
        let redis = redis_config(redis_url);
        let options = Options {
            limits,
            redis: Some(redis.clone()),
            ..Options::default()
        };
        let server = TestServer::start_with(Backend::Postgres, options).await?;
        Some(Self::around(server, redis).await)
    }

    async fn around(server: TestServer, redis: apitoken_ratelimit::RedisConfig) -> Cluster {
        let replicas = vec![server.replica().await, server.replica().await];
        let mut examples = Vec::new();
        for replica in &replicas {
            examples.push(
                ExampleService::start_on(
                    &server,
                    &replica.endpoint,
                    fast_settings(),
                    Some(redis.clone()),
                )
                .await,
            );
        }
        let cluster = Cluster {
            server,
            replicas,
            examples,
            redis,
        };
        cluster.wait_until_shared().await;
        cluster
    }

    /// The addresses of the three replicas.
    fn addresses(&self) -> Vec<std::net::SocketAddr> {
        std::iter::once(self.server.addr)
            .chain(self.replicas.iter().map(|replica| replica.addr))
            .collect()
    }

    /// Waits (up to 5 s) until every replica and interceptor shares limits.
    async fn wait_until_shared(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut shared = self.examples.iter().all(|e| !e.auth.redis_fallback());
            for address in self.addresses() {
                shared &= health_of(address, "apitoken.redis").await == Some(SERVING);
            }
            if shared {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "limits never shared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        for example in self.examples {
            example.stop().await;
        }
        for replica in self.replicas {
            replica.stop().await;
        }
        self.server.stop().await;
    }
}

/// A client of replica `index` (0: the test server), on a kept connection.
async fn replica_client(
    cluster: &Cluster,
    index: usize,
) -> v1::api_token_service_client::ApiTokenServiceClient<tonic::transport::Channel> {
    match index {
        0 => cluster.server.client().await,
        i => cluster.replicas[i - 1].shared_client().await,
    }
}

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

fn list(secret: &str) -> tonic::Request<ListItemsRequest> {
    authed(
        secret,
        ListItemsRequest {
            namespace: NAMESPACE.into(),
        },
    )
}

/// Polls every 2 ms until `check` holds; how long it took; fails past
/// `limit`.
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

async fn token_with_limit(cluster: &Cluster, id: &str, limit: RateLimit) -> String {
    let (_, secret) = cluster
        .server
        .create_token(
            NAMESPACE,
            &cluster.server.owner,
            id,
            ApiToken {
                role: Role::Viewer.to_proto().into(),
                limit: Some(apitoken_domain::ratelimit::to_proto(limit)),
                ..Default::default()
            },
        )
        .await;
    // Known everywhere before the test starts counting.
    for index in 0..3 {
        let mut client = replica_client(cluster, index).await;
        within(HARD, "the new token known on every replica", async || {
            client
                .verify_api_token(VerifyApiTokenRequest {
                    secret: secret.clone(),
                    caller_address: String::new(),
                })
                .await
                .is_ok()
        })
        .await;
    }
    secret
}

macro_rules! cluster_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(apitoken_postgres), ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)")]
            async fn $name() {
                let _one_at_a_time = SERIAL.lock().await;
                super::$name().await;
            }
        )*
    };
}

mod postgres {
    use super::SERIAL;
    cluster_tests!(
        a_revocation_through_any_replica_is_refused_everywhere,
        a_token_limit_holds_across_replicas_and_interceptors,
        a_minute_limit_is_one_budget_for_the_whole_cluster,
        a_redis_outage_degrades_to_local_limits_and_recovers,
        a_postgres_restart_loses_nothing_acknowledged,
    );
}

async fn a_revocation_through_any_replica_is_refused_everywhere() {
    let Some(url) = redis_url() else { return };
    let Some(cluster) = Cluster::start(&url, generous_limits()).await else {
        return;
    };
    let cluster = Arc::new(cluster);
    let mut replica_delays = Vec::new();
    let mut interceptor_delays = Vec::new();
    for round in 0..6 {
        let id = format!("revoked-{round}");
        let secret = token_with_limit(&cluster, &id, RateLimit::Unlimited).await;
        // Every interceptor has it cached.
        for example in &cluster.examples {
            example
                .client()
                .await
                .list_items(list(&secret))
                .await
                .expect("accepted before the revocation");
        }
        let through = round % 3;
        let revoked_at = Instant::now();
        replica_client(&cluster, through)
            .await
            .revoke_api_token(authed(
                &cluster.server.owner,
                RevokeApiTokenRequest { name: name(&id) },
            ))
            .await
            .expect("revoke");
        let mut replica_tasks = Vec::new();
        for index in 0..3 {
            let cluster = Arc::clone(&cluster);
            let secret = secret.clone();
            replica_tasks.push(tokio::spawn(async move {
                let mut client = replica_client(&cluster, index).await;
                loop {
                    let refused = client
                        .verify_api_token(VerifyApiTokenRequest {
                            secret: secret.clone(),
                            caller_address: String::new(),
                        })
                        .await
                        .is_err_and(|status| status.code() == Code::Unauthenticated);
                    if refused {
                        return revoked_at.elapsed();
                    }
                    assert!(
                        revoked_at.elapsed() < HARD,
                        "replica {index}: not within {HARD:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        let mut interceptor_tasks = Vec::new();
        for index in 0..cluster.examples.len() {
            let cluster = Arc::clone(&cluster);
            let secret = secret.clone();
            interceptor_tasks.push(tokio::spawn(async move {
                let mut client = cluster.examples[index].client().await;
                loop {
                    let refused = client
                        .list_items(list(&secret))
                        .await
                        .is_err_and(|status| status.code() == Code::Unauthenticated);
                    if refused {
                        return revoked_at.elapsed();
                    }
                    assert!(
                        revoked_at.elapsed() < HARD,
                        "interceptor {index}: not within {HARD:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        let mut replicas = Vec::new();
        for task in replica_tasks {
            replicas.push(task.await.expect("replica check"));
        }
        let mut interceptors = Vec::new();
        for task in interceptor_tasks {
            interceptors.push(task.await.expect("interceptor check"));
        }
        // The replica it went through refuses at once; the others count.
        replica_delays.extend(
            replicas
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != through)
                .map(|(_, delay)| *delay),
        );
        interceptor_delays.extend(interceptors);
    }
    replica_delays.sort();
    interceptor_delays.sort();
    let median = replica_delays[replica_delays.len() / 2];
    eprintln!(
        "revocation through one of 3 replicas: refused by the other replicas after median {median:?}, slowest {:?} ({} observations); by the 2 interceptors after median {:?}, slowest {:?}",
        replica_delays[replica_delays.len() - 1],
        replica_delays.len(),
        interceptor_delays[interceptor_delays.len() / 2],
        interceptor_delays[interceptor_delays.len() - 1],
    );
    assert!(
        median < PROPAGATION,
        "median {median:?} over {PROPAGATION:?}: {replica_delays:?}"
    );
    Arc::into_inner(cluster).expect("one owner").stop().await;
}

/// One caller: a replica (VerifyApiToken "who am I", limited there) or an
/// interceptor (the example service).
#[derive(Clone, Copy, Debug)]
enum Caller {
    Replica(usize),
    Interceptor(usize),
}

/// Calls through `caller` as fast as it answers for `duration`; the
/// `(sent, answered)` times (since `start`) of the accepted calls, and how
/// many were refused.
async fn hammer(
    cluster: Arc<Cluster>,
    caller: Caller,
    secret: String,
    start: Instant,
    duration: Duration,
) -> (Vec<(Duration, Duration)>, usize) {
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut replica = match caller {
        Caller::Replica(index) => Some(replica_client(&cluster, index).await),
        Caller::Interceptor(_) => None,
    };
    let mut example = match caller {
        Caller::Interceptor(index) => Some(cluster.examples[index].client().await),
        Caller::Replica(_) => None,
    };
    while start.elapsed() < duration {
        let sent = start.elapsed();
        let result = match (&mut replica, &mut example) {
            (Some(client), _) => client
                .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
                .await
                .map(|_| ()),
            (_, Some(client)) => client.list_items(list(&secret)).await.map(|_| ()),
            _ => unreachable!(),
        };
        match result {
            Ok(()) => accepted.push((sent, start.elapsed())),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (accepted, refused)
}

const CALLERS: [Caller; 5] = [
    Caller::Replica(0),
    Caller::Replica(1),
    Caller::Replica(2),
    Caller::Interceptor(0),
    Caller::Interceptor(1),
];

async fn hammer_all(
    cluster: &Arc<Cluster>,
    secret: &str,
    duration: Duration,
) -> (Vec<(Duration, Duration)>, usize) {
    let start = Instant::now();
    let tasks: Vec<_> = CALLERS
        .into_iter()
        .map(|caller| {
            tokio::spawn(hammer(
                Arc::clone(cluster),
                caller,
                secret.to_owned(),
                start,
                duration,
            ))
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (more, no) = task.await.expect("caller");
        accepted.extend(more);
        refused += no;
    }
    accepted.sort();
    (accepted, refused)
}

async fn a_token_limit_holds_across_replicas_and_interceptors() {
    let Some(url) = redis_url() else { return };
    let Some(cluster) = Cluster::start(&url, generous_limits()).await else {
        return;
    };
    let cluster = Arc::new(cluster);
    let limit: RateLimit = "20/s".parse().unwrap();
    let secret = token_with_limit(&cluster, "metered", limit).await;
    let duration = Duration::from_millis(3_500);
    let (accepted, refused) = hammer_all(&cluster, &secret, duration).await;
    let window = Duration::from_secs(1);
    // Sound on the test's clock: the calls surely decided within a window
    // (sent at or after its start, answered before its end) are at most 20.
    let mut busiest_sure = 0;
    // As observed: the most answers received within any window.
    let mut busiest_seen = 0;
    for (sent, answered) in &accepted {
        let sure = accepted
            .iter()
            .filter(|(s, a)| s >= sent && *a < *sent + window)
            .count();
        let seen = accepted
            .iter()
            .filter(|(_, a)| a >= answered && *a < *answered + window)
            .count();
        busiest_sure = busiest_sure.max(sure);
        busiest_seen = busiest_seen.max(seen);
    }
    let rate = accepted.len() as f64 / duration.as_secs_f64();
    eprintln!(
        "20/s across 3 replicas and 2 interceptors for {duration:?}: {} accepted ({rate:.1}/s), {refused} refused; busiest second: {busiest_sure} surely within it, {busiest_seen} answers seen in it",
        accepted.len()
    );
    assert!(
        busiest_sure <= 20,
        "{busiest_sure} accepted within one second"
    );
    // Answers arrive a little after their decision: a few can bunch up.
    assert!(
        busiest_seen <= 22,
        "{busiest_seen} answers within one second"
    );
    // And the limit is not starved: at least 3 full windows' worth.
    assert!(accepted.len() >= 60, "{} accepted", accepted.len());
    assert!(refused > 0, "the callers went over the limit");
    Arc::into_inner(cluster).expect("one owner").stop().await;
}

async fn a_minute_limit_is_one_budget_for_the_whole_cluster() {
    let Some(url) = redis_url() else { return };
    let Some(cluster) = Cluster::start(&url, generous_limits()).await else {
        return;
    };
    let cluster = Arc::new(cluster);
    let secret = token_with_limit(&cluster, "per-minute", RateLimit::per_minute(30)).await;
    let (accepted, refused) = hammer_all(&cluster, &secret, Duration::from_millis(1_500)).await;
    eprintln!(
        "30/m across 3 replicas and 2 interceptors: {} accepted, {refused} refused",
        accepted.len()
    );
    // Each of the five alone would have granted 30.
    assert_eq!(accepted.len(), 30);
    Arc::into_inner(cluster).expect("one owner").stop().await;
}

async fn a_redis_outage_degrades_to_local_limits_and_recovers() {
    let Some(mut redis) = RedisProcess::start() else {
        return;
    };
    let Some(cluster) = Cluster::start(&redis.url(), generous_limits()).await else {
        return;
    };
    let before = token_with_limit(&cluster, "before", "4/h".parse().unwrap()).await;
    let mut client = replica_client(&cluster, 1).await;
    for _ in 0..2 {
        client
            .verify_api_token(authed(&before, VerifyApiTokenRequest::default()))
            .await
            .expect("shared budget");
    }

    redis.kill();
    let outage = Instant::now();
    for address in cluster.addresses() {
        within(HARD * 2, "health shows the fallback", async || {
            health_of(address, "apitoken.redis").await != Some(SERVING)
        })
        .await;
        assert_eq!(health_of(address, "").await, Some(SERVING), "still serving");
    }
    for example in &cluster.examples {
        within(HARD * 2, "the interceptor falls back", async || {
            example.auth.redis_fallback()
        })
        .await;
    }
    eprintln!(
        "redis killed: every replica and interceptor in fallback after {:?}",
        outage.elapsed()
    );
    // Local limits: replica 1 counted its own 2 calls, so 2 more fit
    // there; replica 2 has its own 4. No call waits for the dead Redis.
    let mut slowest = Duration::ZERO;
    let mut allowed = [0; 3];
    for (index, count) in allowed.iter_mut().enumerate() {
        let mut client = replica_client(&cluster, index).await;
        for _ in 0..6 {
            let started = Instant::now();
            let result = client
                .verify_api_token(authed(&before, VerifyApiTokenRequest::default()))
                .await;
            slowest = slowest.max(started.elapsed());
            match result {
                Ok(_) => *count += 1,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
            }
        }
    }
    eprintln!("during the outage: accepted per replica {allowed:?}, slowest call {slowest:?}");
    assert_eq!(allowed, [4, 2, 4], "each replica enforces the limit alone");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");

    redis.resume();
    let back = Instant::now();
    cluster.wait_until_shared().await;
    eprintln!("redis back: limits shared again after {:?}", back.elapsed());
    // Shared again: one budget (Redis restarted empty).
    let after = token_with_limit(&cluster, "after", "3/h".parse().unwrap()).await;
    let mut accepted = 0;
    for index in [0, 1, 2, 0, 1, 2] {
        if replica_client(&cluster, index)
            .await
            .verify_api_token(authed(&after, VerifyApiTokenRequest::default()))
            .await
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 3, "one budget again");
    let _ = &cluster.redis;
    cluster.stop().await;
}

async fn a_postgres_restart_loses_nothing_acknowledged() {
    // Only PostgreSQL's binaries, and the shared server's URL as the sign
    // that PostgreSQL tests are wanted.
    if std::env::var("APITOKEN_TEST_POSTGRES_URL").is_err() {
        assert!(
            std::env::var("APITOKEN_REQUIRE_POSTGRES").is_err(),
            "APITOKEN_REQUIRE_POSTGRES is set but APITOKEN_TEST_POSTGRES_URL is not"
        );
        eprintln!("skipped: set APITOKEN_TEST_POSTGRES_URL to run it");
        return;
    }
    let Some(postgres) = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("initdb")
    else {
        return;
    };
    let options = Options {
        limits: generous_limits(),
        ..Options::default()
    };
    let server = TestServer::start_on_postgres(&postgres.admin_url(), options).await;
    let replicas = [server.replica().await, server.replica().await];
    let postgres = Arc::new(postgres);
    // Creates through all three replicas while the database restarts.
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let endpoint = match writer {
                0 => server.endpoint.clone(),
                i => replicas[i - 1].endpoint.clone(),
            };
            let owner = server.owner.clone();
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(endpoint)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = v1::api_token_service_client::ApiTokenServiceClient::new(channel);
                let mut acknowledged = Vec::new();
                let mut failed = 0;
                for i in 0..150 {
                    let id = format!("w{writer}-{i}");
                    let request = authed(
                        &owner,
                        v1::CreateApiTokenRequest {
                            parent: format!("namespaces/{NAMESPACE}"),
                            api_token_id: id.clone(),
                            api_token: Some(ApiToken {
                                role: Role::Viewer.to_proto().into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    );
                    match client.create_api_token(request).await {
                        Ok(reply) => acknowledged.push((id, reply.into_inner().secret)),
                        Err(status) => {
                            assert!(
                                matches!(
                                    status.code(),
                                    Code::Unavailable | Code::Internal | Code::AlreadyExists
                                ),
                                "{status:?}"
                            );
                            failed += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (acknowledged, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarting = Arc::clone(&postgres);
    let restarted = Instant::now();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .expect("pg_ctl restart");
    eprintln!("pg_ctl restart took {:?}", restarted.elapsed());
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for writer in writers {
        let (more, no) = writer.await.expect("writer");
        acknowledged.extend(more);
        failed += no;
    }
    eprintln!(
        "creates during a PostgreSQL restart: {} acknowledged, {failed} refused",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());
    // Every acknowledged token is stored, and every replica knows it.
    for (id, secret) in &acknowledged {
        let token = server
            .store
            .get(&apitoken_domain::name::TokenName::from_stored(
                NAMESPACE, id,
            ))
            .await
            .unwrap_or_else(|error| panic!("{id} acknowledged but lost: {error:?}"));
        assert_eq!(token.role, Role::Viewer);
        for replica in &replicas {
            let mut client = replica.shared_client().await;
            within(
                HARD * 5,
                "an acknowledged token known on a replica",
                async || {
                    client
                        .verify_api_token(VerifyApiTokenRequest {
                            secret: secret.clone(),
                            caller_address: String::new(),
                        })
                        .await
                        .is_ok()
                },
            )
            .await;
        }
    }
    // And the replicas still hear each other: a revocation propagates.
    let (id, secret) = &acknowledged[0];
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: name(id) },
        ))
        .await
        .expect("revoke after the restart");
    let mut client = replicas[1].shared_client().await;
    let delay = within(HARD, "revocation after the restart", async || {
        client
            .verify_api_token(VerifyApiTokenRequest {
                secret: secret.clone(),
                caller_address: String::new(),
            })
            .await
            .is_err()
    })
    .await;
    eprintln!("revocation propagated after the restart in {delay:?}");
    let mut reader = replicas[0].client().await;
    reader
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name(&acknowledged[acknowledged.len() - 1].0),
            },
        ))
        .await
        .expect("get");
    for replica in replicas {
        replica.stop().await;
    }
    server.stop().await;
    drop(postgres);
}
