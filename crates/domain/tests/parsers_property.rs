//! Property tests of everything that parses what a caller sends: the token
//! parser, the list filter grammar, page tokens, resource names and ids,
//! and the field validators. For arbitrary input (random bytes as text,
//! and near-valid input built from the grammar's own pieces) none of them
//! panics, each answers `Ok` or a bounded error naming the field, and what
//! they accept round-trips.
//!
//! Cases: `PROPTEST_CASES` per property (default 2,000 here; 8 properties).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use apitoken_domain::{
    Error,
    filter::ListFilter,
    hash::Keys,
    name::{Namespace, TokenName, check_id},
    page::{self, QueryFingerprint},
    token::{Secret, TokenFormat, parse_bearer},
    validate,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An error's message stays small whatever the input (errors quote input
/// only up to a small length).
fn bounded(error: &Error) {
    let status = tonic::Status::from(error.clone());
    assert!(
        status.message().len() <= 2_048,
        "message of {} bytes",
        status.message().len()
    );
    assert!(
        status.details().len() <= 8_192,
        "details of {} bytes",
        status.details().len()
    );
}

/// Near-valid filter text: the grammar's words in any order and number.
fn filter_text() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("role".to_owned()),
        Just("state".to_owned()),
        Just("unused_days".to_owned()),
        Just("expires_within_days".to_owned()),
        Just("labels.env".to_owned()),
        Just("=".to_owned()),
        Just("!=".to_owned()),
        Just(">=".to_owned()),
        Just("<=".to_owned()),
        Just("AND".to_owned()),
        Just("OR".to_owned()),
        Just("NOT".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("ROLE_VIEWER".to_owned()),
        Just("STATE_ACTIVE".to_owned()),
        Just("STATE_REVOKED".to_owned()),
        Just("\"prod\"".to_owned()),
        Just("\"".to_owned()),
        (0i64..100_000).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        "[ -~]{0,8}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(word, 0..40).prop_map(|words| words.join(" "))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_token_parser_never_panics(text in "\\PC{0,80}", bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let format = TokenFormat::new("apitoken").unwrap();
        for text in [text, String::from_utf8_lossy(&bytes).into_owned()] {
            if let Err(error) = format.parse(Secret::new(text.clone())) {
                bounded(&error);
            }
            let _ = parse_bearer(&text);
            let _ = parse_bearer(&format!("Bearer {text}"));
        }
    }

    #[test]
    fn mutated_tokens_are_refused(position in 0usize..58, replacement in any::<char>()) {
        let format = TokenFormat::new("apitoken").unwrap();
        let secret = format.generate().unwrap();
        prop_assert!(format.parse(secret.clone()).is_ok());
        let mut chars: Vec<char> = secret.expose().chars().collect();
        let position = position % chars.len();
        prop_assume!(chars[position] != replacement);
        chars[position] = replacement;
        let mutated: String = chars.into_iter().collect();
        // A one-character change is caught by the format or the checksum.
        prop_assert!(format.parse(Secret::new(mutated)).is_err());
    }

    #[test]
    fn the_filter_parser_never_panics_on_noise(text in "\\PC{0,300}") {
        if let Err(error) = ListFilter::parse("filter", &text) {
            bounded(&error);
        }
    }

    #[test]
    fn the_filter_parser_never_panics_on_grammar(text in filter_text()) {
        match ListFilter::parse("filter", &text) {
            Ok(filter) => {
                let _ = filter.asks_for_revoked();
            }
            Err(error) => bounded(&error),
        }
    }

    #[test]
    fn deep_and_long_filters_are_refused_not_fatal(depth in 1usize..20_000, conditions in 1usize..20_000) {
        let nested = format!("{}role = ROLE_VIEWER{}", "(".repeat(depth), ")".repeat(depth));
        let chained = vec!["role = ROLE_VIEWER"; conditions].join(" AND ");
        for text in [nested, chained] {
            if let Err(error) = ListFilter::parse("filter", &text) {
                bounded(&error);
            }
        }
    }

    #[test]
    fn page_tokens_are_refused_unless_issued(token in "[A-Za-z0-9_-]{0,120}", after in any::<i64>()) {
        let keys = Keys::derive(Some(b"test key"));
        let query = QueryFingerprint::of("namespaces/team-a", "", false);
        match page::decode(&keys, "page_token", query, &token) {
            // A random string is an issued token only by breaking the MAC.
            Ok(_) => prop_assert!(false, "forged page token accepted: {token}"),
            Err(error) => bounded(&error),
        }
        let issued = page::encode(&keys, query, after);
        prop_assert_eq!(page::decode(&keys, "page_token", query, &issued).unwrap(), after);
        let other = QueryFingerprint::of("namespaces/team-b", "", false);
        prop_assert!(page::decode(&keys, "page_token", other, &issued).is_err());
    }

    #[test]
    fn names_and_ids_never_panic(text in "\\PC{0,200}") {
        let _ = check_id("api_token_id", &text);
        for result in [
            Namespace::parse_parent("parent", &text).map(|_| ()),
            TokenName::parse("name", &text).map(|_| ()),
            Namespace::new("namespace", &text).map(|_| ()),
        ] {
            if let Err(error) = result {
                bounded(&error);
            }
        }
        if let Ok(name) = TokenName::parse("name", &text) {
            // What is accepted round-trips.
            prop_assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn validators_never_panic(
        text in "\\PC{0,600}",
        key in "\\PC{0,80}",
        seconds in any::<i64>(),
        nanos in any::<i32>(),
        offset in any::<i64>(),
    ) {
        let _ = validate::display_name("display_name", &text);
        let _ = validate::description("description", &text);
        let _ = validate::ip_address("caller_address", &text);
        let mut violations = validate::Violations::default();
        let labels: BTreeMap<String, String> = [(key, text.clone())].into_iter().collect();
        validate::labels("labels", &labels, &mut violations);
        bounded(&violations.into_error());
        let _ = validate::duration("ttl", seconds, nanos, chrono::Duration::days(36_525), "100 years");
        let now = chrono::Utc::now();
        if let Some(when) = chrono::DateTime::from_timestamp(offset % 400_000_000_000, 0) {
            let _ = validate::expire_time("expire_time", when, now);
        }
        let _ = validate::latest_expiry(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    }
}
