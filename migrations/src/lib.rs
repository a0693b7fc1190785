//! Schema migrations of apitoken, applied in order by [`Migrator`]: one
//! migration a file, each with a real `down`, each in a transaction.
//!
//! Run them with `apitoken-server migrate` (the server also applies them on
//! start unless told not to).

use sea_orm_migration::{MigrationTrait, async_trait};
pub use sea_orm_migration::{MigratorTrait, sea_orm};

mod m20261123_000001_create_api_tokens;
mod m20261123_000002_create_api_token_events;
mod m20261123_000003_add_rate_limit_and_last_use_ip;
mod m20261123_000004_audit_and_rotation;
mod m20261123_000005_event_watermark;
mod m20261125_000006_interceptor_tokens;
mod m20261202_000007_rate_limit_window;
mod m20261202_000008_namespace_limits;
mod m20261202_000009_sweep_indexes;

/// Indexes the store's sweeps name in their queries (SQLite `INDEXED BY`).
pub mod indexes {
    pub use super::m20261202_000009_sweep_indexes::{EXPIRED_INDEX, EXPIRY_INDEX};
}

/// Every migration of the product.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_api_tokens::Migration),
            Box::new(m20261123_000002_create_api_token_events::Migration),
            Box::new(m20261123_000003_add_rate_limit_and_last_use_ip::Migration),
            Box::new(m20261123_000004_audit_and_rotation::Migration),
            Box::new(m20261123_000005_event_watermark::Migration),
            Box::new(m20261125_000006_interceptor_tokens::Migration),
            Box::new(m20261202_000007_rate_limit_window::Migration),
            Box::new(m20261202_000008_namespace_limits::Migration),
            Box::new(m20261202_000009_sweep_indexes::Migration),
        ]
    }
}
