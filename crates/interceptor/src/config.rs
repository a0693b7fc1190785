//! Configuration: which namespaces are accepted, which role each method
//! needs, and the timings of cache, verification, event stream and usage
//! reports. [`AuthBuilder`] collects it and builds an [`ApiTokenAuth`].

use std::{sync::Arc, time::Duration};

use apitoken_domain::{
    Role,
    access::{PathTable, Pattern},
    clock::{SharedClock, SystemClock},
    name::check_id,
    token::{Secret, TokenFormat},
};
use apitoken_proto::endpoint::{ClientIdentity, ConnectOptions, Pem};
use tonic::transport::Channel;

use crate::auth::ApiTokenAuth;

/// What a method needs (the vocabulary shared with apitoken's ext_authz
/// policy file: [`apitoken_domain::access`]).
pub use apitoken_domain::access::Requirement;

/// Methods that need no token unless configured otherwise.
pub const DEFAULT_PUBLIC: [&str; 3] = [
    "/grpc.health.v1.Health/*",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
];

/// The requirement of each method: exact paths (`/pkg.Service/Method`) win
/// over service wildcards (`/pkg.Service/*`), which win over path prefixes
/// (`/pkg.**`, longest first), which win over the default; the matching is
/// [`apitoken_domain::access::PathTable`]'s, the same as apitoken's
/// ext_authz policy file.
#[derive(Debug, Clone)]
pub struct MethodPolicy {
    table: PathTable<Requirement>,
    default: Requirement,
}

impl Default for MethodPolicy {
    fn default() -> Self {
        let mut policy = Self {
            table: PathTable::default(),
            default: Requirement::Role(Role::Viewer),
        };
        for path in DEFAULT_PUBLIC {
            policy.set(path, Requirement::Public);
        }
        policy
    }
}

impl MethodPolicy {
    /// Sets the requirement of a method or (with `/*`) a whole service.
    pub fn set(&mut self, pattern: &str, requirement: Requirement) {
        self.table.insert(Pattern::lenient(pattern), requirement);
    }

    /// The requirement for everything not listed.
    pub fn set_default(&mut self, requirement: Requirement) {
        self.default = requirement;
    }

    /// The requirement of the method at `path`.
    pub fn requirement(&self, path: &str) -> Requirement {
        self.table.lookup(path).copied().unwrap_or(self.default)
    }
}

/// Timings, sizes and the proxies in front.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most tokens cached (and, separately, most refusals).
    pub cache_capacity: usize,
    /// A cached token is verified again after this long, events or not.
    pub cache_ttl: Duration,
    /// How long an unknown, revoked or expired token is refused without
    /// asking apitoken again.
    pub negative_ttl: Duration,
    /// When a namespace's event stream has been silent this long, its cached
    /// tokens are not trusted: every call is verified.
    pub staleness_bound: Duration,
    /// Timeout of every call to apitoken.
    pub call_timeout: Duration,
    /// How often uses answered from the cache are reported.
    pub usage_report_interval: Duration,
    /// Longest wait between attempts to reopen an event stream.
    pub max_reconnect_backoff: Duration,
    /// Failed authentications per peer address in any minute (0: no
    /// throttle); past it further failures are `RESOURCE_EXHAUSTED`, and a
    /// token not in the cache is refused without asking apitoken (tokens
    /// known good keep working).
    pub failed_auth_per_minute: u32,
    /// How long to wait before asking again when apitoken refuses the
    /// service's own credential (logged as an error).
    pub credential_retry: Duration,
    /// The outage policy. `None` (the default) fails closed: once a
    /// namespace's event stream has been silent for `staleness_bound`, no
    /// cached token is trusted and every call is verified (and refused with
    /// `UNAVAILABLE` if apitoken cannot answer). `Some(grace)`: tokens
    /// already verified keep being served from the cache for up to `grace`
    /// more (never past `cache_ttl` or their own expiry), so an apitoken
    /// outage shorter than that does not stop the service; revocations made
    /// during it are not seen until the stream is back. Each call served so
    /// is counted (`StatsSnapshot::outage_hits`) and logged once per outage.
    pub outage_grace: Option<Duration>,
    /// The proxies (a sidecar, a load balancer) whose `x-forwarded-for`
    /// names the caller: behind them the throttle and the address reported
    /// to apitoken are the client's, not the proxy's. None by default: the
    /// header is ignored, and behind a proxy every caller shares its
    /// address. The same rule as the server's `--trusted-proxies`.
    pub trusted_proxies: apitoken_domain::peer::TrustedProxies,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            staleness_bound: Duration::from_secs(10),
            call_timeout: Duration::from_secs(2),
            usage_report_interval: Duration::from_secs(2),
            max_reconnect_backoff: Duration::from_secs(2),
            failed_auth_per_minute: 20,
            credential_retry: Duration::from_secs(30),
            outage_grace: None,
            trusted_proxies: apitoken_domain::peer::TrustedProxies::default(),
        }
    }
}

/// Why an [`ApiTokenAuth`] could not be built.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds an [`ApiTokenAuth`].
#[derive(Debug)]
pub struct AuthBuilder {
    pub(crate) namespaces: Vec<(String, Secret)>,
    pub(crate) policy: MethodPolicy,
    pub(crate) settings: Settings,
    pub(crate) prefix: String,
    pub(crate) clock: SharedClock,
    pub(crate) connect: ConnectOptions,
    pub(crate) redis: Option<apitoken_ratelimit::RedisConfig>,
}

impl Default for AuthBuilder {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            policy: MethodPolicy::default(),
            settings: Settings::default(),
            prefix: apitoken_domain::token::DEFAULT_PREFIX.to_owned(),
            clock: Arc::new(SystemClock),
            connect: ConnectOptions::default(),
            redis: None,
        }
    }
}

impl AuthBuilder {
    /// Accepts tokens of `namespace`. `credential` is an interceptor token
    /// of that namespace (`ApiToken.interceptor`, created by an owner; the
    /// viewer role is enough) with which the layer follows the namespace's
    /// event stream, reports usage, and proves to apitoken that it may name
    /// the address of the calls it verifies.
    pub fn namespace(mut self, namespace: &str, credential: impl Into<String>) -> Self {
        self.namespaces
            .push((namespace.to_owned(), Secret::new(credential)));
        self
    }

    /// `pattern` (`/pkg.Service/Method`, `/pkg.Service/*`, or a prefix
    /// `/pkg.**`; see [`MethodPolicy`]) needs `role`.
    pub fn require(mut self, pattern: &str, role: Role) -> Self {
        self.policy.set(pattern, Requirement::Role(role));
        self
    }

    /// `pattern` needs no token.
    pub fn public(mut self, pattern: &str) -> Self {
        self.policy.set(pattern, Requirement::Public);
        self
    }

    /// Methods not listed need `role` (default: viewer).
    pub fn default_role(mut self, role: Role) -> Self {
        self.policy.set_default(Requirement::Role(role));
        self
    }

    /// The token prefix of the apitoken deployment (default `apitoken`).
    pub fn token_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Share rate limits and the failed-authentication throttle with the
    /// apitoken servers and every other interceptor through this Redis
    /// (the one apitoken's `--redis-url` names; `redis://host:6379/0`), so
    /// that a token's limit holds across all of them. Every Redis call is
    /// bounded (50 ms); while Redis is unreachable the layer enforces
    /// local limits and says so ([`crate::ApiTokenAuth::redis_fallback`]).
    /// Needs the crate's `redis` feature: without it, building fails.
    pub fn redis_url(self, url: impl Into<String>) -> Self {
        self.redis(apitoken_ratelimit::RedisConfig::new(url))
    }

    /// [`AuthBuilder::redis_url`] with its timeout, key prefix (the same as
    /// apitoken's `--redis-key-prefix`) and probe interval.
    pub fn redis(mut self, config: apitoken_ratelimit::RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Timings and sizes.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The clock used for expiry (tests share the server's manual clock).
    /// A test hook: not part of the documented API.
    #[doc(hidden)]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Verify apitoken's certificate against this CA (a PEM file or PEM
    /// bytes) only, instead of the system's trust store.
    pub fn tls_ca(mut self, ca: impl Into<Pem>) -> Self {
        self.connect.ca = Some(ca.into());
        self
    }

    /// Present this client certificate and key (PEM) to apitoken (mutual
    /// TLS).
    pub fn client_identity(mut self, cert: impl Into<Pem>, key: impl Into<Pem>) -> Self {
        self.connect.identity = Some(ClientIdentity {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Allow an `http://` endpoint that is not loopback: tokens then cross
    /// the network in clear, so only where the network encrypts them (a
    /// service mesh).
    pub fn allow_plaintext(mut self) -> Self {
        self.connect.allow_plaintext = true;
        self
    }

    /// Builds over a lazily connected channel to `endpoint`
    /// (`https://apitoken.internal:50051`; `http://` only to loopback unless
    /// [`AuthBuilder::allow_plaintext`]): the service starts even while
    /// apitoken is down, and calls fail closed until it is reachable. TLS
    /// files are read here; a bad one is an error. Needs a Tokio runtime
    /// (background tasks are spawned).
    pub async fn connect(self, endpoint: impl Into<String>) -> Result<ApiTokenAuth, BuildError> {
        let endpoint: String = endpoint.into();
        let options = ConnectOptions {
            connect_timeout: self.settings.call_timeout,
            ..self.connect.clone()
        };
        let channel = apitoken_proto::endpoint::connect_lazy(&endpoint, &options)
            .map_err(|err| BuildError(format!("apitoken {err}")))?;
        self.build(channel)
    }

    /// Builds over an existing channel. Needs a Tokio runtime.
    pub fn build(self, channel: Channel) -> Result<ApiTokenAuth, BuildError> {
        let format = TokenFormat::new(&self.prefix).map_err(|err| BuildError(err.to_string()))?;
        if self.namespaces.is_empty() {
            return Err(BuildError("accept at least one namespace".to_owned()));
        }
        for (namespace, credential) in &self.namespaces {
            check_id("namespace", namespace).map_err(|violation| {
                BuildError(format!("namespace {namespace:?} {}", violation.description))
            })?;
            format.parse(credential.clone()).map_err(|_| {
                BuildError(format!(
                    "the credential for namespace {namespace:?} is not a well-formed token"
                ))
            })?;
        }
        ApiTokenAuth::start(self, format, channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_methods_win_over_services_and_default() {
        let mut policy = MethodPolicy::default();
        policy.set("/shop.v1.Shop/*", Requirement::Role(Role::Editor));
        policy.set("/shop.v1.Shop/Delete", Requirement::Role(Role::Owner));
        policy.set("/shop.v1.Shop/Ping", Requirement::Public);
        assert_eq!(
            policy.requirement("/shop.v1.Shop/Delete"),
            Requirement::Role(Role::Owner)
        );
        assert_eq!(
            policy.requirement("/shop.v1.Shop/Ping"),
            Requirement::Public
        );
        assert_eq!(
            policy.requirement("/shop.v1.Shop/List"),
            Requirement::Role(Role::Editor)
        );
        assert_eq!(
            policy.requirement("/other.v1.Other/Get"),
            Requirement::Role(Role::Viewer)
        );
        assert_eq!(
            policy.requirement("/grpc.health.v1.Health/Check"),
            Requirement::Public
        );
        assert_eq!(
            policy.requirement("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Requirement::Public
        );
    }

    #[test]
    fn health_can_be_made_private() {
        let mut policy = MethodPolicy::default();
        policy.set("/grpc.health.v1.Health/*", Requirement::Role(Role::Viewer));
        assert_eq!(
            policy.requirement("/grpc.health.v1.Health/Check"),
            Requirement::Role(Role::Viewer)
        );
    }

    #[tokio::test]
    async fn plaintext_to_a_remote_apitoken_is_refused() {
        let credential = "apitoken_0000000000000000000000000000000000000000000000000";
        let err = AuthBuilder::default()
            .namespace("team-a", credential)
            .connect("http://10.255.255.1:50051")
            .await
            .expect_err("plaintext refused");
        assert!(
            err.0.contains("10.255.255.1") && err.0.contains("https://"),
            "{err}"
        );
        let err = AuthBuilder::default()
            .namespace("team-a", credential)
            .tls_ca(std::path::PathBuf::from("/nonexistent/ca.pem"))
            .connect("https://apitoken:50051")
            .await
            .expect_err("missing CA file");
        assert!(err.0.contains("/nonexistent/ca.pem"), "{err}");
    }
}
