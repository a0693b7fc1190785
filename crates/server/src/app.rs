//! Wiring: connect and migrate the store, build the service, serve it with
//! health and reflection, shut down gracefully.
//!
//! Health (`grpc.health.v1`, see [`crate::health`]): overall (`""`) and
//! `apitoken.v1.ApiTokenService` are SERVING while the database answers and
//! its schema is the one this binary expects, NOT_SERVING otherwise and from
//! the moment shutdown begins. Shutdown stops accepting connections,
//! lets in-flight calls finish (for at most the grace period: long-lived
//! streams such as health watches would otherwise hold it open forever),
//! then flushes usage figures.
//!
//! The connections themselves (TLS, TCP_NODELAY, connection cap, handshake
//! and idle timeouts, HTTP/2 limits) are [`crate::transport`]'s.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use apitoken_domain::{
    Error,
    access::AccessPolicy,
    clock::SharedClock,
    hash::Keys,
    token::{InvalidPrefix, TokenFormat},
};
use apitoken_proto::{FILE_DESCRIPTOR_SET, v1::api_token_service_server::ApiTokenServiceServer};
use apitoken_ratelimit::{BackendState, Limiter, LimiterConfig, RedisConfig};
use apitoken_store::{StoreOptions, TokenStore};
use tokio::{net::TcpListener, sync::watch};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    auth::{AuthParts, Authenticator},
    events::{EventHub, EventTiming},
    ext_authz::ExtAuthzService,
    health::{self, HealthChecks, set_health},
    index::{IndexOptions, TokenIndex},
    lifecycle::Lifecycle,
    limits::Limits,
    metrics::RequestCounter,
    namespaces::NamespaceLimits,
    peer::TrustedProxies,
    policy::Policy,
    service::ApiTokenService,
    tls::TlsReloader,
    transport::{self, Connections, TransportConfig, TransportLayer},
    usage::UsageRecorder,
};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Connection pool settings.
    pub store: StoreOptions,
    /// Prefix of secrets.
    pub token_prefix: String,
    /// Optional server-side hash key.
    pub hash_key: Option<String>,
    /// How often usage figures are written.
    pub usage_flush_interval: Duration,
    /// How often the database is pinged for health.
    pub health_check_interval: Duration,
    /// Apply migrations on start.
    pub migrate: bool,
    /// How long shutdown waits for in-flight calls (and open streams such as
    /// health watches) before dropping them.
    pub shutdown_grace: Duration,
    /// Event stream timing.
    pub events: EventTiming,
    /// Rate limits and quotas.
    pub limits: Limits,
    /// Expiry policy, grace, warnings, inactivity and retention.
    pub policy: Policy,
    /// Proxies whose `x-forwarded-for` is believed.
    pub trusted_proxies: TrustedProxies,
    /// The in-memory index (its poll interval is `events.poll_interval`).
    pub index: IndexOptions,
    /// TLS and the limits of connections.
    pub transport: TransportConfig,
    /// Shared rate limits on Redis (`--redis-url`), or `None`: per process.
    pub redis: Option<RedisConfig>,
    /// The Prometheus listener.
    pub metrics: MetricsConfig,
    /// Envoy's external authorization (`--ext-authz-policy`), or `None`:
    /// `Check` is not served.
    pub ext_authz: Option<crate::ext_authz::ExtAuthzConfig>,
    /// The web console's listener (`--web-listen`; off by default here).
    pub web: crate::web::WebListen,
}

/// Where metrics are served.
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    /// The `/metrics` listener's address; off when `None`.
    pub listen: Option<std::net::SocketAddr>,
    /// Most namespaces with their own active-token series.
    pub max_namespaces: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_namespaces: 100,
        }
    }
}

impl AppConfig {
    /// Defaults for `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            store: StoreOptions::default(),
            token_prefix: apitoken_domain::token::DEFAULT_PREFIX.to_owned(),
            hash_key: None,
            usage_flush_interval: Duration::from_secs(1),
            health_check_interval: Duration::from_secs(5),
            migrate: true,
            shutdown_grace: Duration::from_secs(10),
            events: EventTiming::default(),
            limits: Limits::default(),
            policy: Policy::default(),
            trusted_proxies: TrustedProxies::default(),
            index: IndexOptions::default(),
            transport: TransportConfig::default(),
            metrics: MetricsConfig::default(),
            redis: None,
            ext_authz: None,
            web: crate::web::WebListen::Off,
        }
    }
}

/// The health service name that reports whether rate limits are shared:
/// SERVING while Redis answers, NOT_SERVING while this replica falls back
/// to local limits (the overall status is not affected). Only with
/// `--redis-url`.
pub const REDIS_HEALTH_SERVICE: &str = "apitoken.redis";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Store(#[from] Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl From<InvalidPrefix> for StartError {
    fn from(error: InvalidPrefix) -> Self {
        StartError::Config(error.to_string())
    }
}

/// A built server, ready to serve.
#[derive(Debug)]
pub struct App {
    store: TokenStore,
    format: TokenFormat,
    keys: Keys,
    clock: SharedClock,
    usage: Arc<UsageRecorder>,
    requests: RequestCounter,
    limiter: Arc<Limiter>,
    /// The ext_authz policy, read at build.
    ext_authz: Option<Arc<AccessPolicy>>,
    /// The ext_authz port of its own, bound at build.
    ext_authz_listener: Option<TcpListener>,
    config: AppConfig,
    web_listener: Option<TcpListener>,
}

impl App {
    /// Connects (and migrates, unless told not to).
    pub async fn build(config: AppConfig, clock: SharedClock) -> Result<App, StartError> {
        if config.metrics.listen.is_some() {
            // Before anything registers a counter.
            crate::metrics::exporter::install().map_err(StartError::Config)?;
        }
        let format = TokenFormat::new(&config.token_prefix)?;
        let keys = Keys::derive(config.hash_key.as_deref().map(str::as_bytes));
        let store = TokenStore::connect(&config.database_url, &config.store).await?;
        if config.migrate {
            store.migrate().await?;
        }
        // Planner statistics (SQLite); the retention sweep keeps them fresh.
        if let Err(error) = store.optimize().await {
            tracing::warn!(error = %error, "could not refresh the planner's statistics");
        }
        let usage = Arc::new(UsageRecorder::new(store.clone()));
        let limiter = Limiter::new(
            Arc::clone(&clock),
            &LimiterConfig {
                failed_auth: config.limits.failed_auth_limit,
                redis: config.redis.clone(),
            },
        )
        .map_err(StartError::Config)?;
        let (ext_authz, ext_authz_listener) = match &config.ext_authz {
            None => (None, None),
            Some(ext_authz) => {
                let policy = crate::ext_authz::load_policy(&ext_authz.policy_file)
                    .map_err(|error| StartError::Config(format!("--ext-authz-policy {error}")))?;
                info!(rules = policy.rules(), file = %ext_authz.policy_file.display(), "ext_authz policy loaded");
                let listener = match ext_authz.listen {
                    None => None,
                    Some(address) => {
                        config
                            .transport
                            .check_listener(address)
                            .map_err(StartError::Config)?;
                        Some(TcpListener::bind(address).await.map_err(|err| {
                            StartError::Config(format!(
                                "cannot listen on {address} (--ext-authz-listen): {err}"
                            ))
                        })?)
                    }
                };
                (Some(Arc::new(policy)), listener)
            }
        };
        Ok(App {
            ext_authz,
            ext_authz_listener,
            limiter,
            store,
            format,
            keys,
            clock,
            usage,
            requests: RequestCounter::new(crate::metrics::served_methods()),
            config,
            web_listener: None,
        })
    }

    /// The address of the ext_authz port of its own, if any.
    pub fn ext_authz_address(&self) -> Option<std::net::SocketAddr> {
        self.ext_authz_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The store.
    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// The token format.
    pub fn format(&self) -> &TokenFormat {
        &self.format
    }

    /// The hashing keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Requests received, by method.
    pub fn requests(&self) -> &RequestCounter {
        &self.requests
    }

    /// Whether rate limits are shared through Redis right now, or why not
    /// (for health and metrics: [`BackendState::fallback`] is the
    /// `redis_fallback` gauge, 0 or 1).
    pub fn limit_state(&self) -> Arc<BackendState> {
        Arc::clone(self.limiter.state())
    }

    /// Whether Redis is configured but unreachable, so that this replica
    /// enforces local limits.
    pub fn redis_fallback(&self) -> bool {
        self.limiter.state().fallback()
    }

    /// Serves the web console on `listener` (instead of `config.web`).
    pub fn with_web_listener(mut self, listener: TcpListener) -> Self {
        self.web_listener = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains in-flight
    /// calls and flushes usage figures. Refuses to start in plaintext on an
    /// address that is not loopback unless `transport.plaintext` is set.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let transport_config = self.config.transport.clone();
        transport_config.validate().map_err(StartError::Config)?;
        let address = listener
            .local_addr()
            .map_err(|err| StartError::Config(format!("listener: {err}")))?;
        transport_config
            .check_listener(address)
            .map_err(StartError::Config)?;
        let tls = match &transport_config.tls {
            Some(files) => Some(Arc::new(
                TlsReloader::load(files.clone()).map_err(StartError::Config)?,
            )),
            None => None,
        };
        let (stopping_tx, stopping) = watch::channel(false);
        let index = TokenIndex::new(
            self.store.clone(),
            IndexOptions {
                poll_interval: self.config.events.poll_interval,
                ..self.config.index
            },
        );
        if let Err(error) = index.load().await {
            // Health says NOT_SERVING (and why) until the follower loads it.
            warn!(error = %error, "cannot load the token index yet; will retry");
        }
        let follower = index.spawn_follower(stopping.clone());
        let events = Arc::new(EventHub::new(
            self.store.clone(),
            Arc::clone(&index),
            Arc::clone(&self.clock),
            stopping.clone(),
            self.config.events,
        ));
        let sweeper = events.spawn_expiry_sweeper();
        let metrics_server = match self.config.metrics.listen {
            None => None,
            Some(address) => {
                let handle = crate::metrics::exporter::install().map_err(StartError::Config)?;
                let metrics_listener = TcpListener::bind(address).await.map_err(|err| {
                    StartError::Config(format!(
                        "cannot listen on {address} (--metrics-listen): {err}"
                    ))
                })?;
                let collector = Arc::new(crate::metrics::collect::Collector::new(
                    Arc::clone(&index),
                    Arc::clone(&events),
                    self.store.clone(),
                    Arc::clone(&self.clock),
                    Arc::clone(self.limiter.state()),
                    self.config.metrics.max_namespaces,
                ));
                Some(tokio::spawn(crate::metrics::exporter::serve(
                    metrics_listener,
                    handle,
                    collector,
                    stopping.clone(),
                )))
            }
        };
        let policy = Arc::new(self.config.policy.clone());
        let lifecycle = Lifecycle::new(
            self.store.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&policy),
            Arc::clone(&events),
        )
        .spawn(self.config.events.expiry_sweep_interval, stopping.clone());
        let namespaces = Arc::new(NamespaceLimits::new(self.store.clone()));
        if let Err(error) = namespaces.load().await {
            warn!(error = %error, "cannot read namespace limits yet; will retry");
        }
        let namespace_refresher = namespaces.spawn_refresher(stopping.clone());
        let auth = Authenticator::new(AuthParts {
            namespaces,
            store: self.store.clone(),
            index: Arc::clone(&index),
            format: self.format.clone(),
            keys: self.keys.clone(),
            clock: Arc::clone(&self.clock),
            usage: Arc::clone(&self.usage),
            limits: Arc::new(self.config.limits.clone()),
            limiter: Arc::clone(&self.limiter),
            proxies: Arc::new(self.config.trusted_proxies.clone()),
        });
        let ext_authz = self
            .ext_authz
            .clone()
            .map(|policy| ExtAuthzService::new(auth.clone(), policy));
        let service = ApiTokenService::new(
            self.store.clone(),
            auth,
            self.format.clone(),
            self.keys.clone(),
            Arc::clone(&self.clock),
            events,
            Arc::clone(&policy),
        );
        let web_listener = match self.web_listener {
            Some(listener) => Some(listener),
            None => crate::web::bind(self.config.web)
                .await
                .map_err(StartError::Config)?,
        };
        if let Some(Ok(address)) = web_listener.as_ref().map(TcpListener::local_addr) {
            transport_config
                .check_listener(address)
                .map_err(StartError::Config)?;
        }
        let web = web_listener.map(|listener| {
            crate::web::spawn(
                listener,
                service.clone(),
                Arc::clone(&self.clock),
                tls.clone(),
                Arc::clone(&policy),
                stopping.clone(),
            )
        });

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let max_request = transport_config.max_request_size;
        let health_service = health_service.max_decoding_message_size(max_request);
        let with_envoy = ext_authz.is_some();
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
            if with_envoy {
                builder.register_encoded_file_descriptor_set(crate::ext_authz::FILE_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let reflection_v1 = reflection()
            .build_v1()?
            .max_decoding_message_size(max_request);
        let reflection_v1alpha = reflection()
            .build_v1alpha()?
            .max_decoding_message_size(max_request);

        let (flush_stop_tx, flush_stop) = watch::channel(false);
        let flusher = self
            .usage
            .spawn_flusher(self.config.usage_flush_interval, flush_stop);
        let monitor = health::spawn_monitor(
            HealthChecks::new(self.store.clone()).with_index(Arc::clone(&index)),
            reporter.clone(),
            self.config.health_check_interval,
            stopping.clone(),
        )
        .await;
        let redis_health = self
            .limiter
            .state()
            .configured()
            .then(|| spawn_redis_health(self.limiter.state(), reporter.clone()));
        let reloader = tls
            .as_ref()
            .map(|tls| tls.spawn_watcher(transport_config.tls_reload_interval, stopping.clone()));

        let security = if tls.is_some() {
            if transport_config
                .tls
                .as_ref()
                .is_some_and(|files| files.client_ca.is_some())
            {
                "mutual-tls"
            } else {
                "tls"
            }
        } else {
            "plaintext"
        };
        info!(%address, %security, "serving apitoken.v1.ApiTokenService");
        let connections = Arc::new(Connections::default());
        let shutdown_reporter = reporter.clone();
        let mut grace_started = stopping_tx.subscribe();
        let grace = self.config.shutdown_grace;
        let builder = || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(transport_config.http2_keepalive_interval))
                .http2_keepalive_timeout(Some(transport_config.http2_keepalive_timeout))
                .max_concurrent_streams(transport_config.max_concurrent_streams)
                .http2_max_header_list_size(transport_config.max_header_list_size)
                .layer(self.requests.clone())
                .layer(TransportLayer::new(Arc::clone(&connections), max_request))
        };
        // The ext_authz port of its own: Check, health and reflection.
        let ext_authz_router = match (&ext_authz, self.ext_authz_listener) {
            (Some(ext_authz), Some(listener)) => Some((
                builder()
                    .add_service(health_service.clone())
                    .add_service(reflection_v1.clone())
                    .add_service(reflection_v1alpha.clone())
                    .add_service(ext_authz.clone().into_server(max_request)),
                listener,
            )),
            _ => None,
        };
        let mut router = builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ApiTokenServiceServer::new(service).max_decoding_message_size(max_request),
            );
        if let Some(ext_authz) = ext_authz {
            router = router.add_service(ext_authz.into_server(max_request));
        }
        let signal = async move {
            shutdown.await;
            info!("shutting down: finishing in-flight calls");
            let _ = stopping_tx.send(true);
            set_health(&shutdown_reporter, ServingStatus::NotServing).await;
            metrics::gauge!(crate::metrics::names::SERVING).set(0.0);
        };
        let limits = transport::ConnLimits::from(&transport_config);
        type Serving<'a> =
            Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;
        macro_rules! serving {
            ($router:expr, $listener:expr, $signal:expr) => {{
                let serving: Serving<'_> = match tls.clone() {
                    Some(tls) => Box::pin($router.serve_with_incoming_shutdown(
                        transport::incoming(
                            $listener,
                            transport::Tls(tls),
                            limits.clone(),
                            Arc::clone(&connections),
                        ),
                        $signal,
                    )),
                    None => Box::pin($router.serve_with_incoming_shutdown(
                        transport::incoming(
                            $listener,
                            transport::Plain,
                            limits.clone(),
                            Arc::clone(&connections),
                        ),
                        $signal,
                    )),
                };
                serving
            }};
        }
        let main_server = serving!(router, listener, signal);
        let server: Serving<'_> = match ext_authz_router {
            None => main_server,
            Some((ext_authz_router, ext_authz_listener)) => {
                if let Ok(address) = ext_authz_listener.local_addr() {
                    info!(%address, "serving envoy.service.auth.v3.Authorization (--ext-authz-listen)");
                }
                let mut stopping = stopping.clone();
                let stopped = async move {
                    let _ = stopping.wait_for(|stopping| *stopping).await;
                };
                let ext_authz_server = serving!(ext_authz_router, ext_authz_listener, stopped);
                Box::pin(async move {
                    let (main, ext_authz) = tokio::join!(main_server, ext_authz_server);
                    main.and(ext_authz)
                })
            }
        };
        let result = tokio::select! {
            result = server => result,
            () = async {
                let _ = grace_started.changed().await;
                tokio::time::sleep(grace).await;
            } => {
                warn!(?grace, "shutdown grace period over: dropping the remaining calls");
                Ok(())
            }
        };
        let _ = flush_stop_tx.send(true);
        if flusher.await.is_err() {
            warn!("usage flusher ended abnormally");
        }
        monitor.abort();
        namespace_refresher.abort();
        if let Some(task) = redis_health {
            task.abort();
        }
        follower.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        sweeper.abort();
        lifecycle.abort();
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        if let Some(web) = web {
            web.abort();
        }
        info!("stopped");
        Ok(result?)
    }
}

/// Follows whether limits are shared and says so under
/// [`REDIS_HEALTH_SERVICE`].
fn spawn_redis_health(
    state: &Arc<BackendState>,
    reporter: tonic_health::server::HealthReporter,
) -> tokio::task::JoinHandle<()> {
    let mut changes = state.subscribe();
    tokio::spawn(async move {
        loop {
            let fallback = *changes.borrow_and_update();
            let status = if fallback {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            reporter
                .set_service_status(REDIS_HEALTH_SERVICE, status)
                .await;
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}
