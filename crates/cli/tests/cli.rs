//! The `apitoken` command line, run as a process against a real server:
//! the dashboard table and its expiry marks, `-o json` and `-o yaml`,
//! `--secret-only`, updates, revoke's confirmation, every exit status, shell
//! completion, and hostile stored text that must never reach a terminal raw.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use apitoken_domain::clock::Clock as _;
use apitoken_tests::{Backend, TestServer};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_apitoken");

/// A command for `apitoken` with the environment cleared of our variables.
fn command(endpoint: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("APITOKEN_TOKEN")
        .env_remove("APITOKEN_CONNECT_TIMEOUT")
        .env_remove("APITOKEN_TIMEOUT")
        .env("APITOKEN_ENDPOINT", endpoint)
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("APITOKEN_TOKEN", token);
    }
    command
}

/// Runs `apitoken args` with `token` against `endpoint`, standard input
/// from /dev/null (not a terminal).
fn run_at(endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        command(endpoint, token, args)
            .output()
            .expect("run apitoken")
    })
}

fn run(server: &TestServer, token: &str, args: &[&str]) -> Output {
    run_at(&format!("http://{}", server.addr), Some(token), args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf8")
}

/// Asserts success and returns standard output.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Asserts the exit status and returns standard error.
fn fails(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    stderr(output)
}

/// The value of `key: value` in text output.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

fn json(output: &Output) -> Json {
    let text = ok(output);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// The table row whose first column is `id`.
fn row<'a>(table: &'a str, id: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row {id} in\n{table}"))
}

/// Asserts that `cells` appear in `line` in this order.
fn assert_in_order(line: &str, cells: &[&str]) {
    let mut rest = line;
    for cell in cells {
        let at = rest
            .find(cell)
            .unwrap_or_else(|| panic!("{cell:?} not found in order in {line:?}"));
        rest = &rest[at + cell.len()..];
    }
}

async fn start() -> TestServer {
    TestServer::start(Backend::Sqlite).await.expect("sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_tokens_from_the_command_line() {
    let server = start().await;
    let owner = server.owner.clone();

    let created = run(
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
            "--display-name",
            "CI pipeline",
        ],
    );
    let shown = ok(&created);
    let secret = field(&shown, "secret");
    assert!(
        secret.starts_with("apitoken_") && secret.len() == 58,
        "{secret}"
    );
    assert_eq!(field(&shown, "role"), "ROLE_EDITOR");
    assert_eq!(field(&shown, "labels"), "env=prod");
    assert_ne!(field(&shown, "expire_time"), "never");
    assert!(
        stderr(&created).contains("shown only this once"),
        "{}",
        stderr(&created)
    );

    let listing = ok(&run(&server, &owner, &["list", "team-a"]));
    assert!(!listing.contains(&secret[13..]), "no secret in a listing");
    assert_in_order(
        row(&listing, "ci-cli"),
        &[
            "ci-cli",
            "CI pipeline",
            "editor",
            "by bootstrap-owner",
            "never",
            "active",
        ],
    );

    let me = ok(&run(&server, &secret, &["whoami"]));
    assert_eq!(field(&me, "name"), "namespaces/team-a/apitokens/ci-cli");

    let rotated = ok(&run(
        &server,
        &owner,
        &["regenerate", "team-a/ci-cli", "--grace", "1h"],
    ));
    let new_secret = field(&rotated, "secret");
    assert_ne!(new_secret, secret);
    assert_ne!(field(&rotated, "previous_secret_expire_time"), "-");

    let revoked = ok(&run(&server, &owner, &["revoke", "team-a/ci-cli", "--yes"]));
    assert_eq!(field(&revoked, "state"), "STATE_REVOKED");

    let refused = run(&server, &new_secret, &["whoami"]);
    let message = fails(&refused, 3);
    assert!(
        message.contains("UNAUTHENTICATED") && message.contains("reason: TOKEN_REVOKED"),
        "{message}"
    );

    let audit = ok(&run(
        &server,
        &owner,
        &["audit", "team-a", "--filter", "action = ACTION_REVOKE"],
    ));
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert_in_order(
        lines[0],
        &[
            "TIME (UTC)",
            "ACTION",
            "RESOURCE",
            "ACTOR",
            "FROM",
            "DETAILS",
        ],
    );
    assert_in_order(
        lines[1],
        &["revoke", "ci-cli", "bootstrap-owner", "127.0.0.1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_table_shows_the_dashboard_columns_and_expiry_marks() {
    let server = start().await;
    let owner = server.owner.clone();
    let create = |id: &str, role: &str, extra: &[&str]| {
        let mut args = vec!["create", id, "--role", role, "-q"];
        args.extend(extra);
        ok(&run(&server, &owner, &args)).trim().to_owned()
    };
    let soon = create(
        "team-a/soon",
        "viewer",
        &["--ttl", "10d", "--display-name", "Soon gone"],
    );
    create(
        "team-a/later",
        "editor",
        &["--ttl", "30d", "--display-name", "Later"],
    );
    create("team-a/forever", "owner", &[]);
    create("team-a/gone", "viewer", &[]);
    ok(&run(&server, &owner, &["revoke", "team-a/gone", "-y"]));
    ok(&run(&server, &soon, &["whoami"]));
    server.wait_for_usage(&["soon"]).await;

    let table = ok(&run(&server, &owner, &["list", "team-a"]));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let header = table.lines().next().unwrap();
    assert_in_order(
        header,
        &[
            "ID",
            "NAME",
            "ROLE",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "STATUS",
        ],
    );
    assert_in_order(
        row(&table, "soon"),
        &[
            "soon",
            "Soon gone",
            "viewer",
            &format!("{today} by bootstrap-owner"),
            "⚠ in 9d",
            "just now",
            "active",
        ],
    );
    let later = row(&table, "later");
    assert_in_order(later, &["later", "Later", "editor", "never", "active"]);
    assert!(!later.contains('⚠'), "{later}");
    assert_in_order(
        row(&table, "forever"),
        &["forever", "-", "owner", "never", "never", "active"],
    );
    assert!(
        table.lines().all(|line| !line.starts_with("gone ")),
        "revoked tokens are hidden: {table}"
    );
    // Columns line up: every STATUS cell starts where the header's does
    // (counting characters, as a terminal does for this text).
    let status_at = header.chars().count() - "STATUS".len();
    for line in table.lines().skip(1) {
        let cells: String = line.chars().skip(status_at).collect();
        assert!(
            ["active", "expired", "revoked"].contains(&cells.as_str()),
            "{line:?}"
        );
    }

    let with_revoked = ok(&run(&server, &owner, &["list", "team-a", "--show-revoked"]));
    assert!(row(&with_revoked, "gone").ends_with("revoked"));

    // Twenty days later, for the server: the 10-day token has expired.
    server.clock.advance(chrono::Duration::days(20));
    let table = ok(&run(&server, &owner, &["list", "team-a"]));
    assert_in_order(
        row(&table, "soon"),
        &[
            "soon",
            "Soon gone",
            "viewer",
            "expired",
            "just now",
            "expired",
        ],
    );

    // A filter and a page.
    let editors = ok(&run(
        &server,
        &owner,
        &["list", "team-a", "--filter", "role = ROLE_EDITOR"],
    ));
    assert_eq!(editors.lines().count(), 2, "{editors}");
    let empty = run(
        &server,
        &owner,
        &["list", "team-a", "--filter", "unused_days >= 400"],
    );
    assert_eq!(ok(&empty), "");
    assert!(stderr(&empty).contains("no tokens in namespaces/team-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_yaml_are_the_api_messages() {
    let server = start().await;
    let owner = server.owner.clone();

    let created = json(&run(
        &server,
        &owner,
        &[
            "create",
            "team-a/json-ci",
            "--role",
            "editor",
            "--ttl",
            "30d",
            "--label",
            "env=prod",
            "--label",
            "team=a",
            "--description",
            "tab\there",
            "-o",
            "json",
        ],
    ));
    let token = &created["apiToken"];
    assert_eq!(token["name"], "namespaces/team-a/apitokens/json-ci");
    assert_eq!(token["role"], "ROLE_EDITOR");
    assert_eq!(token["state"], "STATE_ACTIVE");
    assert_eq!(token["description"], "tab\there");
    assert_eq!(
        token["labels"],
        serde_json::json!({"env": "prod", "team": "a"})
    );
    assert_eq!(
        token["creator"],
        "namespaces/team-a/apitokens/bootstrap-owner"
    );
    assert!(
        token["rateLimit"].as_i64().unwrap() > 0,
        "an int32 is a number"
    );
    assert!(token["uid"].as_str().unwrap().len() >= 32);
    assert!(
        token["secretHint"]
            .as_str()
            .unwrap()
            .starts_with("apitoken_")
    );
    let create_time = token["createTime"].as_str().unwrap();
    let expire_time = token["expireTime"].as_str().unwrap();
    assert!(create_time.ends_with('Z') && expire_time.ends_with('Z'));
    let create_time = chrono::DateTime::parse_from_rfc3339(create_time).unwrap();
    let expire_time = chrono::DateTime::parse_from_rfc3339(expire_time).unwrap();
    assert_eq!(expire_time - create_time, chrono::Duration::days(30));
    // Defaults are left out, as protojson does; nothing is snake_case.
    assert!(token.get("useCount").is_none() && token.get("lastUseTime").is_none());
    assert!(
        token
            .as_object()
            .unwrap()
            .keys()
            .all(|key| !key.contains('_'))
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 58);

    // int64 as a string, after a use.
    let me = json(&run(&server, &secret, &["whoami", "-o", "json"]));
    assert_eq!(
        me["apiToken"]["name"],
        "namespaces/team-a/apitokens/json-ci"
    );
    assert!(me["namespaceRateLimit"].as_i64().unwrap() > 0);
    server.wait_for_usage(&["json-ci"]).await;
    let got = json(&run(
        &server,
        &owner,
        &["get", "team-a/json-ci", "-o", "json"],
    ));
    assert_eq!(got["useCount"], "1");
    assert!(got["lastUseTime"].as_str().unwrap().ends_with('Z'));
    assert!(!got["etag"].as_str().unwrap().is_empty());

    // Lists: one object with every page merged; or one page and its next.
    ok(&run(
        &server,
        &owner,
        &["create", "team-a/json-two", "--role", "viewer", "-q"],
    ));
    let all = json(&run(&server, &owner, &["list", "team-a", "-o", "json"]));
    let names: Vec<&str> = all["apiTokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(all.get("nextPageToken").is_none());
    let first = json(&run(
        &server,
        &owner,
        &["list", "team-a", "--limit", "2", "-o", "json"],
    ));
    assert_eq!(first["apiTokens"].as_array().unwrap().len(), 2);
    let next = first["nextPageToken"].as_str().unwrap();
    let rest = json(&run(
        &server,
        &owner,
        &[
            "list",
            "team-a",
            "--limit",
            "2",
            "--page-token",
            next,
            "-o",
            "json",
        ],
    ));
    assert_eq!(rest["apiTokens"].as_array().unwrap().len(), 1);
    assert_eq!(rest["apiTokens"][0]["name"], names[2]);
    let empty = json(&run(
        &server,
        &owner,
        &[
            "list",
            "team-a",
            "--filter",
            "role = ROLE_OWNER",
            "-o",
            "json",
        ],
    ));
    assert_eq!(empty["apiTokens"].as_array().unwrap().len(), 1);

    let audit = json(&run(&server, &owner, &["audit", "team-a", "-o", "json"]));
    let events = audit["auditEvents"].as_array().unwrap();
    assert!(events.iter().any(|event| event["action"] == "ACTION_CREATE"
        && event["resource"] == "namespaces/team-a/apitokens/json-ci"
        && event["eventTime"].as_str().unwrap().ends_with('Z')));

    // YAML: the same data (leaving out the owner token, whose use count
    // changes with every call).
    for args in [
        vec!["list", "team-a", "--filter", "role != ROLE_OWNER"],
        vec!["get", "team-a/json-ci"],
        vec!["audit", "team-a"],
    ] {
        let as_json = json(&run(
            &server,
            &owner,
            &[&args[..], &["-o", "json"]].concat(),
        ));
        let as_yaml = ok(&run(
            &server,
            &owner,
            &[&args[..], &["-o", "yaml"]].concat(),
        ));
        let docs = yaml_rust2::YamlLoader::load_from_str(&as_yaml)
            .unwrap_or_else(|error| panic!("{error}: {as_yaml}"));
        assert_eq!(docs.len(), 1);
        assert_eq!(yaml_to_json(&docs[0]), as_json, "{as_yaml}");
    }
    let yaml = ok(&run(
        &server,
        &owner,
        &["get", "team-a/json-ci", "-o", "yaml"],
    ));
    assert!(
        yaml.starts_with("name: namespaces/team-a/apitokens/json-ci\n"),
        "{yaml}"
    );
    assert!(yaml.contains("\nuseCount: \"1\"\n"), "{yaml}");
    assert!(yaml.contains("\ndescription: \"tab\\there\"\n"), "{yaml}");
    assert!(
        yaml.contains("\nlabels:\n  env: prod\n  team: a\n"),
        "{yaml}"
    );
}

fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Json {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::String(text) => Json::String(text.clone()),
        Yaml::Integer(number) => Json::from(*number),
        Yaml::Boolean(flag) => Json::Bool(*flag),
        Yaml::Array(items) => Json::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| (key.as_str().unwrap().to_owned(), yaml_to_json(value)))
                .collect(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_only_prints_one_line_that_authenticates() {
    let server = start().await;
    let owner = server.owner.clone();

    let created = run(
        &server,
        &owner,
        &["create", "team-a/deploy", "--role", "editor", "-q"],
    );
    let printed = ok(&created);
    assert_eq!(stderr(&created), "");
    assert_eq!(printed.lines().count(), 1, "{printed:?}");
    assert!(printed.ends_with('\n') && !printed.ends_with("\n\n"));
    let secret = printed.trim_end_matches('\n');
    assert_eq!(secret.len(), 58);
    let me = ok(&run(&server, secret, &["whoami"]));
    assert_eq!(field(&me, "name"), "namespaces/team-a/apitokens/deploy");

    let regenerated = run(
        &server,
        &owner,
        &["regenerate", "team-a/deploy", "--secret-only"],
    );
    let printed = ok(&regenerated);
    assert_eq!(printed.lines().count(), 1);
    let new_secret = printed.trim_end_matches('\n');
    assert_ne!(new_secret, secret);
    ok(&run(&server, new_secret, &["whoami"]));
    fails(&run(&server, secret, &["whoami"]), 3);

    let message = fails(
        &run(
            &server,
            &owner,
            &[
                "create",
                "team-a/deploy2",
                "--role",
                "viewer",
                "-q",
                "-o",
                "json",
            ],
        ),
        2,
    );
    assert!(message.contains("--secret-only"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_exactly_the_fields_given() {
    let server = start().await;
    let owner = server.owner.clone();
    ok(&run(
        &server,
        &owner,
        &[
            "create",
            "team-a/upd",
            "--role",
            "editor",
            "--ttl",
            "30d",
            "--display-name",
            "Old",
            "--description",
            "keep me",
            "--label",
            "env=prod",
            "--label",
            "team=a",
        ],
    ));
    let get = || json(&run(&server, &owner, &["get", "team-a/upd", "-o", "json"]));

    let updated = ok(&run(
        &server,
        &owner,
        &["update", "team-a/upd", "--label", "env=staging"],
    ));
    assert_eq!(field(&updated, "labels"), "env=staging");
    assert_eq!(field(&updated, "display_name"), "Old");
    assert_eq!(field(&updated, "description"), "keep me");

    ok(&run(
        &server,
        &owner,
        &["update", "team-a/upd", "--clear-labels"],
    ));
    assert!(get().get("labels").is_none());

    ok(&run(
        &server,
        &owner,
        &[
            "update",
            "team-a/upd",
            "--display-name",
            "New",
            "--description",
            "line one\nline two",
        ],
    ));
    let token = get();
    assert_eq!(token["displayName"], "New");
    assert_eq!(token["description"], "line one\nline two");
    assert_eq!(token["role"], "ROLE_EDITOR");

    // Expiry: only earlier.
    let before =
        chrono::DateTime::parse_from_rfc3339(token["expireTime"].as_str().unwrap()).unwrap();
    ok(&run(
        &server,
        &owner,
        &["update", "team-a/upd", "--ttl", "5d"],
    ));
    let after =
        chrono::DateTime::parse_from_rfc3339(get()["expireTime"].as_str().unwrap()).unwrap();
    assert!(
        after < before - chrono::Duration::days(24),
        "{before} {after}"
    );
    let table = ok(&run(&server, &owner, &["list", "team-a"]));
    assert!(row(&table, "upd").contains("⚠ in 4d"), "{table}");
    let exact = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    ok(&run(
        &server,
        &owner,
        &["update", "team-a/upd", "--expire-time", &exact],
    ));
    assert_eq!(get()["expireTime"], exact.as_str());
    let later = run(&server, &owner, &["update", "team-a/upd", "--ttl", "60d"]);
    let message = fails(&later, 2);
    assert!(
        message.contains("field api_token.expire_time:"),
        "{message}"
    );

    // Role: only lower.
    let lowered = ok(&run(
        &server,
        &owner,
        &["update", "team-a/upd", "--role", "viewer"],
    ));
    assert_eq!(field(&lowered, "role"), "ROLE_VIEWER");
    let message = fails(
        &run(
            &server,
            &owner,
            &["update", "team-a/upd", "--role", "owner"],
        ),
        2,
    );
    assert!(message.contains("field api_token.role:"), "{message}");

    // Conditional update: a stale etag is refused.
    let etag = get()["etag"].as_str().unwrap().to_owned();
    ok(&run(
        &server,
        &owner,
        &[
            "update",
            "team-a/upd",
            "--display-name",
            "Newer",
            "--etag",
            &etag,
        ],
    ));
    let stale = run(
        &server,
        &owner,
        &[
            "update",
            "team-a/upd",
            "--display-name",
            "Lost",
            "--etag",
            &etag,
        ],
    );
    let message = fails(&stale, 7);
    assert!(
        message.contains("ABORTED") && message.contains("hint: the token changed"),
        "{message}"
    );
    assert_eq!(get()["displayName"], "Newer");

    // Nothing to change, or the same label twice: usage errors.
    fails(&run(&server, &owner, &["update", "team-a/upd"]), 2);
    let message = fails(
        &run(
            &server,
            &owner,
            &["update", "team-a/upd", "--label", "a=1", "--label", "a=2"],
        ),
        2,
    );
    assert!(message.contains("label `a` is given twice"), "{message}");
    fails(
        &run(
            &server,
            &owner,
            &["update", "team-a/upd", "--label", "a=1", "--clear-labels"],
        ),
        2,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_asks_first_and_needs_yes_without_a_terminal() {
    let server = start().await;
    let owner = server.owner.clone();
    ok(&run(
        &server,
        &owner,
        &["create", "team-a/victim", "--role", "viewer", "-q"],
    ));

    let refused = run(&server, &owner, &["revoke", "team-a/victim"]);
    let message = fails(&refused, 2);
    assert!(
        message.contains("pass --yes") && message.contains("not a terminal"),
        "{message}"
    );
    assert_eq!(stdout(&refused), "");
    let token = json(&run(
        &server,
        &owner,
        &["get", "team-a/victim", "-o", "json"],
    ));
    assert_eq!(token["state"], "STATE_ACTIVE");

    // On a terminal (a pseudo-terminal from script(1)), it asks.
    if let Some(declined) = on_terminal(&server, &owner, "team-a/victim", "n\n") {
        assert_eq!(declined.status.code(), Some(1), "{}", stdout(&declined));
        let screen = stdout(&declined);
        assert!(
            screen.contains(
                "Revoke namespaces/team-a/apitokens/victim? This cannot be undone. [y/N]"
            ),
            "{screen}"
        );
        assert!(screen.contains("Not revoked."), "{screen}");
        let token = json(&run(
            &server,
            &owner,
            &["get", "team-a/victim", "-o", "json"],
        ));
        assert_eq!(token["state"], "STATE_ACTIVE");

        let agreed = on_terminal(&server, &owner, "team-a/victim", "y\n").unwrap();
        assert_eq!(agreed.status.code(), Some(0), "{}", stdout(&agreed));
        assert!(stdout(&agreed).contains("state: STATE_REVOKED"));
    } else {
        eprintln!("skipped: the terminal part (no script(1) here)");
        ok(&run(&server, &owner, &["revoke", "team-a/victim", "--yes"]));
    }

    let again = ok(&run(&server, &owner, &["revoke", "team-a/victim", "-y"]));
    assert_eq!(field(&again, "state"), "STATE_REVOKED");
}

/// Runs `apitoken revoke name` on a pseudo-terminal and types `typed`.
fn on_terminal(server: &TestServer, token: &str, name: &str, typed: &str) -> Option<Output> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let output = tokio::task::block_in_place(|| {
        let mut child = Command::new("script")
            .args([
                "-q",
                "-e",
                "-c",
                &format!("{BIN} revoke {name}"),
                "/dev/null",
            ])
            .env("APITOKEN_ENDPOINT", format!("http://{}", server.addr))
            .env("APITOKEN_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        // Type once the prompt is there (script forwards what it reads).
        std::thread::sleep(Duration::from_millis(500));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(typed.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    });
    Some(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_exit_status_and_plain_words() {
    let server = start().await;
    let owner = server.owner.clone();
    let endpoint = format!("http://{}", server.addr);

    // 3: unauthenticated, or no token at all.
    let message = fails(&run(&server, "apitoken_garbage", &["whoami"]), 3);
    assert!(
        message.contains("UNAUTHENTICATED") && message.contains("reason: TOKEN_MALFORMED"),
        "{message}"
    );
    let message = fails(&run_at(&endpoint, None, &["list", "team-a"]), 3);
    assert!(
        message.contains("no token: set APITOKEN_TOKEN"),
        "{message}"
    );

    // 4: a viewer creating, an owner of another namespace reading.
    let viewer = ok(&run(
        &server,
        &owner,
        &["create", "team-a/view", "--role", "viewer", "-q"],
    ));
    let message = fails(
        &run(
            &server,
            viewer.trim(),
            &["create", "team-a/more", "--role", "viewer"],
        ),
        4,
    );
    assert!(
        message.contains("PERMISSION_DENIED") && message.contains("reason: ROLE_TOO_LOW"),
        "{message}"
    );
    let message = fails(&run(&server, &owner, &["get", "team-b/bootstrap-owner"]), 4);
    assert!(message.contains("reason: NAMESPACE_MISMATCH"), "{message}");

    // 5: not found.
    let message = fails(&run(&server, &owner, &["get", "team-a/nope"]), 5);
    assert!(message.contains("NOT_FOUND"), "{message}");

    // 2: usage, locally or refused by the server.
    fails(
        &run(
            &server,
            &owner,
            &["create", "nonamespace", "--role", "viewer"],
        ),
        2,
    );
    fails(
        &run(&server, &owner, &["list", "team-a", "--limit", "5000"]),
        2,
    );
    let message = fails(
        &run(&server, &owner, &["create", "team-a/X", "--role", "viewer"]),
        2,
    );
    assert!(
        message.contains("INVALID_ARGUMENT") && message.contains("field api_token_id:"),
        "{message}"
    );
    for bad in [
        "ftp://127.0.0.1:1",
        "not a url",
        "127.0.0.1:50051",
        // Plaintext to a host that is not loopback would send the token in clear.
        "http://192.0.2.1:50051",
    ] {
        let message = fails(&run_at(bad, Some(&owner), &["whoami"]), 2);
        assert!(
            message.contains(&format!("bad endpoint `{bad}`")),
            "{message}"
        );
        // Said first, even without a token.
        let message = fails(&run_at(bad, None, &["list", "team-a"]), 2);
        assert!(message.contains("bad endpoint"), "{message}");
    }

    // 7: conflicts.
    let message = fails(
        &run(
            &server,
            &owner,
            &["create", "team-a/view", "--role", "viewer"],
        ),
        7,
    );
    assert!(message.contains("ALREADY_EXISTS"), "{message}");
    ok(&run(&server, &owner, &["revoke", "team-a/view", "-y"]));
    let message = fails(&run(&server, &owner, &["regenerate", "team-a/view"]), 7);
    assert!(message.contains("FAILED_PRECONDITION"), "{message}");

    // 8: over the token's own rate limit (the manual clock never refills it).
    let limited = ok(&run(
        &server,
        &owner,
        &[
            "create",
            "team-a/slow",
            "--role",
            "viewer",
            "--rate-limit",
            "1",
            "-q",
        ],
    ));
    ok(&run(&server, limited.trim(), &["whoami"]));
    let message = fails(&run(&server, limited.trim(), &["whoami"]), 8);
    assert!(
        message.contains("RESOURCE_EXHAUSTED") && message.contains("retry after:"),
        "{message}"
    );

    // 6: nothing listens; a listener that never answers; a full backlog.
    let message = fails(&run_at("http://127.0.0.1:1", Some(&owner), &["whoami"]), 6);
    assert!(
        message.contains(
            "cannot reach the apitoken server at `http://127.0.0.1:1`: connection refused"
        ),
        "{message}"
    );
    assert!(!message.contains("transport error"), "{message}");

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let keep = std::thread::spawn(move || silent.accept().map(|(socket, _)| socket));
    let started = Instant::now();
    let message = fails(
        &run_at(
            &silent_endpoint,
            Some(&owner),
            &["--timeout", "1s", "whoami"],
        ),
        6,
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        message.contains(&format!(
            "the apitoken server at `{silent_endpoint}` did not answer within 1s"
        )),
        "{message}"
    );
    drop(keep);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let _fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&full_addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let started = Instant::now();
    let message = fails(
        &run_at(
            &format!("http://{full_addr}"),
            Some(&owner),
            &["whoami", "--connect-timeout", "500ms"],
        ),
        6,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains(&format!(
            "cannot reach the apitoken server at `http://{full_addr}`"
        )) && (message.contains("timed out while connecting")
            || message.contains("no answer within 500ms")),
        "{message}"
    );

    // The exit statuses are in --help.
    let help = ok(&run_at(&endpoint, None, &["--help"]));
    for line in [
        "0  success",
        "2  usage",
        "3  unauthenticated",
        "4  permission denied",
        "5  not found",
        "6  unavailable",
    ] {
        assert!(help.contains(line), "{line}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_scripts_generate() {
    for (shell, marker) in [
        ("bash", "complete -F _apitoken"),
        ("zsh", "#compdef apitoken"),
        ("fish", "complete -c apitoken"),
    ] {
        let script = ok(&run_at("http://127.0.0.1:1", None, &["completion", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["whoami", "revoke", "secret-only", "output"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    // bash can read what it is given.
    let script = ok(&run_at("http://127.0.0.1:1", None, &["completion", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apitoken.bash");
    std::fs::write(&path, script).unwrap();
    if let Ok(checked) = Command::new("bash").arg("-n").arg(&path).output() {
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    fails(
        &run_at("http://127.0.0.1:1", None, &["completion", "tcsh"]),
        2,
    );
}

/// No byte that a terminal would act on: C0 (but the writer's own newlines),
/// DEL, C1, bidi controls.
fn assert_terminal_safe(text: &str, what: &str) {
    for c in text.chars() {
        let code = u32::from(c);
        let unsafe_char = (code < 0x20 && c != '\n')
            || (0x7f..=0x9f).contains(&code)
            || (0x202a..=0x202e).contains(&code)
            || (0x2066..=0x2069).contains(&code);
        assert!(!unsafe_char, "{what}: raw U+{code:04X} in {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_text_never_reaches_the_terminal_raw() {
    let server = start().await;
    let owner = server.owner.clone();
    ok(&run(
        &server,
        &owner,
        &[
            "create",
            "team-a/evil",
            "--role",
            "viewer",
            "--description",
            "first\nrole: ROLE_OWNER\tx",
        ],
    ));

    // Straight into the database: what a buggy or older server could have
    // stored, and audit fields the server takes from request headers.
    let hostile = "ok\nrole: ROLE_OWNER\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{202e}gpj.exe";
    let name = apitoken_domain::name::TokenName::from_stored("team-a", "evil");
    let now = server.clock.now();
    let entry = apitoken_store::AuditEntry {
        namespace: "team-a".into(),
        time: now,
        action: apitoken_domain::audit::Action::Update,
        actor: "namespaces/team-a/apitokens/bootstrap-owner".into(),
        actor_uid: None,
        resource: name.to_string(),
        resource_uid: None,
        peer_address: Some("10.0.0.1:1\u{1b}[1A".into()),
        user_agent: Some("curl\u{1b}]0;owned\u{7}\u{2066}".into()),
        request_id: "req\nfake: line".into(),
        trace_id: None,
        details: BTreeMap::from([(
            "fields\u{1b}".to_owned(),
            "display_name\u{202e}\n".to_owned(),
        )]),
    };
    server
        .store
        .update(
            &name,
            now,
            |_| {
                Ok(apitoken_store::TokenChanges {
                    display_name: Some(hostile.to_owned()),
                    ..Default::default()
                })
            },
            entry,
        )
        .await
        .expect("store a hostile display name");

    for args in [
        vec!["get", "team-a/evil"],
        vec!["get", "team-a/evil", "-o", "table"],
        vec!["list", "team-a"],
        vec!["list", "team-a", "-o", "text"],
        vec!["audit", "team-a"],
        vec!["audit", "team-a", "-o", "text"],
        vec!["get", "team-a/evil", "-o", "json"],
        vec!["list", "team-a", "-o", "yaml"],
        vec!["audit", "team-a", "-o", "json"],
        vec!["audit", "team-a", "-o", "yaml"],
    ] {
        let output = run(&server, &owner, &args);
        let text = ok(&output);
        let what = args.join(" ");
        assert_terminal_safe(&text, &what);
        assert_terminal_safe(&stderr(&output), &what);
        // The bootstrap owner's own `role: ROLE_OWNER` line is the only one.
        assert!(
            !text
                .lines()
                .map(str::trim_start)
                .any(
                    |line| (line.starts_with("role: ROLE_OWNER") && line != "role: ROLE_OWNER")
                        || line.starts_with("fake: line")
                ),
            "{what}: a faked line in\n{text}"
        );
    }

    let text = ok(&run(&server, &owner, &["get", "team-a/evil"]));
    assert_eq!(
        field(&text, "display_name"),
        "ok\\nrole: ROLE_OWNER\\x1b[2J\\x1b]0;pwned\\x07\\u{9b}31m\\u{202e}gpj.exe"
    );
    assert_eq!(field(&text, "description"), "first\\nrole: ROLE_OWNER\\tx");
    assert_eq!(field(&text, "role"), "ROLE_VIEWER");
    let table = ok(&run(&server, &owner, &["list", "team-a"]));
    assert!(
        row(&table, "evil").contains("ok\\nrole: ROLE_OWNER\\x1b[2J"),
        "{table}"
    );
    let audit = ok(&run(&server, &owner, &["audit", "team-a", "-o", "text"]));
    assert!(
        audit.contains("user_agent: curl\\x1b]0;owned\\x07\\u{2066}"),
        "{audit}"
    );
    assert!(audit.contains("request_id: req\\nfake: line"), "{audit}");
    assert!(
        audit.contains("details: fields\\x1b=display_name\\u{202e}\\n"),
        "{audit}"
    );

    // JSON escapes by construction and reads back to the stored text.
    let token = json(&run(&server, &owner, &["get", "team-a/evil", "-o", "json"]));
    assert_eq!(token["displayName"], hostile);
    let events = json(&run(&server, &owner, &["audit", "team-a", "-o", "json"]));
    let update = events["auditEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["action"] == "ACTION_UPDATE")
        .unwrap();
    assert_eq!(update["userAgent"], "curl\u{1b}]0;owned\u{7}\u{2066}");
}
