//! The `filter` of `ListApiTokens`: a small subset of AIP-160.
//!
//! Grammar: `condition (AND condition)*`, where a condition is
//! `field op value`, `field` is `role` or `state`, `op` is `=` or `!=`, and
//! `value` is a role or state in any spelling (`ROLE_EDITOR`, `editor`),
//! optionally quoted.

use crate::{Error, Role, TokenState};

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
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// The conditions, joined by AND.
    pub conditions: Vec<Condition>,
}

impl ListFilter {
    /// Parses a filter given as `field`; empty means no condition.
    pub fn parse(field: &str, text: &str) -> Result<ListFilter, Error> {
        let tokens = tokenize(text).map_err(|why| Error::invalid(field, why))?;
        let mut conditions = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            let [name, op, value, tail @ ..] = rest else {
                return Err(Error::invalid(
                    field,
                    "expected `field = value` conditions joined by AND",
                ));
            };
            let op = match op.as_str() {
                "=" => Op::Eq,
                "!=" => Op::Ne,
                other => {
                    return Err(Error::invalid(
                        field,
                        format!("unsupported operator `{other}`: use = or !="),
                    ));
                }
            };
            let value = value.trim_matches('"');
            let condition = match name.as_str() {
                "role" => Condition::Role(
                    op,
                    Role::parse(value)
                        .ok_or_else(|| Error::invalid(field, format!("unknown role `{value}`")))?,
                ),
                "state" => Condition::State(
                    op,
                    TokenState::parse(value)
                        .ok_or_else(|| Error::invalid(field, format!("unknown state `{value}`")))?,
                ),
                other => {
                    return Err(Error::invalid(
                        field,
                        format!("unknown field `{other}`: filter on role or state"),
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

fn tokenize(text: &str) -> Result<Vec<String>, &'static str> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            tokens.push("=".to_owned());
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
        ] {
            let Err(Error::InvalidArgument(violations)) = ListFilter::parse("filter", bad) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(violations[0].field, "filter");
        }
    }
}
