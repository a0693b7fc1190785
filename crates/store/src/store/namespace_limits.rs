//! A namespace's own aggregate limit (`namespace_limits`): read one, read
//! all (each replica keeps them in memory and reads them again every
//! second), set or clear one together with its audit entry.

use apitoken_domain::{Error, ratelimit::RateLimit};
use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait, sea_query::OnConflict};
use tracing::warn;

use super::{TokenStore, audit::append_audit, db_error};
use crate::{
    namespace_limit_entity::{self, Column, Entity},
    record::{AuditEntry, decode_rate_limit, encode_rate_limit},
};

/// A namespace's own limit, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceLimit {
    /// The namespace.
    pub namespace: String,
    /// Its limit.
    pub rate_limit: RateLimit,
    /// The token that set it.
    pub updater: String,
    /// When.
    pub update_time: DateTime<Utc>,
}

fn from_model(model: namespace_limit_entity::Model) -> Option<NamespaceLimit> {
    let Some(rate_limit) = decode_rate_limit(Some(model.rate_limit), model.rate_limit_window)
    else {
        warn!(namespace = %model.namespace, "corrupt namespace_limits row: ignored");
        return None;
    };
    Some(NamespaceLimit {
        namespace: model.namespace,
        rate_limit,
        updater: model.updater,
        update_time: model.update_time,
    })
}

impl TokenStore {
    /// The namespace's own limit, if its owner set one.
    pub async fn namespace_limit(&self, namespace: &str) -> Result<Option<NamespaceLimit>, Error> {
        Ok(Entity::find_by_id(namespace.to_owned())
            .one(&self.db)
            .await
            .map_err(db_error)?
            .and_then(from_model))
    }

    /// Every namespace's own limit.
    pub async fn namespace_limits(&self) -> Result<Vec<NamespaceLimit>, Error> {
        Ok(Entity::find()
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .filter_map(from_model)
            .collect())
    }

    /// Sets (`Some`) or clears (`None`: back to the deployment's figure) a
    /// namespace's own limit, with its audit entry, in one transaction.
    pub async fn set_namespace_limit(
        &self,
        namespace: &str,
        limit: Option<RateLimit>,
        updater: &str,
        now: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<(), Error> {
        let txn = self.db.begin().await.map_err(db_error)?;
        match limit {
            Some(limit) => {
                let (count, window) = encode_rate_limit(Some(limit));
                let row = namespace_limit_entity::ActiveModel {
                    namespace: Set(namespace.to_owned()),
                    rate_limit: Set(count.unwrap_or(0)),
                    rate_limit_window: Set(window),
                    updater: Set(updater.to_owned()),
                    update_time: Set(now),
                };
                Entity::insert(row)
                    .on_conflict(
                        OnConflict::column(Column::Namespace)
                            .update_columns([
                                Column::RateLimit,
                                Column::RateLimitWindow,
                                Column::Updater,
                                Column::UpdateTime,
                            ])
                            .to_owned(),
                    )
                    .exec(&txn)
                    .await
                    .map_err(db_error)?;
            }
            None => {
                Entity::delete_by_id(namespace.to_owned())
                    .exec(&txn)
                    .await
                    .map_err(db_error)?;
            }
        }
        append_audit(&txn, audit).await?;
        txn.commit().await.map_err(db_error)
    }
}
