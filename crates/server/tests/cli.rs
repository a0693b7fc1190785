//! The `apitoken-server` binary: bootstrap, migrate, serve, SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use apitoken_proto::v1::{VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken-server");

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("APITOKEN_DATABASE_URL")
        .env_remove("APITOKEN_HASH_KEY")
        .env_remove("APITOKEN_TOKEN_PREFIX")
        .env("APITOKEN_LOG", "info")
        .output()
        .expect("run apitoken-server")
}

fn is_token(text: &str) -> bool {
    text.strip_prefix("apitoken_")
        .is_some_and(|body| body.len() == 49 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[test]
fn bootstrap_prints_only_the_secret_and_refuses_duplicates() {
    let dir = tempfile::tempdir().expect("dir");
    let output = run(dir.path(), &["bootstrap", "--namespace", "team-a"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let secret = stdout.trim();
    assert!(is_token(secret), "{secret:?}");
    let stderr = String::from_utf8(output.stderr).expect("utf8");
    assert!(
        !stderr.contains(&secret["apitoken_".len() + 4..]),
        "secret in logs"
    );
    // The default database is apitoken.db in the working directory.
    assert!(dir.path().join("apitoken.db").exists());

    let again = run(dir.path(), &["bootstrap", "--namespace", "team-a"]);
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    let stderr = String::from_utf8(again.stderr).expect("utf8");
    assert!(stderr.contains("already exists"), "{stderr}");

    let bad = run(dir.path(), &["bootstrap", "--namespace", "Team A"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8(bad.stderr)
            .expect("utf8")
            .contains("namespace")
    );
}

#[test]
fn migrate_is_idempotent() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    for _ in 0..2 {
        let output = run(dir.path(), &["migrate", "--database-url", &url]);
        assert!(output.status.success(), "{output:?}");
    }
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let output = run(
        dir.path(),
        &["bootstrap", "--namespace", "team-a", "--role", "viewer"],
    );
    let secret = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned();

    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "2s"])
        .current_dir(dir.path())
        .env_remove("APITOKEN_DATABASE_URL")
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
    let mut log = Vec::new();
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("server starts");
        log.push(line.clone());
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let me = runtime.block_on(async {
        let mut client = ApiTokenServiceClient::connect(format!("http://{address}"))
            .await
            .expect("connect");
        let mut request = tonic::Request::new(VerifyApiTokenRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("ascii"),
        );
        client
            .verify_api_token(request)
            .await
            .expect("verify")
            .into_inner()
    });
    assert_eq!(
        me.api_token.expect("token").name,
        "namespaces/team-a/apitokens/bootstrap-owner"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "graceful exit: {status:?}");
    log.extend(lines.try_iter());
    let log = log.join("\n");
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains(&secret["apitoken_".len() + 4..]),
        "secret in logs"
    );
}

#[test]
fn serve_refuses_a_bad_ext_authz_policy_naming_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    std::fs::write(
        dir.path().join("policy.txt"),
        "namespace team-a\nrequire /shop.v1.Shop/* superuser\n",
    )
    .expect("policy");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--database-url", &url];
        args.extend_from_slice(extra);
        run(dir.path(), &args)
    };
    let output = serve(&["--ext-authz-policy", "policy.txt"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--ext-authz-policy policy.txt:2: `superuser` is not a role"),
        "{stderr}"
    );
    // A port of its own needs a policy.
    let output = serve(&["--ext-authz-listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--ext-authz-policy"), "{stderr}");
}
