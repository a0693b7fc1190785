//! `apitoken-server`: `serve` (default), `migrate`, `bootstrap`.

use std::{process::ExitCode, sync::Arc};

use apitoken_domain::clock::{SharedClock, SystemClock};
use apitoken_ratelimit::RedisConfig;
use apitoken_server::{
    App, AppConfig,
    app::{MetricsConfig, StartError},
    bootstrap::{BootstrapRequest, bootstrap_token},
    config::{Cli, Command, DatabaseArgs, ServeArgs},
    events::EventTiming,
    ext_authz::ExtAuthzConfig,
    index::IndexOptions,
    limits::Limits,
    policy::{ExpiryPolicy, Policy},
    telemetry,
};
use apitoken_store::{StoreOptions, TokenStore};
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};

/// mimalloc: small allocations (a listing decodes thousands of values) cost
/// a fraction of glibc's, and freed memory is not kept per thread arena.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp_endpoint = match &cli.command {
        None => cli.serve.otlp_endpoint.clone(),
        Some(Command::Serve(args)) => args.otlp_endpoint.clone(),
        Some(_) => None,
    };
    let telemetry = match telemetry::init(otlp_endpoint.as_deref(), cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("apitoken-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Bootstrap(args)) => bootstrap(args).await,
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %err, "apitoken-server failed");
            eprintln!("apitoken-server: {err}");
            ExitCode::FAILURE
        }
    }
}

fn store_options(args: &DatabaseArgs) -> StoreOptions {
    StoreOptions {
        max_connections: args.database_max_connections,
        ..StoreOptions::default()
    }
}

async fn serve(args: ServeArgs) -> Result<(), StartError> {
    let transport = args.transport.config().map_err(StartError::Config)?;
    // Before the database: a refused listener touches nothing.
    transport
        .check_listener(args.listen)
        .map_err(StartError::Config)?;
    let config = AppConfig {
        database_url: args.database.database_url.clone(),
        store: store_options(&args.database),
        token_prefix: args.token.token_prefix,
        hash_key: args.token.hash_key,
        usage_flush_interval: args.usage_flush_interval,
        health_check_interval: args.health_check_interval,
        migrate: !args.no_migrate,
        shutdown_grace: args.shutdown_grace,
        policy: Policy {
            expiry: ExpiryPolicy {
                required: args.expiry_required,
                max_lifetime: args.max_token_lifetime,
                default_lifetime: args.default_token_lifetime,
            },
            namespace_expiry: args.namespace_expiry_policies.0,
            max_grace: args.max_grace,
            warning_leads: args.expiry_warnings.0,
            revoke_unused_after: args.revoke_unused_after,
            token_retention: args.token_retention,
            audit_retention: args.audit_retention,
            event_retention: args.event_retention,
            retention_interval: args.retention_interval,
        },
        limits: Limits {
            role_rate_limits: args.role_rate_limits.0,
            max_token_rate_limit: args.max_token_rate_limit,
            namespace_rate_limit: args.namespace_rate_limit,
            namespace_rate_limits: args.namespace_rate_limits.0,
            token_quota: args.token_quota,
            token_quotas: args.token_quotas.0,
            failed_auth_limit: args.failed_auth_limit,
        },
        redis: args.redis_url.map(|url| RedisConfig {
            timeout: args.redis_timeout,
            key_prefix: args.redis_key_prefix,
            ..RedisConfig::new(url)
        }),
        trusted_proxies: args.trusted_proxies,
        index: IndexOptions {
            record_cache_capacity: usize::try_from(args.record_cache_size).unwrap_or(usize::MAX),
            ..IndexOptions::default()
        },
        events: EventTiming {
            poll_interval: args.event_poll_interval,
            heartbeat_interval: args.event_heartbeat_interval,
            expiry_sweep_interval: args.expiry_sweep_interval,
            max_streams_per_token: usize::try_from(args.max_streams_per_token)
                .unwrap_or(usize::MAX),
            max_streams: usize::try_from(args.max_streams).unwrap_or(usize::MAX),
        },
        transport,
        ext_authz: args.ext_authz_policy.map(|policy_file| ExtAuthzConfig {
            policy_file,
            listen: args.ext_authz_listen,
        }),
        metrics: MetricsConfig {
            listen: args.metrics_listen,
            max_namespaces: usize::try_from(args.metrics_max_namespaces).unwrap_or(usize::MAX),
        },
        web: args
            .web_listen
            .unwrap_or_else(apitoken_server::web::default_web_listen),
    };
    // Before anything is served or logged: SIGTERM from now on is graceful.
    let shutdown = shutdown_signal();
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::build(config, clock).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|err| StartError::Config(format!("cannot listen on {}: {err}", args.listen)))?;
    app.serve(listener, shutdown).await
}

async fn migrate(args: DatabaseArgs) -> Result<(), StartError> {
    let store = TokenStore::connect(&args.database_url, &store_options(&args)).await?;
    store.migrate().await?;
    info!("migrations applied");
    Ok(())
}

async fn bootstrap(args: apitoken_server::config::BootstrapArgs) -> Result<(), StartError> {
    let config = AppConfig {
        token_prefix: args.token.token_prefix.clone(),
        hash_key: args.token.hash_key.clone(),
        store: store_options(&args.database),
        ..AppConfig::new(args.database.database_url.clone())
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::build(config, clock).await?;
    let request = BootstrapRequest {
        namespace: args.namespace,
        token_id: args.name,
        role: args.role,
        ttl: args.ttl,
        interceptor: args.interceptor,
    };
    let (_, secret) =
        bootstrap_token(app.store(), app.format(), app.keys(), app.clock(), &request).await?;
    println!("{}", secret.expose());
    Ok(())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed by this call,
/// not when the future is first polled: a supervisor that sends SIGTERM as
/// soon as the server says where it listens must get a graceful shutdown,
/// not the signal's default action (the process killed).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let waits = {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |installed: Option<tokio::signal::unix::Signal>| async move {
                match installed {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {}
                () = wait(interrupt) => {}
            }
        }
    };
    #[cfg(not(unix))]
    let waits = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    async move {
        waits.await;
        info!("shutdown signal received");
    }
}
