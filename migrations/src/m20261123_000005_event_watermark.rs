//! Creates `api_token_event_watermark`: one row holding the last event
//! sequence pruned from `api_token_events`, so that a watcher resuming from
//! a pruned cursor is told (OUT_OF_RANGE) instead of silently missing events.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokenEventWatermark {
    Table,
    Id,
    PrunedThrough,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiTokenEventWatermark::Table)
                    .col(small_integer(ApiTokenEventWatermark::Id).primary_key())
                    .col(big_integer(ApiTokenEventWatermark::PrunedThrough))
                    .to_owned(),
            )
            .await?;
        let mut insert = Query::insert();
        insert
            .into_table(ApiTokenEventWatermark::Table)
            .columns([
                ApiTokenEventWatermark::Id,
                ApiTokenEventWatermark::PrunedThrough,
            ])
            .values([1.into(), 0.into()])
            .map_err(|error| DbErr::Migration(error.to_string()))?;
        manager.exec_stmt(insert).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ApiTokenEventWatermark::Table)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
