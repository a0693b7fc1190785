//! [`TokenStore`]: every query the service makes, on SQLite or PostgreSQL.

use std::time::Duration;

use apitoken_domain::{
    Error, Role, TokenState,
    event::EventKind,
    filter::{Condition as FilterCondition, Op},
    hash::SecretHash,
    name::TokenName,
};
use apitoken_migration::{Migrator, MigratorTrait};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::NotSet,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tracing::{error, warn};

use crate::{
    audit_entity,
    entity::{self, Column, Entity},
    event_entity,
    record::{
        AuditEntry, AuditRecord, EventRecord, Grace, ListQuery, NewToken, SecretMatch,
        TokenChanges, TokenRecord, UsageReport,
    },
    watermark_entity,
};

/// Key of the PostgreSQL transaction lock that orders event sequences.
const EVENT_LOCK_KEY: i64 = 0x6170_6974_6f6b;

/// Key of the PostgreSQL transaction lock that serializes token creation in
/// one namespace: FNV-1a of the namespace, stable across processes and
/// releases, kept apart from [`EVENT_LOCK_KEY`].
fn namespace_lock_key(namespace: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let key = i64::from_ne_bytes(hash.to_ne_bytes());
    if key == EVENT_LOCK_KEY { key ^ 1 } else { key }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection (also the connect timeout).
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The token repository.
#[derive(Debug, Clone)]
pub struct TokenStore {
    db: DatabaseConnection,
}

/// Maps a database error: connection trouble is `UNAVAILABLE` (retry), the
/// rest `INTERNAL`; the detail is logged here and never sent to a client.
fn db_error(error: DbErr) -> Error {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
            warn!(error = %error, "database unavailable");
            Error::Unavailable("database unavailable, retry later".to_owned())
        }
        other => {
            error!(error = %other, "database error");
            Error::Internal
        }
    }
}

/// Adds `mode=rwc` to a SQLite URL without a mode, so the file is created.
fn with_sqlite_create_mode(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    }
}

/// A URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl TokenStore {
    /// Connects to `url` (`sqlite://path.db`, `postgres://…`). A SQLite file
    /// is created if missing and put in WAL mode.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<TokenStore, Error> {
        let mut connect = ConnectOptions::new(with_sqlite_create_mode(url));
        connect
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_timeout(options.acquire_timeout)
            .sqlx_logging(false);
        let db = Database::connect(connect).await.map_err(|error| {
            warn!(url = %redact_url(url), error = %error, "cannot connect to the database");
            Error::Unavailable(format!(
                "cannot connect to the database at {}",
                redact_url(url)
            ))
        })?;
        if db.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL")
                .await
                .map_err(db_error)?;
        }
        Ok(TokenStore { db })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        Migrator::up(&self.db, None).await.map_err(db_error)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(db_error)
    }

    /// The migrations this binary expects that the database lacks (all of
    /// them when it has no schema at all). Empty: the schema is at (or, after
    /// a newer release migrated it, beyond) the version this binary expects.
    /// `UNAVAILABLE` when the database does not answer.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, Error> {
        let expected: Vec<String> = Migrator::migrations()
            .iter()
            .map(|migration| migration.name().to_owned())
            .collect();
        let applied = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT version FROM seaql_migrations",
            ))
            .await;
        let applied: Vec<String> = match applied {
            Ok(rows) => rows
                .iter()
                .filter_map(|row| row.try_get::<String>("", "version").ok())
                .collect(),
            Err(error) => {
                // No migration table: no schema. A database that is down
                // says so to the ping.
                self.ping().await?;
                warn!(error = %error, "cannot read the migration table");
                Vec::new()
            }
        };
        Ok(expected
            .into_iter()
            .filter(|name| !applied.contains(name))
            .collect())
    }

    /// The underlying connection (for tests and tooling).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Inserts a token; `ALREADY_EXISTS` if the name is taken. With a
    /// `quota`, refuses (`RESOURCE_EXHAUSTED`) to make the namespace's active
    /// tokens more than that: insert and count are one transaction, and on
    /// PostgreSQL creations in one namespace are serialized, so concurrent
    /// creates cannot overshoot.
    pub async fn insert(
        &self,
        token: NewToken,
        quota: Option<u32>,
        audit: AuditEntry,
    ) -> Result<TokenRecord, Error> {
        let namespace = token.name.namespace().as_str().to_owned();
        let now = token.now;
        let name = token.name.to_string();
        let labels = serde_json::to_string(&token.labels).map_err(|error| {
            error!(error = %error, "cannot encode labels");
            Error::Internal
        })?;
        let model = entity::ActiveModel {
            id: NotSet,
            uid: Set(uuid::Uuid::new_v4().to_string()),
            namespace: Set(token.name.namespace().as_str().to_owned()),
            token_id: Set(token.name.token_id().to_owned()),
            display_name: Set(token.display_name),
            description: Set(token.description),
            role: Set(token.role.as_i16()),
            labels: Set(labels),
            create_time: Set(token.now),
            creator: Set(token.creator),
            expire_time: Set(token.expire_time),
            revoke_time: Set(None),
            revoker: Set(None),
            secret_hash: Set(token.secret_hash.as_bytes().to_vec()),
            secret_hint: Set(token.secret_hint),
            last_use_time: Set(None),
            use_count: Set(0),
            version: Set(1),
            update_time: Set(token.now),
            expiry_notified: Set(false),
            rate_limit: Set(token
                .rate_limit
                .map(|limit| i32::try_from(limit).unwrap_or(i32::MAX))),
            last_use_ip: Set(None),
            previous_secret_hash: Set(None),
            previous_secret_expire_time: Set(None),
            end_grace_on_first_use: Set(false),
            expiry_warning_level: Set(0),
            interceptor: Set(token.interceptor),
        };
        let txn = self.db.begin().await.map_err(db_error)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({})",
                namespace_lock_key(&namespace)
            ))
            .await
            .map_err(db_error)?;
        }
        let model = match model.insert(&txn).await {
            Ok(model) => model,
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(Error::AlreadyExists(name));
            }
            Err(error) => return Err(db_error(error)),
        };
        if let Some(quota) = quota {
            let active = Entity::find()
                .filter(Column::Namespace.eq(namespace.as_str()))
                .filter(state_condition(TokenState::Active, now))
                .count(&txn)
                .await
                .map_err(db_error)?;
            if active > u64::from(quota) {
                drop(txn);
                return Err(Error::ResourceExhausted {
                    subject: format!("namespaces/{namespace}"),
                    description: format!(
                        "namespace {namespace} already has {quota} active tokens, its quota: revoke unused ones first"
                    ),
                    retry_after: None,
                });
            }
        }
        let record = to_record(model)?;
        append_audit(
            &txn,
            AuditEntry {
                resource_uid: Some(record.uid.clone()),
                ..audit
            },
        )
        .await?;
        txn.commit().await.map_err(db_error)?;
        Ok(record)
    }

    /// How many active (not revoked, not expired) tokens `namespace` has.
    pub async fn count_active(&self, namespace: &str, now: DateTime<Utc>) -> Result<u64, Error> {
        Entity::find()
            .filter(Column::Namespace.eq(namespace))
            .filter(state_condition(TokenState::Active, now))
            .count(&self.db)
            .await
            .map_err(db_error)
    }

    /// The token called `name`; `NOT_FOUND` if there is none.
    pub async fn get(&self, name: &TokenName) -> Result<TokenRecord, Error> {
        find_by_name(&self.db, name).await
    }

    /// The token whose current or previous secret hashes to `hash`, if any,
    /// and which of the two matched.
    pub async fn find_by_hash(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<(TokenRecord, SecretMatch)>, Error> {
        let bytes = hash.as_bytes().to_vec();
        let model = Entity::find()
            .filter(
                Condition::any()
                    .add(Column::SecretHash.eq(bytes.clone()))
                    .add(Column::PreviousSecretHash.eq(bytes)),
            )
            .one(&self.db)
            .await
            .map_err(db_error)?;
        let Some(record) = model.map(to_record).transpose()? else {
            return Ok(None);
        };
        // The index found it; compare in constant time all the same.
        if record.secret_hash.matches(hash) {
            Ok(Some((record, SecretMatch::Current)))
        } else if record
            .previous_secret_hash
            .is_some_and(|previous| previous.matches(hash))
        {
            Ok(Some((record, SecretMatch::Previous)))
        } else {
            Ok(None)
        }
    }

    /// A page of a namespace's tokens, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<TokenRecord>, Error> {
        let mut select = Entity::find().filter(Column::Namespace.eq(query.namespace.as_str()));
        if !query.include_revoked {
            select = select.filter(Column::RevokeTime.is_null());
        }
        for condition in &query.filter.conditions {
            select = select.filter(filter_condition(*condition, query.now));
        }
        if let Some(before) = query.before_id {
            select = select.filter(Column::Id.lt(before));
        }
        select
            .order_by_desc(Column::Id)
            .limit(query.limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_record)
            .collect()
    }

    /// Applies the changes that `decide` computes from the current token.
    /// `decide` enforces the rules (only lower roles, only earlier expiry,
    /// etag match); a revoked token is `FAILED_PRECONDITION`.
    ///
    /// Optimistic concurrency: the change is one `UPDATE … WHERE version = v`
    /// (atomic on every backend, no read-to-write lock upgrade that SQLite
    /// could refuse). If another change lands in between, the token is read
    /// again and `decide` re-run, a few times, then `ABORTED`.
    pub async fn update<F>(
        &self,
        name: &TokenName,
        now: DateTime<Utc>,
        decide: F,
        audit: AuditEntry,
    ) -> Result<TokenRecord, Error>
    where
        F: Fn(&TokenRecord) -> Result<TokenChanges, Error> + Send + Sync,
    {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let current = find_by_name(&self.db, name).await?;
            if current.revoke_time.is_some() {
                return Err(revoked_precondition(
                    name,
                    "a revoked token cannot be updated",
                ));
            }
            let changes = decide(&current)?;
            if changes.is_empty() {
                return Ok(current);
            }
            let mut update = Entity::update_many()
                .col_expr(Column::Version, Expr::value(current.version + 1))
                .col_expr(Column::UpdateTime, Expr::value(now))
                .filter(Column::Id.eq(current.id))
                .filter(Column::Version.eq(current.version))
                .filter(Column::RevokeTime.is_null());
            if let Some(display_name) = changes.display_name {
                update = update.col_expr(Column::DisplayName, Expr::value(display_name));
            }
            if let Some(description) = changes.description {
                update = update.col_expr(Column::Description, Expr::value(description));
            }
            if let Some(labels) = changes.labels {
                let labels = serde_json::to_string(&labels).map_err(|error| {
                    error!(error = %error, "cannot encode labels");
                    Error::Internal
                })?;
                update = update.col_expr(Column::Labels, Expr::value(labels));
            }
            if let Some(expire_time) = changes.expire_time {
                update = update.col_expr(Column::ExpireTime, Expr::value(expire_time));
            }
            if let Some(role) = changes.role {
                update = update.col_expr(Column::Role, Expr::value(role.as_i16()));
            }
            let txn = self.begin_event_write().await?;
            let result = update.exec(&txn).await.map_err(db_error)?;
            if result.rows_affected == 1 {
                append_event(&txn, &current, EventKind::Updated, now).await?;
                append_audit(
                    &txn,
                    AuditEntry {
                        resource_uid: Some(current.uid.clone()),
                        ..audit
                    },
                )
                .await?;
                txn.commit().await.map_err(db_error)?;
                return find_by_name(&self.db, name).await;
            }
        }
        Err(Error::Aborted(format!(
            "{name} is being changed concurrently: read it again and retry"
        )))
    }

    /// Replaces the secret of an unrevoked token: the old secret stops
    /// working with this transaction, which also appends the event.
    pub async fn regenerate(
        &self,
        name: &TokenName,
        secret_hash: &SecretHash,
        secret_hint: String,
        now: DateTime<Utc>,
        grace: Option<Grace>,
        audit: AuditEntry,
    ) -> Result<TokenRecord, Error> {
        let txn = self.begin_event_write().await?;
        // With a grace period the current secret becomes the previous one
        // (SQL reads the row's old values on the right-hand side); without,
        // any previous secret dies too.
        let previous_hash = match grace {
            Some(_) => Expr::col(Column::SecretHash),
            None => Expr::value(Option::<Vec<u8>>::None),
        };
        let result = Entity::update_many()
            .col_expr(Column::PreviousSecretHash, previous_hash)
            .col_expr(
                Column::PreviousSecretExpireTime,
                Expr::value(grace.map(|grace| grace.until)),
            )
            .col_expr(
                Column::EndGraceOnFirstUse,
                Expr::value(grace.is_some_and(|grace| grace.end_on_first_use)),
            )
            .col_expr(
                Column::SecretHash,
                Expr::value(secret_hash.as_bytes().to_vec()),
            )
            .col_expr(Column::SecretHint, Expr::value(secret_hint))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .col_expr(Column::UpdateTime, Expr::value(now))
            .filter(name_condition(name))
            .filter(Column::RevokeTime.is_null())
            .exec(&txn)
            .await
            .map_err(db_error)?;
        if result.rows_affected == 0 {
            drop(txn);
            // Either there is no such token (NOT_FOUND) or it is revoked.
            self.get(name).await?;
            return Err(revoked_precondition(
                name,
                "a revoked token cannot be regenerated: create a new one",
            ));
        }
        let record = find_by_name(&txn, name).await?;
        append_event(&txn, &record, EventKind::Regenerated, now).await?;
        append_audit(
            &txn,
            AuditEntry {
                resource_uid: Some(record.uid.clone()),
                ..audit
            },
        )
        .await?;
        txn.commit().await.map_err(db_error)?;
        Ok(record)
    }

    /// Revokes a token, for good, and appends the event in the same
    /// transaction. Revoking a revoked token changes nothing and returns it
    /// as it is.
    pub async fn revoke(
        &self,
        name: &TokenName,
        revoker: &str,
        now: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<TokenRecord, Error> {
        let txn = self.begin_event_write().await?;
        let result = Entity::update_many()
            .col_expr(Column::RevokeTime, Expr::value(now))
            .col_expr(
                Column::PreviousSecretHash,
                Expr::value(Option::<Vec<u8>>::None),
            )
            .col_expr(
                Column::PreviousSecretExpireTime,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(Column::Revoker, Expr::value(revoker.to_owned()))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .col_expr(Column::UpdateTime, Expr::value(now))
            .filter(name_condition(name))
            .filter(Column::RevokeTime.is_null())
            .exec(&txn)
            .await
            .map_err(db_error)?;
        let record = find_by_name(&txn, name).await?;
        if result.rows_affected == 1 {
            append_event(&txn, &record, EventKind::Revoked, now).await?;
            append_audit(
                &txn,
                AuditEntry {
                    resource_uid: Some(record.uid.clone()),
                    ..audit
                },
            )
            .await?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(record)
    }

    /// Appends an `Expired` event, exactly once, for every token that reached
    /// its expiry; returns them. Safe with several replicas sweeping.
    pub async fn sweep_expired(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<TokenRecord>, Error> {
        let due: Vec<TokenRecord> = Entity::find()
            .filter(Column::RevokeTime.is_null())
            .filter(Column::ExpireTime.lte(now))
            .filter(Column::ExpiryNotified.eq(false))
            .order_by_asc(Column::Id)
            .limit(limit)
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
            .map(|model| {
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
            })
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

    /// Ends a running grace period (first use of the new secret): the
    /// previous secret dies; event and audit in the same transaction.
    /// Returns whether this call ended it.
    pub async fn end_grace(
        &self,
        record: &TokenRecord,
        now: DateTime<Utc>,
        audit: AuditEntry,
    ) -> Result<bool, Error> {
        let txn = self.begin_event_write().await?;
        let result = Entity::update_many()
            .col_expr(
                Column::PreviousSecretHash,
                Expr::value(Option::<Vec<u8>>::None),
            )
            .col_expr(
                Column::PreviousSecretExpireTime,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(Column::Id.eq(record.id))
            .filter(Column::PreviousSecretHash.is_not_null())
            .exec(&txn)
            .await
            .map_err(db_error)?;
        if result.rows_affected == 0 {
            return Ok(false);
        }
        append_event(&txn, record, EventKind::GraceEnded, now).await?;
        append_audit(&txn, audit).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(true)
    }

    /// Appends an audit event on its own (refusals and bursts: no change).
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<(), Error> {
        append_audit(&self.db, entry).await
    }

    /// A page of a namespace's audit log, newest first.
    pub async fn list_audit(
        &self,
        namespace: &str,
        filter: &apitoken_domain::audit::AuditFilter,
        before_id: Option<i64>,
        limit: u64,
    ) -> Result<Vec<AuditRecord>, Error> {
        use audit_entity::Column as A;
        let mut select = audit_entity::Entity::find().filter(A::Namespace.eq(namespace));
        if let Some(action) = filter.action {
            select = select.filter(A::Action.eq(action.as_i16()));
        }
        if let Some(resource) = &filter.resource {
            select = select.filter(A::Resource.eq(resource.as_str()));
        }
        if let Some(since) = filter.since {
            select = select.filter(A::EventTime.gte(since));
        }
        if let Some(until) = filter.until {
            select = select.filter(A::EventTime.lt(until));
        }
        if let Some(before) = before_id {
            select = select.filter(A::Id.lt(before));
        }
        select
            .order_by_desc(A::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(to_audit_record)
            .collect()
    }

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
            .filter(Column::RevokeTime.is_null())
            .filter(Column::ExpireTime.gt(now))
            .filter(Column::ExpireTime.lte(now + lead))
            .filter(Column::ExpiryWarningLevel.lt(level))
            .order_by_asc(Column::Id)
            .limit(limit)
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
    /// each with a `Purge` audit entry in the same transaction; then audit
    /// events older than `audit_cutoff` whose token no longer exists.
    pub async fn purge(
        &self,
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
                append_audit(&txn, audit(&record)).await?;
                txn.commit().await.map_err(db_error)?;
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

    /// A transaction for a write that appends an event. On PostgreSQL it
    /// takes a transaction lock first, so that event sequences commit in
    /// order (a watcher at sequence n never later sees n - 1 appear).
    async fn begin_event_write(&self) -> Result<DatabaseTransaction, Error> {
        let txn = self.db.begin().await.map_err(db_error)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({EVENT_LOCK_KEY})"))
                .await
                .map_err(db_error)?;
        }
        Ok(txn)
    }

    /// Adds batched uses: one transaction, two statements per token.
    /// Returns how many reports matched a token of their namespace.
    ///
    /// No report can make a row unreadable or move time backwards: the
    /// count saturates at `i64::MAX` (SQLite would otherwise turn an
    /// overflowing integer into a float), `last_use_time` only moves forward
    /// and never before the token's creation.
    pub async fn record_usage(&self, reports: &[UsageReport]) -> Result<u64, Error> {
        if reports.is_empty() {
            return Ok(0);
        }
        let mut matched = 0;
        let txn = self.db.begin().await.map_err(db_error)?;
        for report in reports {
            let token = Condition::all()
                .add(Column::Uid.eq(report.uid.as_str()))
                .add(Column::Namespace.eq(report.namespace.as_str()));
            let count = Ord::max(report.count, 0);
            let counted = Entity::update_many()
                .col_expr(
                    Column::UseCount,
                    Expr::case(
                        Expr::col(Column::UseCount).gt(i64::MAX - count),
                        Expr::value(i64::MAX),
                    )
                    .finally(Expr::col(Column::UseCount).add(count))
                    .into(),
                )
                .filter(token.clone())
                .exec(&txn)
                .await
                .map_err(db_error)?;
            matched += counted.rows_affected;
            let mut latest = Entity::update_many().col_expr(
                Column::LastUseTime,
                Expr::case(
                    Expr::col(Column::CreateTime).gt(report.last_use_time),
                    Expr::col(Column::CreateTime),
                )
                .finally(Expr::value(report.last_use_time))
                .into(),
            );
            if let Some(ip) = &report.last_use_ip {
                latest = latest.col_expr(Column::LastUseIp, Expr::value(ip.clone()));
            }
            latest
                .filter(token)
                .filter(
                    Condition::any()
                        .add(Column::LastUseTime.is_null())
                        .add(Column::LastUseTime.lte(report.last_use_time)),
                )
                .exec(&txn)
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(matched)
    }
}

async fn append_event(
    txn: &DatabaseTransaction,
    record: &TokenRecord,
    kind: EventKind,
    now: DateTime<Utc>,
) -> Result<(), Error> {
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

async fn append_audit(db: &impl ConnectionTrait, entry: AuditEntry) -> Result<(), Error> {
    let details = serde_json::to_string(&entry.details).map_err(|error| {
        error!(error = %error, "cannot encode audit details");
        Error::Internal
    })?;
    audit_entity::ActiveModel {
        id: NotSet,
        namespace: Set(entry.namespace),
        event_time: Set(entry.time),
        action: Set(entry.action.as_i16()),
        actor: Set(entry.actor),
        actor_uid: Set(entry.actor_uid),
        resource: Set(entry.resource),
        resource_uid: Set(entry.resource_uid),
        peer_address: Set(entry.peer_address),
        user_agent: Set(entry.user_agent),
        request_id: Set(entry.request_id),
        trace_id: Set(entry.trace_id),
        details: Set(details),
    }
    .insert(db)
    .await
    .map_err(db_error)?;
    Ok(())
}

fn to_audit_record(model: audit_entity::Model) -> Result<AuditRecord, Error> {
    let corrupt = |what: &str| {
        error!(id = model.id, what, "corrupt audit_events row");
        Error::Internal
    };
    let action =
        apitoken_domain::audit::Action::from_i16(model.action).ok_or_else(|| corrupt("action"))?;
    let details = serde_json::from_str(&model.details).map_err(|_| corrupt("details"))?;
    Ok(AuditRecord {
        id: model.id,
        entry: AuditEntry {
            namespace: model.namespace,
            time: model.event_time,
            action,
            actor: model.actor,
            actor_uid: model.actor_uid,
            resource: model.resource,
            resource_uid: model.resource_uid,
            peer_address: model.peer_address,
            user_agent: model.user_agent,
            request_id: model.request_id,
            trace_id: model.trace_id,
            details,
        },
    })
}

fn revoked_precondition(name: &TokenName, message: &str) -> Error {
    Error::FailedPrecondition {
        resource: name.to_string(),
        kind: "TOKEN_REVOKED",
        message: message.to_owned(),
    }
}

fn name_condition(name: &TokenName) -> Condition {
    Condition::all()
        .add(Column::Namespace.eq(name.namespace().as_str()))
        .add(Column::TokenId.eq(name.token_id()))
}

async fn find_by_name(db: &impl ConnectionTrait, name: &TokenName) -> Result<TokenRecord, Error> {
    Entity::find()
        .filter(name_condition(name))
        .one(db)
        .await
        .map_err(db_error)?
        .map(to_record)
        .transpose()?
        .ok_or_else(|| Error::NotFound(name.to_string()))
}

fn filter_condition(condition: FilterCondition, now: DateTime<Utc>) -> Condition {
    let (op, positive) = match condition {
        FilterCondition::Role(op, role) => {
            (op, Condition::all().add(Column::Role.eq(role.as_i16())))
        }
        FilterCondition::State(op, state) => (op, state_condition(state, now)),
        FilterCondition::UnusedDays(days) => {
            let since = now - chrono::Duration::days(i64::from(days));
            let unused = Condition::any().add(Column::LastUseTime.lte(since)).add(
                Condition::all()
                    .add(Column::LastUseTime.is_null())
                    .add(Column::CreateTime.lte(since)),
            );
            (Op::Eq, unused)
        }
        FilterCondition::ExpiresWithinDays(days) => {
            let until = now + chrono::Duration::days(i64::from(days));
            let expiring = Condition::all()
                .add(Column::RevokeTime.is_null())
                .add(Column::ExpireTime.gt(now))
                .add(Column::ExpireTime.lte(until));
            (Op::Eq, expiring)
        }
    };
    match op {
        Op::Eq => positive,
        Op::Ne => positive.not(),
    }
}

fn state_condition(state: TokenState, now: DateTime<Utc>) -> Condition {
    match state {
        TokenState::Active => Condition::all().add(Column::RevokeTime.is_null()).add(
            Condition::any()
                .add(Column::ExpireTime.is_null())
                .add(Column::ExpireTime.gt(now)),
        ),
        TokenState::Expired => Condition::all()
            .add(Column::RevokeTime.is_null())
            .add(Column::ExpireTime.lte(now)),
        TokenState::Revoked => Condition::all().add(Column::RevokeTime.is_not_null()),
    }
}

fn to_record(model: entity::Model) -> Result<TokenRecord, Error> {
    let corrupt = |what: &str| {
        error!(uid = %model.uid, what, "corrupt api_tokens row");
        Error::Internal
    };
    let role = Role::from_i16(model.role).ok_or_else(|| corrupt("role"))?;
    let labels = serde_json::from_str(&model.labels).map_err(|_| corrupt("labels"))?;
    let secret_hash =
        SecretHash::from_slice(&model.secret_hash).ok_or_else(|| corrupt("secret_hash"))?;
    Ok(TokenRecord {
        id: model.id,
        name: TokenName::from_stored(&model.namespace, &model.token_id),
        uid: model.uid,
        display_name: model.display_name,
        description: model.description,
        role,
        labels,
        create_time: model.create_time,
        creator: model.creator,
        expire_time: model.expire_time,
        revoke_time: model.revoke_time,
        revoker: model.revoker,
        secret_hash,
        secret_hint: model.secret_hint,
        last_use_time: model.last_use_time,
        use_count: model.use_count,
        version: model.version,
        update_time: model.update_time,
        rate_limit: model.rate_limit.and_then(|limit| u32::try_from(limit).ok()),
        last_use_ip: model.last_use_ip,
        previous_secret_hash: model
            .previous_secret_hash
            .as_deref()
            .and_then(SecretHash::from_slice),
        previous_secret_expire_time: model.previous_secret_expire_time,
        end_grace_on_first_use: model.end_grace_on_first_use,
        expiry_warning_level: model.expiry_warning_level,
        interceptor: model.interceptor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
        assert_eq!(
            with_sqlite_create_mode("postgres://h/db"),
            "postgres://h/db"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
