//! What several forms and pages share: labels as `key=value` lines, dates,
//! rate limits and roles in words.

use std::collections::BTreeMap;

use apitoken_domain::Role;
use apitoken_proto::v1;

use crate::api::ApiError;

/// A rate limit in words.
pub(crate) fn limit_text(limit: Option<&v1::RateLimit>) -> String {
    let Some(limit) = limit else {
        return "—".into();
    };
    if limit.unlimited {
        return "Unlimited".into();
    }
    let window = match v1::rate_limit::Window::try_from(limit.window) {
        Ok(v1::rate_limit::Window::Second) => "second",
        Ok(v1::rate_limit::Window::Minute) => "minute",
        Ok(v1::rate_limit::Window::Hour) => "hour",
        _ => return "—".into(),
    };
    format!("{} requests a {window}", limit.requests)
}

/// A role's label.
pub(crate) fn role_label(role: Role) -> &'static str {
    match role {
        Role::Viewer => "Viewer",
        Role::Editor => "Editor",
        Role::Owner => "Owner",
    }
}

/// `key=value` lines as labels (checked by `apitoken_domain::validate`).
pub(crate) fn parse_labels(field: &str, text: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut labels = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ApiError::field(
                field,
                format!("line {} is not key=value", number + 1),
            ));
        };
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
        if labels.len() > apitoken_domain::validate::MAX_LABELS {
            break;
        }
    }
    let mut violations = apitoken_domain::validate::Violations::default();
    apitoken_domain::validate::labels(field, &labels, &mut violations);
    violations
        .finish()
        .map_err(|error| ApiError::from(tonic::Status::from(error)))?;
    Ok(labels)
}

/// A `YYYY-MM-DD` date (UTC midnight) as a timestamp.
pub(crate) fn parse_date(field: &str, text: &str) -> Result<prost_types::Timestamp, ApiError> {
    let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| ApiError::field(field, "is not a date (YYYY-MM-DD)"))?;
    let time = date.and_time(chrono::NaiveTime::MIN).and_utc();
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: 0,
    })
}
