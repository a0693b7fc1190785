//! [`ListCache`]: recent `ListApiTokens` pages, so that a page asked for
//! again (a console refreshing, a fleet of callers polling one namespace)
//! needs no query.
//!
//! A page is stored with the [generation](super::table::TokenTable::generation)
//! its namespace had *before* the query ran, and used only while the
//! namespace is still at that generation: any change of one of its tokens —
//! made here, or on another replica and applied from the event log — makes
//! every cached page of the namespace stale at once. Usage figures written
//! by this replica touch the generation too; those written by other
//! replicas (no event) are at most the usage TTL old, as for a single read.
//!
//! Only filters that do not depend on the clock are cached (see
//! `ListFilter::depends_on_time`): a page of `state = ACTIVE` changes when a
//! token expires, with no event. The key is the request itself (namespace,
//! filter text, revoked or not, position, size), never a hash of it, so no
//! crafted request can be answered with another namespace's page. Bounded
//! in pages and in records; past either bound, an eighth of the pages is
//! dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// What a page is the answer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    /// The namespace listed.
    pub namespace: String,
    /// The filter, as sent (bounded by the filter parser).
    pub filter: String,
    /// Whether revoked tokens are included.
    pub include_revoked: bool,
    /// Rows before this id only (the page token's position).
    pub before_id: Option<i64>,
    /// Rows asked of the store (page size + 1).
    pub limit: u64,
}

/// A cached page's records (the store's token records, in the server).
pub type PageRecords<R> = Arc<[Arc<R>]>;

#[derive(Debug)]
struct Page<R> {
    generation: u64,
    fetched: Instant,
    records: PageRecords<R>,
}

#[derive(Debug)]
struct Pages<R> {
    pages: HashMap<ListKey, Page<R>>,
    records: usize,
}

/// Recent list pages, by request.
#[derive(Debug)]
pub struct ListCache<R> {
    pages: Mutex<Pages<R>>,
    max_pages: usize,
    max_records: usize,
    ttl: Duration,
}

impl<R> ListCache<R> {
    /// At most `max_pages` pages holding at most `max_records` records in
    /// all, each trusted for `ttl`.
    pub fn new(max_pages: usize, max_records: usize, ttl: Duration) -> Self {
        Self {
            pages: Mutex::new(Pages {
                pages: HashMap::new(),
                records: 0,
            }),
            max_pages: max_pages.max(1),
            max_records: max_records.max(1),
            ttl,
        }
    }

    /// The page for `key`, if cached at `generation` and fresh.
    pub fn get(&self, key: &ListKey, generation: u64) -> Option<PageRecords<R>> {
        let pages = self.lock();
        let page = pages.pages.get(key)?;
        (page.generation == generation && page.fetched.elapsed() < self.ttl)
            .then(|| Arc::clone(&page.records))
    }

    /// Caches the page for `key`, read at `generation`. A page larger than
    /// the whole budget is not cached.
    pub fn put(&self, key: ListKey, generation: u64, records: PageRecords<R>) {
        if records.len() > self.max_records {
            return;
        }
        let mut pages = self.lock();
        if let Some(old) = pages.pages.remove(&key) {
            pages.records -= old.records.len();
        }
        if pages.pages.len() >= self.max_pages || pages.records + records.len() > self.max_records {
            let drop: Vec<ListKey> = pages
                .pages
                .keys()
                .take((pages.pages.len() / 8).max(1))
                .cloned()
                .collect();
            for key in drop {
                if let Some(old) = pages.pages.remove(&key) {
                    pages.records -= old.records.len();
                }
            }
            if pages.records + records.len() > self.max_records {
                pages.pages.clear();
                pages.records = 0;
            }
        }
        pages.records += records.len();
        pages.pages.insert(
            key,
            Page {
                generation,
                fetched: Instant::now(),
                records,
            },
        );
    }

    /// Pages and records cached.
    pub fn len(&self) -> (usize, usize) {
        let pages = self.lock();
        (pages.pages.len(), pages.records)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pages<R>> {
        self.pages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &str, before_id: Option<i64>) -> ListKey {
        ListKey {
            namespace: namespace.to_owned(),
            filter: String::new(),
            include_revoked: false,
            before_id,
            limit: 51,
        }
    }

    fn page(n: usize) -> PageRecords<usize> {
        (0..n).map(Arc::new).collect::<Vec<_>>().into()
    }

    #[test]
    fn a_page_is_used_only_at_its_generation_and_while_fresh() {
        let cache = ListCache::<usize>::new(8, 100, Duration::from_millis(200));
        cache.put(key("team-a", None), 7, page(3));
        assert_eq!(cache.get(&key("team-a", None), 7).map(|p| p.len()), Some(3));
        assert!(
            cache.get(&key("team-a", None), 8).is_none(),
            "changed since"
        );
        assert!(
            cache.get(&key("team-b", None), 7).is_none(),
            "other namespace"
        );
        assert!(
            cache.get(&key("team-a", Some(5)), 7).is_none(),
            "other page"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(&key("team-a", None), 7).is_none(), "expired");
    }

    #[test]
    fn pages_and_records_stay_within_their_bounds() {
        let cache = ListCache::<usize>::new(16, 100, Duration::from_secs(60));
        for i in 0..1000 {
            cache.put(key("team-a", Some(i)), 1, page(7));
            let (pages, records) = cache.len();
            assert!(
                pages <= 16 && records <= 100,
                "{pages} pages, {records} records"
            );
        }
        cache.put(key("team-a", None), 1, page(101));
        assert!(cache.get(&key("team-a", None), 1).is_none(), "over budget");
        // Replacing a page does not count its records twice.
        for _ in 0..10 {
            cache.put(key("team-b", None), 1, page(90));
            assert!(cache.len().1 <= 100);
        }
        assert_eq!(
            cache.get(&key("team-b", None), 1).map(|p| p.len()),
            Some(90)
        );
    }
}
