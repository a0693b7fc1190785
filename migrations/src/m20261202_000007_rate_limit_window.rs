//! Adds `api_tokens.rate_limit_window`: the window of a token's own limit
//! in seconds (1, 60 or 3600; NULL, for the rows before it, is 60). With it
//! `rate_limit` = 0 means unlimited.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    RateLimitWindow,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .add_column(integer_null(ApiTokens::RateLimitWindow))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Unlimited tokens (rate_limit 0) fall back to their role's default,
        // and other windows than a minute cannot be said without the column:
        // those tokens go back to the default too rather than to a wrong
        // figure.
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE api_tokens SET rate_limit = NULL \
             WHERE rate_limit = 0 OR (rate_limit_window IS NOT NULL AND rate_limit_window <> 60)",
        )
        .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .drop_column(ApiTokens::RateLimitWindow)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
