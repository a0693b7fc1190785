//! What the in-memory verification index loads: the few columns that decide
//! whether a secret is good (hashes, state, role, limits), never the
//! descriptive ones.

use apitoken_domain::{Error, Role, hash::SecretHash, name::TokenName};
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DerivePartialModel, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use tracing::error;

use super::{TokenStore, db_error};
use crate::{
    entity::{Column, Entity},
    record::TokenRecord,
};

/// Most uids in one `IN (…)` lookup.
const UID_BATCH: usize = 500;

/// What verification needs of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRow {
    /// Internal row id.
    pub id: i64,
    /// Public unique identifier.
    pub uid: String,
    /// The token's name.
    pub name: TokenName,
    /// The role.
    pub role: Role,
    /// Incremented by every change.
    pub version: i64,
    /// An interceptor's token.
    pub interceptor: bool,
    /// The token's own rate limit; `None`: the role's default.
    pub rate_limit: Option<apitoken_domain::ratelimit::RateLimit>,
    /// Expiry, if any.
    pub expire_time: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoke_time: Option<DateTime<Utc>>,
    /// Hash of the current secret.
    pub secret_hash: SecretHash,
    /// Hash of the previous secret, during a grace period.
    pub previous_secret_hash: Option<SecretHash>,
    /// When the previous secret stops working.
    pub previous_secret_expire_time: Option<DateTime<Utc>>,
    /// End the grace period on first use of the current secret.
    pub end_grace_on_first_use: bool,
}

impl From<&TokenRecord> for AuthRow {
    fn from(record: &TokenRecord) -> Self {
        Self {
            id: record.id,
            uid: record.uid.clone(),
            name: record.name.clone(),
            role: record.role,
            version: record.version,
            interceptor: record.interceptor,
            rate_limit: record.rate_limit,
            expire_time: record.expire_time,
            revoke_time: record.revoke_time,
            secret_hash: record.secret_hash,
            previous_secret_hash: record.previous_secret_hash,
            previous_secret_expire_time: record.previous_secret_expire_time,
            end_grace_on_first_use: record.end_grace_on_first_use,
        }
    }
}

#[derive(Debug, DerivePartialModel)]
#[sea_orm(entity = "Entity")]
struct AuthColumns {
    id: i64,
    uid: String,
    namespace: String,
    token_id: String,
    role: i16,
    version: i64,
    interceptor: bool,
    rate_limit: Option<i32>,
    rate_limit_window: Option<i32>,
    expire_time: Option<DateTime<Utc>>,
    revoke_time: Option<DateTime<Utc>>,
    secret_hash: Vec<u8>,
    previous_secret_hash: Option<Vec<u8>>,
    previous_secret_expire_time: Option<DateTime<Utc>>,
    end_grace_on_first_use: bool,
}

impl AuthColumns {
    fn into_row(self) -> Result<AuthRow, Error> {
        let corrupt = |what: &str| {
            error!(uid = %self.uid, what, "corrupt api_tokens row");
            Error::Internal
        };
        Ok(AuthRow {
            role: Role::from_i16(self.role).ok_or_else(|| corrupt("role"))?,
            secret_hash: SecretHash::from_slice(&self.secret_hash)
                .ok_or_else(|| corrupt("secret_hash"))?,
            previous_secret_hash: self
                .previous_secret_hash
                .as_deref()
                .and_then(SecretHash::from_slice),
            name: TokenName::from_stored(&self.namespace, &self.token_id),
            id: self.id,
            uid: self.uid,
            version: self.version,
            interceptor: self.interceptor,
            rate_limit: crate::record::decode_rate_limit(self.rate_limit, self.rate_limit_window),
            expire_time: self.expire_time,
            revoke_time: self.revoke_time,
            previous_secret_expire_time: self.previous_secret_expire_time,
            end_grace_on_first_use: self.end_grace_on_first_use,
        })
    }
}

impl TokenStore {
    /// At most `limit` tokens with a row id above `after_id`, by id: the
    /// index loads every token in such batches.
    pub async fn auth_rows_after(&self, after_id: i64, limit: u64) -> Result<Vec<AuthRow>, Error> {
        Entity::find()
            .filter(Column::Id.gt(after_id))
            .order_by_asc(Column::Id)
            .limit(limit)
            .into_partial_model::<AuthColumns>()
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(AuthColumns::into_row)
            .collect()
    }

    /// How many tokens are stored (of any state).
    pub async fn count_tokens(&self) -> Result<u64, Error> {
        Entity::find().count(&self.db).await.map_err(db_error)
    }

    /// The tokens with these uids (those that still exist).
    pub async fn auth_rows_by_uid(&self, uids: &[String]) -> Result<Vec<AuthRow>, Error> {
        let mut rows = Vec::with_capacity(uids.len());
        for batch in uids.chunks(UID_BATCH) {
            let found = Entity::find()
                .filter(Column::Uid.is_in(batch.iter().map(String::as_str)))
                .into_partial_model::<AuthColumns>()
                .all(&self.db)
                .await
                .map_err(db_error)?;
            for columns in found {
                rows.push(columns.into_row()?);
            }
        }
        Ok(rows)
    }

    /// The full token with this uid; `NOT_FOUND` if there is none.
    pub async fn get_by_uid(&self, uid: &str) -> Result<TokenRecord, Error> {
        Entity::find()
            .filter(Column::Uid.eq(uid))
            .one(&self.db)
            .await
            .map_err(db_error)?
            .map(super::tokens::to_record)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("token {uid}")))
    }
}
