//! Field rules for token attributes, collected so that one reply names every
//! bad field at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::{Error, error::FieldViolation};

/// Most characters in a display name.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Most characters in a description.
pub const MAX_DESCRIPTION: usize = 500;
/// Most labels on a token.
pub const MAX_LABELS: usize = 64;
/// Most characters in a label key or value.
const MAX_LABEL_LEN: usize = 63;

/// Collects violations; [`Violations::finish`] turns them into an error.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation of a check, if any.
    pub fn check(&mut self, result: Result<(), FieldViolation>) {
        if let Err(violation) = result {
            self.0.push(violation);
        }
    }

    /// Records the `InvalidArgument` violations of a fallible step and
    /// returns its value, if it had one.
    pub fn take<T>(&mut self, result: Result<T, Error>) -> Result<Option<T>, Error> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(Error::InvalidArgument(violations)) => {
                self.0.extend(violations);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// `INVALID_ARGUMENT` naming every recorded field (for a caller that
    /// knows at least one was recorded).
    pub fn into_error(self) -> Error {
        Error::InvalidArgument(self.0)
    }

    /// `Ok` if nothing was recorded, else `INVALID_ARGUMENT` naming every field.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// At most [`MAX_DISPLAY_NAME`] characters, no control characters.
pub fn display_name(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, MAX_DISPLAY_NAME)
}

/// At most [`MAX_DESCRIPTION`] characters, no control characters but newlines
/// and tabs.
pub fn description(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, MAX_DESCRIPTION)
}

fn text(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// At most [`MAX_LABELS`] labels; keys 1 to 63 characters of lowercase
/// letters, digits, `_` and `-` starting with a letter; values up to 63 such
/// characters.
pub fn labels(field: &str, labels: &BTreeMap<String, String>, violations: &mut Violations) {
    if labels.len() > MAX_LABELS {
        violations.add(field, format!("must have at most {MAX_LABELS} entries"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    for (key, value) in labels {
        let key_field = format!("{field}[{key:?}]");
        if key.is_empty() || key.len() > MAX_LABEL_LEN {
            violations.add(&key_field, "label key must be 1 to 63 characters");
        } else if !key.starts_with(|c: char| c.is_ascii_lowercase()) {
            violations.add(&key_field, "label key must start with a lowercase letter");
        } else if !key.chars().all(allowed) {
            violations.add(
                &key_field,
                "label key must contain only lowercase letters, digits, `_` and `-`",
            );
        }
        if value.len() > MAX_LABEL_LEN {
            violations.add(&key_field, "label value must be at most 63 characters");
        } else if !value.chars().all(allowed) {
            violations.add(
                &key_field,
                "label value must contain only lowercase letters, digits, `_` and `-`",
            );
        }
    }
}

/// An expiry must lie in the future.
pub fn expire_time(
    field: &str,
    value: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), FieldViolation> {
    if value <= now {
        Err(FieldViolation::new(field, "must be in the future"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn text_limits_count_characters() {
        assert!(display_name("d", &"é".repeat(100)).is_ok());
        assert!(display_name("d", &"é".repeat(101)).is_err());
        assert!(description("d", &"x".repeat(500)).is_ok());
        assert!(description("d", &"x".repeat(501)).is_err());
        assert!(description("d", "line\nline\ttab").is_ok());
        assert!(display_name("d", "bell\u{7}").is_err());
    }

    #[test]
    fn labels_follow_the_rules() {
        let mut violations = Violations::default();
        let good: BTreeMap<_, _> = [
            ("env".to_owned(), "prod".to_owned()),
            ("team_a".to_owned(), String::new()),
        ]
        .into();
        labels("labels", &good, &mut violations);
        assert!(violations.finish().is_ok());

        for (key, value) in [
            ("", "v"),
            ("Env", "v"),
            ("1env", "v"),
            ("env", "Prod"),
            ("env", "a b"),
        ] {
            let mut violations = Violations::default();
            labels(
                "labels",
                &[(key.to_owned(), value.to_owned())].into(),
                &mut violations,
            );
            assert!(violations.finish().is_err(), "{key}={value}");
        }

        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        let mut violations = Violations::default();
        labels("labels", &many, &mut violations);
        assert!(violations.finish().is_err());
    }

    #[test]
    fn expiry_must_be_in_the_future() {
        let now = Utc::now();
        assert!(expire_time("e", now + Duration::seconds(1), now).is_ok());
        assert!(expire_time("e", now, now).is_err());
    }
}
