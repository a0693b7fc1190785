//! The `apitoken-server` binary's transport flags: TLS from files, reload on
//! SIGHUP (a broken file keeps the current certificate, and says so in the
//! log), and no plaintext on a public address without `--plaintext`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use apitoken_proto::{
    endpoint::{ConnectOptions, Pem, connect},
    v1::{VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken-server");

/// A CA certificate (PEM) and a server certificate and key it signed for
/// 127.0.0.1 and localhost.
fn ca_and_server_cert(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    (ca_pem, server.pem(), key.serialize_pem())
}

/// Writes atomically (as deployment tools do).
fn write(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_remove("APITOKEN_DATABASE_URL")
            .env_remove("APITOKEN_PLAINTEXT")
            .env_remove("APITOKEN_TLS_CERT")
            .env_remove("APITOKEN_TLS_KEY")
            .env("APITOKEN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        Server {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (up to 30 s) for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} in {:#?}", self.log));
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn address(&mut self) -> String {
        let line = self.wait_for("address=");
        line.split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address")
            .to_owned()
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status:?}");
    }
}

fn bootstrap(dir: &Path) -> String {
    let output = Command::new(BIN)
        .args(["bootstrap", "--namespace", "team-a"])
        .current_dir(dir)
        .env_remove("APITOKEN_DATABASE_URL")
        .output()
        .expect("bootstrap");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// `whoami` over a new TLS connection trusting `ca_pem` only.
fn whoami(runtime: &tokio::runtime::Runtime, address: &str, ca_pem: &str, secret: &str) -> bool {
    runtime.block_on(async {
        let options = ConnectOptions {
            ca: Some(Pem::from(ca_pem.to_owned())),
            ..ConnectOptions::default()
        };
        let Ok(channel) = connect(&format!("https://{address}"), &options).await else {
            return false;
        };
        let mut request = tonic::Request::new(VerifyApiTokenRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("ascii"),
        );
        ApiTokenServiceClient::new(channel)
            .verify_api_token(request)
            .await
            .is_ok()
    })
}

#[test]
fn tls_files_are_reloaded_on_sighup_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = bootstrap(dir.path());
    let (ca1, cert1, key1) = ca_and_server_cert("CA one");
    let (cert_path, key_path) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    write(&cert_path, &cert1);
    write(&key_path, &key1);
    let mut server = Server::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().expect("utf8"),
            "--tls-key",
            key_path.to_str().expect("utf8"),
            // Only SIGHUP reloads in this test.
            "--tls-reload-interval",
            "1d",
        ],
    );
    let started = server.wait_for("serving apitoken.v1.ApiTokenService");
    assert!(started.contains("security=tls"), "{started}");
    let address = started
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address")
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    assert!(whoami(&runtime, &address, &ca1, &secret));

    // A broken certificate: logged, and the current one stays.
    write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    server.signal("-HUP");
    let failed = server.wait_for("TLS certificate reload failed");
    assert!(failed.contains("--tls-cert"), "{failed}");
    assert!(
        whoami(&runtime, &address, &ca1, &secret),
        "old certificate gone"
    );

    // A new pair from a new CA: taken on SIGHUP, without a restart.
    let (ca2, cert2, key2) = ca_and_server_cert("CA two");
    write(&key_path, &key2);
    write(&cert_path, &cert2);
    server.signal("-HUP");
    server.wait_for("TLS certificate reloaded");
    assert!(whoami(&runtime, &address, &ca2, &secret), "new certificate");
    assert!(
        !whoami(&runtime, &address, &ca1, &secret),
        "old CA still works"
    );
    let log = server.log.join("\n");
    assert!(
        !log.contains(&secret["apitoken_".len() + 4..]),
        "secret in logs"
    );
    assert!(!log.contains("PRIVATE KEY"), "key material in logs");
    server.stop();
}

#[test]
fn plaintext_on_a_public_address_needs_the_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let refused = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .env_remove("APITOKEN_DATABASE_URL")
        .env_remove("APITOKEN_PLAINTEXT")
        .env_remove("APITOKEN_TLS_CERT")
        .env_remove("APITOKEN_TLS_KEY")
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("0.0.0.0:0")
            && stderr.contains("--tls-cert")
            && stderr.contains("--plaintext"),
        "{stderr}"
    );
    // Refused before touching the database.
    assert!(!dir.path().join("apitoken.db").exists());

    let mut server = Server::start(dir.path(), &["--listen", "0.0.0.0:0", "--plaintext"]);
    let address = server.address();
    assert!(address.starts_with("0.0.0.0:"), "{address}");
    server.stop();

    // Half a TLS configuration is a usage error naming the missing flag.
    let half = Command::new(BIN)
        .args(["--tls-cert", "cert.pem"])
        .current_dir(dir.path())
        .env_remove("APITOKEN_TLS_KEY")
        .output()
        .expect("run");
    assert!(!half.status.success());
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-key"),
        "{half:?}"
    );
}
