//! The audit log: append and list.

use apitoken_domain::Error;
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tracing::error;

use super::{TokenStore, db_error};
use crate::{
    audit_entity,
    record::{AuditEntry, AuditRecord},
};

impl TokenStore {
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
}

pub(super) async fn append_audit(
    db: &impl ConnectionTrait,
    entry: AuditEntry,
) -> Result<(), Error> {
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

pub(super) fn to_audit_record(model: audit_entity::Model) -> Result<AuditRecord, Error> {
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
