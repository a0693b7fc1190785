//! The token cache: verified tokens and recent refusals, bounded, keyed by a
//! keyed blake3 hash of the secret with a key drawn at start (never the
//! secret itself, and useless outside this process).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use apitoken_domain::{Error, Principal, token::WellFormed};
use rand::{TryRng, rngs::SysRng};
use tokio::time::Instant;

/// The cache key of a secret.
pub type CacheKey = [u8; 32];

/// A verified token. Cheap to clone (the principal is shared).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The token.
    pub principal: Arc<Principal>,
    /// Its rate limit, requests a minute.
    pub token_limit: apitoken_domain::ratelimit::RateLimit,
    /// Its namespace's aggregate limit, requests a minute.
    pub namespace_limit: apitoken_domain::ratelimit::RateLimit,
    /// When this secret stops working (grace end or token expiry).
    pub secret_expire_time: Option<chrono::DateTime<chrono::Utc>>,
    /// When apitoken last confirmed it.
    pub verified_at: Instant,
}

/// A recent refusal.
#[derive(Debug, Clone)]
struct Refusal {
    error: Error,
    until: Instant,
}

/// Verified tokens and refusals.
#[derive(Debug)]
pub struct TokenCache {
    key: [u8; 32],
    capacity: usize,
    entries: RwLock<HashMap<CacheKey, Entry>>,
    refusals: Mutex<HashMap<CacheKey, Refusal>>,
}

impl TokenCache {
    /// An empty cache with a fresh random hashing key.
    pub fn new(capacity: usize) -> Result<Self, String> {
        let mut key = [0u8; 32];
        SysRng
            .try_fill_bytes(&mut key)
            .map_err(|err| format!("the operating system's random source failed: {err}"))?;
        Ok(Self {
            key,
            capacity: capacity.max(1),
            entries: RwLock::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
        })
    }

    /// The key of a secret.
    pub fn key_for(&self, secret: &WellFormed) -> CacheKey {
        *blake3::keyed_hash(&self.key, secret.secret().expose().as_bytes()).as_bytes()
    }

    /// The cached token, if any.
    pub fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Caches a verified token, evicting the least recently verified one
    /// when full.
    pub fn insert(&self, key: CacheKey, entry: Entry) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.verified_at)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, entry);
    }

    /// Forgets a token.
    pub fn remove(&self, key: &CacheKey) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Forgets every cached secret of the token `uid`; returns how many.
    pub fn invalidate_uid(&self, uid: &str) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, entry| entry.principal.uid != uid);
        before - entries.len()
    }

    /// Forgets every cached token of `namespace`.
    pub fn clear_namespace(&self, namespace: &str) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, entry| entry.principal.namespace() != namespace);
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A recent refusal of this secret, if any.
    pub fn refusal(&self, key: &CacheKey, now: Instant) -> Option<Error> {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        match refusals.get(key) {
            Some(refusal) if refusal.until > now => Some(refusal.error.clone()),
            Some(_) => {
                refusals.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a refusal until `until`.
    pub fn refuse(&self, key: CacheKey, error: Error, until: Instant, now: Instant) {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if refusals.len() >= self.capacity {
            refusals.retain(|_, refusal| refusal.until > now);
            if refusals.len() >= self.capacity {
                // A flood of distinct garbage: start over rather than grow.
                refusals.clear();
            }
        }
        refusals.insert(key, Refusal { error, until });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use apitoken_domain::{Role, name::TokenName, token::TokenFormat};

    use super::*;

    fn principal(uid: &str, namespace: &str) -> Arc<Principal> {
        Arc::new(Principal {
            name: TokenName::from_stored(namespace, uid),
            uid: uid.to_owned(),
            role: Role::Viewer,
            expire_time: None,
            interceptor: false,
            display_name: String::new(),
            labels: Default::default(),
        })
    }

    fn key(cache: &TokenCache) -> CacheKey {
        let format = TokenFormat::default();
        cache.key_for(
            &format
                .parse(format.generate().expect("secret"))
                .expect("well formed"),
        )
    }

    #[test]
    fn keys_are_not_the_secret_and_differ_per_process() {
        let format = TokenFormat::default();
        let secret = format
            .parse(format.generate().expect("secret"))
            .expect("well formed");
        let a = TokenCache::new(10).expect("cache");
        let b = TokenCache::new(10).expect("cache");
        assert_ne!(a.key_for(&secret), b.key_for(&secret));
        assert_eq!(a.key_for(&secret), a.key_for(&secret));
        assert!(
            !secret
                .secret()
                .expose()
                .as_bytes()
                .windows(8)
                .any(|w| a.key_for(&secret).windows(8).any(|k| k == w))
        );
    }

    #[test]
    fn bounded_evicting_the_oldest() {
        let cache = TokenCache::new(2).expect("cache");
        let start = Instant::now();
        let keys: Vec<_> = (0..3).map(|_| key(&cache)).collect();
        for (i, key) in keys.iter().enumerate() {
            cache.insert(
                *key,
                Entry {
                    token_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                    namespace_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                    secret_expire_time: None,
                    principal: principal(&format!("uid-{i}"), "ns"),
                    verified_at: start + Duration::from_secs(i as u64),
                },
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&keys[0]).is_none(), "oldest evicted");
        assert!(cache.get(&keys[2]).is_some());
    }

    #[test]
    fn invalidation_by_uid_and_namespace() {
        let cache = TokenCache::new(10).expect("cache");
        let now = Instant::now();
        let (a, b, c) = (key(&cache), key(&cache), key(&cache));
        cache.insert(
            a,
            Entry {
                token_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                namespace_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                secret_expire_time: None,
                principal: principal("one", "ns-a"),
                verified_at: now,
            },
        );
        cache.insert(
            b,
            Entry {
                token_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                namespace_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                secret_expire_time: None,
                principal: principal("one", "ns-a"),
                verified_at: now,
            },
        );
        cache.insert(
            c,
            Entry {
                token_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                namespace_limit: apitoken_domain::ratelimit::RateLimit::per_minute(1),
                secret_expire_time: None,
                principal: principal("two", "ns-b"),
                verified_at: now,
            },
        );
        assert_eq!(cache.invalidate_uid("one"), 2);
        assert_eq!(cache.len(), 1);
        cache.clear_namespace("ns-b");
        assert!(cache.is_empty());
    }

    #[test]
    fn refusals_expire_and_stay_bounded() {
        let cache = TokenCache::new(2).expect("cache");
        let now = Instant::now();
        let k = key(&cache);
        cache.refuse(k, Error::Internal, now + Duration::from_secs(1), now);
        assert!(cache.refusal(&k, now).is_some());
        assert!(cache.refusal(&k, now + Duration::from_secs(2)).is_none());
        for _ in 0..10 {
            cache.refuse(
                key(&cache),
                Error::Internal,
                now + Duration::from_secs(1),
                now,
            );
        }
        assert!(cache.refusals.lock().expect("lock").len() <= 2);
    }
}
