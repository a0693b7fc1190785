//! The secret format: `<prefix>_<random><checksum>`.
//!
//! - `prefix`: per deployment, 1 to 16 characters of `[a-z0-9_]`, starting
//!   with a letter and not ending with `_` (default `apitoken`; the seeds use
//!   `vf_tok`, `vs_at`, `gvx`). It lets secret scanners find leaked tokens.
//! - `random`: 43 characters drawn uniformly from the 62 ASCII letters and
//!   digits with the operating system's random source: 43 × log2(62) ≈ 256
//!   bits. Letters and digits survive copy-paste, URLs, shells and YAML.
//! - `checksum`: CRC32 of `random`, as 6 base62 digits, so that a mistyped or
//!   truncated token is refused without any database access.
//!
//! A scanner regex for the default prefix: `\bapitoken_[0-9A-Za-z]{49}\b`.

use std::fmt;

use rand::{TryRng, rngs::SysRng};
use tonic::metadata::MetadataMap;

use crate::{AuthFailure, Error};

/// The secret of `authorization: Bearer <secret>`: scheme case-insensitive,
/// surrounding whitespace ignored. The server and the interceptor read
/// credentials with this one function.
pub fn bearer_secret(metadata: &MetadataMap) -> Result<Secret, AuthFailure> {
    let value = metadata.get("authorization").ok_or(AuthFailure::Missing)?;
    parse_bearer(value.to_str().map_err(|_| AuthFailure::Malformed)?)
}

/// The secret of an `authorization` header value (`Bearer <secret>`).
pub fn parse_bearer(value: &str) -> Result<Secret, AuthFailure> {
    let value = value.trim();
    let (scheme, secret) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    Ok(Secret::new(secret.trim()))
}

/// Letters and digits, in base62 digit order.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of the random part.
pub const RANDOM_LEN: usize = 43;
/// Length of the checksum part.
pub const CHECKSUM_LEN: usize = 6;
/// Characters of the random part shown in a [`TokenFormat::hint`].
const HINT_LEN: usize = 4;
/// The default prefix.
pub const DEFAULT_PREFIX: &str = "apitoken";

/// A token secret. Its `Debug` never prints the value and it has no `Display`:
/// the only way out is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value received from a caller.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's text, for the one reply that shows it or for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret that passed the format check: right prefix, length, alphabet
/// and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellFormed(Secret);

impl WellFormed {
    /// The secret.
    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

/// An invalid token prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "token prefix must be 1 to 16 characters of lowercase letters, digits and `_`, starting with a letter and not ending with `_`"
)]
pub struct InvalidPrefix;

/// The token format of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFormat {
    prefix: String,
}

impl Default for TokenFormat {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl TokenFormat {
    /// A format with the given prefix (without the trailing `_`).
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = (1..=16).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && !prefix.ends_with('_')
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(InvalidPrefix)
        }
    }

    /// The prefix, without the trailing `_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A regex matching this deployment's tokens, for secret scanners.
    pub fn scanner_regex(&self) -> String {
        format!(
            r"\b{}_[0-9A-Za-z]{{{}}}\b",
            self.prefix,
            RANDOM_LEN + CHECKSUM_LEN
        )
    }

    /// A new secret from the operating system's random source.
    pub fn generate(&self) -> Result<Secret, Error> {
        let mut random = String::with_capacity(RANDOM_LEN);
        let mut buffer = [0u8; 64];
        while random.len() < RANDOM_LEN {
            SysRng
                .try_fill_bytes(&mut buffer)
                .map_err(|_| Error::Internal)?;
            // Rejection sampling: 248 = 4 × 62, so every kept byte maps to a
            // letter or digit with equal probability.
            for byte in buffer.iter().filter(|byte| **byte < 248) {
                if random.len() == RANDOM_LEN {
                    break;
                }
                random.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
        let checksum = checksum(&random);
        Ok(Secret(format!("{}_{random}{checksum}", self.prefix)))
    }

    /// Checks the format and checksum; no database access.
    pub fn parse(&self, secret: Secret) -> Result<WellFormed, Error> {
        let malformed = Error::Unauthenticated(AuthFailure::Malformed);
        let body = secret
            .expose()
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or_else(|| malformed.clone())?;
        if body.len() != RANDOM_LEN + CHECKSUM_LEN
            || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(malformed);
        }
        let (random, given) = body.split_at(RANDOM_LEN);
        if checksum(random) != given {
            return Err(malformed);
        }
        Ok(WellFormed(secret))
    }

    /// The prefix and the first characters of the random part, enough to
    /// recognise a token in a list and far too little to guess it.
    pub fn hint(&self, secret: &WellFormed) -> String {
        let start = self.prefix.len() + 1;
        secret.0.expose()[..start + HINT_LEN].to_owned()
    }
}

/// CRC32 of `random` as 6 base62 digits, most significant first.
fn checksum(random: &str) -> String {
    let mut value = crc32fast::hash(random.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|b| char::from(*b)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn format() -> TokenFormat {
        TokenFormat::default()
    }

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let secret = format().generate().expect("secret");
        let text = secret.expose();
        assert!(text.starts_with("apitoken_"));
        assert_eq!(text.len(), "apitoken_".len() + 49);
        assert!(
            text["apitoken_".len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert!(format().parse(secret.clone()).is_ok());
    }

    #[test]
    fn generated_secrets_are_distinct() {
        let secrets: HashSet<_> = (0..1000)
            .map(|_| format().generate().expect("secret").expose().to_owned())
            .collect();
        assert_eq!(secrets.len(), 1000);
    }

    #[test]
    fn every_character_of_the_alphabet_is_used() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let secret = format().generate().expect("secret");
            seen.extend(secret.expose()["apitoken_".len()..][..RANDOM_LEN].chars());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn a_single_typo_is_caught_by_the_checksum() {
        let secret = format().generate().expect("secret");
        let text = secret.expose();
        for position in "apitoken_".len()..text.len() {
            let mut bytes = text.as_bytes().to_vec();
            bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).expect("ascii");
            assert_eq!(
                format().parse(Secret::new(typo)),
                Err(Error::Unauthenticated(AuthFailure::Malformed)),
                "typo at {position} accepted"
            );
        }
    }

    #[test]
    fn truncated_padded_and_foreign_tokens_are_malformed() {
        let secret = format().generate().expect("secret");
        let text = secret.expose();
        for bad in [
            &text[..text.len() - 1],
            &format!("{text}x"),
            &format!(" {text}"),
            &text.replacen("apitoken_", "other_", 1),
            &text.replacen("apitoken_", "apitoken", 1),
            "",
            "apitoken_",
        ] {
            assert!(
                format().parse(Secret::new(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn prefixes_are_validated() {
        for good in ["apitoken", "vf_tok", "vs_at", "gvx", "a"] {
            assert!(TokenFormat::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Upper",
            "1abc",
            "ends_",
            "has-dash",
            "waytoolongprefix1",
        ] {
            assert!(TokenFormat::new(bad).is_err(), "{bad}");
        }
        let custom = TokenFormat::new("vf_tok").expect("prefix");
        let secret = custom.generate().expect("secret");
        assert!(secret.expose().starts_with("vf_tok_"));
        assert!(custom.parse(secret.clone()).is_ok());
        assert!(format().parse(secret).is_err());
    }

    #[test]
    fn hint_is_prefix_and_four_characters() {
        let secret = format()
            .parse(format().generate().expect("secret"))
            .expect("well formed");
        let hint = format().hint(&secret);
        assert_eq!(hint.len(), "apitoken_".len() + 4);
        assert!(secret.secret().expose().starts_with(&hint));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = format().generate().expect("secret");
        let printed = format!("{secret:?} {:?}", format().parse(secret.clone()));
        assert!(
            !printed.contains(&secret.expose()["apitoken_".len()..]),
            "{printed}"
        );
    }

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().expect("ascii"));
        map
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_secret(&MetadataMap::new()),
            Err(AuthFailure::Missing)
        );
        for (header, secret) in [
            ("Bearer abc", "abc"),
            ("bearer   abc ", "abc"),
            ("BEARER abc", "abc"),
        ] {
            assert_eq!(
                bearer_secret(&metadata(header)).map(|s| s.expose().to_owned()),
                Ok(secret.to_owned())
            );
        }
        assert_eq!(
            bearer_secret(&metadata("Basic abc")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(bearer_secret(&metadata("abc")), Err(AuthFailure::Malformed));
    }

    #[test]
    fn scanner_regex_names_prefix_and_length() {
        assert_eq!(format().scanner_regex(), r"\bapitoken_[0-9A-Za-z]{49}\b");
    }
}
