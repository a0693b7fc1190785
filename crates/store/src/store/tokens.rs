//! Tokens: create (with its quota check), read, list, change, regenerate,
//! revoke and end a grace period; each write with its event and audit entry
//! in one transaction.

use apitoken_domain::{
    Error, Role, TokenState, event::EventKind, hash::SecretHash, name::TokenName,
};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr,
    sea_query::{Expr, ExprTrait},
};
use tracing::error;

use super::{
    Change, EVENT_LOCK_KEY, TokenStore, audit::append_audit, db_error, events::append_event,
};
use crate::{
    entity::{self, Column, Entity},
    record::{
        AuditEntry, Grace, ListQuery, NewToken, SecretMatch, TokenChanges, TokenRecord,
        decode_rate_limit, encode_rate_limit,
    },
};
use apitoken_domain::filter::{Condition as FilterCondition, Op};

impl TokenStore {
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
            rate_limit: Set(encode_rate_limit(token.rate_limit).0),
            rate_limit_window: Set(encode_rate_limit(token.rate_limit).1),
            last_use_ip: Set(None),
            previous_secret_hash: Set(None),
            previous_secret_expire_time: Set(None),
            end_grace_on_first_use: Set(false),
            expiry_warning_level: Set(0),
            interceptor: Set(token.interceptor),
        };
        let txn = self.begin_locked(namespace_lock_key(&namespace)).await?;
        let model = match model.insert(&txn).await {
            Ok(model) => model,
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(Error::AlreadyExists(name));
            }
            Err(error) => return Err(db_error(error)),
        };
        if let Some(quota) = quota {
            // Counts no further than one past the quota: the check costs at
            // most `quota + 1` index entries, however many tokens there are.
            let active = Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(Column::Namespace.eq(namespace.as_str()))
                .filter(state_condition(TokenState::Active, now))
                .limit(u64::from(quota) + 1)
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
        append_event(&txn, &record, EventKind::Created, now).await?;
        append_audit(
            &txn,
            AuditEntry {
                resource_uid: Some(record.uid.clone()),
                ..audit
            },
        )
        .await?;
        txn.commit().await.map_err(db_error)?;
        self.changed(Change::Upserted(Box::new(record.clone())));
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
            if let Some(limit) = changes.rate_limit {
                let (count, window) = encode_rate_limit(limit);
                update = update
                    .col_expr(Column::RateLimit, Expr::value(count))
                    .col_expr(Column::RateLimitWindow, Expr::value(window));
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
                let record = find_by_name(&self.db, name).await?;
                self.changed(Change::Upserted(Box::new(record.clone())));
                return Ok(record);
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
        self.changed(Change::Upserted(Box::new(record.clone())));
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
        if result.rows_affected == 1 {
            self.changed(Change::Upserted(Box::new(record.clone())));
        }
        Ok(record)
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
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
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
        let ended = find_by_name(&txn, &record.name).await?;
        txn.commit().await.map_err(db_error)?;
        self.changed(Change::Upserted(Box::new(ended)));
        Ok(true)
    }
}

/// Key of the PostgreSQL transaction lock that serializes token creation in
/// one namespace: FNV-1a of the namespace, stable across processes and
/// releases, kept apart from [`EVENT_LOCK_KEY`].
pub(super) fn namespace_lock_key(namespace: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let key = i64::from_ne_bytes(hash.to_ne_bytes());
    if key == EVENT_LOCK_KEY { key ^ 1 } else { key }
}

pub(super) fn revoked_precondition(name: &TokenName, message: &str) -> Error {
    Error::FailedPrecondition {
        resource: name.to_string(),
        kind: "TOKEN_REVOKED",
        message: message.to_owned(),
    }
}

pub(super) fn name_condition(name: &TokenName) -> Condition {
    Condition::all()
        .add(Column::Namespace.eq(name.namespace().as_str()))
        .add(Column::TokenId.eq(name.token_id()))
}

pub(super) async fn find_by_name(
    db: &impl ConnectionTrait,
    name: &TokenName,
) -> Result<TokenRecord, Error> {
    Entity::find()
        .filter(name_condition(name))
        .one(db)
        .await
        .map_err(db_error)?
        .map(to_record)
        .transpose()?
        .ok_or_else(|| Error::NotFound(name.to_string()))
}

pub(super) fn filter_condition(condition: FilterCondition, now: DateTime<Utc>) -> Condition {
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

pub(super) fn state_condition(state: TokenState, now: DateTime<Utc>) -> Condition {
    match state {
        TokenState::Active => Condition::all().add(Column::RevokeTime.is_null()).add(
            Condition::any()
                .add(Column::ExpireTime.is_null())
                .add(Column::ExpireTime.gt(now)),
        ),
        // `IS NOT NULL` keeps the condition two-valued: without it a token
        // with no expiry makes it NULL, and `state != EXPIRED` (its NOT)
        // would drop that token.
        TokenState::Expired => Condition::all()
            .add(Column::RevokeTime.is_null())
            .add(Column::ExpireTime.is_not_null())
            .add(Column::ExpireTime.lte(now)),
        TokenState::Revoked => Condition::all().add(Column::RevokeTime.is_not_null()),
    }
}

pub(super) fn to_record(model: entity::Model) -> Result<TokenRecord, Error> {
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
        rate_limit: decode_rate_limit(model.rate_limit, model.rate_limit_window),
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
