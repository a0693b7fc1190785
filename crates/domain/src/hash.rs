//! The only form in which a secret is stored: a keyed, domain-separated
//! blake3 hash.
//!
//! The key is derived with `blake3::derive_key` from an optional server-side
//! key (a pepper, `APITOKEN_HASH_KEY`): with it, a stolen database does not
//! even allow offline checks of candidate secrets. Secrets carry 256 bits of
//! entropy, so a fast hash is the right choice (no password-style stretching).

use std::fmt;

use crate::token::WellFormed;

const SECRET_HASH_CONTEXT: &str = "apitoken 2026-11-23 secret hash v1";
const PAGE_TOKEN_CONTEXT: &str = "apitoken 2026-11-23 page token mac v1";

/// The hash of a secret, as stored and indexed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(blake3::Hash);

impl SecretHash {
    /// The 32 bytes stored in the database.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Reads 32 stored bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<SecretHash> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(SecretHash(blake3::Hash::from_bytes(bytes)))
    }

    /// 64 bits of the hash, for in-memory hash tables: the hash is keyed and
    /// uniform, so its first bytes are as good a table hash as any, and
    /// callers cannot aim at a bucket.
    pub fn table_hash(&self) -> u64 {
        let bytes = self.0.as_bytes();
        u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ])
    }

    /// Constant-time comparison (`blake3::Hash` equality is constant-time).
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0 == other.0
    }
}

impl SecretHash {
    /// The first 128 bits, as the server's in-memory token table keeps
    /// them (see [`SecretTag`]).
    pub fn tag(&self) -> SecretTag {
        let mut tag = [0; 16];
        tag.copy_from_slice(&self.0.as_bytes()[..16]);
        SecretTag(tag)
    }
}

/// The first 128 bits of a [`SecretHash`]: what the server keeps in memory
/// to recognise a secret, half the size of the full hash (a million tokens:
/// 16 MB less). A keyed hash truncated to 128 bits is as strong a
/// recogniser as the whole for this use (the standard length of a MAC tag):
/// a caller who does not know a secret matches a given tag with
/// probability 2^-128 per guess, and tags are never shown to callers. The
/// database keeps the full 256 bits.
#[derive(Clone, Copy)]
pub struct SecretTag([u8; 16]);

impl SecretTag {
    /// Constant-time comparison with a full hash's first 128 bits.
    pub fn matches(&self, hash: &SecretHash) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0[..].ct_eq(&hash.0.as_bytes()[..16]))
    }

    /// The same 64 bits as [`SecretHash::table_hash`] of the hash it came
    /// from.
    pub fn table_hash(&self) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(bytes)
    }
}

impl fmt::Debug for SecretTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretTag({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", &self.0.to_hex()[..8])
    }
}

/// Keys derived from the deployment's optional server-side key.
#[derive(Clone)]
pub struct Keys {
    secret_hash: [u8; 32],
    page_token: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::derive(None)
    }
}

impl Keys {
    /// Derives every key from `server_key` (none: derived from the empty
    /// string, so hashes are still domain-separated).
    pub fn derive(server_key: Option<&[u8]>) -> Self {
        let material = server_key.unwrap_or_default();
        Self {
            secret_hash: blake3::derive_key(SECRET_HASH_CONTEXT, material),
            page_token: blake3::derive_key(PAGE_TOKEN_CONTEXT, material),
        }
    }

    /// The stored hash of a secret.
    pub fn hash_secret(&self, secret: &WellFormed) -> SecretHash {
        SecretHash(blake3::keyed_hash(
            &self.secret_hash,
            secret.secret().expose().as_bytes(),
        ))
    }

    /// A 16-byte MAC for page tokens.
    pub fn page_token_mac(&self, data: &[u8]) -> [u8; 16] {
        let full = blake3::keyed_hash(&self.page_token, data);
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&full.as_bytes()[..16]);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenFormat;

    #[test]
    fn hashes_depend_on_secret_and_key() {
        let format = TokenFormat::default();
        let a = format.parse(format.generate().expect("a")).expect("a");
        let b = format.parse(format.generate().expect("b")).expect("b");
        let plain = Keys::default();
        let peppered = Keys::derive(Some(b"pepper"));
        assert!(plain.hash_secret(&a).matches(&plain.hash_secret(&a)));
        assert!(!plain.hash_secret(&a).matches(&plain.hash_secret(&b)));
        assert!(!plain.hash_secret(&a).matches(&peppered.hash_secret(&a)));
        let raw = blake3::hash(a.secret().expose().as_bytes());
        assert_ne!(
            plain.hash_secret(&a).as_bytes(),
            raw.as_bytes(),
            "not domain-separated"
        );
    }

    #[test]
    fn a_tag_recognises_its_hash_only() {
        let format = TokenFormat::default();
        let keys = Keys::default();
        let a = keys.hash_secret(&format.parse(format.generate().expect("a")).expect("a"));
        let b = keys.hash_secret(&format.parse(format.generate().expect("b")).expect("b"));
        assert!(a.tag().matches(&a));
        assert!(!a.tag().matches(&b));
        assert_eq!(a.tag().table_hash(), a.table_hash());
        // Differing in the tag's last byte only is a mismatch.
        let mut bytes = *a.as_bytes();
        bytes[15] ^= 1;
        assert!(
            !a.tag()
                .matches(&SecretHash::from_slice(&bytes).expect("32 bytes"))
        );
        // Beyond the tag, the bytes do not take part.
        let mut bytes = *a.as_bytes();
        bytes[16] ^= 1;
        assert!(
            a.tag()
                .matches(&SecretHash::from_slice(&bytes).expect("32 bytes"))
        );
        let hex: String = a.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{:?}", a.tag()).contains(&hex[8..16]));
    }

    #[test]
    fn hashes_round_trip_through_bytes() {
        let format = TokenFormat::default();
        let secret = format.parse(format.generate().expect("s")).expect("s");
        let hash = Keys::default().hash_secret(&secret);
        assert_eq!(SecretHash::from_slice(hash.as_bytes()), Some(hash));
        assert_eq!(SecretHash::from_slice(&[1, 2, 3]), None);
    }
}
