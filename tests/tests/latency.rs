//! A latency measurement, not a test of timing (nothing is asserted about
//! time): 4 clients call 10 times a second for 5 s against a real server,
//! sharing one connection (as clones of a tonic `Channel` do, and as the
//! interceptor does) or each on its own, with `TCP_NODELAY` on and off on the server's
//! accepted sockets, in plaintext and over TLS; prints p50, p99 and max.
//! Two calls: `grpc.health.v1.Health/Check` (the transport alone) and
//! `VerifyApiToken` (a token lookup in SQLite as well). Also counted: calls
//! over 35 ms, the signature of Nagle's algorithm waiting for the client's
//! delayed ACK (40 ms on Linux). Run it with
//!
//! ```sh
//! cargo test --release -p apitoken-tests --test latency -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use apitoken_tests::{
    Backend, Options, TestServer, TransportConfig, authed,
    pki::Pki,
    v1::{VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CLIENTS: usize = 4;
const PER_SECOND: u32 = 10;
const SECONDS: u64 = 5;

#[derive(Debug, Clone, Copy)]
enum Call {
    Health,
    Verify,
}

async fn measure(server: &TestServer, call: Call, shared: bool) -> Vec<Duration> {
    let mut tasks = Vec::new();
    let one = server.channel().await;
    for _ in 0..CLIENTS {
        let channel = if shared {
            one.clone()
        } else {
            server.channel().await
        };
        let mut health = HealthClient::new(channel.clone());
        let mut client = ApiTokenServiceClient::new(channel);
        let secret = server.owner.clone();
        tasks.push(tokio::spawn(async move {
            let mut once = async || match call {
                Call::Health => {
                    health
                        .check(HealthCheckRequest::default())
                        .await
                        .expect("health");
                }
                Call::Verify => {
                    client
                        .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
                        .await
                        .expect("verify");
                }
            };
            // One call to open the connection before measuring.
            once().await;
            let mut ticker = tokio::time::interval(Duration::from_secs(1) / PER_SECOND);
            let mut latencies = Vec::new();
            let end = Instant::now() + Duration::from_secs(SECONDS);
            while Instant::now() < end {
                ticker.tick().await;
                let started = Instant::now();
                once().await;
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client"));
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn latency_with_and_without_nodelay() {
    let pki = Pki::new();
    for tls in [false, true] {
        for nodelay in [false, true] {
            let transport = TransportConfig {
                tls: tls.then(|| pki.server_files()),
                tcp_nodelay: nodelay,
                ..TransportConfig::default()
            };
            let server = TestServer::start_with(
                Backend::Sqlite,
                Options {
                    transport,
                    client: if tls {
                        pki.client_options()
                    } else {
                        Default::default()
                    },
                    ..Options::default()
                },
            )
            .await
            .expect("sqlite");
            for (call, shared) in [
                (Call::Health, true),
                (Call::Verify, true),
                (Call::Health, false),
                (Call::Verify, false),
            ] {
                let sorted = measure(&server, call, shared).await;
                println!(
                    "{:<6} {} {} TCP_NODELAY {:>3}: {} calls, p50 {:>8.2?}, p99 {:>8.2?}, max {:>8.2?}, over 35 ms: {}",
                    format!("{call:?}"),
                    if shared { "1 conn " } else { "4 conns" },
                    if tls { "TLS      " } else { "plaintext" },
                    if nodelay { "on" } else { "off" },
                    sorted.len(),
                    percentile(&sorted, 0.50),
                    percentile(&sorted, 0.99),
                    sorted[sorted.len() - 1],
                    sorted
                        .iter()
                        .filter(|latency| **latency > Duration::from_millis(35))
                        .count(),
                );
            }
            server.stop().await;
        }
    }
}
