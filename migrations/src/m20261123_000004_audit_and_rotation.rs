//! Creates `audit_events`, the append-only audit log, and adds to
//! `api_tokens` what rotation with grace and expiry warnings need:
//! `previous_secret_hash` (indexed, looked up like `secret_hash`),
//! `previous_secret_expire_time`, `end_grace_on_first_use`, and
//! `expiry_warning_level` (how many warning lead times were announced).

// `async_trait` cannot take `SchemaManager<'_>` here: the trait's lifetime is late-bound.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    Namespace,
    EventTime,
    Action,
    Actor,
    ActorUid,
    Resource,
    ResourceUid,
    PeerAddress,
    UserAgent,
    RequestId,
    TraceId,
    Details,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    PreviousSecretHash,
    PreviousSecretExpireTime,
    EndGraceOnFirstUse,
    ExpiryWarningLevel,
}

const AUDIT_INDEX: &str = "audit_events_namespace_id_idx";
const PREVIOUS_HASH_INDEX: &str = "api_tokens_previous_secret_hash_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(string_len(AuditEvents::Namespace, 50))
                    .col(timestamp_with_time_zone(AuditEvents::EventTime))
                    .col(small_integer(AuditEvents::Action))
                    .col(text(AuditEvents::Actor))
                    .col(text_null(AuditEvents::ActorUid))
                    .col(text(AuditEvents::Resource))
                    .col(text_null(AuditEvents::ResourceUid))
                    .col(text_null(AuditEvents::PeerAddress))
                    .col(text_null(AuditEvents::UserAgent))
                    .col(text(AuditEvents::RequestId))
                    .col(text_null(AuditEvents::TraceId))
                    .col(text(AuditEvents::Details))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(AUDIT_INDEX)
                    .table(AuditEvents::Table)
                    .col(AuditEvents::Namespace)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await?;
        for column in [
            ColumnDef::new(ApiTokens::PreviousSecretHash)
                .binary_len(32)
                .null()
                .to_owned(),
            timestamp_with_time_zone_null(ApiTokens::PreviousSecretExpireTime),
            boolean(ApiTokens::EndGraceOnFirstUse)
                .default(false)
                .to_owned(),
            small_integer(ApiTokens::ExpiryWarningLevel)
                .default(0)
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiTokens::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(PREVIOUS_HASH_INDEX)
                    .table(ApiTokens::Table)
                    .col(ApiTokens::PreviousSecretHash)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(PREVIOUS_HASH_INDEX)
                    .table(ApiTokens::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            ApiTokens::ExpiryWarningLevel,
            ApiTokens::EndGraceOnFirstUse,
            ApiTokens::PreviousSecretExpireTime,
            ApiTokens::PreviousSecretHash,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiTokens::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
