//! The sweeps' queries use their indexes: each runs every second on every
//! replica, and a full scan of the token table there costs most of a core
//! at a million tokens. Checked with SQLite's `EXPLAIN QUERY PLAN` on the
//! migrated schema, on every connection of the pool: SQLite plans with the
//! statistics each connection last loaded, and without `INDEXED BY` one
//! connection in six planned a full scan after [`TokenStore::optimize`]
//! (the statistics-based plan it replaced failed CI that way).

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sqlx::Row;

use super::{StoreOptions, TokenStore, events::expired_due, retention::warnings_due};

/// The plan of `statement` on `connection` (placeholders, no values: a
/// plan does not depend on them without `sqlite_stat4`).
async fn plan(connection: &mut sqlx::SqliteConnection, statement: &Statement) -> String {
    let explain = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", statement.sql));
    let rows = sqlx::query(explain)
        .fetch_all(connection)
        .await
        .expect("explain");
    rows.iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Each sweep's plan, on every connection of the pool at once (so each is
/// asked), reads through its index.
async fn assert_sweeps_use_their_indexes(store: &TokenStore, when: &str) {
    let now = chrono::Utc::now();
    let pool = store.db.get_sqlite_connection_pool();
    let mut connections = Vec::new();
    for _ in 0..StoreOptions::default().max_connections {
        connections.push(pool.acquire().await.expect("connection"));
    }
    for (what, sql, index) in [
        (
            "expired, not announced",
            expired_due(now, 500, DbBackend::Sqlite),
            "idx_api_tokens_expiry_notified_expire_time",
        ),
        (
            "entering a warning lead",
            warnings_due(now, 1, chrono::Duration::days(14), 500, DbBackend::Sqlite),
            "idx_api_tokens_expire_time",
        ),
    ] {
        for (n, connection) in connections.iter_mut().enumerate() {
            let plan = plan(connection, &sql).await;
            assert!(
                plan.contains(index) && !plan.split("; ").any(|step| step == "SCAN api_tokens"),
                "{what}, {when}, connection {n}: {plan}\n{}",
                sql.sql
            );
        }
    }
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
    // Without statistics (before the first `optimize`), and with them.
    assert_sweeps_use_their_indexes(&store, "without statistics").await;
    store.optimize().await.expect("optimize");
    assert_sweeps_use_their_indexes(&store, "after optimize").await;
    let _ = std::fs::remove_dir_all(&dir);
}
