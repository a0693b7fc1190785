//! Verification served from memory: every token's verification facts in a
//! [`TokenTable`], kept exact by the event log, and the full records of the
//! tokens in use in a [`RecordCache`].
//!
//! How it stays exact:
//! - **This replica's writes** reach the table before the write returns:
//!   the store tells its [`ChangeObserver`] (this index) of every committed
//!   change, so the next call on this replica sees it, with no window.
//! - **Other replicas' writes** arrive through the event log, which every
//!   write appends to in its own transaction. A follower task reads the log
//!   after its cursor, reloads the rows the events name, and applies them
//!   (older versions never replace newer ones). On PostgreSQL it is woken by
//!   `LISTEN/NOTIFY` (every append notifies at commit), so a change is
//!   visible on every replica within milliseconds (the tests bound it at
//!   100 ms); it also polls every `poll_interval`, and re-checks at once
//!   when the listening connection is lost.
//! - **Cold start** records the end of the log, loads every row, then
//!   replays the log from that point. If the log was pruned past the cursor
//!   (a replica away longer than the event retention), the table is rebuilt.
//!
//! A secret the table does not know is refused without a query, so a flood
//! of made-up tokens costs no database work. While the follower cannot hear
//! other replicas (PostgreSQL listener down), a miss first catches up with
//! the log — at most one catch-up query every [`CATCH_UP_INTERVAL`], however
//! many misses arrive.
//!
//! Pages of `ListApiTokens` are cached in a [`ListCache`], valid only at
//! the generation their namespace had when they were read (any change of
//! one of its tokens, from any path above, moves it).
//!
//! The follower also keeps the most recent events in a ring, from which the
//! event streams (`WatchApiTokenEvents`) are served: a stream that is up to
//! date costs no query, however many are open.

pub mod lists;
pub mod records;
pub mod table;

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use apitoken_domain::{Error, hash::SecretHash};
use apitoken_store::{
    AuthRow, Change, ChangeObserver, EventListener, EventRecord, SecretMatch, TokenRecord,
    TokenStore,
};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub use lists::{ListCache, ListKey, PageRecords};
pub use records::RecordCache;
pub use table::{AuthView, TokenTable, parse_uid, uid_string};

/// Rows loaded per query at cold start.
const LOAD_BATCH: u64 = 1_000;
/// Events read per query by the follower.
const TAIL_BATCH: u64 = 1_000;
/// At most one catch-up query per this long when misses ask for one.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_millis(20);
/// How often the follower checks that the log was not pruned past it.
const WATERMARK_CHECK: Duration = Duration::from_secs(60);

/// Settings of the index.
#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    /// How often the follower reads the log even without a notification.
    pub poll_interval: Duration,
    /// Most full records cached.
    pub record_cache_capacity: usize,
    /// How long a cached record's usage figures may be reused.
    pub record_ttl: Duration,
    /// Most recent events kept for the event streams.
    pub ring_capacity: usize,
    /// Most list pages cached.
    pub list_cache_pages: usize,
    /// Most records held by cached list pages, in all.
    pub list_cache_records: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            record_cache_capacity: 10_000,
            record_ttl: Duration::from_secs(2),
            ring_capacity: 8_192,
            list_cache_pages: 1_024,
            list_cache_records: 10_000,
        }
    }
}

/// Recent events, complete from `start` (exclusive) to `end` (inclusive):
/// every event with a sequence in between is here. `end` is the follower's
/// cursor.
#[derive(Debug, Default)]
struct Ring {
    start: i64,
    end: i64,
    events: VecDeque<EventRecord>,
}

/// Events of one namespace from the ring, and how far they are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvents {
    /// The events, oldest first.
    pub events: Vec<EventRecord>,
    /// No other event of the namespace exists up to this sequence.
    pub through: i64,
}

/// The in-memory index.
#[derive(Debug)]
pub struct TokenIndex {
    store: TokenStore,
    options: IndexOptions,
    table: RwLock<TokenTable>,
    records: RecordCache,
    lists: ListCache<TokenRecord>,
    /// One reader of the log at a time; holds when the last read started.
    tail: tokio::sync::Mutex<Option<Instant>>,
    cursor: AtomicI64,
    ring: Mutex<Ring>,
    advanced: watch::Sender<i64>,
    nudge: Notify,
    listening: AtomicBool,
    loaded: AtomicBool,
}

/// What the index holds, for health, metrics and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Tokens in the table.
    pub tokens: usize,
    /// Full records cached.
    pub records: usize,
    /// The last event applied.
    pub cursor: i64,
    /// Whether other replicas' changes arrive by notification (PostgreSQL
    /// listener up), not only by polling.
    pub listening: bool,
    /// Whether every token is loaded.
    pub loaded: bool,
}

impl TokenIndex {
    /// An empty index over `store`, observing this process's writes. It
    /// knows no token until [`TokenIndex::load`] succeeds (the follower
    /// retries it until then).
    pub fn new(store: TokenStore, options: IndexOptions) -> Arc<Self> {
        let (advanced, _) = watch::channel(0);
        let index = Arc::new(Self {
            records: RecordCache::new(options.record_cache_capacity, options.record_ttl),
            lists: ListCache::new(
                options.list_cache_pages,
                options.list_cache_records,
                options.record_ttl,
            ),
            store: store.clone(),
            options,
            table: RwLock::new(TokenTable::default()),
            tail: tokio::sync::Mutex::new(None),
            cursor: AtomicI64::new(0),
            ring: Mutex::new(Ring::default()),
            advanced,
            nudge: Notify::new(),
            listening: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
        });
        store.observe(Arc::new(IndexObserver(Arc::downgrade(&index))));
        index
    }

    /// Loads every token (cold start, or a rebuild): notes the end of the
    /// log, reads every row, swaps the table in, then replays the log from
    /// the noted end.
    pub async fn load(&self) -> Result<(), Error> {
        let mut last_started = self.tail.lock().await;
        let started = Instant::now();
        let (table, cursor) = load_table(&self.store).await?;
        let tokens = table.len();
        *self.write() = table;
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.start = cursor;
            ring.end = cursor;
            ring.events.clear();
            self.cursor.store(cursor, Ordering::Release);
        }
        self.advanced.send_replace(cursor);
        *last_started = Some(Instant::now());
        // Changes committed while the rows were read.
        self.tail_locked().await?;
        self.loaded.store(true, Ordering::Release);
        info!(
            tokens,
            cursor,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "token index loaded"
        );
        Ok(())
    }

    /// Whether every token is loaded (health is NOT_SERVING until then).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The token whose current or previous secret hashes to `hash`.
    pub fn lookup(&self, hash: &SecretHash) -> Option<(AuthView, SecretMatch)> {
        self.read().find_by_hash(hash)
    }

    /// [`TokenIndex::lookup`]; on a miss while other replicas' changes may
    /// be unheard (listener down), catches up with the log first.
    pub async fn lookup_fresh(&self, hash: &SecretHash) -> Option<(AuthView, SecretMatch)> {
        if let Some(found) = self.lookup(hash) {
            return Some(found);
        }
        if self.is_listening() || !self.store.is_postgres() {
            return None;
        }
        let missed = Instant::now();
        if let Err(error) = self.catch_up(missed).await {
            warn!(error = %error, "catching up with the event log failed");
        }
        self.lookup(hash)
    }

    /// The token with this uid.
    pub fn by_uid(&self, uid: u128) -> Option<AuthView> {
        self.read().find_by_uid(uid)
    }

    /// The token with this name.
    pub fn by_name(&self, namespace: &str, token_id: &str) -> Option<AuthView> {
        self.read().find_by_name(namespace, token_id)
    }

    /// The full record of a token the index holds: cached, or read by uid.
    pub async fn record(&self, view: &AuthView) -> Result<Arc<TokenRecord>, Error> {
        if let Some(record) = self.records.get(view.uid, view.version) {
            crate::metrics::server().record_cache(true);
            return Ok(record);
        }
        crate::metrics::server().record_cache(false);
        let record = Arc::new(self.store.get_by_uid(&view.uid_string()).await?);
        self.records.put(view.uid, Arc::clone(&record));
        Ok(record)
    }

    /// The generation of `namespace` (read it before querying a page to
    /// cache: a change after that moves it).
    pub fn generation(&self, namespace: &str) -> u64 {
        self.read().generation(namespace)
    }

    /// The cached page for `key`, if its namespace is still at `generation`.
    pub fn cached_page(&self, key: &ListKey, generation: u64) -> Option<PageRecords<TokenRecord>> {
        let page = self.lists.get(key, generation);
        crate::metrics::server().list_cache(page.is_some());
        page
    }

    /// Caches a page read from the store at `generation`.
    pub fn cache_page(&self, key: ListKey, generation: u64, records: PageRecords<TokenRecord>) {
        self.lists.put(key, generation, records);
    }

    /// What the index holds.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            tokens: self.read().len(),
            records: self.records.len(),
            cursor: self.cursor.load(Ordering::Acquire),
            listening: self.is_listening(),
            loaded: self.is_loaded(),
        }
    }

    /// Active tokens per namespace at `now` (see
    /// [`table::TokenTable::active_by_namespace`]).
    pub fn active_by_namespace(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> std::collections::HashMap<Arc<str>, u64> {
        self.read().active_by_namespace(now.timestamp_micros())
    }

    /// Whether another replica's change is heard at once.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// The last event applied, as it advances (event streams wait on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.advanced.subscribe()
    }

    /// Asks the follower to read the log now (an event was appended here
    /// without a row change, e.g. by the expiry sweeper).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Events of `namespace` after `cursor` from the ring (at most `limit`),
    /// or `None` when the ring no longer reaches back to `cursor` (read the
    /// log instead).
    pub fn recent_events(
        &self,
        namespace: &str,
        cursor: i64,
        limit: usize,
    ) -> Option<RecentEvents> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if cursor < ring.start {
            return None;
        }
        let events: Vec<EventRecord> = ring
            .events
            .iter()
            .filter(|event| event.sequence > cursor && event.name.namespace().as_str() == namespace)
            .take(limit)
            .cloned()
            .collect();
        let through = if events.len() == limit {
            events.last().map_or(cursor, |event| event.sequence)
        } else {
            ring.end.max(cursor)
        };
        Some(RecentEvents { events, through })
    }

    /// The follower: reads the log when notified (PostgreSQL), when nudged,
    /// and every `poll_interval`, until `stopping`.
    pub fn spawn_follower(
        self: &Arc<Self>,
        mut stopping: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let index = Arc::clone(self);
        tokio::spawn(async move {
            let mut listener: Option<EventListener> = None;
            let mut next_listen = Instant::now();
            let mut next_watermark = Instant::now() + WATERMARK_CHECK;
            loop {
                if listener.is_none() && index.store.is_postgres() && Instant::now() >= next_listen
                {
                    match index.store.event_listener().await {
                        Ok(opened) => {
                            listener = opened;
                            index.listening.store(listener.is_some(), Ordering::Release);
                            if listener.is_some() {
                                info!("listening for other replicas' changes");
                            }
                        }
                        Err(error) => {
                            warn!(error = %error, "cannot listen for other replicas' changes; polling");
                            next_listen = Instant::now() + Duration::from_secs(1);
                        }
                    }
                }
                let heard = async {
                    match listener.as_mut() {
                        Some(listener) => listener.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = heard => {
                        if result.is_err() {
                            warn!("lost the listening connection: polling until it is back");
                            listener = None;
                            index.listening.store(false, Ordering::Release);
                            next_listen = Instant::now() + Duration::from_millis(200);
                        }
                    }
                    () = index.nudge.notified() => {}
                    () = tokio::time::sleep(index.options.poll_interval) => {}
                    _ = stopping.changed() => return,
                }
                if !index.is_loaded() {
                    if let Err(error) = index.load().await {
                        warn!(error = %error, "loading the token index failed; will retry");
                    }
                    continue;
                }
                if Instant::now() >= next_watermark {
                    next_watermark = Instant::now() + WATERMARK_CHECK;
                    if let Err(error) = index.rebuild_if_pruned().await {
                        warn!(error = %error, "checking the event log watermark failed");
                    }
                }
                if let Err(error) = index.tail().await {
                    warn!(error = %error, "reading the event log failed; will retry");
                }
            }
        })
    }

    /// Reads the log after the cursor and applies what it names.
    pub async fn tail(&self) -> Result<(), Error> {
        let mut last_started = self.tail.lock().await;
        *last_started = Some(Instant::now());
        self.tail_locked().await
    }

    /// A catch-up for a miss at `missed`: none if a read of the log started
    /// since; otherwise one, at most every [`CATCH_UP_INTERVAL`].
    async fn catch_up(&self, missed: Instant) -> Result<(), Error> {
        let mut last_started = self.tail.lock().await;
        if last_started.is_some_and(|started| started >= missed) {
            return Ok(());
        }
        if let Some(started) = *last_started {
            let due = started + CATCH_UP_INTERVAL;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        *last_started = Some(Instant::now());
        self.tail_locked().await
    }

    async fn tail_locked(&self) -> Result<(), Error> {
        loop {
            let cursor = self.cursor.load(Ordering::Acquire);
            let events = self.store.events_since(cursor, TAIL_BATCH).await?;
            let Some(last) = events.last().map(|event| event.sequence) else {
                return Ok(());
            };
            let mut uids: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            for event in &events {
                if event.kind.changes_row() && seen.insert(event.uid.as_str()) {
                    uids.push(event.uid.clone());
                }
            }
            let rows = self.store.auth_rows_by_uid(&uids).await?;
            {
                let mut table = self.write();
                for uid in &uids {
                    let Some(parsed) = parse_uid(uid) else {
                        continue;
                    };
                    match rows.iter().find(|row| &row.uid == uid) {
                        Some(row) => {
                            table.upsert(row);
                        }
                        None => {
                            table.remove(parsed);
                            self.records.remove(parsed);
                        }
                    }
                }
            }
            {
                let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
                for event in events.iter() {
                    if event.sequence <= cursor {
                        continue;
                    }
                    if ring.events.len() >= self.options.ring_capacity
                        && let Some(evicted) = ring.events.pop_front()
                    {
                        ring.start = evicted.sequence;
                    }
                    ring.events.push_back(event.clone());
                }
                ring.end = last;
                self.cursor.store(last, Ordering::Release);
            }
            self.advanced.send_replace(last);
            if (events.len() as u64) < TAIL_BATCH {
                return Ok(());
            }
        }
    }

    /// Rebuilds the table when the log was pruned past the cursor: the
    /// events in between are gone, so only a full reload is exact.
    async fn rebuild_if_pruned(&self) -> Result<(), Error> {
        let pruned = self.store.events_pruned_through().await?;
        let cursor = self.cursor.load(Ordering::Acquire);
        if pruned <= cursor {
            return Ok(());
        }
        warn!(
            cursor,
            pruned, "the event log was pruned past this replica's cursor: reloading every token"
        );
        self.load().await
    }

    fn apply(&self, change: Change) {
        match change {
            Change::Upserted(record) => {
                let row = AuthRow::from(&*record);
                self.write().upsert(&row);
                if let Some(uid) = parse_uid(&record.uid) {
                    self.records.put(uid, Arc::new(*record));
                }
            }
            Change::Removed { uid } => {
                if let Some(uid) = parse_uid(&uid) {
                    self.write().remove(uid);
                    self.records.remove(uid);
                }
            }
            Change::Used { uids } => {
                // Replies show usage figures: read them again when asked.
                let mut table = self.write();
                for uid in uids.iter().filter_map(|uid| parse_uid(uid)) {
                    self.records.remove(uid);
                    table.touch(uid);
                }
                return;
            }
        }
        // The change appended an event: deliver it to the streams now.
        self.nudge();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TokenTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TokenTable> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every row, read after noting the end of the log (so that replaying the
/// log from there catches whatever changed meanwhile).
async fn load_table(store: &TokenStore) -> Result<(TokenTable, i64), Error> {
    let cursor = store.last_event_sequence().await?;
    let count = store.count_tokens().await?;
    let mut table = TokenTable::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut after = 0;
    loop {
        let rows = store.auth_rows_after(after, LOAD_BATCH).await?;
        let Some(last) = rows.last().map(|row| row.id) else {
            break;
        };
        for row in &rows {
            table.upsert(row);
        }
        after = last;
    }
    Ok((table, cursor))
}

/// The store's observer: applies this process's writes to the index. Holds
/// the index weakly (the index holds the store).
#[derive(Debug)]
struct IndexObserver(Weak<TokenIndex>);

impl ChangeObserver for IndexObserver {
    fn changed(&self, change: Change) {
        if let Some(index) = self.0.upgrade() {
            index.apply(change);
        }
    }
}
