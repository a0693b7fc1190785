//! [`TokenStore`]: every query the service makes, on SQLite or PostgreSQL.
//!
//! This module holds the connection, errors and the transaction helpers;
//! the queries live by concern: [`tokens`] (create, read, list, change,
//! revoke), [`events`] (the event log), [`audit`], [`retention`] (warnings,
//! inactivity, purge), [`usage`] (batched use counts) and [`auth_rows`]
//! (what the in-memory verification index loads).

mod audit;
pub mod auth_rows;
pub mod events;
pub mod namespace_limits;
mod retention;
mod tokens;
mod usage;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use apitoken_domain::Error;
use apitoken_migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, QueryTrait, TransactionTrait,
};
use tracing::{error, warn};

use crate::record::TokenRecord;

/// Key of the PostgreSQL transaction lock that orders event sequences
/// (`pg_advisory_xact_lock`), held by every write that appends an event.
pub const EVENT_LOCK_KEY: i64 = 0x6170_6974_6f6b;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection (also the connect timeout).
    pub acquire_timeout: Duration,
    /// Longest wait for a PostgreSQL transaction lock (the one that orders
    /// event sequences, a namespace's quota lock) before a write fails as
    /// UNAVAILABLE.
    pub lock_wait: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
        }
    }
}

/// The token repository.
#[derive(Debug, Clone)]
pub struct TokenStore {
    db: DatabaseConnection,
    /// [`StoreOptions::lock_wait`], in whole milliseconds (at least 1).
    lock_wait_ms: u128,
    /// Told of every token this process changes, after the commit and
    /// before the write returns (see [`TokenStore::observe`]).
    observer: Arc<OnceLock<Arc<dyn ChangeObserver>>>,
}

/// A token this process changed, as it is once the change committed.
#[derive(Debug, Clone)]
pub enum Change {
    /// Created or changed: the row as committed.
    Upserted(Box<TokenRecord>),
    /// Purged: gone for good.
    Removed {
        /// The token's uid.
        uid: String,
    },
    /// Usage figures were added (nothing verification reads changed).
    Used {
        /// The tokens' uids.
        uids: Vec<String>,
    },
}

/// Hears of every change this process commits, before the write returns:
/// the in-memory verification index applies it, so the next call on this
/// replica sees it with no window.
pub trait ChangeObserver: Send + Sync + std::fmt::Debug {
    /// A change committed.
    fn changed(&self, change: Change);
}

/// The PostgreSQL channel on which every event append is announced (at
/// commit), so other replicas catch up at once instead of at their next poll.
pub const EVENT_CHANNEL: &str = "apitoken_events";

/// The counter of database errors (`kind`: `unavailable` or `query`),
/// exported by the server's metrics.
pub const DB_ERRORS: &str = "apitoken_db_errors_total";

/// The connection pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections.
    pub open: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

/// Maps a database error: connection trouble is `UNAVAILABLE` (retry), the
/// rest `INTERNAL`; the detail is logged here and never sent to a client.
/// The error of taking a transaction lock: a wait past the lock wait
/// (SQLSTATE 55P03) is a busy database, to retry; anything else as
/// [`db_error`].
fn lock_error(error: DbErr) -> Error {
    if error.to_string().contains("lock timeout") || error.to_string().contains("55P03") {
        metrics::counter!(DB_ERRORS, "kind" => "unavailable").increment(1);
        warn!(error = %error, "event lock not available in time");
        return Error::Unavailable("database busy, retry later".to_owned());
    }
    db_error(error)
}

pub(super) fn db_error(error: DbErr) -> Error {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
            metrics::counter!(DB_ERRORS, "kind" => "unavailable").increment(1);
            warn!(error = %error, "database unavailable");
            Error::Unavailable("database unavailable, retry later".to_owned())
        }
        other => {
            metrics::counter!(DB_ERRORS, "kind" => "query").increment(1);
            error!(error = %other, "database error");
            Error::Internal
        }
    }
}

/// `select` as the statement to run on `backend`; on SQLite, reading
/// through `index` (`INDEXED BY`). SQLite plans each connection with the
/// statistics that connection last loaded, so a pool connection opened
/// before `ANALYZE` can plan a full scan while others use the index: a
/// sweep that runs every second cannot depend on that. With `INDEXED BY`
/// the plan is fixed (and a missing index is an error, not a silent scan).
/// PostgreSQL plans with shared, current statistics.
pub(super) fn through_index<E: EntityTrait>(
    select: sea_orm::Select<E>,
    backend: DbBackend,
    index: &str,
) -> sea_orm::Statement {
    let mut statement = select.build(backend);
    if backend == DbBackend::Sqlite {
        let from = format!("FROM \"{}\"", E::default().table_name());
        statement.sql = statement
            .sql
            .replacen(&from, &format!("{from} INDEXED BY \"{index}\""), 1);
    }
    statement
}

/// Adds `mode=rwc` to a SQLite URL without a mode, so the file is created.
fn with_sqlite_create_mode(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    }
}

/// A URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// SQLite's page cache of each pooled connection, in KiB.
const SQLITE_CACHE_KIB: u32 = 512;

impl TokenStore {
    /// Connects to `url` (`sqlite://path.db`, `postgres://…`). A SQLite file
    /// is created if missing and put in WAL mode.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<TokenStore, Error> {
        let mut connect = ConnectOptions::new(with_sqlite_create_mode(url));
        connect
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_timeout(options.acquire_timeout)
            .sqlx_logging(false)
            // SQLite's page cache is per connection (2 MiB each by default,
            // 20 MiB for the pool); verification and reads come from the
            // index, so a smaller one costs little and bounds the memory.
            .map_sqlx_sqlite_opts(|sqlite| {
                sqlite.pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
            });
        let db = Database::connect(connect).await.map_err(|error| {
            warn!(url = %redact_url(url), error = %error, "cannot connect to the database");
            Error::Unavailable(format!(
                "cannot connect to the database at {}",
                redact_url(url)
            ))
        })?;
        if db.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL")
                .await
                .map_err(db_error)?;
        }
        Ok(TokenStore {
            db,
            lock_wait_ms: options.lock_wait.as_millis().max(1),
            observer: Arc::default(),
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        Migrator::up(&self.db, None).await.map_err(db_error)
    }

    /// Keeps the query planner's statistics current. SQLite has none until
    /// asked, and without them it reads the sweeps' queries with a full
    /// scan (see `plans`); `PRAGMA optimize` analyzes what needs it, each
    /// table sampled (bounded time, even at millions of rows). PostgreSQL
    /// keeps its own (autovacuum): nothing to do.
    pub async fn optimize(&self) -> Result<(), Error> {
        if self.db.get_database_backend() == DbBackend::Sqlite {
            self.db
                .execute_unprepared("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002")
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(db_error)
    }

    /// The migrations this binary expects that the database lacks (all of
    /// them when it has no schema at all). Empty: the schema is at (or, after
    /// a newer release migrated it, beyond) the version this binary expects.
    /// `UNAVAILABLE` when the database does not answer.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, Error> {
        let expected: Vec<String> = Migrator::migrations()
            .iter()
            .map(|migration| migration.name().to_owned())
            .collect();
        let applied = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT version FROM seaql_migrations",
            ))
            .await;
        let applied: Vec<String> = match applied {
            Ok(rows) => rows
                .iter()
                .filter_map(|row| row.try_get::<String>("", "version").ok())
                .collect(),
            Err(error) => {
                // No migration table: no schema. A database that is down
                // says so to the ping.
                self.ping().await?;
                warn!(error = %error, "cannot read the migration table");
                Vec::new()
            }
        };
        Ok(expected
            .into_iter()
            .filter(|name| !applied.contains(name))
            .collect())
    }

    /// Installs the observer of this process's changes (once; later calls
    /// are ignored).
    pub fn observe(&self, observer: Arc<dyn ChangeObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer about a committed change.
    pub(crate) fn changed(&self, change: Change) {
        if let Some(observer) = self.observer.get() {
            observer.changed(change);
        }
    }

    /// Whether this is PostgreSQL (several replicas may share it).
    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// The connection pool's occupancy (for metrics).
    pub fn pool_stats(&self) -> PoolStats {
        fn stats<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                open: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                max: pool.options().get_max_connections(),
            }
        }
        match self.db.get_database_backend() {
            DbBackend::Postgres => stats(self.db.get_postgres_connection_pool()),
            DbBackend::Sqlite => stats(self.db.get_sqlite_connection_pool()),
            _ => PoolStats {
                open: 0,
                idle: 0,
                max: 0,
            },
        }
    }

    /// The underlying connection (for tests and tooling).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction for a write that appends an event. On PostgreSQL it
    /// takes a transaction lock first, so that event sequences commit in
    /// order (a watcher at sequence n never later sees n - 1 appear).
    async fn begin_event_write(&self) -> Result<DatabaseTransaction, Error> {
        self.begin_locked(EVENT_LOCK_KEY).await
    }

    /// A transaction holding the PostgreSQL transaction lock `key` (on
    /// SQLite, whose writers are serialized anyway, a plain transaction).
    /// The wait is bounded by [`StoreOptions::lock_wait`]: a write
    /// stuck behind a lost holder fails as UNAVAILABLE instead of hanging.
    pub(super) async fn begin_locked(&self, key: i64) -> Result<DatabaseTransaction, Error> {
        let txn = self.db.begin().await.map_err(db_error)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // One round trip for both statements.
            txn.execute_unprepared(&format!(
                "SET LOCAL lock_timeout = '{}ms'; SELECT pg_advisory_xact_lock({key})",
                self.lock_wait_ms
            ))
            .await
            .map_err(lock_error)?;
        }
        Ok(txn)
    }
}

#[cfg(test)]
mod plans;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(
            with_sqlite_create_mode("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
        assert_eq!(
            with_sqlite_create_mode("postgres://h/db"),
            "postgres://h/db"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
