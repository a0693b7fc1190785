//! Command line and environment of `apitoken-server`.
//!
//! Every flag has an `APITOKEN_*` environment variable; flags win.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use apitoken_domain::{Role, ratelimit::RateLimit};
use clap::{Args, Parser, Subcommand};

/// The default database: an `apitoken.db` SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://apitoken.db";

/// apitoken: API tokens for internal gRPC platforms.
#[derive(Debug, Parser)]
#[command(
    name = "apitoken-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log lines on standard error: `text` (for people) or `json` (one
    /// object a line, for log pipelines).
    #[arg(
        long,
        env = "APITOKEN_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    Text,
    /// One JSON object a line, with stable field names.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create a token straight in the database and print only its secret.
    Bootstrap(BootstrapArgs),
}

/// Where the tokens are stored.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://path.db` (created if missing) or `postgres://user:pass@host/db`.
    #[arg(long, env = "APITOKEN_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Most database connections in the pool.
    #[arg(long, env = "APITOKEN_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

/// How secrets look and are hashed; must be the same on every replica.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Prefix of every secret (`<prefix>_…`), for secret scanners.
    #[arg(long, env = "APITOKEN_TOKEN_PREFIX", default_value = apitoken_domain::token::DEFAULT_PREFIX)]
    pub token_prefix: String,
    /// Server-side key mixed into every secret hash. Prefer the environment
    /// variable; changing it invalidates every token.
    #[arg(long, env = "APITOKEN_HASH_KEY", hide_env_values = true)]
    pub hash_key: Option<String>,
}

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "APITOKEN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Token format.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Export traces over OTLP/gRPC to this endpoint (e.g.
    /// `http://otel-collector:4317`); off unless set.
    #[arg(long, env = "APITOKEN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Proxies (CIDR blocks, comma-separated, at most 64) whose
    /// `x-forwarded-for` names the client's address; empty: none, the
    /// transport peer is the client.
    #[arg(long, env = "APITOKEN_TRUSTED_PROXIES", default_value = "", value_parser = crate::peer::TrustedProxies::parse)]
    pub trusted_proxies: crate::peer::TrustedProxies,
    /// Most full token records kept in memory for replies (verification
    /// facts of every token are always in memory).
    #[arg(long, env = "APITOKEN_RECORD_CACHE_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub record_cache_size: u64,
    /// How often usage figures are written (e.g. `500ms`, `2s`).
    #[arg(long, env = "APITOKEN_USAGE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub usage_flush_interval: Duration,
    /// How often the database is pinged for the health service.
    #[arg(long, env = "APITOKEN_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_check_interval: Duration,
    /// How often event streams look for events committed by other replicas.
    #[arg(long, env = "APITOKEN_EVENT_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub event_poll_interval: Duration,
    /// How often a quiet event stream sends a heartbeat.
    #[arg(long, env = "APITOKEN_EVENT_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub event_heartbeat_interval: Duration,
    /// Most event streams (`WatchApiTokenEvents`) open at once with one
    /// token; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "APITOKEN_MAX_STREAMS_PER_TOKEN", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_streams_per_token: u64,
    /// Most event streams open at once on this server.
    #[arg(long, env = "APITOKEN_MAX_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_streams: u64,
    /// How often tokens past their expiry get their `EXPIRED` event.
    #[arg(long, env = "APITOKEN_EXPIRY_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub expiry_sweep_interval: Duration,
    /// Limit of a token by role, unless the token has its own: counts per
    /// second, minute or hour (`120/m`, `10/s`, `5000/h`; a bare number is
    /// per minute) or `unlimited`.
    #[arg(long, env = "APITOKEN_ROLE_RATE_LIMITS", default_value = "viewer=120/m,editor=60/m,owner=30/m", value_parser = parse_role_limits)]
    pub role_rate_limits: RoleLimits,
    /// The most a token's own limit may be (set by an owner at creation or
    /// update); `unlimited`: no maximum beyond the namespace's aggregate.
    #[arg(long, env = "APITOKEN_MAX_TOKEN_RATE_LIMIT", default_value = "unlimited", value_parser = parse_rate_limit)]
    pub max_token_rate_limit: RateLimit,
    /// Aggregate limit of every namespace (all its tokens together).
    #[arg(long, env = "APITOKEN_NAMESPACE_RATE_LIMIT", default_value = "1000/m", value_parser = parse_rate_limit)]
    pub namespace_rate_limit: RateLimit,
    /// Per-namespace aggregates, e.g. `payments=5000/m,sandbox=100/m`.
    #[arg(long, env = "APITOKEN_NAMESPACE_RATE_LIMITS", default_value = "", value_parser = parse_namespace_limits)]
    pub namespace_rate_limits: NamespaceLimits,
    /// Most active tokens per namespace.
    #[arg(long, env = "APITOKEN_TOKEN_QUOTA", default_value_t = 50)]
    pub token_quota: u32,
    /// Per-namespace token quotas, e.g. `payments=200`.
    #[arg(long, env = "APITOKEN_TOKEN_QUOTAS", default_value = "", value_parser = parse_namespace_map)]
    pub token_quotas: NamespaceMap,
    /// Failed authentications per client address before further failures
    /// are refused (`20/m`; a bare number is per minute; `unlimited`: off).
    #[arg(long, env = "APITOKEN_FAILED_AUTH_LIMIT", default_value = "20/m", value_parser = parse_rate_limit)]
    pub failed_auth_limit: RateLimit,
    /// Share rate limits and the failed-authentication throttle among every
    /// replica and interceptor through this Redis (`redis://host:6379/0`,
    /// `rediss://` for TLS); off unless set.
    #[arg(long, env = "APITOKEN_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Bound of every Redis call; past it this replica falls back to local
    /// limits until Redis answers again.
    #[arg(long, env = "APITOKEN_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_redis_timeout)]
    pub redis_timeout: Duration,
    /// Prefix of the Redis keys (the same on every replica and interceptor).
    #[arg(long, env = "APITOKEN_REDIS_KEY_PREFIX", default_value = apitoken_ratelimit::DEFAULT_KEY_PREFIX, value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,
    /// Every token must have an expiry.
    #[arg(long, env = "APITOKEN_EXPIRY_REQUIRED")]
    pub expiry_required: bool,
    /// Longest token lifetime (e.g. `365d`).
    #[arg(long, env = "APITOKEN_MAX_TOKEN_LIFETIME", value_parser = parse_duration)]
    pub max_token_lifetime: Option<Duration>,
    /// Lifetime of a token created without expiry (e.g. `90d`).
    #[arg(long, env = "APITOKEN_DEFAULT_TOKEN_LIFETIME", value_parser = parse_duration)]
    pub default_token_lifetime: Option<Duration>,
    /// Per-namespace expiry rules replacing the above, e.g.
    /// `payments:required,max=90d,default=30d;sandbox:max=7d`.
    #[arg(long, env = "APITOKEN_NAMESPACE_EXPIRY_POLICIES", default_value = "", value_parser = parse_expiry_policies)]
    pub namespace_expiry_policies: ExpiryPolicies,
    /// Longest grace period for a regenerated token's previous secret.
    #[arg(long, env = "APITOKEN_MAX_GRACE", default_value = "7d", value_parser = parse_duration)]
    pub max_grace: Duration,
    /// Expiry warning lead times.
    #[arg(long, env = "APITOKEN_EXPIRY_WARNINGS", default_value = "14d,3d", value_parser = parse_durations)]
    pub expiry_warnings: Durations,
    /// Revoke tokens unused for this long (off unless set).
    #[arg(long, env = "APITOKEN_REVOKE_UNUSED_AFTER", value_parser = parse_duration)]
    pub revoke_unused_after: Option<Duration>,
    /// Purge revoked and expired tokens after this long (frees their ids).
    #[arg(long, env = "APITOKEN_TOKEN_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub token_retention: Duration,
    /// Drop audit events after this long (never while their token exists).
    #[arg(long, env = "APITOKEN_AUDIT_RETENTION", default_value = "365d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// Prune the token event log (`WatchApiTokenEvents`) after this long;
    /// watchers resuming from a pruned cursor get OUT_OF_RANGE and start over.
    #[arg(long, env = "APITOKEN_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub event_retention: Duration,
    /// How often retention (purge, audit and event pruning) is applied.
    #[arg(long, env = "APITOKEN_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// How long shutdown waits for in-flight calls before dropping them.
    #[arg(long, env = "APITOKEN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Do not apply migrations on start (run `migrate` once instead).
    #[arg(long, env = "APITOKEN_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Serve Envoy's external authorization API
    /// (`envoy.service.auth.v3.Authorization/Check`) by this access policy
    /// file (see the README, "Envoy and Istio"); off unless set. A bad file
    /// stops the start with its line and problem.
    #[arg(long, env = "APITOKEN_EXT_AUTHZ_POLICY")]
    pub ext_authz_policy: Option<PathBuf>,
    /// Also serve `Check` (with health and reflection) on this address, a
    /// port of its own for the proxies; needs `--ext-authz-policy`.
    #[arg(long, env = "APITOKEN_EXT_AUTHZ_LISTEN", requires = "ext_authz_policy")]
    pub ext_authz_listen: Option<SocketAddr>,
    /// TLS and connection limits.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Serve Prometheus metrics (`GET /metrics`) on this address; off
    /// unless set. Metrics hold no secret but do name namespaces.
    #[arg(long, env = "APITOKEN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Most namespaces with their own `apitoken_active_tokens` series (the
    /// largest); the rest are summed under `_other`.
    #[arg(long, env = "APITOKEN_METRICS_MAX_NAMESPACES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub metrics_max_namespaces: u64,
    /// Serve the web console (sign in with a token) on this address, or
    /// `off`. Default: 127.0.0.1:50053 when free. Plaintext only on
    /// loopback unless --plaintext; TLS with --tls-cert.
    #[arg(long, env = "APITOKEN_WEB_LISTEN", value_parser = crate::web::parse_web_listen)]
    pub web_listen: Option<crate::web::WebListen>,
}

/// TLS and the limits of connections.
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first); reloaded
    /// when the file changes and on SIGHUP.
    #[arg(long, env = "APITOKEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "APITOKEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: only clients with a certificate signed by this CA (PEM)
    /// may connect.
    #[arg(long, env = "APITOKEN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    #[arg(long, env = "APITOKEN_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Serve plaintext on an address that is not loopback (behind a mesh or
    /// a TLS-terminating load balancer).
    #[arg(long, env = "APITOKEN_PLAINTEXT", conflicts_with = "tls_cert")]
    pub plaintext: bool,
    /// Most open connections; more are closed at once.
    #[arg(long, env = "APITOKEN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time for the TLS handshake and the HTTP/2 preface of a new connection.
    #[arg(long, env = "APITOKEN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Close a connection with no call in flight for this long.
    #[arg(long, env = "APITOKEN_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings.
    #[arg(long, env = "APITOKEN_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// Close a connection whose keepalive ping is unanswered this long.
    #[arg(long, env = "APITOKEN_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Most concurrent calls per connection.
    #[arg(long, env = "APITOKEN_MAX_CONCURRENT_STREAMS", default_value_t = 200)]
    pub max_concurrent_streams: u32,
    /// Largest request message (e.g. `4MiB`, `512KiB`, bytes).
    #[arg(long, env = "APITOKEN_MAX_REQUEST_SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub max_request_size: usize,
    /// Largest header list of a request (e.g. `16KiB`).
    #[arg(long, env = "APITOKEN_MAX_HEADER_LIST_SIZE", default_value = "16KiB", value_parser = parse_size)]
    pub max_header_list_size: usize,
}

impl TransportArgs {
    /// The transport configuration these flags describe.
    pub fn config(&self) -> Result<crate::transport::TransportConfig, String> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".to_owned()),
        };
        let max_header_list_size = u32::try_from(self.max_header_list_size)
            .map_err(|_| "--max-header-list-size is too large".to_owned())?;
        let config = crate::transport::TransportConfig {
            tls,
            tls_reload_interval: self.tls_reload_interval,
            plaintext: self.plaintext,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            http2_keepalive_interval: self.http2_keepalive_interval,
            http2_keepalive_timeout: self.http2_keepalive_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            max_request_size: self.max_request_size,
            max_header_list_size,
            tcp_nodelay: true,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Options of `bootstrap`.
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Token format.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Namespace of the token.
    #[arg(long)]
    pub namespace: String,
    /// Id of the token (last segment of its name).
    #[arg(long, default_value = "bootstrap-owner")]
    pub name: String,
    /// Role of the token: viewer, editor or owner.
    #[arg(long, default_value = "owner", value_parser = parse_role)]
    pub role: Role,
    /// Lifetime of the token (e.g. `30d`, `12h`); none: it never expires.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Make it an interceptor's token: it may report usage and name the
    /// address of the calls it verifies (for services using the
    /// interceptor crate, and proxies).
    #[arg(long)]
    pub interceptor: bool,
}

/// Parses `250ms`, `30s`, `5m`, `12h`, `30d`, or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m, 12h or 30d"))?;
    let seconds = |factor: u64| number.checked_mul(factor).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}` is not a duration like 500ms, 30s, 5m, 12h or 30d"))
}

/// Parses `4MiB`, `512KiB`, `1GiB` (also `MB`, `KB` as binary units) or
/// bare bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a size like 4MiB, 512KiB or 65536");
    let number: usize = number.parse().map_err(|_| bad())?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// Limits of viewer, editor and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleLimits(pub [RateLimit; 3]);

/// `namespace=number` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMap(pub std::collections::HashMap<String, u32>);

/// `namespace=limit` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceLimits(pub std::collections::HashMap<String, RateLimit>);

/// Parses `120/m`, `10/s`, `5000/h`, `unlimited` (a bare number: per minute).
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    text.parse()
}

/// Parses `viewer=120/m,editor=60/m,owner=30/m` (every role).
pub fn parse_role_limits(text: &str) -> Result<RoleLimits, String> {
    let mut limits = [None; 3];
    for (key, value) in parse_text_pairs(text)? {
        let role = Role::parse(&key).ok_or_else(|| format!("`{key}` is not a role"))?;
        limits[usize::from(role.as_i16().unsigned_abs()) - 1] = Some(value.parse()?);
    }
    match limits {
        [Some(viewer), Some(editor), Some(owner)] => Ok(RoleLimits([viewer, editor, owner])),
        _ => Err("give a limit for viewer, editor and owner".to_owned()),
    }
}

/// Parses `ns=limit,...` (namespace ids); empty is none.
pub fn parse_namespace_limits(text: &str) -> Result<NamespaceLimits, String> {
    let mut map = std::collections::HashMap::new();
    for (namespace, value) in parse_text_pairs(text)? {
        apitoken_domain::name::check_id("namespace", &namespace)
            .map_err(|violation| format!("namespace `{namespace}` {}", violation.description))?;
        map.insert(namespace, value.parse()?);
    }
    Ok(NamespaceLimits(map))
}

fn parse_text_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not `name=value`"))?;
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Parses the Redis timeout: 1 ms to 10 s.
pub fn parse_redis_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&timeout) {
        return Err("--redis-timeout must be from 1ms to 10s".to_owned());
    }
    Ok(timeout)
}

/// A Redis key prefix: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn parse_key_prefix(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 64
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(
            "--redis-key-prefix must be 1 to 64 of A-Z, a-z, 0-9, `.`, `_`, `-`".to_owned(),
        );
    }
    Ok(text.to_owned())
}

/// Parses `ns=number,...` (namespace ids, positive numbers); empty is none.
pub fn parse_namespace_map(text: &str) -> Result<NamespaceMap, String> {
    let mut map = std::collections::HashMap::new();
    for (namespace, value) in parse_pairs(text)? {
        apitoken_domain::name::check_id("namespace", &namespace)
            .map_err(|violation| format!("namespace `{namespace}` {}", violation.description))?;
        if value == 0 {
            return Err(format!("the limit of `{namespace}` must be positive"));
        }
        map.insert(namespace, value);
    }
    Ok(NamespaceMap(map))
}

fn parse_pairs(text: &str) -> Result<Vec<(String, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not `name=number`"))?;
            let value = value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` in `{pair}` is not a number"))?;
            Ok((key.trim().to_owned(), value))
        })
        .collect()
}

/// Per-namespace expiry rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryPolicies(pub std::collections::HashMap<String, crate::policy::ExpiryPolicy>);

/// A list of durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations(pub Vec<Duration>);

/// Parses `14d,3d`.
pub fn parse_durations(text: &str) -> Result<Durations, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_duration)
        .collect::<Result<_, _>>()
        .map(Durations)
}

/// Parses `payments:required,max=90d,default=30d;sandbox:max=7d`.
pub fn parse_expiry_policies(text: &str) -> Result<ExpiryPolicies, String> {
    let mut policies = std::collections::HashMap::new();
    for spec in text
        .split(';')
        .map(str::trim)
        .filter(|spec| !spec.is_empty())
    {
        let (namespace, rules) = spec
            .split_once(':')
            .ok_or_else(|| format!("`{spec}` is not `namespace:rules`"))?;
        apitoken_domain::name::check_id("namespace", namespace)
            .map_err(|violation| format!("namespace `{namespace}` {}", violation.description))?;
        let mut policy = crate::policy::ExpiryPolicy::default();
        for rule in rules
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
        {
            match rule.split_once('=') {
                None if rule == "required" => policy.required = true,
                Some(("max", value)) => policy.max_lifetime = Some(parse_duration(value)?),
                Some(("default", value)) => policy.default_lifetime = Some(parse_duration(value)?),
                _ => {
                    return Err(format!(
                        "`{rule}` is not `required`, `max=DURATION` or `default=DURATION`"
                    ));
                }
            }
        }
        policies.insert(namespace.to_owned(), policy);
    }
    Ok(ExpiryPolicies(policies))
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("`{text}` is not a role: use viewer, editor or owner"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn limits_parse() {
        assert_eq!(
            parse_role_limits("viewer=120,editor=60/m,owner=10/s"),
            Ok(RoleLimits([
                RateLimit::per_minute(120),
                RateLimit::per_minute(60),
                "10/s".parse().expect("limit")
            ]))
        );
        assert_eq!(
            parse_namespace_limits("payments=unlimited, sandbox=5/s")
                .expect("map")
                .0
                .get("payments"),
            Some(&RateLimit::Unlimited)
        );
        assert!(parse_namespace_limits("payments=0").is_err());
        assert!(parse_role_limits("viewer=0/m,editor=1,owner=1").is_err());
        assert!(parse_redis_timeout("0ms").is_err());
        assert!(parse_redis_timeout("11s").is_err());
        assert!(parse_key_prefix("a b").is_err());
        assert!(
            parse_role_limits("viewer=1,editor=2").is_err(),
            "every role"
        );
        assert!(parse_role_limits("admin=5,viewer=1,editor=2,owner=3").is_err());
        assert_eq!(parse_namespace_map(""), Ok(NamespaceMap::default()));
        let map = parse_namespace_map("payments=5000, sandbox=100").expect("map");
        assert_eq!(map.0.get("payments"), Some(&5000));
        assert!(parse_namespace_map("Payments=1").is_err());
        assert!(parse_namespace_map("payments=0").is_err());
        assert!(parse_namespace_map("payments").is_err());
    }

    #[test]
    fn policies_parse() {
        let policies =
            parse_expiry_policies("payments:required,max=90d,default=30d; sandbox:max=7d")
                .expect("policies");
        let payments = policies.0["payments"];
        assert!(payments.required);
        assert_eq!(
            payments.max_lifetime,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            payments.default_lifetime,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert!(!policies.0["sandbox"].required);
        assert!(parse_expiry_policies("payments:forever").is_err());
        assert_eq!(parse_durations("14d,3d").map(|d| d.0.len()), Ok(2));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn transport_flags() {
        let cli = Cli::try_parse_from(["apitoken-server"]).expect("parses");
        let config = cli.serve.transport.config().expect("defaults are valid");
        assert_eq!(config, crate::transport::TransportConfig::default());

        let cli = Cli::try_parse_from([
            "apitoken-server",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--tls-client-ca",
            "ca.pem",
        ])
        .expect("parses");
        let tls = cli
            .serve
            .transport
            .config()
            .expect("valid")
            .tls
            .expect("tls");
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));

        for bad in [
            vec!["apitoken-server", "--tls-cert", "cert.pem"],
            vec!["apitoken-server", "--tls-client-ca", "ca.pem"],
            vec![
                "apitoken-server",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--plaintext",
            ],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let cli =
            Cli::try_parse_from(["apitoken-server", "--max-connections", "0"]).expect("parses");
        let err = cli.serve.transport.config().expect_err("0 connections");
        assert!(err.contains("--max-connections"), "{err}");
        let cli =
            Cli::try_parse_from(["apitoken-server", "--max-request-size", "1GiB"]).expect("parses");
        let err = cli.serve.transport.config().expect_err("too large");
        assert!(
            err.contains("--max-request-size") && err.contains("67108864"),
            "{err}"
        );
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["apitoken-server"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:50051");
        let cli = Cli::try_parse_from([
            "apitoken-server",
            "bootstrap",
            "--namespace",
            "team-a",
            "--role",
            "editor",
        ])
        .expect("parses");
        let Some(Command::Bootstrap(args)) = cli.command else {
            panic!("not bootstrap");
        };
        assert_eq!(args.role, Role::Editor);
        assert_eq!(args.name, "bootstrap-owner");
    }
}
