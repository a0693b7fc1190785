//! The event log: append, read after a cursor, the expiry sweep, pruning
//! with a watermark.

use apitoken_domain::{Error, event::EventKind, name::TokenName};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::Expr,
};
use tracing::{error, warn};

use apitoken_migration::indexes;
use sea_orm::Statement;

use super::{
    EVENT_CHANNEL, EVENT_LOCK_KEY, TokenStore, db_error, through_index, tokens::to_record,
};
use crate::{
    entity::{Column, Entity},
    event_entity,
    record::{EventRecord, TokenRecord},
    watermark_entity,
};

/// Wakes on every event append announced by any replica (PostgreSQL
/// `LISTEN` on [`EVENT_CHANNEL`]).
pub struct EventListener(sqlx::postgres::PgListener);

impl std::fmt::Debug for EventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventListener")
    }
}

impl EventListener {
    /// Waits for the next announcement. An error means the connection was
    /// lost (announcements in between are lost too: catch up by reading the
    /// log, then listen again).
    pub async fn next(&mut self) -> Result<(), Error> {
        match self.0.try_recv().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::Unavailable(
                "the database connection that listened for events was lost".to_owned(),
            )),
            Err(error) => {
                warn!(error = %error, "listening for events failed");
                Err(Error::Unavailable("listening for events failed".to_owned()))
            }
        }
    }
}

/// Tokens past their expiry whose `Expired` event is not written yet, read
/// through the index on `(expiry_notified, expire_time)`, never a scan.
pub(super) fn expired_due(now: DateTime<Utc>, limit: u64, backend: DbBackend) -> Statement {
    through_index(
        Entity::find()
            .filter(Column::ExpiryNotified.eq(false))
            .filter(Column::ExpireTime.lte(now))
            .filter(Column::RevokeTime.is_null())
            .limit(limit),
        backend,
        indexes::EXPIRED_INDEX,
    )
}

impl TokenStore {
    /// A listener for event appends on PostgreSQL; `None` on SQLite, where
    /// one process writes and polls suffice.
    pub async fn event_listener(&self) -> Result<Option<EventListener>, Error> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|error| {
                warn!(error = %error, "cannot listen for events");
                Error::Unavailable("cannot listen for events".to_owned())
            })?;
        listener.listen(EVENT_CHANNEL).await.map_err(|error| {
            warn!(error = %error, "cannot listen for events");
            Error::Unavailable("cannot listen for events".to_owned())
        })?;
        Ok(Some(EventListener(listener)))
    }

    /// Appends an `Expired` event, exactly once, for every token that reached
    /// its expiry; returns them. Safe with several replicas sweeping.
    pub async fn sweep_expired(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<TokenRecord>, Error> {
        let due: Vec<TokenRecord> = Entity::find()
            .from_raw_sql(expired_due(now, limit, self.db.get_database_backend()))
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_record)
            .collect::<Result<_, _>>()?;
        let mut expired = Vec::with_capacity(due.len());
        for record in due {
            let txn = self.begin_event_write().await?;
            let claimed = Entity::update_many()
                .col_expr(Column::ExpiryNotified, Expr::value(true))
                .filter(Column::Id.eq(record.id))
                .filter(Column::ExpiryNotified.eq(false))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            if claimed.rows_affected == 1 {
                append_event(&txn, &record, EventKind::Expired, now).await?;
                txn.commit().await.map_err(db_error)?;
                expired.push(record);
            }
        }
        Ok(expired)
    }

    /// Events of every namespace after `sequence`, oldest first: what the
    /// in-memory index follows.
    pub async fn events_since(&self, sequence: i64, limit: u64) -> Result<Vec<EventRecord>, Error> {
        event_entity::Entity::find()
            .filter(event_entity::Column::Id.gt(sequence))
            .order_by_asc(event_entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(event_record)
            .collect()
    }

    /// Events of `namespace` after `sequence`, oldest first.
    pub async fn events_after(
        &self,
        namespace: &str,
        sequence: i64,
        limit: u64,
    ) -> Result<Vec<EventRecord>, Error> {
        event_entity::Entity::find()
            .filter(event_entity::Column::Namespace.eq(namespace))
            .filter(event_entity::Column::Id.gt(sequence))
            .order_by_asc(event_entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(event_record)
            .collect()
    }

    /// The end of the event log: the latest sequence appended, even if it
    /// was pruned since (0 when nothing was ever appended).
    pub async fn last_event_sequence(&self) -> Result<i64, Error> {
        let last = event_entity::Entity::find()
            .order_by_desc(event_entity::Column::Id)
            .one(&self.db)
            .await
            .map_err(db_error)?;
        let pruned = self.events_pruned_through().await?;
        Ok(std::cmp::max(last.map_or(0, |event| event.id), pruned))
    }

    /// Deletes events older than `cutoff` and records the last sequence
    /// deleted, in one transaction; returns that sequence (0: nothing).
    pub async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<i64, Error> {
        let txn = self.begin_event_write().await?;
        let last = event_entity::Entity::find()
            .filter(event_entity::Column::EventTime.lt(cutoff))
            .order_by_desc(event_entity::Column::Id)
            .one(&txn)
            .await
            .map_err(db_error)?;
        let Some(last) = last else {
            return Ok(0);
        };
        event_entity::Entity::delete_many()
            .filter(event_entity::Column::Id.lte(last.id))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        watermark_entity::Entity::update_many()
            .col_expr(
                watermark_entity::Column::PrunedThrough,
                Expr::value(last.id),
            )
            .filter(watermark_entity::Column::Id.eq(1_i16))
            .filter(watermark_entity::Column::PrunedThrough.lt(last.id))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(last.id)
    }

    /// The last event sequence pruned (0 when none was).
    pub async fn events_pruned_through(&self) -> Result<i64, Error> {
        let watermark = watermark_entity::Entity::find_by_id(1_i16)
            .one(&self.db)
            .await
            .map_err(db_error)?;
        Ok(watermark.map_or(0, |watermark| watermark.pruned_through))
    }
}

fn event_record(model: event_entity::Model) -> Result<EventRecord, Error> {
    let kind = EventKind::from_i16(model.kind).ok_or_else(|| {
        error!(sequence = model.id, "corrupt api_token_events row");
        Error::Internal
    })?;
    Ok(EventRecord {
        sequence: model.id,
        kind,
        name: TokenName::from_stored(&model.namespace, &model.token_id),
        uid: model.uid,
        event_time: model.event_time,
    })
}

/// Appends an event in `txn`. On PostgreSQL it first takes the transaction
/// lock that orders sequences (re-entrant: callers that change a row under
/// it already hold it) and announces the append on [`EVENT_CHANNEL`]
/// (delivered at commit).
pub(super) async fn append_event(
    txn: &DatabaseTransaction,
    record: &TokenRecord,
    kind: EventKind,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({EVENT_LOCK_KEY}); NOTIFY {EVENT_CHANNEL}"
        ))
        .await
        .map_err(db_error)?;
    }
    event_entity::ActiveModel {
        id: NotSet,
        namespace: Set(record.name.namespace().as_str().to_owned()),
        token_id: Set(record.name.token_id().to_owned()),
        uid: Set(record.uid.clone()),
        kind: Set(kind.as_i16()),
        event_time: Set(now),
    }
    .insert(txn)
    .await
    .map_err(db_error)?;
    Ok(())
}
