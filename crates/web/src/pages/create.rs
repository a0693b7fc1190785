//! The create form (id, name, description, role up to the signed-in
//! token's own, expiry 30/90/365 days, a custom date or never, labels) and
//! the page that shows a new secret exactly once.
//!
//! After `CreateApiToken` or `RegenerateApiToken` the secret is kept in
//! the session for one `GET /secret` (post/redirect/get), which takes it
//! out: reloading that page shows that it is gone.

use std::collections::BTreeMap;

use apitoken_domain::{Role, expiry::ExpiryPolicy};
use apitoken_proto::v1::{self, api_token_service_server::ApiTokenService};
use axum::extract::State;
use axum::{extract::rejection::FormRejection, response::Response};
use http::StatusCode;

use super::{Auth, Form, Query, Shared, fields, forms, query, tokens, valid_id};
use crate::{
    api::ApiError,
    reply::{self, Ctx, Fields},
    views::{CreatePage, Problem, SecretPage, choices},
};

/// The lifetimes offered, in days.
const EXPIRY_DAYS: [(u64, &str); 3] = [(30, "30 days"), (90, "90 days"), (365, "1 year")];

const DAY_SECONDS: u64 = 86_400;

/// The expiry choices `rules` allow, as `(value, label)`: the lifetimes
/// within the maximum, a custom date, and "never" only where a token may
/// have no expiry (or, under a default lifetime, "the policy's default").
fn expiry_options(rules: ExpiryPolicy) -> Vec<(String, String)> {
    let fits = |days: u64| {
        rules
            .max_lifetime
            .is_none_or(|max| days * DAY_SECONDS <= max.as_secs())
    };
    let mut options: Vec<(String, String)> = EXPIRY_DAYS
        .iter()
        .filter(|(days, _)| fits(*days))
        .map(|(days, label)| (days.to_string(), (*label).to_owned()))
        .collect();
    options.push(("custom".into(), "Custom date".into()));
    match rules.default_lifetime {
        Some(default) => options.push((
            "never".into(),
            format!("The policy's default ({})", lifetime(default)),
        )),
        None if !rules.required && rules.max_lifetime.is_none() => {
            options.push(("never".into(), "Never".into()));
        }
        None => {}
    }
    options
}

/// `30 days`, `36 hours`: a lifetime in words.
fn lifetime(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    let (count, unit) = if seconds.is_multiple_of(DAY_SECONDS) {
        (seconds / DAY_SECONDS, "day")
    } else if seconds.is_multiple_of(3600) {
        (seconds / 3600, "hour")
    } else {
        (seconds.div_ceil(60), "minute")
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

/// The names of the form's fields kept when it is shown again.
const FORM_FIELDS: [&str; 7] = [
    "api_token_id",
    "display_name",
    "description",
    "role",
    "expiry",
    "expire_date",
    "labels",
];

/// The form for `auth`, under its namespace's expiry policy.
fn page<S: ApiTokenService>(
    console: &crate::Console<S>,
    auth: &Auth,
    form: BTreeMap<String, String>,
    problem: Option<Problem>,
) -> CreatePage {
    let rules = console.expiry_rules(&auth.identity.namespace);
    let today = console.now().date_naive();
    let own = auth.identity.role;
    let options: Vec<(&str, &str)> = Role::ALL
        .iter()
        .filter(|role| **role <= own)
        .map(|role| (role.as_str(), forms::role_label(*role)))
        .collect();
    let role = form.get("role").map_or("viewer", String::as_str);
    let expiries = expiry_options(rules);
    let offered = |value: &str| expiries.iter().any(|(option, _)| option == value);
    let expiry = match form.get("expiry") {
        Some(asked) if offered(asked) => asked.clone(),
        _ if offered("90") => "90".to_owned(),
        _ => expiries
            .first()
            .map_or_else(|| "custom".to_owned(), |(value, _)| value.clone()),
    };
    let pairs: Vec<(&str, &str)> = expiries
        .iter()
        .map(|(value, label)| (value.as_str(), label.as_str()))
        .collect();
    // The latest date the policy allows, for the date picker and a hint.
    let latest = rules
        .max_lifetime
        .map(|max| chrono::Days::new(max.as_secs() / DAY_SECONDS))
        .and_then(|days| today.checked_add_days(days));
    CreatePage {
        layout: auth.layout("Create token", "tokens"),
        roles: choices(&options, role),
        expiries: choices(&pairs, &expiry),
        latest_date: latest.map(|date| date.format("%Y-%m-%d").to_string()),
        policy_hint: rules.max_lifetime.map(|max| {
            format!(
                "This namespace's policy: tokens live at most {}.",
                lifetime(max)
            )
        }),
        form,
        problem,
    }
}

/// `GET /tokens/new`.
pub async fn form<S: ApiTokenService>(State(console): State<Shared<S>>, ctx: Ctx) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    if !auth.owner() {
        return reply::forbidden_role(auth.layout("Create token", "tokens"));
    }
    reply::render(
        StatusCode::OK,
        &page(&console, &auth, BTreeMap::new(), None),
    )
}

/// The `CreateApiTokenRequest` of `fields`, checked as far as the console
/// can (the service checks everything again).
fn request(auth: &Auth, fields: &Fields) -> Result<v1::CreateApiTokenRequest, ApiError> {
    let id = fields.get("api_token_id").trim();
    let display_name = fields.get("display_name").trim();
    let description = fields.get("description").trim();
    let mut violations = apitoken_domain::validate::Violations::default();
    violations.check(apitoken_domain::name::check_id("api_token_id", id));
    violations.check(apitoken_domain::validate::display_name(
        "display_name",
        display_name,
    ));
    violations.check(apitoken_domain::validate::description(
        "description",
        description,
    ));
    let role = Role::parse(fields.get("role"));
    if role.is_none() {
        violations.add("role", "choose viewer, editor or owner");
    }
    violations
        .finish()
        .map_err(|error| ApiError::from(tonic::Status::from(error)))?;
    let labels = forms::parse_labels("labels", fields.get("labels"))?;
    let mut token = v1::ApiToken {
        display_name: display_name.to_owned(),
        description: description.to_owned(),
        role: role.map_or(v1::Role::Unspecified, Role::to_proto).into(),
        labels: labels.into_iter().collect(),
        ..v1::ApiToken::default()
    };
    let mut ttl = None;
    match fields.get("expiry") {
        "never" => {}
        "custom" => {
            token.expire_time = Some(forms::parse_date("expire_date", fields.get("expire_date"))?);
        }
        days => match days.parse::<i64>() {
            Ok(days @ (30 | 90 | 365)) => {
                ttl = Some(prost_types::Duration {
                    seconds: days * 86_400,
                    nanos: 0,
                });
            }
            _ => {
                return Err(ApiError::field(
                    "expiry",
                    "choose 30, 90 or 365 days, a date or never",
                ));
            }
        },
    }
    Ok(v1::CreateApiTokenRequest {
        parent: auth.parent(),
        api_token_id: id.to_owned(),
        api_token: Some(token),
        ttl,
    })
}

/// `POST /tokens`: creates the token and shows its secret once.
pub async fn create<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    form: Result<Form, FormRejection>,
) -> Response {
    let (auth, fields) = match console.check_form(&ctx, fields(form)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let kept: BTreeMap<String, String> = FORM_FIELDS
        .iter()
        .map(|name| ((*name).to_owned(), fields.get(name).to_owned()))
        .collect();
    let result = match request(&auth, &fields) {
        Ok(message) => {
            let id: String = message.api_token_id.clone();
            match console.request(&auth, &ctx, message) {
                Ok(request) => console
                    .api()
                    .create_api_token(request)
                    .await
                    .map(|reply| (id, reply.into_inner()))
                    .map_err(ApiError::from),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    };
    match result {
        Ok((id, reply)) => {
            tokens::reveal(&console, &auth, &id, reply.secret, "created");
            reply::redirect(&format!("/secret?token={id}"))
        }
        Err(error) if error.code == tonic::Code::Unauthenticated => {
            console.failure(&auth, auth.layout("Create token", "tokens"), &error)
        }
        Err(error) => reply::with_retry_after(
            reply::render(
                error.http_status(),
                &page(&console, &auth, kept, Some(Problem::from(&error))),
            ),
            &error,
        ),
    }
}

/// `GET /secret?token=<id>`: the new secret of `id`, once.
pub async fn secret<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    pairs: Query,
) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    let query = query(pairs);
    let id = query.get("token");
    if !valid_id(id) {
        return reply::not_found().await;
    }
    let name = auth.token_name(id);
    let reveal = console
        .sessions()
        .with(&auth.session, |session| match &session.reveal {
            Some(reveal) if reveal.token_name == name => session.reveal.take(),
            _ => None,
        })
        .flatten();
    let what = reveal.as_ref().map_or("created", |reveal| reveal.what);
    reply::render(
        StatusCode::OK,
        &SecretPage {
            layout: auth.layout("Secret", "tokens"),
            id: id.to_owned(),
            what: what.to_owned(),
            secret: reveal.map(|reveal| reveal.secret.expose().to_owned()),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn values(rules: ExpiryPolicy) -> Vec<String> {
        expiry_options(rules)
            .into_iter()
            .map(|(value, _)| value)
            .collect()
    }

    #[test]
    fn the_choices_are_those_of_the_policy() {
        assert_eq!(
            values(ExpiryPolicy::default()),
            ["30", "90", "365", "custom", "never"]
        );
        let capped = ExpiryPolicy {
            max_lifetime: Some(Duration::from_secs(90 * DAY_SECONDS)),
            ..ExpiryPolicy::default()
        };
        assert_eq!(values(capped), ["30", "90", "custom"]);
        let required = ExpiryPolicy {
            required: true,
            ..ExpiryPolicy::default()
        };
        assert_eq!(values(required), ["30", "90", "365", "custom"]);
        let defaulted = ExpiryPolicy {
            required: true,
            max_lifetime: Some(Duration::from_secs(7 * DAY_SECONDS)),
            default_lifetime: Some(Duration::from_secs(7 * DAY_SECONDS)),
        };
        let options = expiry_options(defaulted);
        assert_eq!(options.len(), 2);
        assert_eq!(
            options[1],
            ("never".into(), "The policy's default (7 days)".into())
        );
        assert_eq!(lifetime(Duration::from_secs(36 * 3600)), "36 hours");
        assert_eq!(lifetime(Duration::from_secs(90)), "2 minutes");
    }
}
