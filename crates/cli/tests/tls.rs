//! The `apitoken` binary over TLS and mutual TLS against a real server with
//! certificates made in the test, and its refusal to send a token in clear
//! to a host that is not loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};

use apitoken_tests::{
    Backend, Options, TestServer, TlsFiles, TransportConfig,
    pki::{Pki, TestCa},
};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken");

fn apitoken(endpoint: &str, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("APITOKEN_ENDPOINT", endpoint)
        .env("APITOKEN_TOKEN", token)
        .env_remove("APITOKEN_CA_CERT")
        .env_remove("APITOKEN_CLIENT_CERT")
        .env_remove("APITOKEN_CLIENT_KEY")
        .env_remove("APITOKEN_PLAINTEXT");
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::task::block_in_place(|| command.output().expect("run apitoken"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(pki: &Pki, name: &str) -> String {
    pki.path(name).to_str().expect("utf8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_speaks_tls() {
    let pki = Pki::new();
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport: TransportConfig {
                tls: Some(pki.server_files()),
                ..TransportConfig::default()
            },
            client: pki.client_options(),
            ..Options::default()
        },
    )
    .await
    .expect("sqlite");
    let ca = path(&pki, "ca.pem");

    let me = apitoken(
        &server.endpoint,
        &server.owner,
        &["whoami", "--ca-cert", &ca],
        &[],
    );
    assert!(me.status.success(), "{}", text(&me.stderr));
    assert!(
        text(&me.stdout).contains("name: namespaces/team-a/apitokens/bootstrap-owner"),
        "{}",
        text(&me.stdout)
    );
    // The same from the environment.
    let me = apitoken(
        &server.endpoint,
        &server.owner,
        &["whoami"],
        &[("APITOKEN_CA_CERT", &ca)],
    );
    assert!(me.status.success(), "{}", text(&me.stderr));

    // Without the CA, the system's trust store does not know the server.
    let refused = apitoken(&server.endpoint, &server.owner, &["whoami"], &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("certificate"),
        "{}",
        text(&refused.stderr)
    );
    // A missing CA file is named.
    let missing = apitoken(
        &server.endpoint,
        &server.owner,
        &["whoami", "--ca-cert", "/nonexistent/ca.pem"],
        &[],
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("/nonexistent/ca.pem"),
        "{}",
        text(&missing.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_presents_a_client_certificate() {
    let pki = Pki::new();
    let client_ca = TestCa::new("cli client CA");
    let client = client_ca.client_cert("a person");
    pki.write("client.pem", &client.cert_pem);
    pki.write("client-key.pem", &client.key_pem);
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            transport: TransportConfig {
                tls: Some(TlsFiles {
                    client_ca: Some(pki.write("client-ca.pem", &client_ca.cert_pem)),
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
    let (ca, cert, key) = (
        path(&pki, "ca.pem"),
        path(&pki, "client.pem"),
        path(&pki, "client-key.pem"),
    );
    let me = apitoken(
        &server.endpoint,
        &server.owner,
        &[
            "whoami",
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
        &[],
    );
    assert!(me.status.success(), "{}", text(&me.stderr));
    let without = apitoken(
        &server.endpoint,
        &server.owner,
        &["whoami", "--ca-cert", &ca],
        &[],
    );
    assert!(
        !without.status.success(),
        "served without a client certificate"
    );
    // A certificate without its key is a usage error.
    let half = apitoken(
        &server.endpoint,
        &server.owner,
        &["whoami", "--ca-cert", &ca, "--client-cert", &cert],
        &[],
    );
    assert!(!half.status.success());
    assert!(
        text(&half.stderr).contains("--client-key"),
        "{}",
        text(&half.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_refuses_plaintext_to_a_remote_host() {
    let refused = apitoken(
        "http://10.255.255.1:50051",
        "apitoken_whatever",
        &["whoami"],
        &[],
    );
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("10.255.255.1") && stderr.contains("--plaintext"),
        "{stderr}"
    );
    assert!(!stderr.contains("apitoken_whatever"), "{stderr}");
    // With --plaintext the CLI tries (and, nothing listening there, fails to
    // connect instead).
    let tried = apitoken(
        "http://127.0.0.1:1",
        "apitoken_whatever",
        &["whoami", "--plaintext"],
        &[],
    );
    assert!(!tried.status.success());
    assert!(
        text(&tried.stderr).contains("cannot reach"),
        "{}",
        text(&tried.stderr)
    );
}
