//! Path patterns and the table that matches request paths against them,
//! shared by the interceptor's per-method policy and the ext_authz policy
//! file, so that `/pkg.Svc/*` means the same thing in both.
//!
//! Three kinds of pattern:
//!
//! - `/pkg.Svc/Method` or `/api/health`: that path exactly;
//! - `/pkg.Svc/*`: every path whose part up to its last `/` is `/pkg.Svc/`
//!   (one more segment: every method of a gRPC service);
//! - `/api/orders/**`: every path that starts with `/api/orders/` (any
//!   depth: an HTTP path prefix).
//!
//! A path's match is its exact pattern, else its `/*` pattern, else the
//! longest `**` prefix that it starts with, else nothing (the caller's
//! default).

use std::collections::HashMap;

/// Longest pattern accepted by [`Pattern::parse`].
pub const MAX_PATTERN_LEN: usize = 256;

/// A path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// This path only.
    Exact(String),
    /// Paths whose part up to their last `/` is this (which ends in `/`).
    Segment(String),
    /// Paths starting with this.
    Prefix(String),
}

impl Pattern {
    /// The pattern `text` stands for, without validation (the
    /// interceptor's builder takes any string): `…**` is a prefix, `…*` a
    /// segment wildcard, anything else an exact path.
    pub fn lenient(text: &str) -> Pattern {
        if let Some(prefix) = text.strip_suffix("**") {
            Pattern::Prefix(prefix.to_owned())
        } else if let Some(service) = text.strip_suffix('*') {
            Pattern::Segment(service.to_owned())
        } else {
            Pattern::Exact(text.to_owned())
        }
    }

    /// A validated pattern: it starts with `/`, is at most
    /// [`MAX_PATTERN_LEN`] bytes of visible ASCII, and has `*` only as a
    /// final `/*` or a final `**`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if !text.starts_with('/') {
            return Err(
                "a pattern starts with `/` (e.g. `/pkg.Svc/Method`, `/pkg.Svc/*`, `/api/**`)"
                    .to_owned(),
            );
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!("a pattern is at most {MAX_PATTERN_LEN} bytes"));
        }
        if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "a pattern is visible ASCII only (found {:?})",
                bad.escape_default().to_string()
            ));
        }
        if text.contains(['?', '#']) {
            return Err("a pattern is a path, without `?` query or `#` fragment".to_owned());
        }
        let pattern = Pattern::lenient(text);
        let body = match &pattern {
            Pattern::Exact(path) => path.as_str(),
            Pattern::Prefix(prefix) => prefix.as_str(),
            Pattern::Segment(service) => {
                if !service.ends_with('/') {
                    return Err(
                        "`*` stands for one whole segment: write `/pkg.Svc/*` (or `/prefix/**` for any depth)"
                            .to_owned(),
                    );
                }
                service.as_str()
            }
        };
        if body.contains('*') {
            return Err(
                "`*` may only end a pattern, as `/*` (one segment) or `**` (any depth)".to_owned(),
            );
        }
        Ok(pattern)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(path) => f.write_str(path),
            Pattern::Segment(service) => write!(f, "{service}*"),
            Pattern::Prefix(prefix) => write!(f, "{prefix}**"),
        }
    }
}

/// Values by path pattern, matched with the precedence of the module
/// documentation.
#[derive(Debug, Clone)]
pub struct PathTable<V> {
    exact: HashMap<String, V>,
    segments: HashMap<String, V>,
    /// Longest first.
    prefixes: Vec<(String, V)>,
}

impl<V> Default for PathTable<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            segments: HashMap::new(),
            prefixes: Vec::new(),
        }
    }
}

impl<V> PathTable<V> {
    /// Sets the value of `pattern`, returning the one it replaces.
    pub fn insert(&mut self, pattern: Pattern, value: V) -> Option<V> {
        match pattern {
            Pattern::Exact(path) => self.exact.insert(path, value),
            Pattern::Segment(service) => self.segments.insert(service, value),
            Pattern::Prefix(prefix) => {
                if let Some(slot) = self.prefixes.iter_mut().find(|(known, _)| *known == prefix) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                let at = self
                    .prefixes
                    .iter()
                    .position(|(known, _)| known.len() < prefix.len())
                    .unwrap_or(self.prefixes.len());
                self.prefixes.insert(at, (prefix, value));
                None
            }
        }
    }

    /// The value of exactly `pattern`, to change it.
    pub fn get_mut(&mut self, pattern: &Pattern) -> Option<&mut V> {
        match pattern {
            Pattern::Exact(path) => self.exact.get_mut(path),
            Pattern::Segment(service) => self.segments.get_mut(service),
            Pattern::Prefix(prefix) => self
                .prefixes
                .iter_mut()
                .find(|(known, _)| known == prefix)
                .map(|(_, value)| value),
        }
    }

    /// The value whose pattern matches `path` best, if any.
    pub fn lookup(&self, path: &str) -> Option<&V> {
        if let Some(value) = self.exact.get(path) {
            return Some(value);
        }
        if !self.segments.is_empty() {
            let service = path.rfind('/').map_or(path, |slash| &path[..=slash]);
            if let Some(value) = self.segments.get(service) {
                return Some(value);
            }
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, value)| value)
    }

    /// How many patterns the table holds.
    pub fn len(&self) -> usize {
        self.exact.len() + self.segments.len() + self.prefixes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[(&str, u8)]) -> PathTable<u8> {
        let mut table = PathTable::default();
        for (pattern, value) in patterns {
            table.insert(Pattern::parse(pattern).expect(pattern), *value);
        }
        table
    }

    #[test]
    fn exact_beats_segment_beats_longest_prefix() {
        let table = table(&[
            ("/shop.v1.Shop/*", 1),
            ("/shop.v1.Shop/Delete", 2),
            ("/api/**", 3),
            ("/api/orders/**", 4),
            ("/api/orders/*", 5),
        ]);
        assert_eq!(table.lookup("/shop.v1.Shop/Delete"), Some(&2));
        assert_eq!(table.lookup("/shop.v1.Shop/List"), Some(&1));
        assert_eq!(table.lookup("/shop.v1.Shop/List/x"), None);
        assert_eq!(table.lookup("/api/orders/42"), Some(&5));
        assert_eq!(table.lookup("/api/orders/42/items"), Some(&4));
        assert_eq!(table.lookup("/api/users"), Some(&3));
        assert_eq!(table.lookup("/api"), None);
        assert_eq!(table.lookup("/other.v1.Other/Get"), None);
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn later_patterns_replace_earlier_ones() {
        let mut table = table(&[("/a/**", 1)]);
        assert_eq!(
            table.insert(Pattern::parse("/a/**").expect("ok"), 2),
            Some(1)
        );
        assert_eq!(table.lookup("/a/b"), Some(&2));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("shop.v1.Shop/*", "starts with `/`"),
            ("/shop*", "one whole segment"),
            ("/a/*/b", "may only end"),
            ("/a b", "visible ASCII"),
            ("/a?x=1", "query"),
        ] {
            let error = Pattern::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(Pattern::parse(&format!("/{}", "a".repeat(MAX_PATTERN_LEN))).is_err());
        assert_eq!(
            Pattern::parse("/pkg.Svc/*").expect("ok").to_string(),
            "/pkg.Svc/*"
        );
    }
}
