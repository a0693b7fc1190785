//! Field rules for token attributes, collected so that one reply names every
//! bad field at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::{
    Error,
    error::FieldViolation,
    input::{is_unsafe_char, quote, quote_key},
};

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

/// At most [`MAX_DISPLAY_NAME`] characters on one line: no control
/// characters (not even newlines or tabs) and no bidirectional overrides.
pub fn display_name(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, MAX_DISPLAY_NAME, |_| false)
}

/// At most [`MAX_DESCRIPTION`] characters; newlines and tabs allowed, no
/// other control characters and no bidirectional overrides.
pub fn description(field: &str, value: &str) -> Result<(), FieldViolation> {
    text(field, value, MAX_DESCRIPTION, |c| c == '\n' || c == '\t')
}

fn text(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), FieldViolation> {
    if value.len() > max * 4 || value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| is_unsafe_char(*c) && !allowed(*c)) {
        return Err(FieldViolation::new(
            field,
            format!(
                "must not contain control or bidirectional formatting characters (found {})",
                quote(&bad.to_string())
            ),
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
        let key_field = format!("{field}[{}]", quote_key(key));
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

/// An IPv4 or IPv6 address given as `field` (at most 64 bytes of text).
pub fn ip_address(field: &str, text: &str) -> Result<std::net::IpAddr, FieldViolation> {
    if text.len() > 64 {
        return Err(FieldViolation::new(
            field,
            "must be an IPv4 or IPv6 address",
        ));
    }
    text.parse()
        .map_err(|_| FieldViolation::new(field, "must be an IPv4 or IPv6 address"))
}

/// The latest expiry accepted: 100 years from now. Far enough for "never"
/// to be spelled as no expiry, near enough that every time stays inside the
/// protobuf `Timestamp` range (year 9999) and chrono's arithmetic.
pub const MAX_LIFETIME_DAYS: i64 = 36_525;

/// An expiry must lie in the future, and at most [`MAX_LIFETIME_DAYS`] ahead.
pub fn expire_time(
    field: &str,
    value: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), FieldViolation> {
    if value <= now {
        Err(FieldViolation::new(field, "must be in the future"))
    } else if value > latest_expiry(now) {
        Err(FieldViolation::new(
            field,
            format!(
                "must be at most {MAX_LIFETIME_DAYS} days (100 years) from now; leave it unset for a token that never expires"
            ),
        ))
    } else {
        Ok(())
    }
}

/// `now` plus [`MAX_LIFETIME_DAYS`] (saturating).
pub fn latest_expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_add_signed(chrono::Duration::days(MAX_LIFETIME_DAYS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A caller's `google.protobuf.Duration` as `field`: within the protobuf
/// range, non-negative, and at most `max` (named in the error as `max_text`).
/// Zero is `Ok(None)`.
pub fn duration(
    field: &str,
    seconds: i64,
    nanos: i32,
    max: chrono::Duration,
    max_text: &str,
) -> Result<Option<chrono::Duration>, FieldViolation> {
    // The protobuf range: ±10,000 years, nanos with the seconds' sign.
    const PROTO_MAX_SECONDS: i64 = 315_576_000_000;
    if !(0..=PROTO_MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(FieldViolation::new(
            field,
            format!("must be a non-negative duration of at most {max_text}"),
        ));
    }
    let duration = chrono::Duration::try_seconds(seconds)
        .and_then(|d| d.checked_add(&chrono::Duration::nanoseconds(i64::from(nanos))))
        .filter(|d| *d <= max)
        .ok_or_else(|| FieldViolation::new(field, format!("must be at most {max_text}")))?;
    Ok((duration > chrono::Duration::zero()).then_some(duration))
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
        assert!(display_name("d", "two\nlines").is_err());
        assert!(display_name("d", "tab\there").is_err());
        assert!(display_name("d", "rtl\u{202e}override").is_err());
        assert!(description("d", "isolate\u{2066}").is_err());
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
        assert!(expire_time("e", now + Duration::days(MAX_LIFETIME_DAYS), now).is_ok());
        assert!(expire_time("e", now + Duration::days(MAX_LIFETIME_DAYS + 1), now).is_err());
    }

    #[test]
    fn durations_are_bounded() {
        let max = Duration::days(7);
        assert_eq!(duration("t", 0, 0, max, "7d"), Ok(None));
        assert_eq!(
            duration("t", 60, 0, max, "7d"),
            Ok(Some(Duration::seconds(60)))
        );
        for (seconds, nanos) in [
            (-1, 0),
            (0, -1),
            (1_000_000_000_000, 0),
            (i64::MAX, 0),
            (0, 1_000_000_000),
            (8 * 86_400, 0),
        ] {
            assert!(
                duration("t", seconds, nanos, max, "7d").is_err(),
                "{seconds} {nanos}"
            );
        }
    }
}
