//! The `apitoken` command line against a real server: create, list, whoami,
//! regenerate, revoke, audit, and errors a person can act on.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};

use apitoken_tests::{Backend, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken");

fn apitoken(server: &TestServer, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("APITOKEN_ENDPOINT", format!("http://{}", server.addr))
        .env("APITOKEN_TOKEN", token)
        .output()
        .expect("run apitoken")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf8")
}

/// The value of `key: value` in the output.
fn field(output: &Output, key: &str) -> String {
    text(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key} in {}", text(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_tokens_from_the_command_line() {
    let server = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let owner = server.owner.clone();

    let created = tokio::task::block_in_place(|| {
        apitoken(
            &server,
            &owner,
            &[
                "create",
                "team-a/ci-cli",
                "--role",
                "editor",
                "--ttl",
                "90d",
                "--label",
                "env=prod",
            ],
        )
    });
    assert!(created.status.success(), "{}", text(&created.stderr));
    let secret = field(&created, "secret");
    assert!(
        secret.starts_with("apitoken_") && secret.len() == 58,
        "{secret}"
    );
    assert_eq!(field(&created, "role"), "ROLE_EDITOR");
    assert_eq!(field(&created, "labels"), "env=prod");
    assert_ne!(field(&created, "expire_time"), "-");

    let listed = tokio::task::block_in_place(|| apitoken(&server, &owner, &["list", "team-a"]));
    assert!(listed.status.success());
    let listing = text(&listed.stdout);
    assert!(
        listing.contains("namespaces/team-a/apitokens/ci-cli  ROLE_EDITOR  STATE_ACTIVE"),
        "{listing}"
    );
    assert!(!listing.contains(&secret[13..]), "no secret in a listing");

    let me = tokio::task::block_in_place(|| apitoken(&server, &secret, &["whoami"]));
    assert!(me.status.success());
    assert_eq!(field(&me, "name"), "namespaces/team-a/apitokens/ci-cli");

    let rotated = tokio::task::block_in_place(|| {
        apitoken(
            &server,
            &owner,
            &["regenerate", "team-a/ci-cli", "--grace", "1h"],
        )
    });
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_secret = field(&rotated, "secret");
    assert_ne!(new_secret, secret);
    assert_ne!(field(&rotated, "previous_secret_expire_time"), "-");

    let revoked =
        tokio::task::block_in_place(|| apitoken(&server, &owner, &["revoke", "team-a/ci-cli"]));
    assert_eq!(field(&revoked, "state"), "STATE_REVOKED");

    // Errors: the code, the message and the reason, exit status 1.
    let refused = tokio::task::block_in_place(|| apitoken(&server, &new_secret, &["whoami"]));
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("reason: TOKEN_REVOKED"),
        "{stderr}"
    );
    let invalid = tokio::task::block_in_place(|| {
        apitoken(&server, &owner, &["create", "team-a/X", "--role", "viewer"])
    });
    assert_eq!(invalid.status.code(), Some(1));
    assert!(
        text(&invalid.stderr).contains("field api_token_id:"),
        "{}",
        text(&invalid.stderr)
    );

    let audit = tokio::task::block_in_place(|| {
        apitoken(
            &server,
            &owner,
            &["audit", "team-a", "--filter", "action = ACTION_REVOKE"],
        )
    });
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    let log = text(&audit.stdout);
    assert!(log.contains("ACTION_REVOKE  namespaces/team-a/apitokens/ci-cli  by namespaces/team-a/apitokens/bootstrap-owner"), "{log}");
}
