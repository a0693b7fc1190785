//! What people read: `key: value` blocks (`text`) and aligned tables
//! (`table`). Every stored value goes through [`escape`], so nothing a token's
//! creator typed can reach the terminal as a control character or fake a
//! line.

use std::fmt::Write as _;

use apitoken_proto::prost_types::Timestamp;
use apitoken_proto::v1::{self, ApiToken, AuditEvent, api_token::State};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use unicode_width::UnicodeWidthStr;

use crate::escape::escape;

/// Tokens expiring this close are marked in tables.
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 14;
/// The mark of a token that expires soon.
pub(crate) const WARNING_MARK: &str = "⚠";
/// Display names longer than this are cut in tables (`-o json` has them whole).
const TABLE_DISPLAY_NAME_MAX: usize = 40;

/// A protobuf timestamp as a time, if valid.
pub(crate) fn datetime(timestamp: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// RFC 3339 to the second, or `none`.
fn rfc3339(timestamp: Option<&Timestamp>, none: &str) -> String {
    datetime(timestamp).map_or_else(
        || none.to_owned(),
        |time| time.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn role_name(role: i32) -> &'static str {
    v1::Role::try_from(role).map_or("?", |role| role.as_str_name())
}

fn state_name(state: i32) -> &'static str {
    State::try_from(state).map_or("?", |state| state.as_str_name())
}

/// `k=v,k2=v2`, sorted; not escaped yet.
fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>, separator: &str) -> String {
    let mut pairs: Vec<_> = map
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.sort();
    pairs.join(separator)
}

/// `key: value`, escaped; `key:` alone when the value is empty.
fn text_line(out: &mut String, key: &str, value: &str) {
    if value.is_empty() {
        let _ = writeln!(out, "{key}:");
    } else {
        let _ = writeln!(out, "{key}: {}", escape(value));
    }
}

/// One token as `key: value` lines.
pub(crate) fn token_text(token: &ApiToken, out: &mut String) {
    let mut line = |key: &str, value: &str| text_line(out, key, value);
    line("name", &token.name);
    line("display_name", &token.display_name);
    line("description", &token.description);
    line("role", role_name(token.role));
    line("state", state_name(token.state));
    line("labels", &pairs(&token.labels, ","));
    line("secret_hint", &token.secret_hint);
    line("create_time", &rfc3339(token.create_time.as_ref(), "-"));
    line("creator", &token.creator);
    line("expire_time", &rfc3339(token.expire_time.as_ref(), "never"));
    if token.previous_secret_expire_time.is_some() {
        line(
            "previous_secret_expire_time",
            &rfc3339(token.previous_secret_expire_time.as_ref(), "-"),
        );
    }
    line(
        "last_use_time",
        &rfc3339(token.last_use_time.as_ref(), "never"),
    );
    if !token.last_use_ip.is_empty() {
        line("last_use_ip", &token.last_use_ip);
    }
    line("use_count", &token.use_count.to_string());
    line("rate_limit", &token.rate_limit.to_string());
    if let Some(limit) = &token.limit {
        let unit = match apitoken_proto::v1::rate_limit::Window::try_from(limit.window) {
            Ok(apitoken_proto::v1::rate_limit::Window::Second) => "s",
            Ok(apitoken_proto::v1::rate_limit::Window::Hour) => "h",
            _ => "m",
        };
        let text = if limit.unlimited {
            "unlimited".to_owned()
        } else {
            format!("{}/{unit}", limit.requests)
        };
        line("limit", &text);
    }
    if token.interceptor {
        line("interceptor", "true");
    }
    if token.revoke_time.is_some() {
        line("revoke_time", &rfc3339(token.revoke_time.as_ref(), "-"));
        line("revoker", &token.revoker);
    }
    line("update_time", &rfc3339(token.update_time.as_ref(), "-"));
    line("uid", &token.uid);
    line("etag", &token.etag);
}

/// One audit event as `key: value` lines.
pub(crate) fn event_text(event: &AuditEvent, out: &mut String) {
    let action = v1::audit_event::Action::try_from(event.action).map_or("?", |a| a.as_str_name());
    let mut line = |key: &str, value: &str| text_line(out, key, value);
    line("name", &event.name);
    line("event_time", &rfc3339(event.event_time.as_ref(), "-"));
    line("action", action);
    line("actor", &event.actor);
    line("resource", &event.resource);
    line("peer_address", &event.peer_address);
    line("user_agent", &event.user_agent);
    line("request_id", &event.request_id);
    line("trace_id", &event.trace_id);
    line("details", &pairs(&event.details, ","));
}

/// Blocks of `key: value` lines separated by blank lines.
pub(crate) fn blocks<T>(items: &[T], one: impl Fn(&T, &mut String)) -> String {
    let mut out = String::new();
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        one(item, &mut out);
    }
    out
}

/// Rows under a header, columns two spaces apart, aligned by display width.
/// Cells must already be escaped.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    /// The table as text, one line per row, no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|cell| cell.width()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.width());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|cell| (*cell).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if index + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.width())));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The last segment of `name` when it is a token of `namespace`
/// (`namespaces/{namespace}/apitokens/{id}`), else `name`.
fn short_name<'a>(name: &'a str, namespace: &str) -> &'a str {
    name.strip_prefix("namespaces/")
        .and_then(|rest| rest.strip_prefix(namespace))
        .and_then(|rest| rest.strip_prefix("/apitokens/"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .unwrap_or(name)
}

/// The namespace of `namespaces/{namespace}/…`.
fn namespace_of(name: &str) -> &str {
    name.strip_prefix("namespaces/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

/// `text` escaped and cut to `max` characters.
fn cut(text: &str, max: usize) -> String {
    let escaped = escape(text);
    if escaped.chars().count() <= max {
        escaped.into_owned()
    } else {
        let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `5d`, `7h`, `12m`, `30s`: the largest unit, rounded down.
pub(crate) fn span(delta: TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0);
    match seconds {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The EXPIRES cell: `never`, `expired`, the date, and a mark with the time
/// left within [`EXPIRY_WARNING_DAYS`].
pub(crate) fn expires_cell(token: &ApiToken, now: DateTime<Utc>) -> String {
    let Some(expire) = datetime(token.expire_time.as_ref()) else {
        return "never".to_owned();
    };
    if token.state == State::Expired as i32
        || (token.state != State::Revoked as i32 && expire <= now)
    {
        return "expired".to_owned();
    }
    let date = expire.format("%Y-%m-%d").to_string();
    let left = expire - now;
    if token.state == State::Active as i32 && left <= TimeDelta::days(EXPIRY_WARNING_DAYS) {
        format!("{date} {WARNING_MARK} in {}", span(left))
    } else {
        date
    }
}

/// The LAST USED cell: `never`, `just now`, `5m ago`, … `29d ago`, then the date.
pub(crate) fn last_used_cell(token: &ApiToken, now: DateTime<Utc>) -> String {
    let Some(used) = datetime(token.last_use_time.as_ref()) else {
        return "never".to_owned();
    };
    let ago = now - used;
    if ago < TimeDelta::minutes(1) {
        "just now".to_owned()
    } else if ago < TimeDelta::days(30) {
        format!("{} ago", span(ago))
    } else {
        used.format("%Y-%m-%d").to_string()
    }
}

fn status_cell(token: &ApiToken) -> &'static str {
    match State::try_from(token.state) {
        Ok(State::Active) => "active",
        Ok(State::Expired) => "expired",
        Ok(State::Revoked) => "revoked",
        _ => "?",
    }
}

fn role_cell(role: i32) -> &'static str {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => "viewer",
        Ok(v1::Role::Editor) => "editor",
        Ok(v1::Role::Owner) => "owner",
        _ => "?",
    }
}

/// The dashboard view of tokens: ID, NAME (display name), ROLE, CREATED
/// (date and by whom), EXPIRES, LAST USED, STATUS.
pub(crate) fn token_table(tokens: &[ApiToken], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "STATUS",
    ]);
    for token in tokens {
        let namespace = namespace_of(&token.name);
        let created = datetime(token.create_time.as_ref()).map_or_else(
            || "-".to_owned(),
            |time| time.format("%Y-%m-%d").to_string(),
        );
        let created = if token.creator.is_empty() {
            created
        } else {
            format!(
                "{created} by {}",
                escape(short_name(&token.creator, namespace))
            )
        };
        table.rows.push(vec![
            escape(short_name(&token.name, namespace)).into_owned(),
            if token.display_name.is_empty() {
                "-".to_owned()
            } else {
                cut(&token.display_name, TABLE_DISPLAY_NAME_MAX)
            },
            role_cell(token.role).to_owned(),
            created,
            expires_cell(token, now),
            last_used_cell(token, now),
            status_cell(token).to_owned(),
        ]);
    }
    table
}

/// `ACTION_AUTH_FAILURE_BURST` as `auth-failure-burst`.
fn action_cell(action: i32) -> String {
    v1::audit_event::Action::try_from(action).map_or_else(
        |_| action.to_string(),
        |action| {
            action
                .as_str_name()
                .trim_start_matches("ACTION_")
                .to_ascii_lowercase()
                .replace('_', "-")
        },
    )
}

/// The audit log: TIME (UTC), ACTION, RESOURCE, ACTOR, FROM, DETAILS.
pub(crate) fn event_table(events: &[AuditEvent]) -> Table {
    let mut table = Table::new(vec![
        "TIME (UTC)",
        "ACTION",
        "RESOURCE",
        "ACTOR",
        "FROM",
        "DETAILS",
    ]);
    for event in events {
        let namespace = namespace_of(&event.name);
        let or_dash = |text: &str| {
            if text.is_empty() {
                "-".to_owned()
            } else {
                escape(text).into_owned()
            }
        };
        table.rows.push(vec![
            datetime(event.event_time.as_ref()).map_or_else(
                || "-".to_owned(),
                |time| time.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
            action_cell(event.action),
            or_dash(short_name(&event.resource, namespace)),
            or_dash(short_name(&event.actor, namespace)),
            or_dash(&event.peer_address),
            or_dash(&pairs(&event.details, " ")),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: DateTime<Utc>) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: time.timestamp(),
            nanos: 0,
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn token(expires_in: Option<TimeDelta>, state: State) -> ApiToken {
        ApiToken {
            name: "namespaces/team-a/apitokens/ci".into(),
            state: state.into(),
            expire_time: expires_in.and_then(|delta| at(now() + delta)),
            ..Default::default()
        }
    }

    #[test]
    fn expiry_cells() {
        let cell = |delta, state| expires_cell(&token(delta, state), now());
        assert_eq!(cell(None, State::Active), "never");
        assert_eq!(cell(Some(TimeDelta::days(30)), State::Active), "2026-01-31");
        assert_eq!(
            cell(Some(TimeDelta::days(14)), State::Active),
            "2026-01-15 ⚠ in 14d"
        );
        assert_eq!(
            cell(Some(TimeDelta::hours(5)), State::Active),
            "2026-01-01 ⚠ in 5h"
        );
        assert_eq!(cell(Some(TimeDelta::days(-1)), State::Active), "expired");
        assert_eq!(cell(Some(TimeDelta::days(3)), State::Expired), "expired");
        assert_eq!(cell(Some(TimeDelta::days(3)), State::Revoked), "2026-01-04");
    }

    #[test]
    fn last_used_cells() {
        let mut token = token(None, State::Active);
        assert_eq!(last_used_cell(&token, now()), "never");
        token.last_use_time = at(now() - TimeDelta::seconds(5));
        assert_eq!(last_used_cell(&token, now()), "just now");
        token.last_use_time = at(now() - TimeDelta::hours(3));
        assert_eq!(last_used_cell(&token, now()), "3h ago");
        token.last_use_time = at(now() - TimeDelta::days(45));
        assert_eq!(last_used_cell(&token, now()), "2025-11-17");
    }

    #[test]
    fn tables_align_by_display_width_and_escape() {
        let mut table = Table::new(vec!["A", "B"]);
        table.rows.push(vec!["日本".into(), "x".into()]);
        table.rows.push(vec!["abcde".into(), "".into()]);
        assert_eq!(table.render(), "A      B\n日本   x\nabcde\n");

        let hostile = ApiToken {
            name: "namespaces/team-a/apitokens/evil".into(),
            display_name: "x\nrole: ROLE_OWNER\u{1b}[2J".into(),
            creator: "namespaces/team-b/apitokens/\u{202e}owner".into(),
            ..Default::default()
        };
        let text = token_table(&[hostile], now()).render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("x\\nrole: ROLE_OWNER\\x1b[2J"), "{text}");
        assert!(
            text.contains("by namespaces/team-b/apitokens/\\u{202e}owner"),
            "{text}"
        );
    }

    #[test]
    fn names_shorten_within_their_namespace_only() {
        assert_eq!(short_name("namespaces/team-a/apitokens/ci", "team-a"), "ci");
        assert_eq!(
            short_name("namespaces/team-a/apitokens/ci", "team"),
            "namespaces/team-a/apitokens/ci"
        );
        assert_eq!(short_name("bootstrap", "team-a"), "bootstrap");
        assert_eq!(namespace_of("namespaces/team-a/auditEvents/7"), "team-a");
        assert_eq!(action_cell(8), "auth-failure-burst");
    }

    #[test]
    fn long_display_names_are_cut() {
        assert_eq!(cut(&"é".repeat(50), 5), "éééé…");
        assert_eq!(cut("short", 5), "short");
    }
}
