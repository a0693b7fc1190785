//! Audit actions and the `filter` of `ListAuditEvents`.
//!
//! Filter grammar: conditions joined by `AND`: `action = ACTION_REVOKE` (any
//! spelling: `revoke`), `resource = "namespaces/a/apitokens/b"`, and
//! `event_time` compared (`>=`, `>`, `<=`, `<`) with an RFC 3339 time.

use apitoken_proto::v1::audit_event::Action as WireAction;
use chrono::{DateTime, Utc};

use crate::{
    Error,
    filter::{check_filter_len, too_many_conditions},
    input::{MAX_FILTER_CONDITIONS, MAX_NAME_LEN, quote},
};

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A token was created.
    Create,
    /// A token was updated.
    Update,
    /// A token got a new secret.
    Regenerate,
    /// A token was revoked (by a token or a rule).
    Revoke,
    /// A grace period ended on first use of the new secret.
    GraceEnd,
    /// A token reached an expiry warning lead time.
    ExpiryWarning,
    /// A request was refused by the expiry policy.
    PolicyRefusal,
    /// A peer is throttled for failing to authenticate.
    AuthFailureBurst,
    /// A revoked or expired token was purged.
    Purge,
    /// A token signed in to the web console.
    ConsoleSignIn,
    /// A web console session was ended by signing out.
    ConsoleSignOut,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 11] = [
        Action::Create,
        Action::Update,
        Action::Regenerate,
        Action::Revoke,
        Action::GraceEnd,
        Action::ExpiryWarning,
        Action::PolicyRefusal,
        Action::AuthFailureBurst,
        Action::Purge,
        Action::ConsoleSignIn,
        Action::ConsoleSignOut,
    ];

    /// The wire enum.
    pub fn to_proto(self) -> WireAction {
        match self {
            Action::Create => WireAction::Create,
            Action::Update => WireAction::Update,
            Action::Regenerate => WireAction::Regenerate,
            Action::Revoke => WireAction::Revoke,
            Action::GraceEnd => WireAction::GraceEnd,
            Action::ExpiryWarning => WireAction::ExpiryWarning,
            Action::PolicyRefusal => WireAction::PolicyRefusal,
            Action::AuthFailureBurst => WireAction::AuthFailureBurst,
            Action::Purge => WireAction::Purge,
            Action::ConsoleSignIn => WireAction::ConsoleSignIn,
            Action::ConsoleSignOut => WireAction::ConsoleSignOut,
        }
    }

    /// The number stored (as on the wire).
    pub fn as_i16(self) -> i16 {
        self.to_proto() as i16
    }

    /// The inverse of [`Action::as_i16`].
    pub fn from_i16(value: i16) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_i16() == value)
    }

    /// Parses `ACTION_REVOKE` or `revoke` (any case).
    pub fn parse(text: &str) -> Option<Action> {
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("ACTION_").unwrap_or(&upper);
        Action::ALL.into_iter().find(|action| {
            action
                .to_proto()
                .as_str_name()
                .trim_start_matches("ACTION_")
                == bare
        })
    }
}

/// What happened to a web console session (audited as
/// [`Action::ConsoleSignIn`] or [`Action::ConsoleSignOut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleSession {
    /// A token signed in.
    SignedIn,
    /// Its session was ended by signing out.
    SignedOut,
}

impl ConsoleSession {
    /// The audit action that records it.
    pub fn action(self) -> Action {
        match self {
            ConsoleSession::SignedIn => Action::ConsoleSignIn,
            ConsoleSession::SignedOut => Action::ConsoleSignOut,
        }
    }
}

/// A parsed audit filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<Action>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    /// Parses a filter given as `field`.
    pub fn parse(field: &str, text: &str) -> Result<AuditFilter, Error> {
        let mut filter = AuditFilter::default();
        check_filter_len(field, text)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(filter);
        }
        for (index, condition) in text.split(" AND ").enumerate() {
            if index == MAX_FILTER_CONDITIONS {
                return Err(too_many_conditions(field));
            }
            let condition = condition.trim();
            let (name, op, value) = split_condition(condition).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("{} is not `field op value`", quote(condition)),
                )
            })?;
            let value = value.trim().trim_matches('"');
            match (name, op) {
                ("action", "=") => {
                    filter.action = Some(Action::parse(value).ok_or_else(|| {
                        Error::invalid(field, format!("unknown action {}", quote(value)))
                    })?);
                }
                ("resource", "=") if value.len() <= MAX_NAME_LEN => {
                    filter.resource = Some(value.to_owned());
                }
                ("resource", "=") => {
                    return Err(Error::invalid(
                        field,
                        format!("a resource name is at most {MAX_NAME_LEN} bytes"),
                    ));
                }
                ("event_time", op) => {
                    let time = DateTime::parse_from_rfc3339(value)
                        .map_err(|_| {
                            Error::invalid(
                                field,
                                format!("{} is not an RFC 3339 time", quote(value)),
                            )
                        })?
                        .with_timezone(&Utc);
                    match op {
                        ">=" => filter.since = Some(time),
                        ">" => filter.since = Some(after(time)),
                        "<" => filter.until = Some(time),
                        "<=" => filter.until = Some(after(time)),
                        _ => {
                            return Err(Error::invalid(
                                field,
                                "compare event_time with >=, >, <= or <",
                            ));
                        }
                    }
                }
                (name, op) => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "unsupported condition {}: filter on action, resource or event_time",
                            quote(&format!("{name} {op}"))
                        ),
                    ));
                }
            }
        }
        Ok(filter)
    }
}

/// One microsecond (the stored precision) after `time`, saturating.
fn after(time: DateTime<Utc>) -> DateTime<Utc> {
    time.checked_add_signed(chrono::Duration::microseconds(1))
        .unwrap_or(time)
}

fn split_condition(condition: &str) -> Option<(&str, &str, &str)> {
    for op in [">=", "<=", "!=", "=", ">", "<"] {
        if let Some((name, value)) = condition.split_once(op) {
            return Some((name.trim(), op, value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::from_i16(action.as_i16()), Some(action));
            assert_eq!(Action::parse(action.to_proto().as_str_name()), Some(action));
        }
        assert_eq!(Action::parse("revoke"), Some(Action::Revoke));
    }

    #[test]
    fn filters_parse() {
        let filter = AuditFilter::parse(
            "filter",
            r#"action = ACTION_REVOKE AND resource = "namespaces/a/apitokens/b" AND event_time >= "2026-11-01T00:00:00Z""#,
        )
        .expect("filter");
        assert_eq!(filter.action, Some(Action::Revoke));
        assert_eq!(filter.resource.as_deref(), Some("namespaces/a/apitokens/b"));
        assert!(filter.since.is_some());
        for bad in [
            "action = nope",
            "colour = red",
            "event_time >= yesterday",
            "action",
        ] {
            assert!(AuditFilter::parse("filter", bad).is_err(), "{bad}");
        }
        // The end of time does not overflow.
        assert!(
            AuditFilter::parse("filter", r#"event_time <= "9999-12-31T23:59:59.999999Z""#).is_ok()
        );
        let many = vec!["action = revoke"; MAX_FILTER_CONDITIONS + 1].join(" AND ");
        assert!(AuditFilter::parse("filter", &many).is_err());
    }
}
