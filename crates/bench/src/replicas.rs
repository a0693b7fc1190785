//! `--create-replicas 1,3`: `CreateApiToken` throughput with N release
//! replicas on one PostgreSQL database, the load spread evenly over the
//! replicas, once with every create in one namespace (the quota check
//! serializes them: a per-namespace transaction lock) and once over eight
//! namespaces (only the event-sequence lock is shared). Answers whether
//! those two locks, not the replicas, bound the writes.

use std::time::Duration;

use apitoken_proto::v1::{
    self, CreateApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
};

use crate::{
    authed, bearer,
    load::{self, Load},
    server::{self, Database, ServerProcess},
};

/// Namespaces of the spread run.
const SPREAD: usize = 8;

/// One row of the table.
struct Row {
    replicas: usize,
    namespaces: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
    unexpected: u64,
}

/// Runs every replica count with one and with [`SPREAD`] namespaces; the
/// Markdown table.
pub(crate) async fn create_scaling(
    admin_url: &str,
    replica_counts: &[usize],
    load: Load,
) -> Result<String, String> {
    let mut rows = Vec::new();
    for &replicas in replica_counts {
        for namespaces in [1, SPREAD] {
            eprintln!("== CreateApiToken, {replicas} replica(s), {namespaces} namespace(s)");
            rows.push(run(admin_url, replicas, namespaces, load).await?);
        }
    }
    let mut table = String::from(
        "| replicas | namespaces | creates/s | p50 | p99 | unexpected |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} ms | {:.1} ms | {} |\n",
            row.replicas,
            row.namespaces,
            row.rate,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.unexpected
        ));
    }
    Ok(table)
}

async fn run(
    admin_url: &str,
    replicas: usize,
    namespaces: usize,
    load: Load,
) -> Result<Row, String> {
    let database = Database::fresh(Some(admin_url)).await?;
    server::preload(&database.url, 0).await?;
    let mut owners = Vec::new();
    for index in 0..namespaces {
        let namespace = format!("bench-{index}");
        let secret = server::bootstrap_in(&database.url, &namespace, "owner", "owner", false)?;
        owners.push((namespace, bearer(&secret)?));
    }
    let mut servers = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&database.url, None).await?);
    }
    // Two connections to each replica, interleaved: task i uses replica
    // i mod N.
    let mut channels = Vec::new();
    for _ in 0..2 {
        for server in &servers {
            channels.extend(load::connect(&server.address, 1).await?);
        }
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let measurement = load::run(
        "CreateApiToken",
        &channels,
        load,
        move |channel, task, i| {
            let (namespace, owner) = &owners[task % owners.len()];
            let request = authed(
                owner,
                CreateApiTokenRequest {
                    parent: format!("namespaces/{namespace}"),
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
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            }
        },
    )
    .await;
    for server in servers {
        server.stop();
    }
    if let Some(first) = &measurement.first_unexpected {
        eprintln!("   first unexpected answer: {first}");
    }
    Ok(Row {
        replicas,
        namespaces,
        rate: measurement.rate(),
        p50: measurement.quantile(0.5),
        p99: measurement.quantile(0.99),
        unexpected: measurement.unexpected,
    })
}
