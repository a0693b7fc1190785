//! Opaque page tokens for `ListApiTokens`.
//!
//! A page token is `base64url(fingerprint ‖ after_id ‖ mac)`: the fingerprint
//! binds it to the request's parent, filter and `show_revoked`, the keyed MAC
//! makes it unforgeable, and `after_id` is the keyset cursor. A token from
//! another namespace or another query is refused as `INVALID_ARGUMENT`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{Error, hash::Keys, input::MAX_PAGE_TOKEN_LEN};

const FINGERPRINT_LEN: usize = 16;
const ID_LEN: usize = 8;
const MAC_LEN: usize = 16;

/// What a page token pins down of the request that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryFingerprint([u8; FINGERPRINT_LEN]);

impl QueryFingerprint {
    /// The fingerprint of a list request.
    pub fn of(parent: &str, filter: &str, show_revoked: bool) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("apitoken 2026-11-23 list query v1");
        for part in [parent, filter] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(&[u8::from(show_revoked)]);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&hasher.finalize().as_bytes()[..FINGERPRINT_LEN]);
        Self(fingerprint)
    }
}

/// Encodes a page token that continues after the row `after_id`.
pub fn encode(keys: &Keys, query: QueryFingerprint, after_id: i64) -> String {
    let mut bytes = Vec::with_capacity(FINGERPRINT_LEN + ID_LEN + MAC_LEN);
    bytes.extend_from_slice(&query.0);
    bytes.extend_from_slice(&after_id.to_be_bytes());
    let mac = keys.page_token_mac(&bytes);
    bytes.extend_from_slice(&mac);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a page token given as `field` for the request `query`.
pub fn decode(
    keys: &Keys,
    field: &str,
    query: QueryFingerprint,
    token: &str,
) -> Result<i64, Error> {
    let invalid = || Error::invalid(field, "is not a page token issued for this request");
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {MAX_PAGE_TOKEN_LEN} bytes (got {}): it is not a page token issued for this request",
                token.len()
            ),
        ));
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != FINGERPRINT_LEN + ID_LEN + MAC_LEN {
        return Err(invalid());
    }
    let (data, mac) = bytes.split_at(FINGERPRINT_LEN + ID_LEN);
    // Constant-time comparison via blake3's Hash equality is not available for
    // 16 bytes; fold the difference instead.
    let expected = keys.page_token_mac(data);
    let difference = expected
        .iter()
        .zip(mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference != 0 || data[..FINGERPRINT_LEN] != query.0 {
        return Err(invalid());
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&data[FINGERPRINT_LEN..]);
    Ok(i64::from_be_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_for_the_same_query() {
        let keys = Keys::default();
        let query = QueryFingerprint::of("namespaces/a", "", false);
        let token = encode(&keys, query, 42);
        assert_eq!(decode(&keys, "page_token", query, &token), Ok(42));
    }

    #[test]
    fn refuses_other_queries_keys_and_tampering() {
        let keys = Keys::default();
        let query = QueryFingerprint::of("namespaces/a", "", false);
        let token = encode(&keys, query, 42);
        for other in [
            QueryFingerprint::of("namespaces/b", "", false),
            QueryFingerprint::of("namespaces/a", "role = viewer", false),
            QueryFingerprint::of("namespaces/a", "", true),
        ] {
            assert!(decode(&keys, "page_token", other, &token).is_err());
        }
        assert!(decode(&Keys::derive(Some(b"k")), "page_token", query, &token).is_err());
        let mut tampered = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        tampered[FINGERPRINT_LEN + ID_LEN - 1] ^= 1;
        assert!(
            decode(
                &keys,
                "page_token",
                query,
                &URL_SAFE_NO_PAD.encode(tampered)
            )
            .is_err()
        );
        assert!(decode(&keys, "page_token", query, "garbage!").is_err());
        assert!(decode(&keys, "page_token", query, &"A".repeat(1 << 20)).is_err());
    }
}
