//! The sea-orm entity of `api_token_events` (see the migration that creates it).

#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// One row of `api_token_events`; `id` is the event's sequence.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_token_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub namespace: String,
    pub token_id: String,
    pub uid: String,
    pub kind: i16,
    pub event_time: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
