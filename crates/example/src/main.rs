//! `apitoken-example`: the inventory service protected by apitoken.
//!
//! Environment: `APITOKEN_ENDPOINT` (default `http://127.0.0.1:50051`;
//! `https://…` for TLS), `APITOKEN_CA_CERT` (a CA to verify apitoken with
//! instead of the system's), `APITOKEN_CLIENT_CERT` and
//! `APITOKEN_CLIENT_KEY` (mutual TLS), `EXAMPLE_NAMESPACE` (default
//! `team-a`), `EXAMPLE_WATCH_TOKEN` (a viewer token of that namespace,
//! required), `EXAMPLE_LISTEN` (default `127.0.0.1:50052`).

use std::process::ExitCode;

use apitoken_interceptor::ApiTokenAuth;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("apitoken-example: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let credential = std::env::var("EXAMPLE_WATCH_TOKEN")
        .map_err(|_| "set EXAMPLE_WATCH_TOKEN to a viewer token")?;
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
    let listener = tokio::net::TcpListener::bind(var("EXAMPLE_LISTEN", "127.0.0.1:50052")).await?;
    tracing::info!(address = %listener.local_addr()?, "serving inventory.v1.InventoryService");
    apitoken_example::serve(&auth, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
