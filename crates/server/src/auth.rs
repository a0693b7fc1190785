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
    token::{Secret, TokenFormat, bearer_secret},
};
use apitoken_store::{TokenRecord, TokenStore};
use tonic::Request;
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
