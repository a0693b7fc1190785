//! The `filter` of `ListApiTokens`: a small subset of AIP-160.
//!
//! Grammar: `condition (AND condition)*`, where a condition is one of
//! - `role = R`, `role != R`, `state = S`, `state != S` (a role or state in
//!   any spelling: `ROLE_EDITOR`, `editor`; optionally quoted);
//! - `unused_days >= N`: not used for N days or more (never-used tokens
//!   count from their creation), the seeds' "30+ days" check;
//! - `expires_within_days <= N`: expiring within N days, not yet expired,
//!   the seeds' 14-day warning.
//!
//! Bounds: at most [`MAX_FILTER_LEN`] bytes and [`MAX_FILTER_CONDITIONS`]
//! conditions, checked before anything else is parsed.

use crate::{
    Error, Role, TokenState,
    input::{MAX_FILTER_CONDITIONS, MAX_FILTER_LEN, quote},
};

/// `=` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
}

/// One condition of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// On the token's role.
    Role(Op, Role),
    /// On the token's state.
    State(Op, TokenState),
    /// Not used for at least this many days.
    UnusedDays(u32),
    /// Expiring within this many days.
    ExpiresWithinDays(u32),
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// The conditions, joined by AND.
    pub conditions: Vec<Condition>,
}

impl ListFilter {
    /// Whether the rows this filter selects can change with the clock alone
    /// (a state, an age or an expiry horizon), not only with the rows.
    pub fn depends_on_time(&self) -> bool {
        self.conditions.iter().any(|condition| match condition {
            Condition::Role(..) | Condition::State(_, TokenState::Revoked) => false,
            Condition::State(..) | Condition::UnusedDays(_) | Condition::ExpiresWithinDays(_) => {
                true
            }
        })
    }

    /// Parses a filter given as `field`; empty means no condition.
    pub fn parse(field: &str, text: &str) -> Result<ListFilter, Error> {
        check_filter_len(field, text)?;
        let tokens = tokenize(text).map_err(|why| Error::invalid(field, why))?;
        let mut conditions = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            if conditions.len() == MAX_FILTER_CONDITIONS {
                return Err(too_many_conditions(field));
            }
            let [name, op, value, tail @ ..] = rest else {
                return Err(Error::invalid(
                    field,
                    "expected `field = value` conditions joined by AND",
                ));
            };
            let value = value.trim_matches('"');
            let condition = match (name.as_str(), op.as_str()) {
                ("unused_days", ">=") => Condition::UnusedDays(days(field, name, value)?),
                ("expires_within_days", "<=") => {
                    Condition::ExpiresWithinDays(days(field, name, value)?)
                }
                ("unused_days", _) => {
                    return Err(Error::invalid(field, "`unused_days` takes `>= N`"));
                }
                ("expires_within_days", _) => {
                    return Err(Error::invalid(field, "`expires_within_days` takes `<= N`"));
                }
                ("role" | "state", "=" | "!=") => {
                    let op = if op == "=" { Op::Eq } else { Op::Ne };
                    if name == "role" {
                        let role = Role::parse(value).ok_or_else(|| {
                            Error::invalid(field, format!("unknown role {}", quote(value)))
                        })?;
                        Condition::Role(op, role)
                    } else {
                        let state = TokenState::parse(value).ok_or_else(|| {
                            Error::invalid(field, format!("unknown state {}", quote(value)))
                        })?;
                        Condition::State(op, state)
                    }
                }
                ("role" | "state", other) => {
                    return Err(Error::invalid(
                        field,
                        format!("unsupported operator {}: use = or !=", quote(other)),
                    ));
                }
                (other, _) => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "unknown field {}: filter on role, state, unused_days or expires_within_days",
                            quote(other)
                        ),
                    ));
                }
            };
            conditions.push(condition);
            rest = match tail {
                [] => &[],
                [and, more @ ..] if and == "AND" && !more.is_empty() => more,
                _ => return Err(Error::invalid(field, "conditions must be joined by AND")),
            };
        }
        Ok(ListFilter { conditions })
    }

    /// Whether the filter asks for revoked tokens explicitly
    /// (`state = STATE_REVOKED`), which then need no `show_revoked`.
    pub fn asks_for_revoked(&self) -> bool {
        self.conditions
            .contains(&Condition::State(Op::Eq, TokenState::Revoked))
    }
}

/// A number of days (at most 100 years) for the condition on `name`.
fn days(field: &str, name: &str, value: &str) -> Result<u32, Error> {
    value
        .parse::<u32>()
        .ok()
        .filter(|days| *days <= 36_500)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "`{name}` needs a number of days from 0 to 36500, not {}",
                    quote(value)
                ),
            )
        })
}

/// Refuses a filter longer than [`MAX_FILTER_LEN`] bytes.
pub fn check_filter_len(field: &str, text: &str) -> Result<(), Error> {
    if text.len() > MAX_FILTER_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {MAX_FILTER_LEN} bytes (got {})",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// The error for more than [`MAX_FILTER_CONDITIONS`] conditions.
pub fn too_many_conditions(field: &str) -> Error {
    Error::invalid(
        field,
        format!("must have at most {MAX_FILTER_CONDITIONS} conditions"),
    )
}

fn tokenize(text: &str) -> Result<Vec<String>, &'static str> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            tokens.push("=".to_owned());
        } else if c == '>' || c == '<' {
            chars.next();
            let mut op = c.to_string();
            if chars.peek() == Some(&'=') {
                chars.next();
                op.push('=');
            }
            tokens.push(op);
        } else if c == '!' {
            chars.next();
            if chars.next() != Some('=') {
                return Err("`!` must be followed by `=`");
            }
            tokens.push("!=".to_owned());
        } else if c == '"' {
            chars.next();
            let mut word = String::from('"');
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => word.push(c),
                    None => return Err("unterminated quoted value"),
                }
            }
            word.push('"');
            tokens.push(word);
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
        } else {
            return Err("unexpected character in filter");
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conditions_joined_by_and() {
        let filter = ListFilter::parse("filter", r#"role = ROLE_EDITOR AND state!="active""#)
            .expect("filter");
        assert_eq!(
            filter.conditions,
            [
                Condition::Role(Op::Eq, Role::Editor),
                Condition::State(Op::Ne, TokenState::Active)
            ]
        );
        assert_eq!(
            ListFilter::parse("filter", "  ").expect("empty"),
            ListFilter::default()
        );
        assert!(
            ListFilter::parse("filter", "state = STATE_REVOKED")
                .expect("f")
                .asks_for_revoked()
        );
    }

    #[test]
    fn knows_which_filters_the_clock_changes() {
        for (text, timed) in [
            ("", false),
            ("role = ROLE_VIEWER", false),
            ("state = STATE_REVOKED AND role != ROLE_OWNER", false),
            ("state = STATE_ACTIVE", true),
            ("state != STATE_EXPIRED", true),
            ("role = ROLE_VIEWER AND unused_days >= 3", true),
            ("expires_within_days <= 1", true),
        ] {
            let filter = ListFilter::parse("filter", text).expect("filter");
            assert_eq!(filter.depends_on_time(), timed, "{text}");
        }
    }

    #[test]
    fn parses_day_conditions() {
        let filter = ListFilter::parse("filter", "unused_days >= 30 AND expires_within_days <= 14")
            .expect("filter");
        assert_eq!(
            filter.conditions,
            [Condition::UnusedDays(30), Condition::ExpiresWithinDays(14)]
        );
        for bad in [
            "unused_days = 30",
            "unused_days >= soon",
            "expires_within_days >= 14",
            "unused_days >= -1",
        ] {
            assert!(ListFilter::parse("filter", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for bad in [
            "role",
            "role =",
            "role = admin",
            "color = red",
            "role > ROLE_VIEWER",
            "role = ROLE_VIEWER OR role = ROLE_OWNER",
            "role = ROLE_VIEWER AND",
            "role = \"viewer",
            "role ! viewer",
            "role = viewer; drop table",
            "role = ROLE_VIEWER AND "
                .repeat(17)
                .trim_end_matches(" AND "),
            &"x".repeat(MAX_FILTER_LEN + 1),
        ] {
            let Err(Error::InvalidArgument(violations)) = ListFilter::parse("filter", bad) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(violations[0].field, "filter");
        }
        let sixteen = "role = ROLE_VIEWER AND ".repeat(16);
        assert!(ListFilter::parse("filter", sixteen.trim_end_matches(" AND ")).is_ok());
    }

    #[test]
    fn errors_quote_little_of_the_input() {
        let Err(Error::InvalidArgument(violations)) =
            ListFilter::parse("filter", &format!("role = {}", "a".repeat(1000)))
        else {
            panic!("accepted");
        };
        assert!(violations[0].description.len() < 200, "{violations:?}");
    }
}
