//! Traces reach a real OTLP receiver: the binary started with
//! `--otlp-endpoint`, called with a W3C `traceparent`, exports the call's
//! span into the caller's trace, and no secret appears in what it exports.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use apitoken_proto::{
    prost::Message,
    v1::{
        ApiToken, CreateApiTokenRequest, Role, VerifyApiTokenRequest,
        api_token_service_client::ApiTokenServiceClient,
    },
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken-server");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// An OTLP/gRPC trace receiver that keeps what it is sent.
#[derive(Debug, Default, Clone)]
struct Receiver {
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.exports.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn authed<T>(secret: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    request
}

#[test]
fn spans_reach_an_otlp_receiver_in_the_callers_trace_without_secrets() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let otlp = listener.local_addr().unwrap();
    let serving = receiver.clone();
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().unwrap();
    let owner = Command::new(BIN)
        .args(["bootstrap", "--namespace", "team-a"])
        .current_dir(dir.path())
        .env_remove("APITOKEN_DATABASE_URL")
        .output()
        .unwrap();
    let owner = String::from_utf8(owner.stdout).unwrap().trim().to_owned();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &format!("http://{otlp}"),
        ])
        .current_dir(dir.path())
        .env_remove("APITOKEN_DATABASE_URL")
        .env("APITOKEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("server starts");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };

    let created = runtime.block_on(async {
        let mut client = ApiTokenServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        client
            .verify_api_token(authed(&owner, VerifyApiTokenRequest::default()))
            .await
            .unwrap();
        client
            .create_api_token(authed(
                &owner,
                CreateApiTokenRequest {
                    parent: "namespaces/team-a".into(),
                    api_token_id: "traced".into(),
                    api_token: Some(ApiToken {
                        role: Role::Viewer.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .secret
    });

    // Graceful stop flushes the batch exporter.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());

    let exports = receiver.exports.lock().unwrap().clone();
    assert!(!exports.is_empty(), "nothing exported");
    let spans: Vec<_> = exports
        .iter()
        .flat_map(|export| &export.resource_spans)
        .flat_map(|resource| &resource.scope_spans)
        .flat_map(|scope| &scope.spans)
        .collect();
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    for method in ["VerifyApiToken", "CreateApiToken"] {
        let span = spans
            .iter()
            .find(|span| span.name == format!("/apitoken.v1.ApiTokenService/{method}"))
            .unwrap_or_else(|| {
                panic!(
                    "no span for {method}: {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            });
        assert_eq!(span.trace_id, trace_id, "{method} joins the caller's trace");
    }
    let service_name = exports[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|attribute| attribute.key == "service.name")
        .and_then(|attribute| attribute.value.as_ref())
        .map(|value| format!("{value:?}"))
        .unwrap();
    assert!(service_name.contains("apitoken-server"), "{service_name}");
    let bytes: Vec<u8> = exports.iter().flat_map(Message::encode_to_vec).collect();
    for secret in [&owner, &created] {
        let body = &secret["apitoken_".len() + 4..];
        assert!(
            !bytes
                .windows(body.len())
                .any(|window| window == body.as_bytes()),
            "a secret in the traces"
        );
    }
}
