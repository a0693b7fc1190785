//! Creates `api_token_events`, the ordered log behind `WatchApiTokenEvents`,
//! and `api_tokens.expiry_notified`, which makes the expiry event of a token
//! written exactly once even with several replicas sweeping.
//!
//! `id` is the event's sequence. Writers take a transaction-scoped lock
//! before inserting (PostgreSQL; SQLite has a single writer), so sequences
//! become visible in order and a watcher resuming after sequence `n` misses
//! nothing.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokenEvents {
    Table,
    Id,
    Namespace,
    TokenId,
    Uid,
    Kind,
    EventTime,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    ExpiryNotified,
}

const NAMESPACE_INDEX: &str = "api_token_events_namespace_id_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiTokenEvents::Table)
                    .col(big_pk_auto(ApiTokenEvents::Id))
                    .col(string_len(ApiTokenEvents::Namespace, 50))
                    .col(string_len(ApiTokenEvents::TokenId, 50))
                    .col(string_len(ApiTokenEvents::Uid, 36))
                    .col(small_integer(ApiTokenEvents::Kind))
                    .col(timestamp_with_time_zone(ApiTokenEvents::EventTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(NAMESPACE_INDEX)
                    .table(ApiTokenEvents::Table)
                    .col(ApiTokenEvents::Namespace)
                    .col(ApiTokenEvents::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .add_column(boolean(ApiTokens::ExpiryNotified).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .drop_column(ApiTokens::ExpiryNotified)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ApiTokenEvents::Table).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
