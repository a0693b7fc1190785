//! [`RecordCache`]: full token records (what a reply shows: display name,
//! description, labels, usage) for the tokens in use, so that a verification
//! or a read answered from the index needs no query either.
//!
//! A cached record is used only while its `version` is the one the index
//! holds (any change of the token makes it stale at once) and for at most
//! the usage TTL (its `use_count` and `last_use_time` are then at most that
//! old). Bounded: past `capacity`, an eighth of the entries is dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use apitoken_store::TokenRecord;

#[derive(Debug)]
struct Cached {
    record: Arc<TokenRecord>,
    fetched: Instant,
}

/// Recently used full records, by uid.
#[derive(Debug)]
pub struct RecordCache {
    entries: Mutex<HashMap<u128, Cached>>,
    capacity: usize,
    ttl: Duration,
}

impl RecordCache {
    /// A cache of at most `capacity` records, each trusted for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The record of `uid` at `version`, if cached and fresh.
    pub fn get(&self, uid: u128, version: i64) -> Option<Arc<TokenRecord>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.get(&uid)?;
        (cached.record.version == version && cached.fetched.elapsed() < self.ttl)
            .then(|| Arc::clone(&cached.record))
    }

    /// Caches `record` (fetched or written just now).
    pub fn put(&self, uid: u128, record: Arc<TokenRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&uid) {
            let drop: Vec<u128> = entries
                .keys()
                .take((self.capacity / 8).max(1))
                .copied()
                .collect();
            for key in drop {
                entries.remove(&key);
            }
        }
        if let Some(cached) = entries.get(&uid)
            && cached.record.version > record.version
        {
            return;
        }
        entries.insert(
            uid,
            Cached {
                record,
                fetched: Instant::now(),
            },
        );
    }

    /// Forgets `uid`.
    pub fn remove(&self, uid: u128) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uid);
    }

    /// How many records are cached.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
