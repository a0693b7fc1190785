//! Server-side sessions: a random 256-bit id in a cookie, the signed-in
//! token held only in this process's memory.
//!
//! A session ends at sign out, after [`SessionConfig::idle`] without a
//! request, after [`SessionConfig::absolute`] whatever happens, or when the
//! store is full and it is the oldest ([`SessionConfig::max_sessions`]).
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
    /// Most sessions at once; signing in beyond it ends the oldest.
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(8 * 60 * 60),
            max_sessions: 1000,
        }
    }
}

/// Who is signed in, as `VerifyApiToken` said at sign-in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `namespaces/<ns>/apitokens/<id>`.
    pub token_name: String,
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
        while sessions.len() >= self.config.max_sessions.max(1) {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, session)| session.created)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => sessions.remove(&oldest),
                None => break,
            };
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
            namespace: "a".into(),
            role: Role::Owner,
        }
    }

    #[test]
    fn bounded_and_oldest_evicted() {
        let store = SessionStore::new(SessionConfig {
            max_sessions: 2,
            ..SessionConfig::default()
        });
        let first = store.create(Secret::new("t1"), identity()).expect("id");
        let second = store.create(Secret::new("t2"), identity()).expect("id");
        let third = store.create(Secret::new("t3"), identity()).expect("id");
        assert_eq!(store.len(), 2);
        assert!(store.with(first.as_str(), |_| ()).is_none());
        assert!(store.with(second.as_str(), |_| ()).is_some());
        assert!(store.with(third.as_str(), |_| ()).is_some());
        store.end(third.as_str());
        assert!(store.with(third.as_str(), |_| ()).is_none());
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
