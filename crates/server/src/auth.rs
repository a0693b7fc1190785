//! Authentication of callers: `authorization: Bearer <secret>` to a
//! [`Principal`], and the secret check behind `VerifyApiToken`.
//!
//! Order of checks, cheapest first: header present, `Bearer` scheme, token
//! format and checksum (no database access), hash lookup through the unique
//! index, then revocation and expiry. Failures are logged with the reason and
//! peer address, never the token.

use std::sync::Arc;

use apitoken_domain::{
    AuthFailure, Error, Principal, TokenState,
    clock::SharedClock,
    hash::Keys,
    token::{Secret, TokenFormat},
};
use apitoken_store::{TokenRecord, TokenStore};
use tonic::{Request, metadata::MetadataMap};
use tracing::info;

use crate::usage::UsageRecorder;

/// Turns secrets into tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: TokenStore,
    format: TokenFormat,
    keys: Keys,
    clock: SharedClock,
    usage: Arc<UsageRecorder>,
}

/// The secret of `authorization: Bearer <secret>`: scheme case-insensitive,
/// surrounding whitespace ignored.
pub fn bearer_secret(metadata: &MetadataMap) -> Result<Secret, AuthFailure> {
    let value = metadata.get("authorization").ok_or(AuthFailure::Missing)?;
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?.trim();
    let (scheme, secret) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    Ok(Secret::new(secret.trim()))
}

impl Authenticator {
    /// An authenticator over `store`.
    pub fn new(
        store: TokenStore,
        format: TokenFormat,
        keys: Keys,
        clock: SharedClock,
        usage: Arc<UsageRecorder>,
    ) -> Self {
        Self {
            store,
            format,
            keys,
            clock,
            usage,
        }
    }

    /// The caller of `request`, from its bearer token.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let record = match bearer_secret(request.metadata()) {
            Ok(secret) => self.verify(secret).await,
            Err(failure) => Err(Error::Unauthenticated(failure)),
        };
        match record {
            Ok(record) => Ok(principal(&record)),
            Err(error) => {
                if let Error::Unauthenticated(failure) = &error {
                    let peer = request.remote_addr().map(|addr| addr.to_string());
                    info!(reason = failure.reason(), peer = ?peer, "authentication failed");
                }
                Err(error)
            }
        }
    }

    /// The active token that `secret` belongs to; counts as a use.
    pub async fn verify(&self, secret: Secret) -> Result<TokenRecord, Error> {
        let well_formed = self.format.parse(secret)?;
        let hash = self.keys.hash_secret(&well_formed);
        let record = self
            .store
            .find_by_hash(&hash)
            .await?
            .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        let now = self.clock.now();
        match record.state(now) {
            TokenState::Revoked => Err(Error::Unauthenticated(AuthFailure::Revoked)),
            TokenState::Expired => Err(Error::Unauthenticated(AuthFailure::Expired)),
            TokenState::Active => {
                self.usage
                    .record(record.name.namespace().as_str(), &record.uid, now);
                Ok(record)
            }
        }
    }
}

/// The principal a token record stands for.
pub fn principal(record: &TokenRecord) -> Principal {
    Principal {
        name: record.name.clone(),
        uid: record.uid.clone(),
        role: record.role,
        expire_time: record.expire_time,
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert(
            "authorization",
            MetadataValue::try_from(value).expect("ascii"),
        );
        map
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer_secret(&MetadataMap::new()),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            bearer_secret(&metadata("Bearer abc")).map(|s| s.expose().to_owned()),
            Ok("abc".to_owned())
        );
        assert_eq!(
            bearer_secret(&metadata("bearer   abc ")).map(|s| s.expose().to_owned()),
            Ok("abc".to_owned())
        );
        assert_eq!(
            bearer_secret(&metadata("Basic abc")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(bearer_secret(&metadata("abc")), Err(AuthFailure::Malformed));
    }
}
