//! Batched usage figures.

use apitoken_domain::Error;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use super::{Change, TokenStore, db_error};
use crate::{
    entity::{Column, Entity},
    record::UsageReport,
};

impl TokenStore {
    /// Adds batched uses: one transaction, two statements per token.
    /// Returns how many reports matched a token of their namespace.
    ///
    /// No report can make a row unreadable or move time backwards: the
    /// count saturates at `i64::MAX` (SQLite would otherwise turn an
    /// overflowing integer into a float), `last_use_time` only moves forward
    /// and never before the token's creation.
    pub async fn record_usage(&self, reports: &[UsageReport]) -> Result<u64, Error> {
        if reports.is_empty() {
            return Ok(0);
        }
        let mut matched = 0;
        let txn = self.db.begin().await.map_err(db_error)?;
        for report in reports {
            let token = Condition::all()
                .add(Column::Uid.eq(report.uid.as_str()))
                .add(Column::Namespace.eq(report.namespace.as_str()));
            let count = Ord::max(report.count, 0);
            let counted = Entity::update_many()
                .col_expr(
                    Column::UseCount,
                    Expr::case(
                        Expr::col(Column::UseCount).gt(i64::MAX - count),
                        Expr::value(i64::MAX),
                    )
                    .finally(Expr::col(Column::UseCount).add(count))
                    .into(),
                )
                .filter(token.clone())
                .exec(&txn)
                .await
                .map_err(db_error)?;
            matched += counted.rows_affected;
            let mut latest = Entity::update_many().col_expr(
                Column::LastUseTime,
                Expr::case(
                    Expr::col(Column::CreateTime).gt(report.last_use_time),
                    Expr::col(Column::CreateTime),
                )
                .finally(Expr::value(report.last_use_time))
                .into(),
            );
            if let Some(ip) = &report.last_use_ip {
                latest = latest.col_expr(Column::LastUseIp, Expr::value(ip.clone()));
            }
            latest
                .filter(token)
                .filter(
                    Condition::any()
                        .add(Column::LastUseTime.is_null())
                        .add(Column::LastUseTime.lte(report.last_use_time)),
                )
                .exec(&txn)
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        self.changed(Change::Used {
            uids: reports.iter().map(|report| report.uid.clone()).collect(),
        });
        Ok(matched)
    }
}
