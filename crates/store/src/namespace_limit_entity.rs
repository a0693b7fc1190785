//! The sea-orm entity of `namespace_limits`: a namespace's own aggregate
//! rate limit, set by its owner (see the migration that creates it).

#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// One namespace's own limit.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "namespace_limits")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub namespace: String,
    /// 0: unlimited; else requests per `rate_limit_window` seconds.
    pub rate_limit: i32,
    pub rate_limit_window: Option<i32>,
    /// The token that set it.
    pub updater: String,
    pub update_time: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
