//! Indexes for the time-driven sweeps, which run every second on every
//! replica: without them each sweep read the whole token table (at 1 million
//! tokens, a full scan a second took most of a core).
//!
//! - `(expiry_notified, expire_time)`: tokens past their expiry not yet
//!   announced (`EXPIRED` events);
//! - `(expire_time)`: tokens entering a warning lead time;
//! - `(revoke_time)` of revoked tokens only: the purge of tokens revoked
//!   before the retention.
//!
//! The sweeps read in no particular order (each claims its rows one by
//! one), so no index has to serve an `ORDER BY`.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    ExpiryNotified,
    ExpireTime,
    RevokeTime,
}

/// The index of tokens past their expiry not yet announced.
pub const EXPIRED_INDEX: &str = "idx_api_tokens_expiry_notified_expire_time";
/// The index of tokens by expiry time.
pub const EXPIRY_INDEX: &str = "idx_api_tokens_expire_time";
const REVOKED_INDEX: &str = "idx_api_tokens_revoke_time";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(EXPIRED_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::ExpiryNotified)
                    .col(ApiTokens::ExpireTime)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(EXPIRY_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::ExpireTime)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(REVOKED_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::RevokeTime)
                    // Partial: a planner without statistics would otherwise
                    // take `revoke_time IS NULL` (every active token) as
                    // selective and read the sweeps through this index.
                    .and_where(Expr::col(ApiTokens::RevokeTime).is_not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [REVOKED_INDEX, EXPIRY_INDEX, EXPIRED_INDEX] {
            manager
                .drop_index(Index::drop().name(name).table(ApiTokens::Table).to_owned())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
