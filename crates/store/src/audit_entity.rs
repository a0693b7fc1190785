//! The sea-orm entity of `audit_events` (see the migration that creates it).

#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// One row of `audit_events`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub namespace: String,
    pub event_time: DateTimeUtc,
    pub action: i16,
    pub actor: String,
    pub actor_uid: Option<String>,
    pub resource: String,
    pub resource_uid: Option<String>,
    pub peer_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub details: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
