//! The example inventory service twice, in processes of their own: behind
//! the interceptor's layer, and without it (the same handler, handed a fixed
//! principal by a layer that does nothing else), so the layer's cost is a
//! ratio of two runs of one handler.

use std::{
    convert::Infallible,
    process::{Child, Command, Stdio},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apitoken_domain::{Principal, Role, name::TokenName};
use apitoken_example::{Inventory, pb::inventory_service_server::InventoryServiceServer};
use apitoken_interceptor::ApiTokenAuth;
use tower::{Layer, Service};

use crate::server::{NAMESPACE, free_port, pinned};

/// Serves the inventory on `listen`: behind the layer against `apitoken`
/// with `credential`, or (`None`) without it. Runs until killed.
pub(crate) async fn serve(
    listen: &str,
    apitoken_and_credential: Option<(String, String)>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| format!("listen {listen}: {error}"))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let inventory = InventoryServiceServer::new(Inventory::default());
    match apitoken_and_credential {
        Some((apitoken, credential)) => {
            let auth =
                apitoken_example::policy(ApiTokenAuth::builder().namespace(NAMESPACE, credential))
                    .connect(format!("http://{apitoken}"))
                    .await
                    .map_err(|error| error.to_string())?;
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .layer(auth.layer())
                .add_service(inventory)
                .serve_with_incoming(incoming)
                .await
                .map_err(|error| error.to_string())
        }
        None => tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(FixedPrincipal)
            .add_service(inventory)
            .serve_with_incoming(incoming)
            .await
            .map_err(|error| error.to_string()),
    }
}

/// Puts a fixed principal in every request: the handler runs as it would
/// behind the interceptor, without any authentication.
#[derive(Debug, Clone, Copy)]
struct FixedPrincipal;

impl<S> Layer<S> for FixedPrincipal {
    type Service = WithPrincipal<S>;
    fn layer(&self, inner: S) -> WithPrincipal<S> {
        WithPrincipal { inner }
    }
}

#[derive(Debug, Clone)]
struct WithPrincipal<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for WithPrincipal<S>
where
    S: Service<http::Request<B>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(std::sync::Arc::new(Principal {
                name: TokenName::from_stored(NAMESPACE, "fixed"),
                uid: "00000000-0000-4000-8000-000000000000".to_owned(),
                role: Role::Viewer,
                expire_time: None,
                interceptor: false,
                display_name: String::new(),
                labels: Default::default(),
            }));
        self.inner.call(request)
    }
}

/// A running example service process.
#[derive(Debug)]
pub(crate) struct ExampleProcess {
    child: Child,
    /// `127.0.0.1:port`.
    pub(crate) address: String,
}

impl ExampleProcess {
    /// Starts `apitoken-bench serve-example` on `core`, with the layer
    /// (`apitoken` and `credential`) or without.
    pub(crate) async fn start(
        apitoken_and_credential: Option<(&str, &str)>,
        core: Option<usize>,
    ) -> Result<ExampleProcess, String> {
        let me = std::env::current_exe().map_err(|error| error.to_string())?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let mut command: Command = pinned(&me, core);
        command.args(["serve-example", "--listen", &address]);
        if let Some((apitoken, credential)) = apitoken_and_credential {
            command.args(["--apitoken", apitoken]);
            command.env("APITOKEN_BENCH_CREDENTIAL", credential);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("cannot start the example service: {error}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            if Instant::now() > deadline {
                return Err("the example service never listened".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ExampleProcess { child, address })
    }

    /// Stops it.
    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
