//! The audit log of the namespace (`ListAuditEvents`, owner only), with
//! filters on action, token and time in the API's filter language.

use apitoken_domain::audit::Action;
use apitoken_proto::v1::{self, api_token_service_server::ApiTokenService};
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;

use super::{Query, Shared, encode, query, valid_id};
use crate::{
    api::ApiError,
    reply::{self, Ctx},
    views::{AuditPage, AuditRow, Choice, Problem},
};

/// Entries on one page.
const PAGE_SIZE: i32 = 50;

/// The action choices: "any" and every action the API knows.
fn actions(current: &str) -> Vec<Choice> {
    let mut list = vec![Choice {
        value: String::new(),
        label: "Any action".into(),
        selected: current.is_empty(),
    }];
    for action in Action::ALL {
        let name = action
            .to_proto()
            .as_str_name()
            .trim_start_matches("ACTION_");
        list.push(Choice {
            value: name.to_owned(),
            label: name.replace('_', " ").to_lowercase(),
            selected: name == current,
        });
    }
    list
}

/// `GET /audit`: `action`, `token`, `since`, `until` (dates, UTC), `page`.
pub async fn list<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    pairs: Query,
) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    // Who may read the audit log is the service's rule (owners): its
    // refusal is the 403 page.
    let layout = auth.layout("Audit log", "audit");
    let query = query(pairs);
    let action = Action::ALL
        .iter()
        .map(|a| a.to_proto().as_str_name().trim_start_matches("ACTION_"))
        .find(|name| *name == query.get("action"))
        .unwrap_or("");
    let token = query.get("token").trim();
    let since = query.get("since").trim();
    let until = query.get("until").trim();
    let mut problem = None;
    let mut conditions = Vec::new();
    if !action.is_empty() {
        conditions.push(format!("action = {action}"));
    }
    if !token.is_empty() {
        if valid_id(token) {
            conditions.push(format!("resource = \"{}\"", auth.token_name(token)));
        } else {
            problem = Some(ApiError::field("token", "is not a token id"));
        }
    }
    for (field, text, op, days) in [("since", since, ">=", 0), ("until", until, "<", 1)] {
        if text.is_empty() {
            continue;
        }
        match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(date) => {
                let time =
                    date.and_time(chrono::NaiveTime::MIN).and_utc() + chrono::Duration::days(days);
                conditions.push(format!(
                    "event_time {op} {}",
                    time.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            Err(_) => problem = Some(ApiError::field(field, "is not a date (YYYY-MM-DD)")),
        }
    }
    let page_token = query.get("page");
    let mut rows = Vec::new();
    let mut next = None;
    if problem.is_none() {
        let request = v1::ListAuditEventsRequest {
            parent: auth.parent(),
            page_size: PAGE_SIZE,
            page_token: apitoken_domain::input::truncate(page_token, 256).to_owned(),
            filter: conditions.join(" AND "),
        };
        let reply = match console.request(&auth, &ctx, request) {
            Ok(request) => console
                .api()
                .list_audit_events(request)
                .await
                .map_err(ApiError::from),
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                rows = reply.audit_events.iter().map(AuditRow::of).collect();
                if !reply.next_page_token.is_empty() {
                    next = Some(encode(&[
                        ("action", action),
                        ("token", token),
                        ("since", since),
                        ("until", until),
                        ("page", &reply.next_page_token),
                    ]));
                }
            }
            Err(error) if matches!(error.code, tonic::Code::InvalidArgument) => {
                problem = Some(error)
            }
            Err(error) => return console.failure(&auth, layout, &error),
        }
    }
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    reply::render(
        status,
        &AuditPage {
            layout,
            rows,
            actions: actions(action),
            token: token.to_owned(),
            since: since.to_owned(),
            until: until.to_owned(),
            next,
            problem: problem.as_ref().map(Problem::from),
        },
    )
}
