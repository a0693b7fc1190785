//! Creates `api_tokens`: one row per token, revoked ones included.
//!
//! The secret itself is never stored: `secret_hash` holds the keyed blake3
//! hash, found through a unique index. `id` is the keyset cursor for listing
//! newest first; `uid` is the public identifier; `version` feeds the etag.

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Uid,
    Namespace,
    TokenId,
    DisplayName,
    Description,
    Role,
    Labels,
    CreateTime,
    Creator,
    ExpireTime,
    RevokeTime,
    Revoker,
    SecretHash,
    SecretHint,
    LastUseTime,
    UseCount,
    Version,
    UpdateTime,
}

const NAME_INDEX: &str = "api_tokens_namespace_token_id_key";
const HASH_INDEX: &str = "api_tokens_secret_hash_key";
const LIST_INDEX: &str = "api_tokens_namespace_id_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .col(big_pk_auto(ApiTokens::Id))
                    .col(string_len_uniq(ApiTokens::Uid, 36))
                    .col(string_len(ApiTokens::Namespace, 50))
                    .col(string_len(ApiTokens::TokenId, 50))
                    .col(text(ApiTokens::DisplayName))
                    .col(text(ApiTokens::Description))
                    .col(small_integer(ApiTokens::Role))
                    .col(text(ApiTokens::Labels))
                    .col(timestamp_with_time_zone(ApiTokens::CreateTime))
                    .col(text(ApiTokens::Creator))
                    .col(timestamp_with_time_zone_null(ApiTokens::ExpireTime))
                    .col(timestamp_with_time_zone_null(ApiTokens::RevokeTime))
                    .col(text_null(ApiTokens::Revoker))
                    .col(binary_len(ApiTokens::SecretHash, 32))
                    .col(text(ApiTokens::SecretHint))
                    .col(timestamp_with_time_zone_null(ApiTokens::LastUseTime))
                    .col(big_integer(ApiTokens::UseCount).default(0))
                    .col(big_integer(ApiTokens::Version).default(1))
                    .col(timestamp_with_time_zone(ApiTokens::UpdateTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(NAME_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::Namespace)
                    .col(ApiTokens::TokenId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(HASH_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::SecretHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(LIST_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::Namespace)
                    .col(ApiTokens::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiTokens::Table).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
