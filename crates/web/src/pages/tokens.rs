//! The token list (the seeds' table, filters in the API's filter language,
//! paging with its page tokens) and a token's page: everything the API
//! returns, update, regenerate with an optional grace, revoke after a
//! confirmation step.

use std::collections::BTreeMap;

use apitoken_domain::Role;
use apitoken_proto::v1::{self, api_token_service_server::ApiTokenService};
use axum::extract::State;
use axum::{
    extract::{Path, rejection::FormRejection},
    response::Response,
};
use http::StatusCode;

use super::{
    Auth, Form, Query, Shared, encode, fields,
    forms::{limit_text, parse_date, parse_labels, role_label},
    query, valid_id,
};
use crate::{
    api::ApiError,
    reply::{self, Ctx, Fields},
    session::Reveal,
    views::{
        Fact, Problem, RevokePage, TokenPage, TokenRow, TokensPage, UNUSED_DAYS, WARN_DAYS,
        choices, role_name, show,
    },
};

/// Rows on one page of the list.
const PAGE_SIZE: i32 = 25;

const ROLE_CHOICES: [(&str, &str); 4] = [
    ("", "Any role"),
    ("viewer", "Viewer"),
    ("editor", "Editor"),
    ("owner", "Owner"),
];
const STATE_CHOICES: [(&str, &str); 4] = [
    ("", "Any status"),
    ("active", "Active"),
    ("expired", "Expired"),
    ("revoked", "Revoked"),
];

/// `GET /tokens`: `role`, `state`, `unused`, `expiring`, `page`.
pub async fn list<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    pairs: Query,
) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    let query = query(pairs);
    let role = pick(query.get("role"), &ROLE_CHOICES);
    let state = pick(query.get("state"), &STATE_CHOICES);
    let unused = query.checked("unused");
    let expiring = query.checked("expiring");
    let mut conditions = Vec::new();
    if !role.is_empty() {
        conditions.push(format!("role = {role}"));
    }
    if !state.is_empty() {
        conditions.push(format!("state = {state}"));
    }
    if unused {
        conditions.push(format!("unused_days >= {UNUSED_DAYS}"));
    }
    if expiring {
        conditions.push(format!("expires_within_days <= {WARN_DAYS}"));
    }
    let page_token = query.get("page");
    let request = v1::ListApiTokensRequest {
        parent: auth.parent(),
        page_size: PAGE_SIZE,
        page_token: apitoken_domain::input::truncate(page_token, 256).to_owned(),
        filter: conditions.join(" AND "),
        show_revoked: state.is_empty() || state == "revoked",
    };
    let layout = auth.layout("API tokens", "tokens");
    let filters = [
        ("role", role),
        ("state", state),
        ("unused", if unused { "1" } else { "" }),
        ("expiring", if expiring { "1" } else { "" }),
    ];
    let reply = match console.request(&auth, &ctx, request) {
        Ok(request) => console
            .api()
            .list_api_tokens(request)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let (rows, next, problem) = match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            let now = console.now();
            let rows = reply
                .api_tokens
                .iter()
                .map(|t| TokenRow::of(t, now))
                .collect();
            let next = (!reply.next_page_token.is_empty()).then(|| {
                let mut pairs = filters.to_vec();
                pairs.push(("page", reply.next_page_token.as_str()));
                encode(&pairs)
            });
            (rows, next, None)
        }
        // A filter the service refused is shown beside the filter form;
        // anything else (signed out, 429, unavailable) is its own page.
        Err(error) if error.code == tonic::Code::InvalidArgument => {
            (Vec::new(), None, Some(Problem::from(&error)))
        }
        Err(error) => return console.failure(&auth, layout, &error),
    };
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    reply::render(
        status,
        &TokensPage {
            layout,
            rows,
            roles: choices(&ROLE_CHOICES, role),
            states: choices(&STATE_CHOICES, state),
            unused,
            expiring,
            next,
            paged: !page_token.is_empty(),
            first: encode(&filters),
            problem,
        },
    )
}

/// `value` if it is one of `options`, else "".
fn pick<'a>(value: &str, options: &[(&'a str, &'a str)]) -> &'a str {
    options
        .iter()
        .find(|(option, _)| *option == value)
        .map_or("", |(option, _)| option)
}

/// Fetches token `id` of the signed-in namespace.
async fn fetch<S: ApiTokenService>(
    console: &crate::Console<S>,
    auth: &Auth,
    ctx: &Ctx,
    id: &str,
) -> Result<v1::ApiToken, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::new(
            tonic::Code::NotFound,
            "There is no such token.",
        ));
    }
    let request = console.request(
        auth,
        ctx,
        v1::GetApiTokenRequest {
            name: auth.token_name(id),
        },
    )?;
    Ok(console.api().get_api_token(request).await?.into_inner())
}

/// `key=value` of every label, by key (a map has no order of its own).
fn sorted_labels(token: &v1::ApiToken) -> Vec<String> {
    let sorted: BTreeMap<&String, &String> = token.labels.iter().collect();
    sorted.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Everything the API says of `token`.
fn facts(token: &v1::ApiToken) -> Vec<Fact> {
    let mut facts = Vec::new();
    let mut fact = |term: &str, value: String| {
        facts.push(Fact {
            term: term.into(),
            value,
        });
    };
    fact("Resource name", token.name.clone());
    fact("UID", token.uid.clone());
    fact("Name", token.display_name.clone());
    fact("Description", token.description.clone());
    fact("Role", role_name(token.role));
    fact("Labels", sorted_labels(token).join(", "));
    fact(
        "Created",
        format!(
            "{} by {}",
            show(token.create_time.as_ref(), "—"),
            token.creator
        ),
    );
    fact("Updated", show(token.update_time.as_ref(), "—"));
    fact("Expires", show(token.expire_time.as_ref(), "Never"));
    fact("Status", crate::views::status_badge(token.state).text);
    if token.revoke_time.is_some() {
        fact(
            "Revoked",
            format!(
                "{} by {}",
                show(token.revoke_time.as_ref(), "—"),
                token.revoker
            ),
        );
    }
    fact("Secret hint", token.secret_hint.clone());
    let from = if token.last_use_ip.is_empty() {
        String::new()
    } else {
        format!(" from {}", token.last_use_ip)
    };
    fact(
        "Last used",
        format!("{}{from}", show(token.last_use_time.as_ref(), "Never")),
    );
    fact("Uses", token.use_count.to_string());
    fact("Rate limit", limit_text(token.limit.as_ref()));
    if token.previous_secret_expire_time.is_some() {
        fact(
            "Previous secret works until",
            show(token.previous_secret_expire_time.as_ref(), "—"),
        );
    }
    fact(
        "Interceptor token",
        if token.interceptor { "Yes" } else { "No" }.into(),
    );
    fact("Etag", token.etag.clone());
    facts
}

/// Roles at most `current`, `current` selected.
fn lower_roles(current: i32) -> Vec<crate::views::Choice> {
    let current = Role::from_proto(current).unwrap_or(Role::Viewer);
    let options: Vec<(&str, &str)> = Role::ALL
        .iter()
        .filter(|role| **role <= current)
        .map(|role| (role.as_str(), role_label(*role)))
        .collect();
    choices(&options, current.as_str())
}

/// The grace periods offered at regeneration, in seconds.
const GRACES: [(&str, &str, u64); 4] = [
    ("0", "No grace: stop at once", 0),
    ("3600", "1 hour", 3_600),
    ("86400", "1 day", 86_400),
    ("604800", "7 days", 604_800),
];

/// The choices of [`GRACES`] within `max` (all when it is unknown).
fn grace_choices(max: Option<std::time::Duration>) -> Vec<crate::views::Choice> {
    let options: Vec<(&str, &str)> = GRACES
        .iter()
        .filter(|(_, _, seconds)| max.is_none_or(|max| *seconds <= max.as_secs()))
        .map(|(value, label, _)| (*value, *label))
        .collect();
    choices(&options, "0")
}

/// The token page of `id`, with an optional problem (whose status the
/// page takes: 400 for a field, 409 for a stale etag) or note.
async fn token_page<S: ApiTokenService>(
    console: &crate::Console<S>,
    auth: &Auth,
    ctx: &Ctx,
    id: &str,
    problem: Option<&ApiError>,
    note: Option<String>,
) -> Response {
    let layout = auth.layout(id, "tokens");
    let token = match fetch(console, auth, ctx, id).await {
        Ok(token) => token,
        Err(error) => return console.failure(auth, layout, &error),
    };
    let status = problem.map_or(StatusCode::OK, ApiError::http_status);
    let problem = problem.map(Problem::from);
    let labels_text = sorted_labels(&token).join("\n");
    reply::render(
        status,
        &TokenPage {
            layout,
            id: id.to_owned(),
            row: TokenRow::of(&token, console.now()),
            facts: facts(&token),
            labels_text,
            display_name: token.display_name.clone(),
            description: token.description.clone(),
            roles: lower_roles(token.role),
            etag: token.etag.clone(),
            graces: grace_choices(console.max_grace()),
            active: token.state == v1::api_token::State::Active as i32,
            problem,
            note,
        },
    )
}

/// `GET /tokens/{id}`; `done` names the action just completed.
pub async fn detail<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    Path(id): Path<String>,
    pairs: Query,
) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    let note = match query(pairs).get("done") {
        "updated" => Some("Saved.".to_owned()),
        "revoked" => Some("The token is revoked.".to_owned()),
        _ => None,
    };
    token_page(&console, &auth, &ctx, &id, None, note).await
}

/// The update of `fields` against the current `token`.
fn changes(token: &v1::ApiToken, fields: &Fields) -> Result<(v1::ApiToken, Vec<String>), ApiError> {
    let mut update = v1::ApiToken {
        name: token.name.clone(),
        etag: fields.get("etag").to_owned(),
        ..v1::ApiToken::default()
    };
    let mut mask = Vec::new();
    let display_name = fields.get("display_name").trim();
    let description = fields.get("description").trim();
    let mut violations = apitoken_domain::validate::Violations::default();
    violations.check(apitoken_domain::validate::display_name(
        "display_name",
        display_name,
    ));
    violations.check(apitoken_domain::validate::description(
        "description",
        description,
    ));
    violations
        .finish()
        .map_err(|error| ApiError::from(tonic::Status::from(error)))?;
    if display_name != token.display_name {
        update.display_name = display_name.to_owned();
        mask.push("display_name".to_owned());
    }
    if description != token.description {
        update.description = description.to_owned();
        mask.push("description".to_owned());
    }
    let labels = parse_labels("labels", fields.get("labels"))?;
    let current: BTreeMap<String, String> = token.labels.clone().into_iter().collect();
    if labels != current {
        update.labels = labels.into_iter().collect();
        mask.push("labels".to_owned());
    }
    if let Some(role) = Role::parse(fields.get("role"))
        && role.to_proto() as i32 != token.role
    {
        update.role = role.to_proto().into();
        mask.push("role".to_owned());
    }
    if !fields.get("expire_date").trim().is_empty() {
        update.expire_time = Some(parse_date("expire_date", fields.get("expire_date"))?);
        mask.push("expire_time".to_owned());
    }
    Ok((update, mask))
}

/// `POST /tokens/{id}/update`.
pub async fn update<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    Path(id): Path<String>,
    form: Result<Form, FormRejection>,
) -> Response {
    let (auth, fields) = match console.check_form(&ctx, fields(form)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let layout = auth.layout(id.as_str(), "tokens");
    let token = match fetch(&console, &auth, &ctx, &id).await {
        Ok(token) => token,
        Err(error) => return console.failure(&auth, layout, &error),
    };
    let result = match changes(&token, &fields) {
        Ok((_, mask)) if mask.is_empty() => {
            return reply::redirect(&format!("/tokens/{id}?done=updated"));
        }
        Ok((update, mask)) => {
            let request = v1::UpdateApiTokenRequest {
                api_token: Some(update),
                update_mask: Some(prost_types::FieldMask { paths: mask }),
            };
            match console.request(&auth, &ctx, request) {
                Ok(request) => console
                    .api()
                    .update_api_token(request)
                    .await
                    .map_err(ApiError::from),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(_) => reply::redirect(&format!("/tokens/{id}?done=updated")),
        Err(error)
            if error.code == tonic::Code::InvalidArgument || error.code == tonic::Code::Aborted =>
        {
            token_page(&console, &auth, &ctx, &id, Some(&error), None).await
        }
        Err(error) => console.failure(&auth, layout, &error),
    }
}

/// `POST /tokens/{id}/regenerate`: `grace` seconds, `end_on_use`.
pub async fn regenerate<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    Path(id): Path<String>,
    form: Result<Form, FormRejection>,
) -> Response {
    let (auth, fields) = match console.check_form(&ctx, fields(form)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let layout = auth.layout(id.as_str(), "tokens");
    if !valid_id(&id) {
        return reply::api_error_page(
            layout,
            &ApiError::new(tonic::Code::NotFound, "There is no such token."),
        );
    }
    let grace = match fields.get("grace").parse::<i64>() {
        // How long a grace may be is the service's rule (`--max-grace`).
        Ok(seconds) if seconds >= 0 => seconds,
        _ => {
            let error = ApiError::field("grace", "must be a number of seconds");
            return token_page(&console, &auth, &ctx, &id, Some(&error), None).await;
        }
    };
    let request = v1::RegenerateApiTokenRequest {
        name: auth.token_name(&id),
        previous_secret_ttl: (grace > 0).then_some(prost_types::Duration {
            seconds: grace,
            nanos: 0,
        }),
        end_grace_on_first_use: fields.checked("end_on_use"),
    };
    let result = match console.request(&auth, &ctx, request) {
        Ok(request) => console
            .api()
            .regenerate_api_token(request)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    match result {
        Ok(reply) => {
            let reply = reply.into_inner();
            reveal(&console, &auth, &id, reply.secret, "regenerated");
            reply::redirect(&format!("/secret?token={id}"))
        }
        Err(error) if error.code == tonic::Code::InvalidArgument => {
            token_page(&console, &auth, &ctx, &id, Some(&error), None).await
        }
        Err(error) => console.failure(&auth, layout, &error),
    }
}

/// Keeps `secret` in the session for the one page that shows it.
pub(crate) fn reveal<S: ApiTokenService>(
    console: &crate::Console<S>,
    auth: &Auth,
    id: &str,
    secret: String,
    what: &'static str,
) {
    let token_name = auth.token_name(id);
    console.sessions().with(&auth.session, |session| {
        session.reveal = Some(Reveal {
            token_name,
            secret: apitoken_domain::token::Secret::new(secret),
            what,
        });
    });
}

/// `GET /tokens/{id}/revoke`: the confirmation step.
pub async fn revoke_form<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    let layout = auth.layout(format!("Revoke {id}"), "tokens");
    if !auth.owner() {
        return reply::forbidden_role(layout);
    }
    match fetch(&console, &auth, &ctx, &id).await {
        Ok(token) => reply::render(
            StatusCode::OK,
            &RevokePage {
                layout,
                id,
                display_name: token.display_name,
            },
        ),
        Err(error) => console.failure(&auth, layout, &error),
    }
}

/// `POST /tokens/{id}/revoke` with `confirm=yes`.
pub async fn revoke<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    Path(id): Path<String>,
    form: Result<Form, FormRejection>,
) -> Response {
    let (auth, fields) = match console.check_form(&ctx, fields(form)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let layout = auth.layout(id.as_str(), "tokens");
    if !valid_id(&id) {
        let error = ApiError::new(tonic::Code::NotFound, "There is no such token.");
        return reply::api_error_page(layout, &error);
    }
    if fields.get("confirm") != "yes" {
        return reply::redirect(&format!("/tokens/{id}/revoke"));
    }
    let request = v1::RevokeApiTokenRequest {
        name: auth.token_name(&id),
    };
    let result = match console.request(&auth, &ctx, request) {
        Ok(request) => console
            .api()
            .revoke_api_token(request)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    match result {
        Ok(_) => reply::redirect(&format!("/tokens/{id}?done=revoked")),
        Err(error) => console.failure(&auth, layout, &error),
    }
}
