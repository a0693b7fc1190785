//! What the pages show: askama templates (`templates/`, HTML-escaped
//! automatically) and the plain-text view models they are filled with.
//!
//! Every value a page shows is a `String` or a number computed here from
//! the API's reply, so the templates hold no logic beyond loops and
//! conditions, and every value passes askama's HTML escaping.

use std::collections::BTreeMap;

use apitoken_proto::v1::{self, api_token::State};
use askama::Template;
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::api::ApiError;

/// Days before expiry when the list shows a warning badge (the seeds' 14).
pub const WARN_DAYS: i64 = 14;
/// Days without use that make a token "unused" (the seeds' 30+).
pub const UNUSED_DAYS: i64 = 30;

/// The frame of every page: title, navigation when signed in.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The page's title.
    pub title: String,
    /// Navigation, when signed in.
    pub nav: Option<Nav>,
}

/// The signed-in part of the frame.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The namespace id.
    pub namespace: String,
    /// The signed-in token's id.
    pub token_id: String,
    /// Its role, in words.
    pub role: String,
    /// Whether it may change anything (owner).
    pub owner: bool,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: String,
    /// Which entry is current: "tokens", "audit" or "whoami".
    pub current: &'static str,
}

/// A refusal to show above a form.
#[derive(Debug, Clone, Default)]
pub struct Problem {
    /// What happened.
    pub message: String,
    /// Each offending field and why.
    pub fields: Vec<(String, String)>,
}

impl From<&ApiError> for Problem {
    fn from(error: &ApiError) -> Self {
        Self {
            message: error.message.clone(),
            fields: error.fields.clone(),
        }
    }
}

/// `time` as shown: `2026-12-02 18:30 UTC`.
pub fn show_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A wire timestamp as a time, if valid.
pub fn to_time(timestamp: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(
        timestamp.seconds,
        u32::try_from(timestamp.nanos).unwrap_or(0),
    )
}

/// A wire timestamp as shown, or `none`.
pub fn show(timestamp: Option<&Timestamp>, none: &str) -> String {
    to_time(timestamp).map_or_else(|| none.to_owned(), show_time)
}

/// A role in words.
pub fn role_name(role: i32) -> String {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => "Viewer",
        Ok(v1::Role::Editor) => "Editor",
        Ok(v1::Role::Owner) => "Owner",
        _ => "Unknown",
    }
    .to_owned()
}

/// The id of `namespaces/<ns>/apitokens/<id>`.
pub fn token_id(name: &str) -> String {
    name.rsplit('/').next().unwrap_or(name).to_owned()
}

/// A badge: text and CSS class.
#[derive(Debug, Clone)]
pub struct Badge {
    /// What it says.
    pub text: String,
    /// `ok`, `warn` or `off`.
    pub class: &'static str,
}

/// One row of the token table.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// The token's id.
    pub id: String,
    /// Its display name (may be empty).
    pub display_name: String,
    /// Its role.
    pub role: String,
    /// When it was created.
    pub created: String,
    /// By whom.
    pub creator: String,
    /// When it expires, or "Never".
    pub expires: String,
    /// A warning when it expires within [`WARN_DAYS`].
    pub expiry_badge: Option<Badge>,
    /// When it was last used, or "Never".
    pub last_used: String,
    /// A note when unused for [`UNUSED_DAYS`] or more.
    pub unused_badge: Option<Badge>,
    /// Active, expired or revoked.
    pub status: Badge,
}

/// The state's badge.
pub fn status_badge(state: i32) -> Badge {
    let (text, class) = match State::try_from(state) {
        Ok(State::Active) => ("Active", "ok"),
        Ok(State::Expired) => ("Expired", "off"),
        Ok(State::Revoked) => ("Revoked", "off"),
        _ => ("Unknown", "off"),
    };
    Badge {
        text: text.into(),
        class,
    }
}

impl TokenRow {
    /// The row of `token` at `now`.
    pub fn of(token: &v1::ApiToken, now: DateTime<Utc>) -> Self {
        let active = token.state == State::Active as i32;
        let expire = to_time(token.expire_time.as_ref());
        let expiry_badge = expire.filter(|_| active).and_then(|at| {
            let left = at - now;
            (left <= chrono::Duration::days(WARN_DAYS)).then(|| Badge {
                text: match left.num_days() {
                    0 => "Expires today".to_owned(),
                    1 => "Expires in 1 day".to_owned(),
                    days => format!("Expires in {days} days"),
                },
                class: "warn",
            })
        });
        let last_use = to_time(token.last_use_time.as_ref());
        let since = last_use.or_else(|| to_time(token.create_time.as_ref()));
        let unused_badge = since
            .filter(|at| active && now - *at >= chrono::Duration::days(UNUSED_DAYS))
            .map(|_| Badge {
                text: format!("Unused {UNUSED_DAYS}+ days"),
                class: "off",
            });
        Self {
            id: token_id(&token.name),
            display_name: token.display_name.clone(),
            role: role_name(token.role),
            created: show(token.create_time.as_ref(), "—"),
            creator: token.creator.clone(),
            expires: expire.map_or_else(|| "Never".to_owned(), show_time),
            expiry_badge,
            last_used: last_use.map_or_else(|| "Never".to_owned(), show_time),
            unused_badge,
            status: status_badge(token.state),
        }
    }
}

/// Sign-in page.
#[derive(Debug, Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage {
    /// Frame.
    pub layout: Layout,
    /// The sign-in form's CSRF token (double-submitted with a cookie).
    pub csrf: String,
    /// Why the last attempt failed.
    pub problem: Option<Problem>,
    /// A note (e.g. signed out, session ended).
    pub note: Option<String>,
}

/// One choice of a select.
#[derive(Debug, Clone)]
pub struct Choice {
    /// Submitted value.
    pub value: String,
    /// Shown label.
    pub label: String,
    /// Whether it is selected.
    pub selected: bool,
}

/// Builds choices from `(value, label)` with `current` selected.
pub fn choices(options: &[(&str, &str)], current: &str) -> Vec<Choice> {
    options
        .iter()
        .map(|(value, label)| Choice {
            value: (*value).to_owned(),
            label: (*label).to_owned(),
            selected: *value == current,
        })
        .collect()
}

/// The token list.
#[derive(Debug, Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    /// Frame.
    pub layout: Layout,
    /// Rows.
    pub rows: Vec<TokenRow>,
    /// Role filter choices.
    pub roles: Vec<Choice>,
    /// State filter choices.
    pub states: Vec<Choice>,
    /// "Unused 30+ days" checked.
    pub unused: bool,
    /// "Expiring within 14 days" checked.
    pub expiring: bool,
    /// The next page's query string, if any.
    pub next: Option<String>,
    /// Whether this is not the first page.
    pub paged: bool,
    /// The first page's query string (same filters).
    pub first: String,
    /// Why the list could not be shown.
    pub problem: Option<Problem>,
}

/// The create form.
#[derive(Debug, Template)]
#[template(path = "create.html")]
pub struct CreatePage {
    /// Frame.
    pub layout: Layout,
    /// The form's values.
    pub form: BTreeMap<String, String>,
    /// Roles up to the signed-in token's own.
    pub roles: Vec<Choice>,
    /// Expiry choices (those the namespace's policy allows).
    pub expiries: Vec<Choice>,
    /// The latest custom date the policy allows (`YYYY-MM-DD`).
    pub latest_date: Option<String>,
    /// The policy's maximum lifetime, in words.
    pub policy_hint: Option<String>,
    /// Why the last attempt failed.
    pub problem: Option<Problem>,
}

impl CreatePage {
    /// A form value, or "".
    pub fn value(&self, name: &str) -> &str {
        self.form.get(name).map_or("", String::as_str)
    }
}

/// The secret, shown once.
#[derive(Debug, Template)]
#[template(path = "secret.html")]
pub struct SecretPage {
    /// Frame.
    pub layout: Layout,
    /// The token's id.
    pub id: String,
    /// "created" or "regenerated".
    pub what: String,
    /// The secret, or `None` if it was shown already.
    pub secret: Option<String>,
}

/// One line of a description list.
#[derive(Debug, Clone)]
pub struct Fact {
    /// Term.
    pub term: String,
    /// Value.
    pub value: String,
}

/// A token's page.
#[derive(Debug, Template)]
#[template(path = "token.html")]
pub struct TokenPage {
    /// Frame.
    pub layout: Layout,
    /// The token's id.
    pub id: String,
    /// Its row (badges).
    pub row: TokenRow,
    /// Everything the API returns.
    pub facts: Vec<Fact>,
    /// Labels as `key=value` lines (for the update form).
    pub labels_text: String,
    /// Display name (update form).
    pub display_name: String,
    /// Description (update form).
    pub description: String,
    /// Roles it may be lowered to.
    pub roles: Vec<Choice>,
    /// The etag (conditional update).
    pub etag: String,
    /// The grace periods offered at regeneration (`(seconds, label)`,
    /// those within the service's bound).
    pub graces: Vec<Choice>,
    /// Whether it is active (actions shown).
    pub active: bool,
    /// Why the last action failed.
    pub problem: Option<Problem>,
    /// A note about the last action.
    pub note: Option<String>,
}

/// Revoke confirmation.
#[derive(Debug, Template)]
#[template(path = "revoke.html")]
pub struct RevokePage {
    /// Frame.
    pub layout: Layout,
    /// The token's id.
    pub id: String,
    /// Its display name.
    pub display_name: String,
}

/// One audit entry.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// When.
    pub time: String,
    /// What.
    pub action: String,
    /// Who.
    pub actor: String,
    /// On what.
    pub resource: String,
    /// From where.
    pub peer: String,
    /// With which user agent.
    pub user_agent: String,
    /// Details as `key=value`.
    pub details: String,
}

impl AuditRow {
    /// The row of `event`.
    pub fn of(event: &v1::AuditEvent) -> Self {
        let action = v1::audit_event::Action::try_from(event.action)
            .map(|action| {
                action
                    .as_str_name()
                    .trim_start_matches("ACTION_")
                    .to_owned()
            })
            .unwrap_or_else(|_| "UNKNOWN".into());
        Self {
            time: show(event.event_time.as_ref(), "—"),
            action,
            actor: event.actor.clone(),
            resource: event.resource.clone(),
            peer: event.peer_address.clone(),
            user_agent: event.user_agent.clone(),
            details: event
                .details
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The audit log.
#[derive(Debug, Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    /// Frame.
    pub layout: Layout,
    /// Entries.
    pub rows: Vec<AuditRow>,
    /// Action filter choices.
    pub actions: Vec<Choice>,
    /// Token id filter.
    pub token: String,
    /// Since (date).
    pub since: String,
    /// Until (date).
    pub until: String,
    /// The next page's query string.
    pub next: Option<String>,
    /// Why the log could not be shown.
    pub problem: Option<Problem>,
}

/// Who am I.
#[derive(Debug, Template)]
#[template(path = "whoami.html")]
pub struct WhoamiPage {
    /// Frame.
    pub layout: Layout,
    /// The signed-in token's facts.
    pub facts: Vec<Fact>,
    /// Why it could not be shown.
    pub problem: Option<Problem>,
}

/// An error page (403, 404, ...).
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Frame.
    pub layout: Layout,
    /// What happened.
    pub problem: Problem,
}
