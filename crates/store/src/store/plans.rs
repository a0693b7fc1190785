//! The sweeps' queries use their indexes: each runs every second on every
//! replica, and a full scan of the token table there costs most of a core
//! at a million tokens. Checked with SQLite's `EXPLAIN QUERY PLAN` on the
//! migrated schema, with statistics from [`TokenStore::optimize`] (without
//! them, SQLite 3.51 scans).

use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};

use super::{StoreOptions, TokenStore, events::expired_due, retention::warnings_due};

/// The plan of `statement` as the store runs it (placeholders, bound
/// values).
async fn plan(store: &TokenStore, statement: Statement) -> String {
    let explain = Statement {
        sql: format!("EXPLAIN QUERY PLAN {}", statement.sql),
        ..statement
    };
    let rows = store.db.query_all_raw(explain).await.expect("explain");
    rows.iter()
        .map(|row| row.try_get::<String>("", "detail").expect("detail"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn the_sweeps_read_through_their_indexes() {
    let dir = std::env::temp_dir().join(format!("apitoken-plans-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("plans.db").display());
    let store = TokenStore::connect(&url, &StoreOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    // A table of some size: on an empty one any plan is cheap, and newer
    // SQLite planners then prefer the scan. 20,000 active tokens, a third
    // without expiry, the rest expiring over the next few years.
    store
        .db
        .execute_unprepared(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO api_tokens (uid, namespace, token_id, display_name, description, role,
                 labels, create_time, creator, expire_time, secret_hash, secret_hint, update_time)
             SELECT 'uid-' || i, 'ns-' || (i % 50), 't' || i, '', '', 1, '{}',
                 '2026-01-01 00:00:00 +00:00', 'test',
                 CASE WHEN i % 3 = 0 THEN NULL
                      ELSE datetime('2027-01-01', '+' || i || ' hours') || ' +00:00' END,
                 randomblob(32), 'hint', '2026-01-01 00:00:00 +00:00'
             FROM n",
        )
        .await
        .expect("rows");
    store.optimize().await.expect("optimize");
    let now = chrono::Utc::now();
    for (what, sql, index) in [
        (
            "expired, not announced",
            expired_due(now, 500).build(DbBackend::Sqlite),
            "idx_api_tokens_expiry_notified_expire_time",
        ),
        (
            "entering a warning lead",
            warnings_due(now, 1, chrono::Duration::days(14), 500).build(DbBackend::Sqlite),
            "idx_api_tokens_expire_time",
        ),
    ] {
        let shown = sql.sql.clone();
        let plan = plan(&store, sql).await;
        assert!(
            plan.contains(index) && !plan.contains("SCAN api_tokens;") && plan != "SCAN api_tokens",
            "{what}: {plan}\n{shown}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
