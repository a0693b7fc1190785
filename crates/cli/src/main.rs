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

mod args;
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
    args::*,
    escape::{escape, quote},
    failure::{EXIT_STATUS_HELP, Failure},
    value::Value,
};

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
