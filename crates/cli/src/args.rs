//! The command line's arguments: options, subcommands, and the parsers and
//! bounds of every value a person types (names, durations, limits, times,
//! labels, filters), plus their conversion to the API's types.

use super::*;

/// Items fetched at most when every page is asked for.
pub(crate) const MAX_ITEMS: usize = 10_000;
/// Pages fetched at most when every page is asked for.
pub(crate) const MAX_PAGES: usize = 100;
/// Page size when every page is asked for.
pub(crate) const PAGE_SIZE: u32 = 500;
/// Longest `--filter`.
pub(crate) const MAX_FILTER_LEN: usize = 1_000;
/// Longest `--page-token` and `--etag`.
pub(crate) const MAX_OPAQUE_LEN: usize = 1_024;
/// Longest token accepted from `--token` or `APITOKEN_TOKEN`.
pub(crate) const MAX_TOKEN_LEN: usize = 1_024;
/// Longest `--ttl` or `--grace`: 100 years.
pub(crate) const MAX_DURATION_DAYS: u64 = 36_500;
/// Longest `--timeout` or `--connect-timeout`.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 3_600;

pub(crate) const AFTER_HELP: &str = "\
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
pub(crate) struct Cli {
    /// The apitoken server, `http://host:port`.
    #[arg(
        long,
        env = "APITOKEN_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_hint = ValueHint::Url,
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) endpoint: String,
    /// Your token (prefer the environment variable).
    #[arg(
        long,
        env = "APITOKEN_TOKEN",
        hide_env_values = true,
        value_hint = ValueHint::Other,
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) token: Option<String>,
    /// Verify the server against this CA (PEM) instead of the system's trust store.
    #[arg(
        long,
        env = "APITOKEN_CA_CERT",
        value_hint = ValueHint::FilePath,
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --client-key.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_CERT",
        value_hint = ValueHint::FilePath,
        global = true,
        requires = "client_key",
        help_heading = "Global options"
    )]
    pub(crate) client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_KEY",
        value_hint = ValueHint::FilePath,
        global = true,
        requires = "client_cert",
        help_heading = "Global options"
    )]
    pub(crate) client_key: Option<std::path::PathBuf>,
    /// Allow http:// to a host that is not loopback (the token crosses the
    /// network in clear: only where a mesh encrypts it).
    #[arg(
        long,
        env = "APITOKEN_PLAINTEXT",
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) plaintext: bool,
    /// Output format [default: table for list and audit, text otherwise].
    #[arg(
        short = 'o',
        long,
        value_enum,
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) output: Option<Format>,
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
    pub(crate) connect_timeout: Duration,
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
    pub(crate) timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
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
pub(crate) enum RoleArg {
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
pub(crate) enum Command {
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
pub(crate) fn parse_with_units(
    text: &str,
    units: &[(&str, u64)],
    hint: &str,
) -> Result<Duration, String> {
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
pub(crate) struct LimitArg(pub(crate) Option<v1::RateLimit>);

/// `10/s`, `120/m`, `5000/h`, `120` (a minute), `unlimited`, or `default`
/// (also `0`) for the role's. The server checks the bounds.
pub(crate) fn parse_limit(text: &str) -> Result<LimitArg, String> {
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

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
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

pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{} is not an RFC 3339 time like 2026-12-31T23:59:59Z",
                quote(text, 40)
            )
        })
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{} is not key=value", quote(text, 40)))
}

/// `NS/ID` or `namespaces/NS/apitokens/ID`, as the full name.
pub(crate) fn parse_token_name(text: &str) -> Result<String, String> {
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
pub(crate) fn parse_namespace(text: &str) -> Result<String, String> {
    let namespace = text.strip_prefix("namespaces/").unwrap_or(text);
    if namespace.is_empty() || namespace.contains('/') || namespace.len() > 100 {
        return Err(format!(
            "{} is not a namespace: e.g. team-a",
            quote(text, 60)
        ));
    }
    Ok(format!("namespaces/{namespace}"))
}

pub(crate) fn parse_filter(text: &str) -> Result<String, String> {
    if text.chars().count() > MAX_FILTER_LEN {
        return Err(format!("must be at most {MAX_FILTER_LEN} characters"));
    }
    Ok(text.to_owned())
}

pub(crate) fn parse_opaque(text: &str) -> Result<String, String> {
    if text.len() > MAX_OPAQUE_LEN {
        return Err(format!("must be at most {MAX_OPAQUE_LEN} characters"));
    }
    Ok(text.to_owned())
}

/// Labels as a map; a key given twice is a usage error.
pub(crate) fn label_map(
    labels: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, Failure> {
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

pub(crate) fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

pub(crate) fn proto_time(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
