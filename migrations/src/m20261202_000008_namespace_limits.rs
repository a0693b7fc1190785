//! Creates `namespace_limits`: a namespace's own aggregate rate limit, set
//! by its owner (`UpdateNamespaceLimits`) below the deployment's figure.
//! `rate_limit` 0 is unlimited (only ever in force if the deployment's
//! figure is unlimited too); `rate_limit_window` is 1, 60 or 3600 seconds.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum NamespaceLimits {
    Table,
    Namespace,
    RateLimit,
    RateLimitWindow,
    Updater,
    UpdateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(NamespaceLimits::Table)
                    .col(text(NamespaceLimits::Namespace).primary_key())
                    .col(integer(NamespaceLimits::RateLimit))
                    .col(integer_null(NamespaceLimits::RateLimitWindow))
                    .col(text(NamespaceLimits::Updater))
                    .col(timestamp_with_time_zone(NamespaceLimits::UpdateTime))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(NamespaceLimits::Table).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
