//! `apitoken-bench`: the load benchmark of apitoken.
//!
//! Starts the release `apitoken-server` on `127.0.0.1` (SQLite, or
//! PostgreSQL with `--postgres-url`), pre-loads N tokens straight into the
//! database (for each `--tokens` figure), and drives it with a tonic client
//! at a fixed concurrency, printing calls a second and p50/p99 for: an empty
//! RPC (`grpc.health.v1.Health/Check`, the baseline), `VerifyApiToken` with
//! a known and with an unknown well-formed secret, Envoy's ext_authz
//! `Check` with a known token, `GetApiToken`,
//! `ListApiTokens` (a page of 50 asked again, which the page cache answers,
//! and with a `state` filter, which it never does), `CreateApiToken`, and the example
//! inventory service with and without the interceptor's layer on the same
//! handler. Every figure is also a ratio to the baseline measured in the same
//! run, so runs on different machines compare. With `--pin` the server runs
//! on core 0 and the load generator on core 1 (`taskset`). `--out FILE`
//! writes the results as a Markdown table; `--smoke` is a tiny run that CI
//! uses to keep the benchmark working (timings are never asserted).
//!
//! Build and run: `cargo build --release -p apitoken-server -p apitoken-bench
//! && target/release/apitoken-bench --pin --out crates/bench/RESULTS.md`.

mod example;
mod ext_authz;
mod load;
mod replicas;
mod report;
mod server;

use std::{process::ExitCode, time::Duration};

use apitoken_proto::v1::{
    self, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest, VerifyApiTokenRequest,
    api_token_service_client::ApiTokenServiceClient,
};
use clap::{Parser, Subcommand};
use tonic::{Code, Request, metadata::MetadataValue};

use crate::{
    example::ExampleProcess,
    load::{Load, Measurement},
    report::{Report, Run},
    server::{Database, ServerProcess},
};

/// The load benchmark of apitoken.
#[derive(Debug, Parser)]
#[command(name = "apitoken-bench", version, about)]
struct Args {
    /// Token counts to pre-load, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
    tokens: Vec<u64>,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// A PostgreSQL server URL whose user may create databases; default: SQLite.
    #[arg(long, env = "APITOKEN_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Run the server (and example services) on core 0 and the load
    /// generator on core 1, with `taskset`.
    #[arg(long)]
    pin: bool,
    /// A tiny run (100 tokens, 300 ms a scenario) to check that it works.
    #[arg(long)]
    smoke: bool,
    /// Write the results as Markdown to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Instead of the scenarios: CreateApiToken throughput with each of
    /// these numbers of replicas on one PostgreSQL database (needs
    /// --postgres-url), in one namespace and spread over eight.
    #[arg(long, value_delimiter = ',')]
    create_replicas: Vec<usize>,
    /// Internal.
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Serve the example inventory (used by the benchmark itself).
    #[command(hide = true)]
    ServeExample {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// apitoken's address; without it, no interceptor layer.
        #[arg(long)]
        apitoken: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workers = if args.pin { 1 } else { 2 };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("apitoken-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.internal {
            Some(Internal::ServeExample { listen, apitoken }) => {
                let credential = std::env::var("APITOKEN_BENCH_CREDENTIAL").ok();
                example::serve(&listen, apitoken.zip(credential)).await
            }
            None => bench(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("apitoken-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Re-runs this process on core 1 when pinning (the load generator's core).
fn pin_self(pin: bool) -> Result<bool, String> {
    if !pin || std::env::var_os("APITOKEN_BENCH_PINNED").is_some() {
        return Ok(false);
    }
    let me = std::env::current_exe().map_err(|error| error.to_string())?;
    let status = std::process::Command::new("taskset")
        .arg("-c")
        .arg("1")
        .arg(me)
        .args(std::env::args_os().skip(1))
        .env("APITOKEN_BENCH_PINNED", "1")
        .status()
        .map_err(|error| format!("taskset: {error}"))?;
    if status.success() {
        Ok(true)
    } else {
        Err(format!("the pinned run failed: {status}"))
    }
}

async fn bench(args: Args) -> Result<(), String> {
    if pin_self(args.pin)? {
        return Ok(());
    }
    let (token_counts, load) = if args.smoke {
        (
            vec![100],
            Load {
                concurrency: 4,
                duration: Duration::from_millis(300),
                warmup: Duration::from_millis(100),
            },
        )
    } else {
        (
            args.tokens.clone(),
            Load {
                concurrency: args.concurrency,
                duration: Duration::from_secs(args.seconds),
                warmup: Duration::from_millis(500),
            },
        )
    };
    if !args.create_replicas.is_empty() {
        let admin = args.postgres_url.as_deref().ok_or(
            "--create-replicas needs --postgres-url: replicas share a PostgreSQL database",
        )?;
        let table = replicas::create_scaling(admin, &args.create_replicas, load).await?;
        let markdown = format!(
            "CreateApiToken with N replicas on one PostgreSQL ({} concurrent calls, {:?} a run, nothing pinned)\n\n{table}",
            load.concurrency, load.duration
        );
        println!("{markdown}");
        if let Some(out) = &args.out {
            std::fs::write(out, &markdown)
                .map_err(|error| format!("{}: {error}", out.display()))?;
        }
        return Ok(());
    }
    let server_core = args.pin.then_some(0);
    let mut report = Report::new(&args_summary(&args, load));
    for tokens in token_counts {
        eprintln!("== {tokens} tokens: loading");
        let database = Database::fresh(args.postgres_url.as_deref()).await?;
        let loaded = std::time::Instant::now();
        let known = server::preload(&database.url, tokens).await?;
        let load_time = loaded.elapsed();
        let owner = server::bootstrap(&database.url, "bench-owner", "owner", false)?;
        let watcher = server::bootstrap(&database.url, "bench-interceptor", "viewer", true)?;
        let writer = server::bootstrap_in(
            &database.url,
            server::WRITES_NAMESPACE,
            "bench-writer",
            "owner",
            false,
        )?;
        let server = ServerProcess::start(&database.url, server_core).await?;
        eprintln!(
            "   loaded in {load_time:?}; server SERVING after {:?} (cold start)",
            server.cold_start
        );
        let run = scenarios(
            &server,
            &owner,
            &writer,
            &watcher,
            &known,
            load,
            args.connections,
            server_core,
        )
        .await;
        let rss = server.rss();
        server.stop();
        let mut run = run?;
        run.tokens = tokens;
        run.rss = rss;
        report.push(run);
    }
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).map_err(|error| format!("{}: {error}", out.display()))?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

fn args_summary(args: &Args, load: Load) -> String {
    format!(
        "{} concurrent calls over {} connections, {:?} a scenario, {}{}",
        load.concurrency,
        args.connections,
        load.duration,
        if args.postgres_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        if args.pin {
            ", server pinned to core 0 and load generator to core 1"
        } else {
            ", unpinned"
        }
    )
}

fn authed<T>(secret: &MetadataValue<tonic::metadata::Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", secret.clone());
    request
}

fn bearer(secret: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    format!("Bearer {secret}")
        .parse()
        .map_err(|_| "a secret that is not ASCII".to_owned())
}

/// Every scenario against one server.
#[allow(clippy::too_many_arguments)]
async fn scenarios(
    server: &ServerProcess,
    owner: &str,
    writer: &str,
    watcher: &str,
    known: &[apitoken_domain::token::Secret],
    load: Load,
    connections: usize,
    server_core: Option<usize>,
) -> Result<Run, String> {
    let channels = load::connect(&server.address, connections).await?;
    let mut run = Run {
        cold_start: server.cold_start,
        rss_at_start: server.rss(),
        server_pid: Some(server.pid()),
        ..Run::default()
    };
    let owner_bearer = bearer(owner)?;

    // The baseline: an empty RPC through the same server.
    run.push(
        load::run(
            "Health/Check (baseline)",
            &channels,
            load,
            |channel, _, _| async move {
                tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            },
        )
        .await,
    );

    let secrets: Vec<String> = known
        .iter()
        .map(|secret| secret.expose().to_owned())
        .collect();
    let secrets = std::sync::Arc::new(secrets);
    run.push(
        load::run(
            "VerifyApiToken, known secret",
            &channels,
            load,
            move |channel, task, i| {
                let secret = secrets[(task + i as usize) % secrets.len()].clone();
                async move {
                    ApiTokenServiceClient::new(channel)
                        .verify_api_token(VerifyApiTokenRequest {
                            secret,
                            caller_address: String::new(),
                        })
                        .await
                        .map(|_| ())
                        .map_err(|status| status.to_string())
                }
            },
        )
        .await,
    );

    let format = apitoken_domain::token::TokenFormat::default();
    let unknown: Vec<String> = (0..4096)
        .map(|_| format.generate().map(|secret| secret.expose().to_owned()))
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())?;
    let unknown = std::sync::Arc::new(unknown);
    run.push(
        load::run(
            "VerifyApiToken, unknown well-formed secret",
            &channels,
            load,
            move |channel, task, i| {
                let secret = unknown[(task * 7919 + i as usize) % unknown.len()].clone();
                async move {
                    match ApiTokenServiceClient::new(channel)
                        .verify_api_token(VerifyApiTokenRequest {
                            secret,
                            caller_address: String::new(),
                        })
                        .await
                    {
                        Err(status) if status.code() == Code::Unauthenticated => Ok(()),
                        Err(status) => Err(status.to_string()),
                        Ok(_) => Err("an unknown secret was accepted".to_owned()),
                    }
                }
            },
        )
        .await,
    );

    let check_secrets: Vec<String> = known
        .iter()
        .map(|secret| format!("Bearer {}", secret.expose()))
        .collect();
    let check_secrets = std::sync::Arc::new(check_secrets);
    run.push(
        load::run(
            "ext_authz Check, known token (HTTP route)",
            &channels,
            load,
            move |channel, task, i| {
                let request = ext_authz::check_request(
                    &check_secrets[(task + i as usize) % check_secrets.len()],
                );
                async move { ext_authz::check(channel, request).await }
            },
        )
        .await,
    );

    let bearer_for_get = owner_bearer.clone();
    run.push(
        load::run(
            "GetApiToken (bearer auth + read)",
            &channels,
            load,
            move |channel, task, i| {
                let request = authed(
                    &bearer_for_get,
                    GetApiTokenRequest {
                        name: format!(
                            "namespaces/{}/apitokens/token-{}",
                            server::NAMESPACE,
                            (task + i as usize) % server::KNOWN
                        ),
                    },
                );
                async move {
                    ApiTokenServiceClient::new(channel)
                        .get_api_token(request)
                        .await
                        .map(|_| ())
                        .map_err(|status| status.to_string())
                }
            },
        )
        .await,
    );

    // The same page asked again (the page cache answers), and a filter on
    // the clock (`state`), which is never cached: a query every call.
    for (label, filter) in [
        ("ListApiTokens (page of 50)", ""),
        (
            "ListApiTokens (page of 50, state filter: no page cache)",
            "state = STATE_ACTIVE",
        ),
    ] {
        let bearer_for_list = owner_bearer.clone();
        run.push(
            load::run(label, &channels, load, move |channel, _, _| {
                let request = authed(
                    &bearer_for_list,
                    ListApiTokensRequest {
                        parent: format!("namespaces/{}", server::NAMESPACE),
                        page_size: 50,
                        filter: filter.to_owned(),
                        ..Default::default()
                    },
                );
                async move {
                    ApiTokenServiceClient::new(channel)
                        .list_api_tokens(request)
                        .await
                        .map_err(|status| status.to_string())
                        .and_then(|reply| {
                            // Every run loads at least 100 tokens.
                            (reply.into_inner().api_tokens.len() == 50)
                                .then_some(())
                                .ok_or_else(|| "a short page".to_owned())
                        })
                }
            })
            .await,
        );
    }

    let bearer_for_create = bearer(writer)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let create_load = Load {
        duration: load.duration.min(Duration::from_secs(3)),
        ..load
    };
    run.push(
        load::run(
            "CreateApiToken (a write)",
            &channels,
            create_load,
            move |channel, task, i| {
                let request = authed(
                    &bearer_for_create,
                    CreateApiTokenRequest {
                        parent: format!("namespaces/{}", server::WRITES_NAMESPACE),
                        api_token_id: format!("c{}-{task}-{i}", &run_id[..8]),
                        api_token: Some(v1::ApiToken {
                            role: v1::Role::Viewer.into(),
                            ..Default::default()
                        }),
                        ttl: None,
                    },
                );
                async move {
                    ApiTokenServiceClient::new(channel)
                        .create_api_token(request)
                        .await
                        .map(|_| ())
                        .map_err(|status| status.to_string())
                }
            },
        )
        .await,
    );

    // The interceptor: the same handler without and with the layer.
    let plain = ExampleProcess::start(None, server_core).await?;
    let protected = ExampleProcess::start(Some((&server.address, watcher)), server_core).await?;
    let caller = bearer(known[0].expose())?;
    for (label, process) in [
        ("example ListItems, no layer", &plain),
        ("example ListItems, interceptor (cache hit)", &protected),
    ] {
        let channels = load::connect(&process.address, connections).await?;
        let caller = caller.clone();
        run.push(
            load::run(label, &channels, load, move |channel, _, _| {
                let request = authed(
                    &caller,
                    apitoken_example::pb::ListItemsRequest {
                        namespace: server::NAMESPACE.to_owned(),
                    },
                );
                async move {
                    apitoken_example::pb::inventory_service_client::InventoryServiceClient::new(
                        channel,
                    )
                    .list_items(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
                }
            })
            .await,
        );
    }
    plain.stop();
    protected.stop();

    // Latency at a low rate: 4 clients x 10 calls a second.
    let secrets: Vec<String> = known
        .iter()
        .map(|secret| secret.expose().to_owned())
        .collect();
    let paced_duration = if load.duration < Duration::from_secs(1) {
        load.duration
    } else {
        Duration::from_secs(5)
    };
    let low = load::paced(
        "VerifyApiToken at 4 clients x 10/s",
        &channels,
        4,
        10,
        paced_duration,
        move |channel, client, _| {
            let secret = secrets[client % secrets.len()].clone();
            async move {
                ApiTokenServiceClient::new(channel)
                    .verify_api_token(VerifyApiTokenRequest {
                        secret,
                        caller_address: String::new(),
                    })
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string())
            }
        },
    )
    .await;
    run.low_load = Some(low);
    Ok(run)
}

impl Run {
    fn push(&mut self, measurement: Measurement) {
        let rss = self.server_pid.and_then(server::rss_of).unwrap_or(0);
        eprintln!(
            "   {:<48} {:>9.0}/s  p50 {:>8.2?}  p99 {:>8.2?}  rss {:>4} MB{}",
            measurement.name,
            measurement.rate(),
            measurement.quantile(0.5),
            measurement.quantile(0.99),
            rss / 1_000_000,
            if measurement.unexpected > 0 {
                format!(
                    "  ({} unexpected, first: {})",
                    measurement.unexpected,
                    measurement.first_unexpected.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            }
        );
        self.measurements.push(measurement);
    }
}
