//! Server-side sessions: a random 256-bit id in a cookie, the signed-in
//! token held only in this process's memory.
//!
//! A session ends at sign out, after [`SessionConfig::idle`] without a
//! request, after [`SessionConfig::absolute`] whatever happens, or to make
//! room for a new one. Making room never lets one caller end another's
//! sessions: a token past [`SessionConfig::max_per_token`] loses its own
//! oldest session, and a full store ([`SessionConfig::max_sessions`]) loses
//! the oldest session of the busiest token of the namespace holding the
//! most sessions, so whoever fills the store pays for it.
//! Each session has its own CSRF token, compared in constant time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use apitoken_domain::{Role, token::Secret};
use rand::{TryRng, rngs::SysRng};
use subtle::ConstantTimeEq;

/// Bytes of a session id and of a CSRF token (256 bits).
const ID_BYTES: usize = 32;

/// Limits of the session store.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute: Duration,
    /// Most sessions at once (about 300 bytes each); signing in beyond it
    /// ends a session of the namespace holding the most.
    pub max_sessions: usize,
    /// Most sessions of one token; signing in beyond it ends that token's
    /// oldest.
    pub max_per_token: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(8 * 60 * 60),
            max_sessions: 10_000,
            max_per_token: 8,
        }
    }
}

/// Who is signed in, as `VerifyApiToken` said at sign-in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `namespaces/<ns>/apitokens/<id>`.
    pub token_name: String,
    /// The token's uid.
    pub uid: String,
    /// The namespace id.
    pub namespace: String,
    /// The token's role.
    pub role: Role,
}

/// A new secret to show once, on the next page that asks for it.
#[derive(Debug, Clone)]
pub struct Reveal {
    /// The token it belongs to.
    pub token_name: String,
    /// The secret (shown once, then dropped).
    pub secret: Secret,
    /// "created" or "regenerated".
    pub what: &'static str,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// The signed-in token's secret: only ever sent to the service layer.
    pub token: Secret,
    /// Who that is.
    pub identity: Identity,
    /// The CSRF token of every form of this session (base64url-free hex).
    pub csrf: String,
    /// A secret waiting to be shown once.
    pub reveal: Option<Reveal>,
    created: Instant,
    last_seen: Instant,
}

/// A session's id: 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// The cookie value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 256 random bits from the operating system, as hex.
pub fn random_hex() -> Option<String> {
    let mut bytes = [0u8; ID_BYTES];
    SysRng.try_fill_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether `given` equals `expected`, in time independent of where they
/// differ.
pub fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The id of the oldest session that `pick` selects.
fn oldest_of(
    sessions: &HashMap<SessionId, Session>,
    pick: impl Fn(&Session) -> bool,
) -> Option<SessionId> {
    sessions
        .iter()
        .filter(|(_, session)| pick(session))
        .min_by_key(|(_, session)| session.created)
        .map(|(id, _)| id.clone())
}

/// The key holding the most of `keys` (the first such, in a stable order).
fn busiest<'a>(keys: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for key in keys {
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.cmp(a)))
        .map(|(key, _)| key)
}

/// The session a full store gives up: the oldest of the busiest token of
/// the namespace that holds the most sessions.
fn fair_victim(sessions: &HashMap<SessionId, Session>) -> Option<SessionId> {
    let namespace = busiest(
        sessions
            .values()
            .map(|session| session.identity.namespace.as_str()),
    )?;
    let token = busiest(
        sessions
            .values()
            .filter(|session| session.identity.namespace == namespace)
            .map(|session| session.identity.token_name.as_str()),
    )?;
    oldest_of(sessions, |session| session.identity.token_name == token)
}

/// The sessions of this process.
#[derive(Debug, Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<SessionId, Session>>>,
    config: SessionConfig,
}

impl SessionStore {
    /// An empty store.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            inner: Arc::default(),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        // A panic while holding the lock leaves plain data: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `token`; `None` if the system has no randomness.
    pub fn create(&self, token: Secret, identity: Identity) -> Option<SessionId> {
        let id = SessionId(random_hex()?);
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut sessions = self.lock();
        self.prune(&mut sessions, now);
        // The token's own oldest sessions give way to the new one.
        let mut mine: Vec<(Instant, SessionId)> = sessions
            .iter()
            .filter(|(_, session)| session.identity.token_name == identity.token_name)
            .map(|(id, session)| (session.created, id.clone()))
            .collect();
        mine.sort_by_key(|(created, _)| *created);
        let excess = (mine.len() + 1).saturating_sub(self.config.max_per_token.max(1));
        for (_, old) in mine.into_iter().take(excess) {
            sessions.remove(&old);
        }
        while sessions.len() >= self.config.max_sessions.max(1) {
            let Some(victim) = fair_victim(&sessions) else {
                break;
            };
            sessions.remove(&victim);
        }
        sessions.insert(
            id.clone(),
            Session {
                token,
                identity,
                csrf,
                reveal: None,
                created: now,
                last_seen: now,
            },
        );
        Some(id)
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.last_seen) >= self.config.idle
            || now.duration_since(session.created) >= self.config.absolute
    }

    fn prune(&self, sessions: &mut HashMap<SessionId, Session>, now: Instant) {
        sessions.retain(|_, session| !self.expired(session, now));
    }

    /// Runs `f` on the live session of cookie value `id` (marking it used);
    /// `None` if there is none (unknown, ended or expired).
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        if id.len() != 2 * ID_BYTES {
            return None;
        }
        let key = SessionId(id.to_owned());
        let now = Instant::now();
        let mut sessions = self.lock();
        let expired = self.expired(sessions.get(&key)?, now);
        if expired {
            sessions.remove(&key);
            return None;
        }
        let session = sessions.get_mut(&key)?;
        session.last_seen = now;
        Some(f(session))
    }

    /// Ends the session of cookie value `id`, if any.
    pub fn end(&self, id: &str) {
        self.lock().remove(&SessionId(id.to_owned()));
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        let mut sessions = self.lock();
        self.prune(&mut sessions, Instant::now());
        sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            token_name: "namespaces/a/apitokens/b".into(),
            uid: String::new(),
            namespace: "a".into(),
            role: Role::Owner,
        }
    }

    fn of(namespace: &str, token: &str) -> Identity {
        Identity {
            token_name: format!("namespaces/{namespace}/apitokens/{token}"),
            uid: String::new(),
            namespace: namespace.into(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn a_token_past_its_share_loses_its_own_oldest() {
        let store = SessionStore::new(SessionConfig {
            max_per_token: 2,
            ..SessionConfig::default()
        });
        let other = store
            .create(Secret::new("o"), of("a", "other"))
            .expect("id");
        let first = store.create(Secret::new("t"), identity()).expect("id");
        let second = store.create(Secret::new("t"), identity()).expect("id");
        let third = store.create(Secret::new("t"), identity()).expect("id");
        assert_eq!(store.len(), 3);
        assert!(store.with(first.as_str(), |_| ()).is_none());
        assert!(store.with(second.as_str(), |_| ()).is_some());
        assert!(store.with(third.as_str(), |_| ()).is_some());
        assert!(store.with(other.as_str(), |_| ()).is_some());
        store.end(third.as_str());
        assert!(store.with(third.as_str(), |_| ()).is_none());
    }

    #[test]
    fn a_full_store_is_paid_for_by_whoever_filled_it() {
        let store = SessionStore::new(SessionConfig {
            max_sessions: 6,
            max_per_token: 100,
            ..SessionConfig::default()
        });
        let victim = store
            .create(Secret::new("v"), of("b", "victim"))
            .expect("id");
        let neighbour = store.create(Secret::new("n"), of("c", "n")).expect("id");
        // One namespace signs in again and again, with two tokens.
        for round in 0..50 {
            let token = if round % 3 == 0 { "x" } else { "y" };
            store.create(Secret::new("a"), of("a", token)).expect("id");
            assert!(store.len() <= 6);
        }
        assert!(store.with(victim.as_str(), |_| ()).is_some());
        assert!(store.with(neighbour.as_str(), |_| ()).is_some());
        // Within the namespace, the busier token gave way: both still hold one.
        let holders = |token: &str| {
            store
                .lock()
                .values()
                .filter(|s| s.identity.token_name.ends_with(token))
                .count()
        };
        assert_eq!(holders("/x") + holders("/y"), 4);
        assert!(holders("/x") >= 1 && holders("/y") >= 1);
        // The store is full of another namespace's sessions: a newcomer
        // still signs in, and the busiest namespace pays.
        let newcomer = store.create(Secret::new("w"), of("d", "w")).expect("id");
        assert!(store.with(newcomer.as_str(), |_| ()).is_some());
        assert!(store.with(victim.as_str(), |_| ()).is_some());
    }

    #[test]
    fn idle_expiry() {
        let store = SessionStore::new(SessionConfig {
            idle: Duration::from_millis(0),
            ..SessionConfig::default()
        });
        let id = store.create(Secret::new("t"), identity()).expect("id");
        assert!(store.with(id.as_str(), |_| ()).is_none());
    }

    #[test]
    fn absolute_expiry_ends_a_session_in_use() {
        let store = SessionStore::new(SessionConfig {
            absolute: Duration::from_millis(60),
            ..SessionConfig::default()
        });
        let id = store.create(Secret::new("t"), identity()).expect("id");
        // Used every 20 ms, never idle: it still ends at 60 ms.
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(store.with(id.as_str(), |_| ()).is_some());
        }
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.with(id.as_str(), |_| ()).is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn ids_are_random_and_compared_in_full() {
        let a = random_hex().expect("random");
        let b = random_hex().expect("random");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]));
    }
}
