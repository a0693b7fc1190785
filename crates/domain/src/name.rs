//! Resource names: `namespaces/{namespace}` and
//! `namespaces/{namespace}/apitokens/{apitoken}`, with AIP-122 ids.

use std::fmt;

use crate::{Error, error::FieldViolation};

/// Checks an AIP-122 id: 3 to 50 lowercase letters, digits and hyphens,
/// starting with a letter and not ending with a hyphen.
pub fn check_id(field: &str, id: &str) -> Result<(), FieldViolation> {
    let description = if id.is_empty() {
        "is required"
    } else if !(3..=50).contains(&id.len()) {
        "must be 3 to 50 characters"
    } else if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        "must start with a lowercase letter"
    } else if id.ends_with('-') {
        "must not end with a hyphen"
    } else if !id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        "must contain only lowercase letters, digits and hyphens"
    } else {
        return Ok(());
    };
    Err(FieldViolation::new(field, description))
}

/// A namespace id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// A namespace from a bare id, checked.
    pub fn new(field: &str, id: &str) -> Result<Self, Error> {
        check_id(field, id).map_err(|violation| Error::InvalidArgument(vec![violation]))?;
        Ok(Self(id.to_owned()))
    }

    /// Parses `namespaces/{namespace}` given as `field`.
    pub fn parse_parent(field: &str, parent: &str) -> Result<Self, Error> {
        let Some(id) = parent.strip_prefix("namespaces/") else {
            let description = if parent.is_empty() {
                "is required"
            } else {
                "must be of the form namespaces/{namespace}"
            };
            return Err(Error::invalid(field, description));
        };
        check_id(field, id)
            .map_err(|v| Error::invalid(field, format!("namespace {}", v.description)))?;
        Ok(Self(id.to_owned()))
    }

    /// The bare id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `namespaces/{namespace}`.
    pub fn resource_name(&self) -> String {
        format!("namespaces/{}", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a token: `namespaces/{namespace}/apitokens/{apitoken}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenName {
    namespace: Namespace,
    token_id: String,
}

impl TokenName {
    /// A name from its parts, checking the token id as `field`.
    pub fn new(namespace: Namespace, field: &str, token_id: &str) -> Result<Self, Error> {
        check_id(field, token_id).map_err(|violation| Error::InvalidArgument(vec![violation]))?;
        Ok(Self {
            namespace,
            token_id: token_id.to_owned(),
        })
    }

    /// A name from parts already validated (read back from storage).
    pub fn from_stored(namespace: &str, token_id: &str) -> Self {
        Self {
            namespace: Namespace(namespace.to_owned()),
            token_id: token_id.to_owned(),
        }
    }

    /// Parses a full name given as `field`.
    pub fn parse(field: &str, name: &str) -> Result<Self, Error> {
        let shape = "must be of the form namespaces/{namespace}/apitokens/{apitoken}";
        if name.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        let parts: Vec<&str> = name.split('/').collect();
        let ["namespaces", namespace, "apitokens", token_id] = parts.as_slice() else {
            return Err(Error::invalid(field, shape));
        };
        let namespace = check_id(field, namespace)
            .map(|()| Namespace((*namespace).to_owned()))
            .map_err(|v| Error::invalid(field, format!("namespace {}", v.description)))?;
        check_id(field, token_id)
            .map_err(|v| Error::invalid(field, format!("apitoken id {}", v.description)))?;
        Ok(Self {
            namespace,
            token_id: (*token_id).to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The token id (last segment).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "namespaces/{}/apitokens/{}",
            self.namespace, self.token_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_aip_122() {
        for good in ["abc", "ci-token", "a1-b2", &"a".repeat(50)] {
            assert!(check_id("id", good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "is required"),
            ("ab", "3 to 50"),
            (&"a".repeat(51) as &str, "3 to 50"),
            ("1abc", "start with"),
            ("-abc", "start with"),
            ("abc-", "hyphen"),
            ("aBc", "lowercase letters, digits"),
            ("a_bc", "lowercase letters, digits"),
            ("a bc", "lowercase letters, digits"),
        ] {
            let violation = check_id("id", bad).expect_err(bad);
            assert!(violation.description.contains(why), "{bad}: {violation}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        let name = TokenName::parse("name", "namespaces/team-a/apitokens/ci-token").expect("name");
        assert_eq!(name.namespace().as_str(), "team-a");
        assert_eq!(name.token_id(), "ci-token");
        assert_eq!(name.to_string(), "namespaces/team-a/apitokens/ci-token");
        let parent = Namespace::parse_parent("parent", "namespaces/team-a").expect("parent");
        assert_eq!(parent.resource_name(), "namespaces/team-a");
    }

    #[test]
    fn bad_names_name_the_field() {
        for bad in [
            "",
            "team-a/ci-token",
            "namespaces/team-a",
            "namespaces/team-a/apitokens/",
            "namespaces/Team/apitokens/ci-token",
            "namespaces/team-a/apitokens/ci-token/extra",
            "namespaces/team-a/tokens/ci-token",
        ] {
            let Err(Error::InvalidArgument(violations)) = TokenName::parse("name", bad) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(violations[0].field, "name");
        }
        assert!(Namespace::parse_parent("parent", "namespaces/").is_err());
        assert!(Namespace::parse_parent("parent", "team-a").is_err());
    }
}
