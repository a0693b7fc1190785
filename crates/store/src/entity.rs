//! The sea-orm entity of `api_tokens` (see the migration that creates it).

#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// One row of `api_tokens`.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_tokens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub uid: String,
    pub namespace: String,
    pub token_id: String,
    pub display_name: String,
    pub description: String,
    pub role: i16,
    pub labels: String,
    pub create_time: DateTimeUtc,
    pub creator: String,
    pub expire_time: Option<DateTimeUtc>,
    pub revoke_time: Option<DateTimeUtc>,
    pub revoker: Option<String>,
    pub secret_hash: Vec<u8>,
    pub secret_hint: String,
    pub last_use_time: Option<DateTimeUtc>,
    pub use_count: i64,
    pub version: i64,
    pub update_time: DateTimeUtc,
    pub expiry_notified: bool,
    /// A token's own limit: NULL for the role's default, 0 for unlimited,
    /// else requests per `rate_limit_window` seconds.
    pub rate_limit: Option<i32>,
    /// 1, 60 or 3600; NULL (rows before the column) is 60.
    pub rate_limit_window: Option<i32>,
    pub last_use_ip: Option<String>,
    pub previous_secret_hash: Option<Vec<u8>>,
    pub previous_secret_expire_time: Option<DateTimeUtc>,
    pub end_grace_on_first_use: bool,
    pub expiry_warning_level: i16,
    pub interceptor: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("namespace", &self.namespace)
            .field("token_id", &self.token_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
