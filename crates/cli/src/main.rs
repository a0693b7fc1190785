//! `apitoken`: the command line of the service, for people. Everything the
//! API offers on tokens and the audit log, with `APITOKEN_ENDPOINT` and
//! `APITOKEN_TOKEN` from the environment.
//!
//! Output (`-o`): `table` (the default of `list` and `audit`: the dashboard
//! columns), `text` (`key: value` lines, the default of the commands that
//! show one token), `json` (the API's proto3 JSON mapping, for `jq`) and
//! `yaml`. A new secret is printed once (`-q` prints nothing else). Errors go
//! to standard error with the gRPC code, the message and the `google.rpc`
//! reason or fields, and the exit status says what kind of failure it was
//! (see [`failure::EXIT_STATUS_HELP`]). Nothing a token's creator typed
//! reaches the terminal unescaped.

mod connect;
mod escape;
mod failure;
mod mapping;
mod render;
mod value;

use std::{
    collections::BTreeMap,
    future::Future,
    io::{self, BufRead, IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use apitoken_proto::prost_types;
use apitoken_proto::v1::{
    self, ApiToken, AuditEvent, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
    ListAuditEventsRequest, RegenerateApiTokenRequest, RevokeApiTokenRequest,
    UpdateApiTokenRequest, VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};
use clap_complete::Shell;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::{
    escape::{escape, quote},
    failure::{EXIT_STATUS_HELP, Failure},
    value::Value,
};

/// Items fetched at most when every page is asked for.
const MAX_ITEMS: usize = 10_000;
/// Pages fetched at most when every page is asked for.
const MAX_PAGES: usize = 100;
/// Page size when every page is asked for.
const PAGE_SIZE: u32 = 500;
/// Longest `--filter`.
const MAX_FILTER_LEN: usize = 1_000;
/// Longest `--page-token` and `--etag`.
const MAX_OPAQUE_LEN: usize = 1_024;
/// Longest token accepted from `--token` or `APITOKEN_TOKEN`.
const MAX_TOKEN_LEN: usize = 1_024;
/// Longest `--ttl` or `--grace`: 100 years.
const MAX_DURATION_DAYS: u64 = 36_500;
/// Longest `--timeout` or `--connect-timeout`.
const MAX_TIMEOUT_SECS: u64 = 3_600;

const AFTER_HELP: &str = "\
Output (-o): table (default of list and audit), text (key: value lines,
default of the commands that show one token), json (the API's proto3 JSON,
for jq: {\"apiTokens\": [...]} with every page merged), yaml (the same data).

Environment: APITOKEN_ENDPOINT, APITOKEN_TOKEN, APITOKEN_CONNECT_TIMEOUT,
APITOKEN_TIMEOUT (flags win).";

/// Manage apitoken tokens and read the audit log.
#[derive(Debug, Parser)]
#[command(
    name = "apitoken",
    version,
    about,
    after_help = format!("{AFTER_HELP}\n\n{EXIT_STATUS_HELP}"),
)]
struct Cli {
    /// The apitoken server, `http://host:port`.
    #[arg(
        long,
        env = "APITOKEN_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_hint = ValueHint::Url,
        global = true,
        help_heading = "Global options"
    )]
    endpoint: String,
    /// Your token (prefer the environment variable).
    #[arg(
        long,
        env = "APITOKEN_TOKEN",
        hide_env_values = true,
        value_hint = ValueHint::Other,
        global = true,
        help_heading = "Global options"
    )]
    token: Option<String>,
    /// Verify the server against this CA (PEM) instead of the system's trust store.
    #[arg(
        long,
        env = "APITOKEN_CA_CERT",
        value_hint = ValueHint::FilePath,
        global = true,
        help_heading = "Global options"
    )]
    ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --client-key.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_CERT",
        value_hint = ValueHint::FilePath,
        global = true,
        requires = "client_key",
        help_heading = "Global options"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_KEY",
        value_hint = ValueHint::FilePath,
        global = true,
        requires = "client_cert",
        help_heading = "Global options"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Allow http:// to a host that is not loopback (the token crosses the
    /// network in clear: only where a mesh encrypts it).
    #[arg(
        long,
        env = "APITOKEN_PLAINTEXT",
        global = true,
        help_heading = "Global options"
    )]
    plaintext: bool,
    /// Output format [default: table for list and audit, text otherwise].
    #[arg(
        short = 'o',
        long,
        value_enum,
        global = true,
        help_heading = "Global options"
    )]
    output: Option<Format>,
    /// Longest wait for the connection to the server, e.g. `5s`, `500ms`.
    #[arg(
        long,
        env = "APITOKEN_CONNECT_TIMEOUT",
        default_value = "5s",
        value_parser = parse_timeout,
        value_hint = ValueHint::Other,
        global = true,
        help_heading = "Global options"
    )]
    connect_timeout: Duration,
    /// Longest wait for the answer to each call.
    #[arg(
        long,
        env = "APITOKEN_TIMEOUT",
        default_value = "30s",
        value_parser = parse_timeout,
        value_hint = ValueHint::Other,
        global = true,
        help_heading = "Global options"
    )]
    timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns, one row per item.
    Table,
    /// `key: value` lines, one block per item.
    Text,
    /// The API's proto3 JSON mapping.
    Json,
    /// The same data as YAML.
    Yaml,
}

/// A role on the command line (`editor`, or `ROLE_EDITOR` as in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// May read.
    #[value(alias = "role_viewer")]
    Viewer,
    /// May read and write.
    #[value(alias = "role_editor")]
    Editor,
    /// May also manage the namespace's tokens.
    #[value(alias = "role_owner")]
    Owner,
}

impl From<RoleArg> for v1::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Viewer => v1::Role::Viewer,
            RoleArg::Editor => v1::Role::Editor,
            RoleArg::Owner => v1::Role::Owner,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the token you authenticate with.
    Whoami,
    /// Create a token: `NAMESPACE/ID` or `namespaces/NS/apitokens/ID`.
    #[command(after_help = "The secret is printed once. In scripts:\n  \
        export CI_TOKEN=\"$(apitoken create team-a/ci --role editor --ttl 90d -q)\"")]
    Create {
        /// The new token's name.
        #[arg(value_parser = parse_token_name, value_hint = ValueHint::Other)]
        name: String,
        /// At most your own role.
        #[arg(long, value_enum, ignore_case = true)]
        role: RoleArg,
        /// Human-readable name.
        #[arg(long, default_value = "", hide_default_value = true, value_hint = ValueHint::Other)]
        display_name: String,
        /// Free text.
        #[arg(long, default_value = "", hide_default_value = true, value_hint = ValueHint::Other)]
        description: String,
        /// Lifetime, e.g. `90d`, `12h`.
        #[arg(long, value_parser = parse_duration, conflicts_with = "expire_time", value_hint = ValueHint::Other)]
        ttl: Option<Duration>,
        /// Expiry, RFC 3339, e.g. `2026-12-31T23:59:59Z`.
        #[arg(long, value_parser = parse_time, value_hint = ValueHint::Other)]
        expire_time: Option<DateTime<Utc>>,
        /// Label `key=value` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, value_hint = ValueHint::Other)]
        labels: Vec<(String, String)>,
        /// The token's own rate limit: `10/s`, `120/m`, `5000/h` (a bare
        /// number is per minute) or `unlimited`; default: the role's.
        #[arg(long, value_name = "LIMIT", value_parser = parse_limit, value_hint = ValueHint::Other)]
        rate_limit: Option<LimitArg>,
        /// A token for a service's interceptor or a proxy: it may report
        /// usage and name the address of the calls it verifies.
        #[arg(long)]
        interceptor: bool,
        /// Print only the secret and a newline.
        #[arg(short = 'q', long)]
        secret_only: bool,
    },
    /// List a namespace's tokens, newest first (every page, or --limit).
    List {
        /// The namespace: `team-a` or `namespaces/team-a`.
        #[arg(value_parser = parse_namespace, value_hint = ValueHint::Other)]
        namespace: String,
        /// e.g. `role = ROLE_EDITOR AND state = STATE_ACTIVE`, `unused_days >= 30`,
        /// `expires_within_days <= 14`.
        #[arg(long, default_value = "", hide_default_value = true, value_parser = parse_filter, value_hint = ValueHint::Other)]
        filter: String,
        /// Include revoked tokens.
        #[arg(long)]
        show_revoked: bool,
        /// One page of at most this many tokens (1 to 1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000), value_hint = ValueHint::Other)]
        limit: Option<u32>,
        /// Start at this page (printed when there are more).
        #[arg(long, default_value = "", hide_default_value = true, value_parser = parse_opaque, value_hint = ValueHint::Other)]
        page_token: String,
    },
    /// Show one token.
    Get {
        /// The token's name.
        #[arg(value_parser = parse_token_name, value_hint = ValueHint::Other)]
        name: String,
    },
    /// Change a token. Only the fields given change.
    #[command(group(ArgGroup::new("changes").required(true).multiple(true).args([
        "display_name", "description", "labels", "clear_labels", "expire_time", "ttl", "role", "rate_limit",
    ])))]
    Update {
        /// The token's name.
        #[arg(value_parser = parse_token_name, value_hint = ValueHint::Other)]
        name: String,
        /// New display name.
        #[arg(long, value_hint = ValueHint::Other)]
        display_name: Option<String>,
        /// New description.
        #[arg(long, value_hint = ValueHint::Other)]
        description: Option<String>,
        /// Label `key=value` (repeatable): the token's labels become exactly these.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, value_hint = ValueHint::Other)]
        labels: Vec<(String, String)>,
        /// Remove every label.
        #[arg(long, conflicts_with = "labels")]
        clear_labels: bool,
        /// New expiry, RFC 3339; only earlier than the current one.
        #[arg(long, value_parser = parse_time, conflicts_with = "ttl", value_hint = ValueHint::Other)]
        expire_time: Option<DateTime<Utc>>,
        /// New expiry as a lifetime from now, e.g. `30d`; only earlier.
        #[arg(long, value_parser = parse_duration, value_hint = ValueHint::Other)]
        ttl: Option<Duration>,
        /// New rate limit (`10/s`, `120/m`, `5000/h`, `unlimited`), or
        /// `default` for the role's.
        #[arg(long, value_name = "LIMIT", value_parser = parse_limit, value_hint = ValueHint::Other)]
        rate_limit: Option<LimitArg>,
        /// New role; only lower.
        #[arg(long, value_enum, ignore_case = true)]
        role: Option<RoleArg>,
        /// Only update if the token is still at this etag (`get` shows it).
        #[arg(long, value_parser = parse_opaque, value_hint = ValueHint::Other)]
        etag: Option<String>,
    },
    /// Issue a new secret; with `--grace`, the old one keeps working that long.
    Regenerate {
        /// The token's name.
        #[arg(value_parser = parse_token_name, value_hint = ValueHint::Other)]
        name: String,
        /// How long the previous secret keeps working, e.g. `1h`.
        #[arg(long, value_parser = parse_duration, value_hint = ValueHint::Other)]
        grace: Option<Duration>,
        /// End the grace period at the first use of the new secret.
        #[arg(long)]
        end_grace_on_first_use: bool,
        /// Print only the new secret and a newline.
        #[arg(short = 'q', long)]
        secret_only: bool,
    },
    /// Revoke a token, immediately and for good (asks first).
    Revoke {
        /// The token's name.
        #[arg(value_parser = parse_token_name, value_hint = ValueHint::Other)]
        name: String,
        /// Do not ask; needed when standard input is not a terminal.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Show a namespace's audit log, newest first (every page, or --limit).
    Audit {
        /// The namespace: `team-a` or `namespaces/team-a`.
        #[arg(value_parser = parse_namespace, value_hint = ValueHint::Other)]
        namespace: String,
        /// e.g. `action = ACTION_REVOKE`, `event_time >= "2026-11-01T00:00:00Z"`.
        #[arg(long, default_value = "", hide_default_value = true, value_parser = parse_filter, value_hint = ValueHint::Other)]
        filter: String,
        /// One page of at most this many events (1 to 1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000), value_hint = ValueHint::Other)]
        limit: Option<u32>,
        /// Start at this page (printed when there are more).
        #[arg(long, default_value = "", hide_default_value = true, value_parser = parse_opaque, value_hint = ValueHint::Other)]
        page_token: String,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Install:
  bash: apitoken completion bash > ~/.local/share/bash-completion/completions/apitoken
  zsh:  apitoken completion zsh > \"${fpath[1]}/_apitoken\"
  fish: apitoken completion fish > ~/.config/fish/completions/apitoken.fish")]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
}

/// `5s`, `1500ms`, `2m`.
pub(crate) fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(60_000) && millis > 0 {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1_000) {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

/// `text` split into a number and a unit from `units` (name, milliseconds).
fn parse_with_units(text: &str, units: &[(&str, u64)], hint: &str) -> Result<Duration, String> {
    let bad = || format!("{} is not a duration like {hint}", quote(text, 40));
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let (_, millis) = units
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(bad)?;
    number
        .checked_mul(*millis)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// A lifetime: `30s`, `5m`, `12h`, `90d`, at most 36500 days.
/// A rate limit given on the command line; `None`: the role's default.
#[derive(Debug, Clone, Copy)]
struct LimitArg(Option<v1::RateLimit>);

/// `10/s`, `120/m`, `5000/h`, `120` (a minute), `unlimited`, or `default`
/// (also `0`) for the role's. The server checks the bounds.
fn parse_limit(text: &str) -> Result<LimitArg, String> {
    use v1::rate_limit::Window;
    let text = text.trim();
    match text {
        "default" | "0" => return Ok(LimitArg(None)),
        "unlimited" => {
            return Ok(LimitArg(Some(v1::RateLimit {
                unlimited: true,
                ..Default::default()
            })));
        }
        _ => {}
    }
    let bad = || format!("`{text}` is not a limit like 10/s, 120/m, 5000/h, unlimited or default");
    let (count, unit) = text.split_once('/').unwrap_or((text, "m"));
    let requests: i64 = count.trim().parse().map_err(|_| bad())?;
    let window = match unit.trim() {
        "s" => Window::Second,
        "m" => Window::Minute,
        "h" => Window::Hour,
        _ => return Err(bad()),
    };
    if requests < 1 {
        return Err(bad());
    }
    Ok(LimitArg(Some(v1::RateLimit {
        requests,
        window: window.into(),
        unlimited: false,
    })))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_with_units(
        text,
        &[
            ("s", 1_000),
            ("m", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ],
        "30s, 5m, 12h or 90d",
    )?;
    if duration > Duration::from_secs(MAX_DURATION_DAYS * 86_400) {
        return Err(format!("must be at most {MAX_DURATION_DAYS}d"));
    }
    Ok(duration)
}

/// A timeout: `500ms`, `5s`, `1m`; more than 0, at most an hour.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_with_units(
        text,
        &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)],
        "500ms, 5s or 1m",
    )?;
    if duration.is_zero() || duration > Duration::from_secs(MAX_TIMEOUT_SECS) {
        return Err("must be more than 0 and at most 1h".to_owned());
    }
    Ok(duration)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{} is not an RFC 3339 time like 2026-12-31T23:59:59Z",
                quote(text, 40)
            )
        })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{} is not key=value", quote(text, 40)))
}

/// `NS/ID` or `namespaces/NS/apitokens/ID`, as the full name.
fn parse_token_name(text: &str) -> Result<String, String> {
    let full = if text.starts_with("namespaces/") {
        text.to_owned()
    } else if let Some((namespace, id)) = text.split_once('/') {
        format!("namespaces/{namespace}/apitokens/{id}")
    } else {
        String::new()
    };
    match full
        .strip_prefix("namespaces/")
        .map(|rest| rest.split('/').collect::<Vec<_>>())
    {
        Some(parts)
            if parts.len() == 3
                && parts[1] == "apitokens"
                && !parts[0].is_empty()
                && !parts[2].is_empty()
                && full.len() <= 200 =>
        {
            Ok(full)
        }
        _ => Err(format!(
            "{} is not a token name: NAMESPACE/ID (e.g. team-a/ci-deploy) or \
             namespaces/NAMESPACE/apitokens/ID",
            quote(text, 60)
        )),
    }
}

/// `NS` or `namespaces/NS`, as `namespaces/NS`.
fn parse_namespace(text: &str) -> Result<String, String> {
    let namespace = text.strip_prefix("namespaces/").unwrap_or(text);
    if namespace.is_empty() || namespace.contains('/') || namespace.len() > 100 {
        return Err(format!(
            "{} is not a namespace: e.g. team-a",
            quote(text, 60)
        ));
    }
    Ok(format!("namespaces/{namespace}"))
}

fn parse_filter(text: &str) -> Result<String, String> {
    if text.chars().count() > MAX_FILTER_LEN {
        return Err(format!("must be at most {MAX_FILTER_LEN} characters"));
    }
    Ok(text.to_owned())
}

fn parse_opaque(text: &str) -> Result<String, String> {
    if text.len() > MAX_OPAQUE_LEN {
        return Err(format!("must be at most {MAX_OPAQUE_LEN} characters"));
    }
    Ok(text.to_owned())
}

/// Labels as a map; a key given twice is a usage error.
fn label_map(labels: Vec<(String, String)>) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for (key, value) in labels {
        if map.insert(key.clone(), value).is_some() {
            return Err(Failure::Usage(format!(
                "label {} is given twice",
                quote(&key, 63)
            )));
        }
    }
    Ok(map)
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn proto_time(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Writes `text` to standard output. A closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Output(error)),
        _ => Ok(()),
    }
}

/// Asks `question` and reads a yes (`y`, `yes`) from `input`; anything else,
/// end of input included, is no.
fn confirm(question: &str, input: impl BufRead, prompt: &mut impl Write) -> io::Result<bool> {
    write!(prompt, "{question} [y/N] ")?;
    prompt.flush()?;
    let mut answer = String::new();
    input.take(64).read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// One token (or a response holding one) in `format`; `message` is the
/// canonical message for `json` and `yaml`.
fn show_one(
    format: Format,
    token: Option<&ApiToken>,
    message: &Value,
    secret: Option<&str>,
    now: DateTime<Utc>,
) -> String {
    let mut out = match format {
        Format::Json => return value::to_json(message),
        Format::Yaml => return value::to_yaml(message),
        Format::Text => {
            let mut out = String::new();
            if let Some(token) = token {
                render::token_text(token, &mut out);
            }
            out
        }
        Format::Table => {
            render::token_table(token.map(std::slice::from_ref).unwrap_or(&[]), now).render()
        }
    };
    if let Some(secret) = secret {
        out.push_str(&format!("secret: {}\n", escape(secret)));
    }
    out
}

/// Warns on standard error that a secret was printed for the only time.
fn warn_secret_once() {
    eprintln!(
        "warning: the secret is shown only this once: store it now (in your secret manager); \
         it cannot be retrieved later"
    );
}

/// A connected client and the caller's credentials.
struct Session {
    client: ApiTokenServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    endpoint: String,
    timeout: Duration,
}

impl Session {
    async fn open(cli: &Cli) -> Result<Session, Failure> {
        // A bad URL is said first: no token is needed to see it.
        connect::parse_endpoint(&cli.endpoint, cli.plaintext).map_err(Failure::Connect)?;
        let token = cli
            .token
            .as_deref()
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(Failure::NoToken)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(Failure::BadToken(format!(
                "is longer than {MAX_TOKEN_LEN} characters"
            )));
        }
        let mut authorization =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                Failure::BadToken(
                    "holds characters that cannot be sent (not printable ASCII)".into(),
                )
            })?;
        // Never HPACK-indexed, never in Debug output.
        authorization.set_sensitive(true);
        let options = apitoken_proto::endpoint::ConnectOptions {
            ca: cli.ca_cert.clone().map(Into::into),
            identity: cli
                .client_cert
                .clone()
                .zip(cli.client_key.clone())
                .map(|(cert, key)| apitoken_proto::endpoint::ClientIdentity {
                    cert: cert.into(),
                    key: key.into(),
                }),
            allow_plaintext: cli.plaintext,
            connect_timeout: cli.connect_timeout,
        };
        let channel = connect::connect(&cli.endpoint, &options)
            .await
            .map_err(Failure::Connect)?;
        Ok(Session {
            client: ApiTokenServiceClient::new(channel),
            authorization,
            endpoint: cli.endpoint.clone(),
            timeout: cli.timeout,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// Awaits a call within the per-call timeout.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // tonic only gives a status a source when it made it from a
            // transport error (the server's own statuses have none).
            Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                Err(Failure::Connect(connect::ConnectError::Lost {
                    endpoint: self.endpoint.clone(),
                    reason: std::error::Error::source(&status)
                        .map_or_else(String::new, connect::plain_words),
                }))
            }
            Ok(Err(status)) => Err(Failure::Status {
                status: Box::new(status),
                endpoint: self.endpoint.clone(),
            }),
            Err(_) => Err(Failure::Timeout {
                endpoint: self.endpoint.clone(),
                after: self.timeout,
            }),
        }
    }
}

/// Fetches pages until the last, `limit` (one page), or the bounds; returns
/// the items and the token of the next page (empty if none).
async fn pages<T>(
    limit: Option<u32>,
    first_page: String,
    mut fetch: impl AsyncFnMut(String, i32) -> Result<(Vec<T>, String), Failure>,
) -> Result<(Vec<T>, String), Failure> {
    let page_size = i32::try_from(limit.unwrap_or(PAGE_SIZE)).unwrap_or(1000);
    let mut items = Vec::new();
    let mut page_token = first_page;
    for _ in 0..MAX_PAGES {
        let (page, next) = fetch(page_token, page_size).await?;
        items.extend(page);
        if limit.is_some() || next.is_empty() || items.len() >= MAX_ITEMS {
            return Ok((items, next));
        }
        page_token = next;
    }
    Ok((items, page_token))
}

/// Tells on standard error that there is more, and how to get it.
fn note_more(what: &str, count: usize, next_page_token: &str, limited: bool) {
    if !next_page_token.is_empty() {
        if !limited {
            eprintln!("warning: stopped after {count} {what}: narrow it with --filter");
        }
        eprintln!("more {what}: add --page-token {}", escape(next_page_token));
    }
}

fn check_secret_only(secret_only: bool, output: Option<Format>) -> Result<(), Failure> {
    if secret_only && output.is_some() {
        return Err(Failure::Usage(
            "--secret-only prints only the secret: it cannot be combined with --output".into(),
        ));
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let now = Utc::now();
    let one = cli.output.unwrap_or(Format::Text);
    let many = cli.output.unwrap_or(Format::Table);
    match &cli.command {
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "apitoken", &mut script);
            return emit(&String::from_utf8_lossy(&script));
        }
        Command::Create { secret_only, .. } | Command::Regenerate { secret_only, .. } => {
            check_secret_only(*secret_only, cli.output)?;
        }
        Command::Revoke { name, yes: false } => {
            if !io::stdin().is_terminal() {
                return Err(Failure::Usage(format!(
                    "refusing to revoke {} without confirmation: standard input is not a \
                     terminal; pass --yes",
                    quote(name, 100)
                )));
            }
            let question = format!("Revoke {}? This cannot be undone.", escape(name));
            let agreed = confirm(&question, io::stdin().lock(), &mut io::stderr())
                .map_err(Failure::Output)?;
            if !agreed {
                return Err(Failure::Declined("Not revoked.".into()));
            }
        }
        _ => {}
    }
    let session = Session::open(&cli).await?;
    let mut client = session.client.clone();
    match cli.command {
        Command::Completion { .. } => Ok(()),
        Command::Whoami => {
            let reply = session
                .call(client.verify_api_token(session.request(VerifyApiTokenRequest::default())))
                .await?;
            emit(&show_one(
                one,
                reply.api_token.as_ref(),
                &mapping::verified(&reply),
                None,
                now,
            ))
        }
        Command::Create {
            name,
            role,
            display_name,
            description,
            ttl,
            expire_time,
            labels,
            rate_limit,
            interceptor,
            secret_only,
        } => {
            let (parent, id) = name
                .rsplit_once("/apitokens/")
                .ok_or_else(|| Failure::Usage("name must be NAMESPACE/ID".into()))?;
            let request = CreateApiTokenRequest {
                parent: parent.to_owned(),
                api_token_id: id.to_owned(),
                api_token: Some(ApiToken {
                    role: v1::Role::from(role).into(),
                    display_name,
                    description,
                    labels: label_map(labels)?.into_iter().collect(),
                    limit: rate_limit.and_then(|limit| limit.0),
                    interceptor,
                    expire_time: expire_time.map(proto_time),
                    ..Default::default()
                }),
                ttl: ttl.map(proto_duration),
            };
            let reply = session
                .call(client.create_api_token(session.request(request)))
                .await?;
            if secret_only {
                return emit(&format!("{}\n", escape(&reply.secret)));
            }
            emit(&show_one(
                one,
                reply.api_token.as_ref(),
                &mapping::created(&reply),
                Some(&reply.secret),
                now,
            ))?;
            warn_secret_once();
            Ok(())
        }
        Command::List {
            namespace,
            filter,
            show_revoked,
            limit,
            page_token,
        } => {
            let (tokens, next): (Vec<ApiToken>, String) =
                pages(limit, page_token, async |page_token, page_size| {
                    let request = ListApiTokensRequest {
                        parent: namespace.clone(),
                        filter: filter.clone(),
                        show_revoked,
                        page_token,
                        page_size,
                    };
                    let page = session
                        .call(client.list_api_tokens(session.request(request)))
                        .await?;
                    Ok((page.api_tokens, page.next_page_token))
                })
                .await?;
            let text = match many {
                Format::Json => value::to_json(&mapping::token_list(&tokens, &next)),
                Format::Yaml => value::to_yaml(&mapping::token_list(&tokens, &next)),
                _ if tokens.is_empty() => {
                    eprintln!("no tokens in {}", escape(&namespace));
                    String::new()
                }
                Format::Table => render::token_table(&tokens, now).render(),
                Format::Text => render::blocks(&tokens, render::token_text),
            };
            emit(&text)?;
            note_more("tokens", tokens.len(), &next, limit.is_some());
            Ok(())
        }
        Command::Get { name } => {
            let token = session
                .call(client.get_api_token(session.request(GetApiTokenRequest { name })))
                .await?;
            emit(&show_one(
                one,
                Some(&token),
                &mapping::token(&token),
                None,
                now,
            ))
        }
        Command::Update {
            rate_limit,
            name,
            display_name,
            description,
            labels,
            clear_labels,
            expire_time,
            ttl,
            role,
            etag,
        } => {
            let mut paths = Vec::new();
            let mut token = ApiToken {
                name,
                etag: etag.unwrap_or_default(),
                ..Default::default()
            };
            if let Some(display_name) = display_name {
                token.display_name = display_name;
                paths.push("display_name");
            }
            if let Some(description) = description {
                token.description = description;
                paths.push("description");
            }
            if clear_labels || !labels.is_empty() {
                token.labels = label_map(labels)?.into_iter().collect();
                paths.push("labels");
            }
            let expire_time = match (expire_time, ttl) {
                (Some(time), _) => Some(time),
                (None, Some(ttl)) => Some(
                    chrono::TimeDelta::from_std(ttl)
                        .ok()
                        .and_then(|ttl| now.checked_add_signed(ttl))
                        .ok_or_else(|| Failure::Usage("--ttl is too long".into()))?,
                ),
                (None, None) => None,
            };
            if let Some(expire_time) = expire_time {
                token.expire_time = Some(proto_time(expire_time));
                paths.push("expire_time");
            }
            if let Some(limit) = rate_limit {
                token.limit = limit.0;
                paths.push("limit");
            }
            if let Some(role) = role {
                token.role = v1::Role::from(role).into();
                paths.push("role");
            }
            let request = UpdateApiTokenRequest {
                api_token: Some(token),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.into_iter().map(str::to_owned).collect(),
                }),
            };
            let token = session
                .call(client.update_api_token(session.request(request)))
                .await?;
            emit(&show_one(
                one,
                Some(&token),
                &mapping::token(&token),
                None,
                now,
            ))
        }
        Command::Regenerate {
            name,
            grace,
            end_grace_on_first_use,
            secret_only,
        } => {
            let request = RegenerateApiTokenRequest {
                name,
                previous_secret_ttl: grace.map(proto_duration),
                end_grace_on_first_use,
            };
            let reply = session
                .call(client.regenerate_api_token(session.request(request)))
                .await?;
            if secret_only {
                return emit(&format!("{}\n", escape(&reply.secret)));
            }
            emit(&show_one(
                one,
                reply.api_token.as_ref(),
                &mapping::regenerated(&reply),
                Some(&reply.secret),
                now,
            ))?;
            warn_secret_once();
            Ok(())
        }
        Command::Revoke { name, .. } => {
            let token = session
                .call(client.revoke_api_token(session.request(RevokeApiTokenRequest { name })))
                .await?;
            emit(&show_one(
                one,
                Some(&token),
                &mapping::token(&token),
                None,
                now,
            ))
        }
        Command::Audit {
            namespace,
            filter,
            limit,
            page_token,
        } => {
            let (events, next): (Vec<AuditEvent>, String) =
                pages(limit, page_token, async |page_token, page_size| {
                    let request = ListAuditEventsRequest {
                        parent: namespace.clone(),
                        filter: filter.clone(),
                        page_token,
                        page_size,
                    };
                    let page = session
                        .call(client.list_audit_events(session.request(request)))
                        .await?;
                    Ok((page.audit_events, page.next_page_token))
                })
                .await?;
            let text = match many {
                Format::Json => value::to_json(&mapping::event_list(&events, &next)),
                Format::Yaml => value::to_yaml(&mapping::event_list(&events, &next)),
                _ if events.is_empty() => {
                    eprintln!("no audit events in {}", escape(&namespace));
                    String::new()
                }
                Format::Table => render::event_table(&events).render(),
                Format::Text => render::blocks(&events, render::event_text),
            };
            emit(&text)?;
            note_more("events", events.len(), &next, limit.is_some());
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2.
        Err(error) => error.exit(),
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{}", failure.report());
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names_and_values_parse() {
        assert_eq!(
            parse_token_name("team-a/ci"),
            Ok("namespaces/team-a/apitokens/ci".into())
        );
        assert_eq!(
            parse_token_name("namespaces/team-a/apitokens/ci"),
            Ok("namespaces/team-a/apitokens/ci".into())
        );
        for bad in [
            "ci",
            "team-a/",
            "/ci",
            "namespaces/team-a/other/ci",
            "a/b/c",
        ] {
            assert!(parse_token_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_namespace("team-a"), Ok("namespaces/team-a".into()));
        assert_eq!(
            parse_namespace("namespaces/team-a"),
            Ok("namespaces/team-a".into())
        );
        assert!(parse_namespace("a/b").is_err());
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            parse_duration("36500d"),
            Ok(Duration::from_secs(36_500 * 86_400))
        );
        assert_eq!(
            parse_duration("36501d"),
            Err("must be at most 36500d".into())
        );
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("1ms").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("2h").is_err());
        let role = |text: &str| {
            Cli::try_parse_from(["apitoken", "create", "a/b", "--role", text]).map(|cli| match cli
                .command
            {
                Command::Create { role, .. } => v1::Role::from(role),
                _ => unreachable!(),
            })
        };
        assert_eq!(role("editor").unwrap(), v1::Role::Editor);
        assert_eq!(role("ROLE_OWNER").unwrap(), v1::Role::Owner);
        assert_eq!(role("Viewer").unwrap(), v1::Role::Viewer);
        assert!(role("admin").is_err());
        assert!(role("unspecified").is_err());
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert!(parse_label("env").is_err());
        assert!(parse_time("2026-12-31T23:59:59Z").is_ok());
        assert!(parse_time("2026-12-31").is_err());
        assert!(label_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
        assert_eq!(show_duration(Duration::from_secs(5)), "5s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn confirmation_needs_a_yes() {
        for (answer, expected) in [
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
            ("yesplease\n", false),
        ] {
            let mut prompt = Vec::new();
            let agreed = confirm("Revoke x?", answer.as_bytes(), &mut prompt).unwrap();
            assert_eq!(agreed, expected, "{answer:?}");
            assert_eq!(prompt, b"Revoke x? [y/N] ");
        }
    }

    #[tokio::test]
    async fn paging_is_bounded() {
        // A server that always has another full page.
        let mut calls = 0;
        let (items, next) = pages(None, String::new(), async |token, size| {
            calls += 1;
            assert_eq!(size, 500);
            assert_eq!(
                token,
                if calls == 1 {
                    String::new()
                } else {
                    format!("p{}", calls - 1)
                }
            );
            Ok((vec![0u8; 500], format!("p{calls}")))
        })
        .await
        .unwrap();
        assert_eq!((items.len(), next.as_str()), (MAX_ITEMS, "p20"));
        // One that keeps sending empty pages with a next token.
        let mut calls = 0;
        let (items, next) = pages(None, String::new(), async |_, _| {
            calls += 1;
            Ok((Vec::<u8>::new(), "again".to_owned()))
        })
        .await
        .unwrap();
        assert_eq!((items.len(), next.as_str(), calls), (0, "again", MAX_PAGES));
        // --limit: one page of that size, from the given token.
        let (items, next) = pages(Some(7), "start".into(), async |token, size| {
            assert_eq!((token.as_str(), size), ("start", 7));
            Ok((vec![1u8; 7], "more".to_owned()))
        })
        .await
        .unwrap();
        assert_eq!((items.len(), next.as_str()), (7, "more"));
    }

    #[test]
    fn help_documents_exit_statuses() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("6  unavailable"), "{help}");
    }
}
