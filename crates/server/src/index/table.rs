//! [`TokenTable`]: every token's verification facts in a compact slab, found
//! by secret hash (current or previous), by uid and by name.
//!
//! Memory: one [`Slot`] (about 120 bytes) per token plus its id's text, and
//! three hash tables holding only 4-byte slot numbers (hashbrown's
//! `HashTable`, so a table entry is not a copy of its key): about 170 bytes
//! a token, 170 MB for a million (measured in the benchmark).
//!
//! Applying a row is idempotent and ordered by the row's `version`: an
//! older row never replaces a newer one, whichever path (this process's own
//! write, or the event log) brings it first.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use apitoken_domain::ratelimit::RateLimit;
use apitoken_domain::{Role, hash::SecretHash, name::TokenName};
use apitoken_store::{AuthRow, SecretMatch};
use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use tracing::error;

/// A time as microseconds since the epoch, `i64::MAX` for "none".
type Micros = i64;
const NONE: Micros = i64::MAX;

fn micros(time: Option<DateTime<Utc>>) -> Micros {
    time.map_or(NONE, |time| time.timestamp_micros())
}

fn time(micros: Micros) -> Option<DateTime<Utc>> {
    (micros != NONE)
        .then(|| DateTime::from_timestamp_micros(micros))
        .flatten()
}

/// A regeneration's previous secret, during its grace period.
#[derive(Debug, Clone)]
struct Previous {
    hash: SecretHash,
    until: Micros,
}

/// One token, as verification needs it.
#[derive(Debug, Clone)]
struct Slot {
    id: i64,
    uid: u128,
    namespace: Arc<str>,
    token_id: Box<str>,
    version: i64,
    secret_hash: SecretHash,
    previous: Option<Box<Previous>>,
    expire_time: Micros,
    revoke_time: Micros,
    /// `None`: the role's default.
    rate_limit: Option<RateLimit>,
    role: Role,
    interceptor: bool,
    end_grace_on_first_use: bool,
}

/// What a lookup finds: a copy of the token's facts, for use outside the
/// table's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthView {
    /// Internal row id.
    pub id: i64,
    /// The uid, as a number (see [`AuthView::uid_string`]).
    pub uid: u128,
    /// The namespace.
    pub namespace: Arc<str>,
    /// The token id (last segment of the name).
    pub token_id: Box<str>,
    /// Incremented by every change of the row.
    pub version: i64,
    /// The role.
    pub role: Role,
    /// An interceptor's token.
    pub interceptor: bool,
    /// The token's own limit; `None`: the role's default.
    pub rate_limit: Option<RateLimit>,
    /// Expiry.
    pub expire_time: Option<DateTime<Utc>>,
    /// Revocation.
    pub revoke_time: Option<DateTime<Utc>>,
    /// While a grace period runs (or ran): when the previous secret stops.
    pub previous_secret_expire_time: Option<DateTime<Utc>>,
    /// End the grace period at the first use of the current secret.
    pub end_grace_on_first_use: bool,
}

impl AuthView {
    /// The uid as stored (a hyphenated lowercase UUID).
    pub fn uid_string(&self) -> String {
        uuid::Uuid::from_u128(self.uid).hyphenated().to_string()
    }

    /// The token's name.
    pub fn name(&self) -> TokenName {
        TokenName::from_stored(&self.namespace, &self.token_id)
    }
}

/// The uid of a stored token as a number; `None` if it is not a UUID.
pub fn parse_uid(uid: &str) -> Option<u128> {
    uuid::Uuid::parse_str(uid).ok().map(|uid| uid.as_u128())
}

/// Every token's verification facts.
#[derive(Debug)]
pub struct TokenTable {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_hash: HashTable<u32>,
    by_uid: HashTable<u32>,
    by_name: HashTable<u32>,
    names: RandomState,
    namespaces: HashMap<Box<str>, Arc<str>>,
    len: usize,
}

impl Default for TokenTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

fn uid_hash(uid: u128) -> u64 {
    // UUID v4: random bits everywhere but the version nibbles.
    (uid as u64) ^ ((uid >> 64) as u64)
}

impl TokenTable {
    /// An empty table with room for `capacity` tokens.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            by_hash: HashTable::with_capacity(capacity),
            by_uid: HashTable::with_capacity(capacity),
            by_name: HashTable::with_capacity(capacity),
            names: RandomState::new(),
            namespaces: HashMap::new(),
            len: 0,
        }
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, index: u32) -> Option<&Slot> {
        self.slots.get(index as usize).and_then(Option::as_ref)
    }

    fn name_hash(&self, namespace: &str, token_id: &str) -> u64 {
        self.names.hash_one((namespace, token_id))
    }

    /// The token whose current or previous secret hashes to `hash`, and which
    /// of the two it is. Comparisons are constant-time.
    pub fn find_by_hash(&self, hash: &SecretHash) -> Option<(AuthView, SecretMatch)> {
        let entry = *self.by_hash.find(hash.table_hash(), |entry| {
            self.slot(entry >> 1).is_some_and(|slot| {
                if entry & 1 == 0 {
                    slot.secret_hash.matches(hash)
                } else {
                    slot.previous
                        .as_ref()
                        .is_some_and(|previous| previous.hash.matches(hash))
                }
            })
        })?;
        let slot = self.slot(entry >> 1)?;
        let matched = if entry & 1 == 0 {
            SecretMatch::Current
        } else {
            SecretMatch::Previous
        };
        Some((view(slot), matched))
    }

    /// The token with this uid.
    pub fn find_by_uid(&self, uid: u128) -> Option<AuthView> {
        self.uid_slot(uid)
            .and_then(|index| self.slot(index))
            .map(view)
    }

    /// The token with this name.
    pub fn find_by_name(&self, namespace: &str, token_id: &str) -> Option<AuthView> {
        let index = *self
            .by_name
            .find(self.name_hash(namespace, token_id), |index| {
                self.slot(*index).is_some_and(|slot| {
                    &*slot.namespace == namespace && &*slot.token_id == token_id
                })
            })?;
        self.slot(index).map(view)
    }

    /// Active tokens (neither revoked nor expired at `now`, in microseconds)
    /// per namespace, for metrics: one pass over the slab.
    pub fn active_by_namespace(&self, now: i64) -> HashMap<Arc<str>, u64> {
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        for slot in self.slots.iter().flatten() {
            if slot.revoke_time == NONE && slot.expire_time > now {
                *counts.entry(Arc::clone(&slot.namespace)).or_insert(0) += 1;
            }
        }
        counts
    }

    fn uid_slot(&self, uid: u128) -> Option<u32> {
        self.by_uid
            .find(uid_hash(uid), |index| {
                self.slot(*index).is_some_and(|slot| slot.uid == uid)
            })
            .copied()
    }

    /// Applies a row: inserts it, or replaces an older version of it. A row
    /// older than the one held is ignored. Returns whether anything changed.
    pub fn upsert(&mut self, row: &AuthRow) -> bool {
        let Some(uid) = parse_uid(&row.uid) else {
            error!(uid = %row.uid, "a token's uid is not a UUID: left out of the index");
            return false;
        };
        if let Some(index) = self.uid_slot(uid) {
            if self
                .slot(index)
                .is_some_and(|slot| slot.version > row.version)
            {
                return false;
            }
            self.unlink(index);
            self.slots[index as usize] = None;
            self.free.push(index);
            self.len -= 1;
        }
        // A name is unique among stored tokens: a holder with another uid was
        // purged (its event may not have arrived yet).
        let namespace = row.name.namespace().as_str();
        let token_id = row.name.token_id();
        if let Some(stale) = self.find_by_name(namespace, token_id) {
            self.remove(stale.uid);
        }
        let namespace = self.intern(namespace);
        let slot = Slot {
            id: row.id,
            uid,
            namespace,
            token_id: token_id.into(),
            version: row.version,
            secret_hash: row.secret_hash,
            previous: row.previous_secret_hash.map(|hash| {
                Box::new(Previous {
                    hash,
                    until: micros(row.previous_secret_expire_time),
                })
            }),
            expire_time: micros(row.expire_time),
            revoke_time: micros(row.revoke_time),
            rate_limit: row.rate_limit,
            role: row.role,
            interceptor: row.interceptor,
            end_grace_on_first_use: row.end_grace_on_first_use,
        };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                // Slot numbers are shifted left once in the by-hash table.
                let Some(index) = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|index| *index < u32::MAX >> 1)
                else {
                    error!("the token index is full (2 billion tokens)");
                    return false;
                };
                self.slots.push(None);
                index
            }
        };
        self.slots[index as usize] = Some(slot);
        self.link(index);
        self.len += 1;
        true
    }

    /// Forgets the token with this uid (purged). Returns whether it was held.
    pub fn remove(&mut self, uid: u128) -> bool {
        let Some(index) = self.uid_slot(uid) else {
            return false;
        };
        self.unlink(index);
        self.slots[index as usize] = None;
        self.free.push(index);
        self.len -= 1;
        true
    }

    fn intern(&mut self, namespace: &str) -> Arc<str> {
        if let Some(interned) = self.namespaces.get(namespace) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = namespace.into();
        self.namespaces
            .insert(namespace.into(), Arc::clone(&interned));
        interned
    }

    /// Adds the keys of the slot at `index` (already stored) to the tables.
    fn link(&mut self, index: u32) {
        let slots = &self.slots;
        let Some(slot) = slots[index as usize].as_ref() else {
            return;
        };
        let rehash = |entry: &u32| hash_key(slots, *entry).unwrap_or(0);
        self.by_hash
            .insert_unique(slot.secret_hash.table_hash(), index << 1, rehash);
        if let Some(previous) = &slot.previous {
            self.by_hash
                .insert_unique(previous.hash.table_hash(), (index << 1) | 1, rehash);
        }
        self.by_uid
            .insert_unique(uid_hash(slot.uid), index, |other| {
                slots[*other as usize]
                    .as_ref()
                    .map_or(0, |slot| uid_hash(slot.uid))
            });
        let names = &self.names;
        self.by_name.insert_unique(
            names.hash_one((&*slot.namespace, &*slot.token_id)),
            index,
            |other| {
                slots[*other as usize].as_ref().map_or(0, |slot| {
                    names.hash_one((&*slot.namespace, &*slot.token_id))
                })
            },
        );
    }

    /// Removes the keys of the slot at `index` from the tables.
    fn unlink(&mut self, index: u32) {
        let Some(slot) = self.slots[index as usize].as_ref() else {
            return;
        };
        let mut keys = vec![(slot.secret_hash.table_hash(), index << 1)];
        if let Some(previous) = &slot.previous {
            keys.push((previous.hash.table_hash(), (index << 1) | 1));
        }
        let uid = uid_hash(slot.uid);
        let name = self.name_hash(&slot.namespace, &slot.token_id);
        for (hash, entry) in keys {
            if let Ok(found) = self.by_hash.find_entry(hash, |other| *other == entry) {
                found.remove();
            }
        }
        if let Ok(found) = self.by_uid.find_entry(uid, |other| *other == index) {
            found.remove();
        }
        if let Ok(found) = self.by_name.find_entry(name, |other| *other == index) {
            found.remove();
        }
    }
}

/// The table hash of a by-hash entry: slot number times two, plus one for a
/// previous secret (a slot in a grace period has two entries, and a resize
/// must rehash each under its own key).
fn hash_key(slots: &[Option<Slot>], entry: u32) -> Option<u64> {
    let slot = slots.get((entry >> 1) as usize)?.as_ref()?;
    if entry & 1 == 0 {
        Some(slot.secret_hash.table_hash())
    } else {
        slot.previous
            .as_ref()
            .map(|previous| previous.hash.table_hash())
    }
}

fn view(slot: &Slot) -> AuthView {
    AuthView {
        id: slot.id,
        uid: slot.uid,
        namespace: Arc::clone(&slot.namespace),
        token_id: slot.token_id.clone(),
        version: slot.version,
        role: slot.role,
        interceptor: slot.interceptor,
        rate_limit: slot.rate_limit,
        expire_time: time(slot.expire_time),
        revoke_time: time(slot.revoke_time),
        previous_secret_expire_time: slot.previous.as_ref().and_then(|p| time(p.until)),
        end_grace_on_first_use: slot.end_grace_on_first_use,
    }
}

#[cfg(test)]
mod tests {
    use apitoken_domain::{hash::Keys, token::TokenFormat};

    use super::*;

    fn secret_hash() -> SecretHash {
        let format = TokenFormat::default();
        let secret = format
            .parse(format.generate().expect("secret"))
            .expect("well formed");
        Keys::default().hash_secret(&secret)
    }

    fn row(id: i64, token_id: &str) -> AuthRow {
        AuthRow {
            id,
            uid: uuid::Uuid::new_v4().to_string(),
            name: TokenName::from_stored("team-a", token_id),
            role: Role::Viewer,
            version: 1,
            interceptor: false,
            rate_limit: None,
            expire_time: None,
            revoke_time: None,
            secret_hash: secret_hash(),
            previous_secret_hash: None,
            previous_secret_expire_time: None,
            end_grace_on_first_use: false,
        }
    }

    #[test]
    fn finds_by_hash_uid_and_name_through_growth() {
        let mut table = TokenTable::default();
        let rows: Vec<AuthRow> = (0..5000).map(|i| row(i, &format!("tok-{i}"))).collect();
        // Every tenth token is in a grace period: two keys for one slot.
        let mut graced = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let mut row = row.clone();
            if i % 10 == 0 {
                let previous = secret_hash();
                row.previous_secret_hash = Some(previous);
                graced.push((row.uid.clone(), previous));
            }
            assert!(table.upsert(&row));
        }
        assert_eq!(table.len(), 5000);
        for row in &rows {
            let (found, matched) = table.find_by_hash(&row.secret_hash).expect("current");
            assert_eq!(found.uid_string(), row.uid);
            assert_eq!(matched, SecretMatch::Current);
            let uid = parse_uid(&row.uid).expect("uuid");
            assert_eq!(table.find_by_uid(uid).expect("uid").id, row.id);
            assert_eq!(
                table
                    .find_by_name("team-a", row.name.token_id())
                    .expect("name")
                    .id,
                row.id
            );
        }
        for (uid, previous) in &graced {
            let (found, matched) = table.find_by_hash(previous).expect("previous");
            assert_eq!(&found.uid_string(), uid);
            assert_eq!(matched, SecretMatch::Previous);
        }
        assert!(table.find_by_hash(&secret_hash()).is_none());
    }

    #[test]
    fn newer_versions_win_and_removal_forgets_every_key() {
        let mut table = TokenTable::default();
        let first = row(1, "rotating");
        table.upsert(&first);
        let mut regenerated = first.clone();
        regenerated.version = 2;
        regenerated.previous_secret_hash = Some(first.secret_hash);
        regenerated.secret_hash = secret_hash();
        assert!(table.upsert(&regenerated));
        // The old row arriving late changes nothing.
        assert!(!table.upsert(&first));
        assert_eq!(
            table.find_by_hash(&first.secret_hash).map(|(_, m)| m),
            Some(SecretMatch::Previous)
        );
        let mut revoked = regenerated.clone();
        revoked.version = 3;
        revoked.previous_secret_hash = None;
        revoked.revoke_time = Some(Utc::now());
        assert!(table.upsert(&revoked));
        assert!(
            table.find_by_hash(&first.secret_hash).is_none(),
            "grace ended"
        );
        let (view, _) = table.find_by_hash(&revoked.secret_hash).expect("held");
        assert!(view.revoke_time.is_some());
        assert!(table.remove(parse_uid(&revoked.uid).expect("uuid")));
        assert!(table.find_by_hash(&revoked.secret_hash).is_none());
        assert!(table.find_by_name("team-a", "rotating").is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn a_reused_name_replaces_the_purged_holder() {
        let mut table = TokenTable::default();
        let old = row(1, "ci");
        table.upsert(&old);
        let new = row(2, "ci");
        table.upsert(&new);
        assert_eq!(table.len(), 1);
        assert!(table.find_by_hash(&old.secret_hash).is_none());
        assert_eq!(table.find_by_name("team-a", "ci").expect("new").id, 2);
    }
}
