//! `apitoken-example`: the inventory service protected by apitoken.
//!
//! Environment: `APITOKEN_ENDPOINT` (default `http://127.0.0.1:50051`;
//! `https://…` for TLS), `APITOKEN_CA_CERT` (a CA to verify apitoken with
//! instead of the system's), `APITOKEN_CLIENT_CERT` and
//! `APITOKEN_CLIENT_KEY` (mutual TLS), `APITOKEN_WATCH_TOKEN` (an
//! interceptor token of the namespace, required), `EXAMPLE_NAMESPACE`
//! (default `team-a`), `EXAMPLE_LISTEN` (default `127.0.0.1:50060`),
//! `EXAMPLE_METRICS_LISTEN` (Prometheus metrics, the interceptor's among
//! them, on `/metrics`; off unless set).

use std::process::ExitCode;

use apitoken_interceptor::ApiTokenAuth;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // No colour codes in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("apitoken-example: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    if let Ok(address) = std::env::var("EXAMPLE_METRICS_LISTEN") {
        let address: std::net::SocketAddr = address.parse()?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()?;
        tracing::info!(%address, "serving Prometheus metrics");
    }
    let credential = std::env::var("APITOKEN_WATCH_TOKEN")
        .map_err(|_| "set APITOKEN_WATCH_TOKEN to an interceptor token of the namespace")?;
    let mut builder = apitoken_example::policy(
        ApiTokenAuth::builder().namespace(&var("EXAMPLE_NAMESPACE", "team-a"), credential),
    );
    if let Some(ca) = std::env::var_os("APITOKEN_CA_CERT") {
        builder = builder.tls_ca(std::path::PathBuf::from(ca));
    }
    if let (Some(cert), Some(key)) = (
        std::env::var_os("APITOKEN_CLIENT_CERT"),
        std::env::var_os("APITOKEN_CLIENT_KEY"),
    ) {
        builder = builder.client_identity(
            std::path::PathBuf::from(cert),
            std::path::PathBuf::from(key),
        );
    }
    let auth = builder
        .connect(var("APITOKEN_ENDPOINT", "http://127.0.0.1:50051"))
        .await?;
    let listener = tokio::net::TcpListener::bind(var("EXAMPLE_LISTEN", "127.0.0.1:50060")).await?;
    tracing::info!(address = %listener.local_addr()?, "serving inventory.v1.InventoryService");
    apitoken_example::serve(&auth, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
