//! `apitoken`: the command line of the service, for people. Everything the
//! API offers on tokens and the audit log, with `APITOKEN_ENDPOINT` and
//! `APITOKEN_TOKEN` from the environment.
//!
//! Output is `key: value` lines (one block per token); a new secret is
//! printed once, on its own `secret:` line. Errors go to standard error with
//! the gRPC code, the message and the `google.rpc` reason or fields; the
//! exit status is 1.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use apitoken_proto::prost_types::Timestamp;
use apitoken_proto::v1::{
    self, ApiToken, AuditEvent, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
    ListAuditEventsRequest, RegenerateApiTokenRequest, RevokeApiTokenRequest,
    UpdateApiTokenRequest, VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
};
use clap::{Parser, Subcommand};
use tonic::{Request, Status, transport::Channel};
use tonic_types::StatusExt;

/// Manage apitoken tokens.
#[derive(Debug, Parser)]
#[command(name = "apitoken", version, about)]
struct Cli {
    /// The apitoken server.
    #[arg(
        long,
        env = "APITOKEN_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// Your token (prefer the environment variable).
    #[arg(long, env = "APITOKEN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Verify the server against this CA (PEM) instead of the system's trust store.
    #[arg(long, env = "APITOKEN_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --client-key.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "APITOKEN_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Allow http:// to a host that is not loopback (the token crosses the
    /// network in clear: only where a mesh encrypts it).
    #[arg(long, env = "APITOKEN_PLAINTEXT", global = true)]
    plaintext: bool,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the token you authenticate with.
    Whoami,
    /// Create a token: `NAMESPACE/ID` or `namespaces/NS/apitokens/ID`.
    Create {
        /// The new token's name.
        name: String,
        /// viewer, editor or owner.
        #[arg(long)]
        role: String,
        /// Human-readable name.
        #[arg(long, default_value = "")]
        display_name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. `90d`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Label `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Requests a minute (0: the role's default).
        #[arg(long, default_value_t = 0)]
        rate_limit: i32,
    },
    /// List a namespace's tokens, newest first (all pages).
    List {
        /// The namespace.
        namespace: String,
        /// e.g. `role = ROLE_EDITOR AND state = STATE_ACTIVE`, `unused_days >= 30`.
        #[arg(long, default_value = "")]
        filter: String,
        /// Include revoked tokens.
        #[arg(long)]
        show_revoked: bool,
    },
    /// Show one token.
    Get {
        /// The token's name.
        name: String,
    },
    /// Change a token's display name or description, or lower its role.
    Update {
        /// The token's name.
        name: String,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New (lower) role.
        #[arg(long)]
        role: Option<String>,
    },
    /// Issue a new secret; with `--grace`, the old one keeps working that long.
    Regenerate {
        /// The token's name.
        name: String,
        /// How long the previous secret keeps working, e.g. `1h`.
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// End the grace period at the first use of the new secret.
        #[arg(long)]
        end_grace_on_first_use: bool,
    },
    /// Revoke a token, immediately and for good.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// Show a namespace's audit log, newest first (all pages).
    Audit {
        /// The namespace.
        namespace: String,
        /// e.g. `action = ACTION_REVOKE`.
        #[arg(long, default_value = "")]
        filter: String,
    },
}

/// `NS/ID` or a full name, as a full name.
fn token_name(name: &str) -> String {
    if name.starts_with("namespaces/") {
        name.to_owned()
    } else if let Some((namespace, id)) = name.split_once('/') {
        format!("namespaces/{namespace}/apitokens/{id}")
    } else {
        name.to_owned()
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 5m, 12h or 90d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` is not a duration like 30s, 5m, 12h or 90d"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(factor)))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

fn parse_role(text: &str) -> Result<v1::Role, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("ROLE_") {
        upper
    } else {
        format!("ROLE_{upper}")
    };
    v1::Role::from_str_name(&name)
        .filter(|role| *role != v1::Role::Unspecified)
        .ok_or_else(|| format!("`{text}` is not a role: viewer, editor or owner"))
}

fn time(timestamp: Option<&Timestamp>) -> String {
    timestamp
        .and_then(|timestamp| {
            chrono::DateTime::from_timestamp(
                timestamp.seconds,
                u32::try_from(timestamp.nanos).ok()?,
            )
        })
        .map_or_else(
            || "-".to_owned(),
            |time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

fn print_token(token: &ApiToken) {
    let role = v1::Role::try_from(token.role).map_or("?", |role| role.as_str_name());
    let state =
        v1::api_token::State::try_from(token.state).map_or("?", |state| state.as_str_name());
    println!("name: {}", token.name);
    println!("role: {role}");
    println!("state: {state}");
    println!("display_name: {}", token.display_name);
    println!("description: {}", token.description);
    println!("secret_hint: {}", token.secret_hint);
    println!("create_time: {}", time(token.create_time.as_ref()));
    println!("creator: {}", token.creator);
    println!("expire_time: {}", time(token.expire_time.as_ref()));
    if token.previous_secret_expire_time.is_some() {
        println!(
            "previous_secret_expire_time: {}",
            time(token.previous_secret_expire_time.as_ref())
        );
    }
    println!("last_use_time: {}", time(token.last_use_time.as_ref()));
    println!("use_count: {}", token.use_count);
    println!("rate_limit: {}", token.rate_limit);
    if token.revoke_time.is_some() {
        println!("revoke_time: {}", time(token.revoke_time.as_ref()));
        println!("revoker: {}", token.revoker);
    }
    let mut labels: Vec<_> = token
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    labels.sort();
    println!("labels: {}", labels.join(","));
}

fn print_event(event: &AuditEvent) {
    let action =
        v1::audit_event::Action::try_from(event.action).map_or("?", |action| action.as_str_name());
    let mut details: Vec<_> = event
        .details
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    details.sort();
    println!(
        "{}  {action}  {}  by {}  from {}  [{}]",
        time(event.event_time.as_ref()),
        event.resource,
        event.actor,
        if event.peer_address.is_empty() {
            "-"
        } else {
            &event.peer_address
        },
        details.join(" ")
    );
}

/// Prints a status the way a person can act on it.
fn report(status: &Status) {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        eprintln!("reason: {}", info.reason);
    }
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            eprintln!("field {}: {}", violation.field, violation.description);
        }
    }
    if let Some(retry) = status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
    {
        eprintln!("retry after: {retry} s");
    }
}

struct Session {
    client: ApiTokenServiceClient<Channel>,
    token: Option<String>,
}

impl Session {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// The channel to the server: TLS for `https://`, plaintext `http://` only
/// to loopback unless `--plaintext`.
async fn channel(cli: &Cli) -> Result<Channel, Status> {
    use apitoken_proto::endpoint::{ClientIdentity, ConnectOptions, EndpointError, connect};
    let options = ConnectOptions {
        ca: cli.ca_cert.clone().map(Into::into),
        identity: cli
            .client_cert
            .clone()
            .zip(cli.client_key.clone())
            .map(|(cert, key)| ClientIdentity {
                cert: cert.into(),
                key: key.into(),
            }),
        allow_plaintext: cli.plaintext,
        ..ConnectOptions::default()
    };
    connect(&cli.endpoint, &options)
        .await
        .map_err(|error| match error {
            EndpointError::Connect { .. } => Status::unavailable(error.to_string()),
            _ => Status::invalid_argument(error.to_string()),
        })
}

async fn run(cli: Cli) -> Result<(), Status> {
    let channel = channel(&cli).await?;
    let mut session = Session {
        client: ApiTokenServiceClient::new(channel),
        token: cli.token,
    };
    match cli.command {
        Command::Whoami => {
            let reply = session
                .client
                .verify_api_token(session.request(VerifyApiTokenRequest::default()))
                .await?;
            if let Some(token) = reply.into_inner().api_token {
                print_token(&token);
            }
        }
        Command::Create {
            name,
            role,
            display_name,
            description,
            ttl,
            labels,
            rate_limit,
        } => {
            let name = token_name(&name);
            let (parent, id) = name
                .rsplit_once("/apitokens/")
                .ok_or_else(|| Status::invalid_argument("name must be NAMESPACE/ID"))?;
            let role = parse_role(&role).map_err(Status::invalid_argument)?;
            let request = CreateApiTokenRequest {
                parent: parent.to_owned(),
                api_token_id: id.to_owned(),
                api_token: Some(ApiToken {
                    role: role.into(),
                    display_name,
                    description,
                    labels: labels.into_iter().collect::<HashMap<_, _>>(),
                    rate_limit,
                    ..Default::default()
                }),
                ttl: ttl.map(|ttl| apitoken_proto::prost_types::Duration {
                    seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
            };
            let reply = session
                .client
                .create_api_token(session.request(request))
                .await?
                .into_inner();
            if let Some(token) = &reply.api_token {
                print_token(token);
            }
            println!("secret: {}", reply.secret);
        }
        Command::List {
            namespace,
            filter,
            show_revoked,
        } => {
            let mut page_token = String::new();
            loop {
                let request = ListApiTokensRequest {
                    parent: format!("namespaces/{namespace}"),
                    filter: filter.clone(),
                    show_revoked,
                    page_token,
                    page_size: 200,
                };
                let page = session
                    .client
                    .list_api_tokens(session.request(request))
                    .await?
                    .into_inner();
                for token in &page.api_tokens {
                    let role =
                        v1::Role::try_from(token.role).map_or("?", |role| role.as_str_name());
                    let state = v1::api_token::State::try_from(token.state)
                        .map_or("?", |state| state.as_str_name());
                    println!(
                        "{}  {role}  {state}  expires {}  last used {}  uses {}",
                        token.name,
                        time(token.expire_time.as_ref()),
                        time(token.last_use_time.as_ref()),
                        token.use_count
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        Command::Get { name } => {
            let request = GetApiTokenRequest {
                name: token_name(&name),
            };
            print_token(
                &session
                    .client
                    .get_api_token(session.request(request))
                    .await?
                    .into_inner(),
            );
        }
        Command::Update {
            name,
            display_name,
            description,
            role,
        } => {
            let mut paths = Vec::new();
            let mut token = ApiToken {
                name: token_name(&name),
                ..Default::default()
            };
            if let Some(display_name) = display_name {
                token.display_name = display_name;
                paths.push("display_name".to_owned());
            }
            if let Some(description) = description {
                token.description = description;
                paths.push("description".to_owned());
            }
            if let Some(role) = role {
                token.role = parse_role(&role).map_err(Status::invalid_argument)?.into();
                paths.push("role".to_owned());
            }
            let request = UpdateApiTokenRequest {
                api_token: Some(token),
                update_mask: Some(apitoken_proto::prost_types::FieldMask { paths }),
            };
            print_token(
                &session
                    .client
                    .update_api_token(session.request(request))
                    .await?
                    .into_inner(),
            );
        }
        Command::Regenerate {
            name,
            grace,
            end_grace_on_first_use,
        } => {
            let request = RegenerateApiTokenRequest {
                name: token_name(&name),
                previous_secret_ttl: grace.map(|grace| apitoken_proto::prost_types::Duration {
                    seconds: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                end_grace_on_first_use,
            };
            let reply = session
                .client
                .regenerate_api_token(session.request(request))
                .await?
                .into_inner();
            if let Some(token) = &reply.api_token {
                print_token(token);
            }
            println!("secret: {}", reply.secret);
        }
        Command::Revoke { name } => {
            let request = RevokeApiTokenRequest {
                name: token_name(&name),
            };
            print_token(
                &session
                    .client
                    .revoke_api_token(session.request(request))
                    .await?
                    .into_inner(),
            );
        }
        Command::Audit { namespace, filter } => {
            let mut page_token = String::new();
            loop {
                let request = ListAuditEventsRequest {
                    parent: format!("namespaces/{namespace}"),
                    filter: filter.clone(),
                    page_token,
                    page_size: 200,
                };
                let page = session
                    .client
                    .list_audit_events(session.request(request))
                    .await?
                    .into_inner();
                page.audit_events.iter().for_each(print_event);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => {
            report(&status);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names_and_values_parse() {
        assert_eq!(token_name("team-a/ci"), "namespaces/team-a/apitokens/ci");
        assert_eq!(
            token_name("namespaces/team-a/apitokens/ci"),
            "namespaces/team-a/apitokens/ci"
        );
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_role("editor"), Ok(v1::Role::Editor));
        assert_eq!(parse_role("ROLE_OWNER"), Ok(v1::Role::Owner));
        assert!(parse_role("admin").is_err());
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
    }
}
