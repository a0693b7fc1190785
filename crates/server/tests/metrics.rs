//! The binary's observability: `--metrics-listen` scraped directly and by a
//! real Prometheus server (queried through its HTTP API), and
//! `--log-format json` read line by line.
//!
//! Prometheus is Debian's `prometheus` package (`.ci/run` installs it and
//! sets `APITOKEN_REQUIRE_PROMETHEUS=1`, so CI fails rather than skips).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use apitoken_proto::v1::{
    ListApiTokensRequest, VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_apitoken-server");

/// The server as a process, with its stderr lines.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    grpc: String,
    metrics: String,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_of(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("address")?.as_str().map(str::to_owned)
}

fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let output = Command::new(BIN)
        .args(["bootstrap", "--namespace", "team-a", "--database-url", &url])
        .env("APITOKEN_LOG", "warn")
        .output()
        .expect("bootstrap");
    assert!(output.status.success(), "{output:?}");
    let secret = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--database-url",
            &url,
        ])
        .args(extra)
        .env("APITOKEN_LOG", "info,apitoken_server::auth=debug")
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
    let (mut grpc, mut metrics) = (None, None);
    while grpc.is_none() || metrics.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server starts: {log:#?}"));
        if line.contains("serving Prometheus metrics") {
            metrics = address_of(&line);
        } else if line.contains("serving apitoken.v1.ApiTokenService") {
            grpc = address_of(&line);
        }
        log.push(line);
    }
    Server {
        child,
        lines,
        log,
        grpc: grpc.expect("grpc address"),
        metrics: metrics.expect("metrics address"),
        secret,
        _dir: dir,
    }
}

/// A plain HTTP/1.0 GET: status line and body.
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Calls the server makes metrics of: the same list five times (OK; the
/// page cache answers the repeats), a malformed secret and a
/// well-formed unknown one (UNAUTHENTICATED), with a request id and a trace.
fn traffic(server: &Server) -> tonic::metadata::MetadataMap {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = ApiTokenServiceClient::connect(format!("http://{}", server.grpc))
            .await
            .expect("connect");
        for _ in 0..5 {
            let mut list = tonic::Request::new(ListApiTokensRequest {
                parent: "namespaces/team-a".into(),
                ..Default::default()
            });
            list.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", server.secret).parse().expect("ascii"),
            );
            client.list_api_tokens(list).await.expect("list");
        }
        let mut bad = tonic::Request::new(VerifyApiTokenRequest::default());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().expect("ascii"));
        bad.metadata_mut()
            .insert("x-request-id", "req-metrics-1".parse().expect("ascii"));
        bad.metadata_mut().insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("ascii"),
        );
        let refused = client.verify_api_token(bad).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let unknown = tonic::Request::new(VerifyApiTokenRequest {
            secret: apitoken_domain::token::TokenFormat::new("apitoken")
                .expect("prefix")
                .generate()
                .expect("secret")
                .expose()
                .to_owned(),
            ..Default::default()
        });
        let refused = client.verify_api_token(unknown).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        refused.metadata().clone()
    })
}

/// Calls to paths nobody serves, each a different one.
const MADE_UP_PATHS: u32 = 20_000;

/// The server process's resident memory (`VmRSS`), in KiB.
fn resident_kib(server: &Server) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn metrics_are_exported_and_bounded() {
    let server = start(&[]);
    let reply = traffic(&server);
    // The server's own request id comes back when the caller sent none.
    let made = reply
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .expect("x-request-id on the reply")
        .to_owned();
    assert!(!made.is_empty() && made.len() <= 64, "{made}");

    // Paths nobody serves share one series, however many there are: 20,000
    // made-up paths (which grew the server by 42 MB when each had its own
    // counter) leave its memory where it was.
    let rss_before = resident_kib(&server);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        for n in 0..MADE_UP_PATHS {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("ready");
            let path = http::uri::PathAndQuery::try_from(format!("/made.up.Service{n}/Call{n}"))
                .expect("path");
            let result: Result<tonic::Response<()>, tonic::Status> = grpc
                .unary(
                    tonic::Request::new(()),
                    path,
                    tonic_prost::ProstCodec::<(), ()>::default(),
                )
                .await;
            assert_eq!(
                result.expect_err("unimplemented").code(),
                tonic::Code::Unimplemented
            );
        }
    });

    let grown_kib = resident_kib(&server).saturating_sub(rss_before);
    eprintln!("resident memory after {MADE_UP_PATHS} made-up paths: +{grown_kib} KiB");
    assert!(
        grown_kib < 8 * 1024,
        "{MADE_UP_PATHS} made-up paths grew the server by {grown_kib} KiB"
    );

    let (status, body) = http_get(&server.metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let list = r#"apitoken_grpc_requests_total{method="/apitoken.v1.ApiTokenService/ListApiTokens",code="OK"}"#;
    assert_eq!(sample(&body, list), Some(5.0), "{body}");
    // The repeats came from the page cache (a usage flush in between may
    // have moved the namespace once).
    let hits = sample(&body, r#"apitoken_list_cache_requests_total{result="hit"}"#);
    let misses = sample(
        &body,
        r#"apitoken_list_cache_requests_total{result="miss"}"#,
    );
    assert_eq!(hits.unwrap_or(0.0) + misses.unwrap_or(0.0), 5.0, "{body}");
    assert!(hits >= Some(3.0), "{body}");
    let verify = r#"apitoken_grpc_requests_total{method="/apitoken.v1.ApiTokenService/VerifyApiToken",code="UNAUTHENTICATED"}"#;
    assert_eq!(sample(&body, verify), Some(2.0), "{body}");
    let other = r#"apitoken_grpc_requests_total{method="other",code="UNIMPLEMENTED"}"#;
    assert_eq!(sample(&body, other), Some(MADE_UP_PATHS as f64), "{body}");
    assert!(
        !body.contains("made.up"),
        "caller-chosen paths became series"
    );
    for (series, value) in [
        (r#"apitoken_verifications_total{outcome="ok"}"#, 5.0),
        (r#"apitoken_verifications_total{outcome="malformed"}"#, 1.0),
        (r#"apitoken_verifications_total{outcome="invalid"}"#, 1.0),
        (r#"apitoken_active_tokens{namespace="team-a"}"#, 1.0),
        (r#"apitoken_active_tokens{namespace="_other"}"#, 0.0),
        ("apitoken_index_tokens", 1.0),
        ("apitoken_serving", 1.0),
        (r#"apitoken_health_check{check="schema"}"#, 1.0),
        ("apitoken_event_watchers", 0.0),
        ("apitoken_redis_configured", 0.0),
        ("apitoken_redis_fallback", 0.0),
    ] {
        assert_eq!(sample(&body, series), Some(value), "{series}\n{body}");
    }
    assert!(
        sample(
            &body,
            r#"apitoken_grpc_request_duration_seconds_count{method="/apitoken.v1.ApiTokenService/ListApiTokens"}"#
        ) == Some(5.0),
        "{body}"
    );
    assert!(body.contains("# TYPE apitoken_grpc_request_duration_seconds histogram"));
    assert!(body.contains("apitoken_db_pool_max_connections"));
    assert!(!body.contains(&server.secret[13..]), "secret in metrics");

    let (status, _) = http_get(&server.metrics, "/other");
    assert!(status.contains("404"), "{status}");
}

/// The web console's requests are counted by route pattern and status,
/// never by the path a browser sent.
#[test]
fn web_console_requests_are_counted_by_route() {
    let mut server = start(&["--web-listen", "127.0.0.1:0"]);
    let console_of = |line: &str| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value.get("console")?.as_str().map(str::to_owned)
    };
    let mut console = server.log.iter().find_map(|line| console_of(line));
    while console.is_none() {
        let line = server
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the console starts");
        console = console_of(&line);
        server.log.push(line);
    }
    let console = console.expect("console address");
    let (status, _) = http_get(&console, "/sign-in");
    assert!(status.contains("200"), "{status}");
    for n in 0..50 {
        let (status, _) = http_get(&console, &format!("/made-up/{n}"));
        assert!(status.contains("404"), "{status}");
    }
    let (status, _) = http_get(&console, "/tokens/some-token");
    assert!(status.contains("303"), "signed out: {status}");

    let (_, body) = http_get(&server.metrics, "/metrics");
    let count = |route: &str, status: &str| {
        body.lines()
            .filter(|line| line.starts_with("apitoken_web_requests_total{"))
            .filter(|line| {
                line.contains(&format!("route=\"{route}\""))
                    && line.contains(&format!("status=\"{status}\""))
            })
            .find_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(count("/sign-in", "200"), Some(1.0), "{body}");
    assert_eq!(count("other", "404"), Some(50.0), "{body}");
    assert_eq!(count("/tokens/{id}", "303"), Some(1.0), "{body}");
    assert!(!body.contains("made-up"), "browser paths became series");
    assert!(!body.contains("some-token"), "browser paths became series");
    assert!(
        body.contains("apitoken_web_request_duration_seconds_count{route=\"/sign-in\"} 1"),
        "{body}"
    );
}

#[test]
fn json_logs_carry_request_and_trace_ids() {
    let mut server = start(&[]);
    traffic(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed =
        loop {
            if let Some(line) = server.log.iter().find(|line| {
                line.contains("authentication failed") && line.contains("req-metrics-1")
            }) {
                break line.clone();
            }
            assert!(Instant::now() < deadline, "no such line: {:#?}", server.log);
            if let Ok(line) = server.lines.recv_timeout(Duration::from_millis(200)) {
                server.log.push(line);
            }
        };
    let line: serde_json::Value = serde_json::from_str(&failed).expect("json");
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["target"], "apitoken_server::auth");
    assert_eq!(line["message"], "authentication failed");
    assert_eq!(line["request_id"], "req-metrics-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        line["method"],
        "/apitoken.v1.ApiTokenService/VerifyApiToken"
    );
    assert_eq!(line["reason"], "TOKEN_MALFORMED");
    server.log.extend(server.lines.try_iter());
    for line in &server.log {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(value.get(field).is_some(), "{field} missing: {line}");
        }
        assert!(!line.contains('\u{1b}'), "colour codes: {line}");
        assert!(!line.contains(&server.secret[13..]), "secret in logs");
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_real_prometheus_scrapes_and_answers_queries() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists());
    let Some(prometheus) = prometheus else {
        assert!(
            std::env::var_os("APITOKEN_REQUIRE_PROMETHEUS").is_none(),
            "APITOKEN_REQUIRE_PROMETHEUS is set but no prometheus binary was found"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let server = start(&[]);
    traffic(&server);
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: apitoken\n    static_configs:\n      - targets: ['{}']\n",
            server.metrics
        ),
    )
    .expect("config");
    let web = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = "/api/v1/query?query=apitoken_grpc_requests_total%7Bmethod%3D%22%2Fapitoken.v1.ApiTokenService%2FListApiTokens%22%2Ccode%3D%22OK%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if TcpStream::connect(&web).is_ok() {
            let (status, body) = http_get(&web, query);
            if status.contains("200") && body.contains("\"value\"") {
                break body;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("Prometheus never had the series");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = child.kill();
    let _ = child.wait();
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["status"], "success");
    let result = &answer["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "apitoken");
    assert_eq!(result["metric"]["code"], "OK");
    assert_eq!(result["value"][1], "5", "{answer}");
}
