//! Time-driven rules: expiry warnings, the inactivity rule's candidates,
//! and the purge of revoked and expired tokens (and old audit events).

use apitoken_domain::{Error, TokenState, event::EventKind};
use apitoken_migration::indexes;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait, sea_query::Expr,
};

use super::{
    Change, TokenStore,
    audit::append_audit,
    db_error,
    events::append_event,
    through_index,
    tokens::{state_condition, to_record},
};
use crate::{
    audit_entity,
    entity::{Column, Entity},
    record::{AuditEntry, TokenRecord},
};

/// Active tokens within `lead` of their expiry without warning `level`, read
/// through the index on `expire_time` (bounded to tokens expiring within the
/// lead), never a scan.
pub(super) fn warnings_due(
    now: DateTime<Utc>,
    level: i16,
    lead: chrono::Duration,
    limit: u64,
    backend: DbBackend,
) -> Statement {
    through_index(
        Entity::find()
            .filter(Column::ExpireTime.gt(now))
            .filter(Column::ExpireTime.lte(now + lead))
            .filter(Column::RevokeTime.is_null())
            .filter(Column::ExpiryWarningLevel.lt(level))
            .limit(limit),
        backend,
        indexes::EXPIRY_INDEX,
    )
}

impl TokenStore {
    /// Tokens (at most `limit`) that reached the lead time `lead` before
    /// their expiry without warning `level` (1-based) announced; each gets
    /// its event and audit entry exactly once, even with several replicas.
    pub async fn sweep_expiry_warnings(
        &self,
        now: DateTime<Utc>,
        level: i16,
        lead: chrono::Duration,
        limit: u64,
        audit: impl Fn(&TokenRecord) -> AuditEntry,
    ) -> Result<Vec<TokenRecord>, Error> {
        let due: Vec<TokenRecord> = Entity::find()
            .from_raw_sql(warnings_due(
                now,
                level,
                lead,
                limit,
                self.db.get_database_backend(),
            ))
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_record)
            .collect::<Result<_, _>>()?;
        let mut warned = Vec::with_capacity(due.len());
        for record in due {
            let txn = self.begin_event_write().await?;
            let claimed = Entity::update_many()
                .col_expr(Column::ExpiryWarningLevel, Expr::value(level))
                .filter(Column::Id.eq(record.id))
                .filter(Column::ExpiryWarningLevel.lt(level))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            if claimed.rows_affected == 1 {
                append_event(&txn, &record, EventKind::ExpiryWarning, now).await?;
                append_audit(&txn, audit(&record)).await?;
                txn.commit().await.map_err(db_error)?;
                warned.push(record);
            }
        }
        Ok(warned)
    }

    /// Active tokens (at most `limit`) not used since `cutoff` (never-used
    /// ones counted from creation), for the inactivity rule.
    pub async fn inactive_since(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<TokenRecord>, Error> {
        Entity::find()
            .filter(state_condition(TokenState::Active, now))
            .filter(
                Condition::any().add(Column::LastUseTime.lte(cutoff)).add(
                    Condition::all()
                        .add(Column::LastUseTime.is_null())
                        .add(Column::CreateTime.lte(cutoff)),
                ),
            )
            .order_by_asc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_record)
            .collect()
    }

    /// Deletes tokens revoked or expired before `cutoff` (freeing their ids),
    /// each with a `Purged` event and a `Purge` audit entry in the same
    /// transaction; then audit
    /// events older than `audit_cutoff` whose token no longer exists.
    pub async fn purge(
        &self,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
        audit_cutoff: DateTime<Utc>,
        limit: u64,
        audit: impl Fn(&TokenRecord) -> AuditEntry,
    ) -> Result<Vec<TokenRecord>, Error> {
        let due: Vec<TokenRecord> = Entity::find()
            .filter(
                Condition::any().add(Column::RevokeTime.lte(cutoff)).add(
                    Condition::all()
                        .add(Column::RevokeTime.is_null())
                        .add(Column::ExpireTime.lte(cutoff)),
                ),
            )
            .order_by_asc(Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_record)
            .collect::<Result<_, _>>()?;
        let mut purged = Vec::with_capacity(due.len());
        for record in due {
            let txn = self.db.begin().await.map_err(db_error)?;
            let deleted = Entity::delete_many()
                .filter(Column::Id.eq(record.id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            if deleted.rows_affected == 1 {
                append_event(&txn, &record, EventKind::Purged, now).await?;
                append_audit(&txn, audit(&record)).await?;
                txn.commit().await.map_err(db_error)?;
                self.changed(Change::Removed {
                    uid: record.uid.clone(),
                });
                purged.push(record);
            }
        }
        // The audit log is kept at least as long as the tokens it mentions:
        // one statement drops old events whose token is gone.
        audit_entity::Entity::delete_many()
            .filter(audit_entity::Column::EventTime.lt(audit_cutoff))
            .filter(
                Condition::any()
                    .add(audit_entity::Column::ResourceUid.is_null())
                    .add(
                        audit_entity::Column::ResourceUid.not_in_subquery(
                            sea_orm::sea_query::Query::select()
                                .column(Column::Uid)
                                .from(Entity)
                                .to_owned(),
                        ),
                    ),
            )
            .exec(&self.db)
            .await
            .map_err(db_error)?;
        Ok(purged)
    }
}
