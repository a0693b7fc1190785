//! The server under test: the release `apitoken-server` binary in its own
//! process (pinned to a core when asked), on a fresh SQLite file or a fresh
//! PostgreSQL database, pre-loaded straight through the store with N tokens.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apitoken_domain::{
    Role,
    hash::Keys,
    token::{Secret, TokenFormat},
};
use apitoken_store::{TokenStore, entity};
use chrono::Utc;
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, EntityTrait};

/// The namespace every pre-loaded token lives in (spread over more would
/// change nothing: lookups are by hash).
pub(crate) const NAMESPACE: &str = "bench";
/// The namespace `CreateApiToken` writes into: a namespace of ordinary size
/// (its quota check counts its own active tokens, up to the quota), apart
/// from the pre-loaded one.
pub(crate) const WRITES_NAMESPACE: &str = "bench-writes";
/// Tokens whose secrets the benchmark knows (the rest only have hashes).
pub(crate) const KNOWN: usize = 64;
/// Rows per insert statement.
const INSERT_BATCH: usize = 500;

/// A binary next to this one (the release build puts them together).
pub(crate) fn sibling(name: &str) -> Result<PathBuf, String> {
    let path = std::env::current_exe()
        .map_err(|error| error.to_string())?
        .with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it first with `cargo build --release -p apitoken-server -p apitoken-bench`",
            path.display()
        ))
    }
}

/// A free loopback port.
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| error.to_string())
}

/// `command` run on `core` with `taskset` when pinning.
pub(crate) fn pinned(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A database for one run.
#[derive(Debug)]
pub(crate) struct Database {
    /// Its URL.
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Database {
    /// A fresh SQLite file, or a fresh database on the PostgreSQL server of
    /// `postgres_admin_url`.
    pub(crate) async fn fresh(postgres_admin_url: Option<&str>) -> Result<Database, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let url = match postgres_admin_url {
            None => format!("sqlite://{}", dir.path().join("bench.db").display()),
            Some(admin_url) => {
                let admin = sea_orm::Database::connect(admin_url)
                    .await
                    .map_err(|error| format!("PostgreSQL: {error}"))?;
                let name = format!("apitoken_bench_{}", uuid::Uuid::new_v4().simple());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .map_err(|error| format!("PostgreSQL: {error}"))?;
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .ok_or("the PostgreSQL URL names no database")?;
                format!("{base}/{name}")
            }
        };
        Ok(Database { url, _dir: dir })
    }
}

/// Migrates and loads `count` tokens (the first [`KNOWN`] with real
/// secrets, returned); the rest get random hashes.
pub(crate) async fn preload(database_url: &str, count: u64) -> Result<Vec<Secret>, String> {
    let store = TokenStore::connect(database_url, &apitoken_store::StoreOptions::default())
        .await
        .map_err(|error| format!("database: {error}"))?;
    store
        .migrate()
        .await
        .map_err(|error| format!("migrate: {error}"))?;
    let format = TokenFormat::default();
    let keys = Keys::default();
    let now = Utc::now();
    let mut known = Vec::new();
    let db = store.connection();
    let mut next = 0u64;
    while next < count {
        let mut rows = Vec::with_capacity(INSERT_BATCH);
        for _ in 0..INSERT_BATCH {
            if next == count {
                break;
            }
            let secret = format.generate().map_err(|error| error.to_string())?;
            let well_formed = format
                .parse(secret.clone())
                .map_err(|error| error.to_string())?;
            if (next as usize) < KNOWN {
                known.push(secret);
            }
            rows.push(entity::ActiveModel {
                id: NotSet,
                uid: Set(uuid::Uuid::new_v4().to_string()),
                namespace: Set(NAMESPACE.to_owned()),
                token_id: Set(format!("token-{next}")),
                display_name: Set(format!("Benchmark token {next}")),
                description: Set("Loaded by apitoken-bench".to_owned()),
                role: Set(Role::Viewer.as_i16()),
                labels: Set(r#"{"env":"bench"}"#.to_owned()),
                create_time: Set(now),
                creator: Set("bootstrap".to_owned()),
                expire_time: Set(None),
                revoke_time: Set(None),
                revoker: Set(None),
                secret_hash: Set(keys.hash_secret(&well_formed).as_bytes().to_vec()),
                secret_hint: Set(format.hint(&well_formed)),
                last_use_time: Set(None),
                use_count: Set(0),
                version: Set(1),
                update_time: Set(now),
                expiry_notified: Set(false),
                rate_limit: Set(None),
                rate_limit_window: Set(None),
                last_use_ip: Set(None),
                previous_secret_hash: Set(None),
                previous_secret_expire_time: Set(None),
                end_grace_on_first_use: Set(false),
                expiry_warning_level: Set(0),
                interceptor: Set(false),
            });
            next += 1;
        }
        entity::Entity::insert_many(rows)
            .exec(db)
            .await
            .map_err(|error| format!("insert: {error}"))?;
    }
    Ok(known)
}

/// A running server process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// `127.0.0.1:port`.
    pub(crate) address: String,
    /// Time from spawn to SERVING (index loaded).
    pub(crate) cold_start: Duration,
    /// The ext_authz policy file's folder (every path needs a viewer of
    /// [`NAMESPACE`]), kept while the server runs.
    _policy: tempfile::TempDir,
}

/// The ext_authz policy of the benchmark: every path, a viewer of
/// [`NAMESPACE`].
const POLICY: &str = "namespace bench\ndefault viewer\n";

impl ServerProcess {
    /// Starts the binary on `database_url` with limits the benchmark never
    /// reaches, on `core` if pinning, and waits until it is SERVING.
    pub(crate) async fn start(
        database_url: &str,
        core: Option<usize>,
    ) -> Result<ServerProcess, String> {
        let binary = sibling("apitoken-server")?;
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let policy = tempfile::tempdir().map_err(|error| error.to_string())?;
        let policy_file = policy.path().join("policy.txt");
        std::fs::write(&policy_file, POLICY).map_err(|error| error.to_string())?;
        let started = Instant::now();
        let child = pinned(&binary, core)
            .args([
                "serve",
                "--listen",
                &address,
                "--database-url",
                database_url,
                "--no-migrate",
                "--role-rate-limits",
                "viewer=unlimited,editor=unlimited,owner=unlimited",
                "--namespace-rate-limit",
                "unlimited",
                "--failed-auth-limit",
                "unlimited",
                "--token-quota",
                "4000000000",
                "--max-streams-per-token",
                "100000",
            ])
            .arg("--ext-authz-policy")
            .arg(&policy_file)
            .env("APITOKEN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let mut server = ServerProcess {
            child,
            address,
            cold_start: Duration::ZERO,
            _policy: policy,
        };
        server.wait_serving(Duration::from_secs(600)).await?;
        server.cold_start = started.elapsed();
        Ok(server)
    }

    async fn wait_serving(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited: {status}"));
            }
            if let Ok(channel) =
                tonic::transport::Channel::from_shared(format!("http://{}", self.address))
                    .map_err(|error| error.to_string())?
                    .connect()
                    .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let serving = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok_and(|reply| {
                        reply.into_inner().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32
                    });
                if serving {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("the server never became SERVING".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's resident memory, in bytes (Linux).
    pub(crate) fn rss(&self) -> Option<u64> {
        // With taskset, the child is taskset's exec of the server: same pid.
        rss_of(self.child.id())
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The resident memory of process `pid`, in bytes (Linux).
pub(crate) fn rss_of(pid: u32) -> Option<u64> {
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl ServerProcess {
    /// Stops it.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The first owner token of the bench namespace, made with the binary's
/// `bootstrap` (its secret).
pub(crate) fn bootstrap(
    database_url: &str,
    id: &str,
    role: &str,
    interceptor: bool,
) -> Result<String, String> {
    bootstrap_in(database_url, NAMESPACE, id, role, interceptor)
}

/// [`bootstrap`] in `namespace`.
pub(crate) fn bootstrap_in(
    database_url: &str,
    namespace: &str,
    id: &str,
    role: &str,
    interceptor: bool,
) -> Result<String, String> {
    let binary = sibling("apitoken-server")?;
    let mut command = Command::new(binary);
    command.args([
        "bootstrap",
        "--database-url",
        database_url,
        "--namespace",
        namespace,
        "--name",
        id,
        "--role",
        role,
    ]);
    if interceptor {
        command.arg("--interceptor");
    }
    let output = command
        .env("APITOKEN_LOG", "warn")
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "bootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
