//! [`TokenTable`]: every token's verification facts in a compact slab, found
//! by secret hash (current or previous), by uid and by name.
//!
//! Memory: one [`Slot`] of 88 bytes per token (no pointer in it but the
//! rare [`Extra`]: the grace period's previous secret, an own rate limit;
//! secrets are recognised by the first 128 bits of their keyed hash, a
//! [`SecretTag`], the full hash staying in the database),
//! the token ids' text in one arena (no allocation per token, so loading a
//! million tokens leaves no fragmented heap behind), namespaces interned as
//! 4-byte numbers, and three hash tables holding only 4-byte slot numbers
//! (hashbrown's `HashTable`, so a table entry is not a copy of its key):
//! about 135 bytes a token with a 12-character id (the benchmark records
//! the resident memory of a server holding a million).
//!
//! Each namespace has a generation that changes with any of its tokens;
//! cached list pages ([`super::lists`]) are valid only at the generation
//! they were read at.
//!
//! Applying a row is idempotent and ordered by the row's `version`: an
//! older row never replaces a newer one, whichever path (this process's own
//! write, or the event log) brings it first.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use apitoken_domain::ratelimit::RateLimit;
use apitoken_domain::{
    Role,
    hash::{SecretHash, SecretTag},
    name::TokenName,
};
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
    hash: SecretTag,
    until: Micros,
}

/// What few tokens have, kept out of the slot.
#[derive(Debug, Clone)]
struct Extra {
    previous: Option<Previous>,
    /// `None`: the role's default.
    rate_limit: Option<RateLimit>,
}

/// Where a token id's text is in the arena.
#[derive(Debug, Clone, Copy)]
struct Text {
    start: u32,
    len: u8,
}

/// One token, as verification needs it.
#[derive(Debug, Clone)]
struct Slot {
    id: i64,
    version: i64,
    /// The uid's two halves (not a `u128`, whose 16-byte alignment would pad
    /// the slot).
    uid: [u64; 2],
    /// The secret hash's first 128 bits.
    secret_hash: SecretTag,
    expire_time: Micros,
    revoke_time: Micros,
    extra: Option<Box<Extra>>,
    /// Index into the table's namespaces.
    namespace: u32,
    token_id: Text,
    role: Role,
    interceptor: bool,
    end_grace_on_first_use: bool,
}

impl Slot {
    fn uid(&self) -> u128 {
        (u128::from(self.uid[0]) << 64) | u128::from(self.uid[1])
    }

    fn previous(&self) -> Option<&Previous> {
        self.extra
            .as_ref()
            .and_then(|extra| extra.previous.as_ref())
    }
}

fn split_uid(uid: u128) -> [u64; 2] {
    [(uid >> 64) as u64, uid as u64]
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
        uid_string(self.uid)
    }

    /// The token's name.
    pub fn name(&self) -> TokenName {
        TokenName::from_stored(&self.namespace, &self.token_id)
    }
}

/// The stored form of a uid number (the inverse of [`parse_uid`]).
pub fn uid_string(uid: u128) -> String {
    uuid::Uuid::from_u128(uid).hyphenated().to_string()
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
    /// Every namespace seen, by number; and the numbers by name.
    namespaces: Vec<Arc<str>>,
    namespace_numbers: HashMap<Arc<str>, u32>,
    /// Each namespace's generation, by number: a fresh value (from
    /// [`next_generation`]) whenever one of its tokens changes.
    generations: Vec<u64>,
    /// The token ids' text, end to end; `garbage` bytes of it belong to no
    /// slot any more (compacted when they are most of it).
    arena: String,
    garbage: usize,
    len: usize,
}

/// The arena is compacted once its garbage passes this and its live text.
const ARENA_SLACK: usize = 1 << 20;

impl Default for TokenTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// A generation never handed out before in this process (so that a table
/// rebuilt from scratch never repeats one of the table it replaces).
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
            namespaces: Vec::new(),
            namespace_numbers: HashMap::new(),
            generations: Vec::new(),
            arena: String::with_capacity(capacity.saturating_mul(16)),
            garbage: 0,
            len: 0,
        }
    }

    /// The id text of `slot`.
    fn token_id(&self, slot: &Slot) -> &str {
        text(&self.arena, slot.token_id)
    }

    /// The namespace of `slot`.
    fn namespace(&self, slot: &Slot) -> &Arc<str> {
        &self.namespaces[slot.namespace as usize]
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
                    slot.previous()
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
        Some((self.view(slot), matched))
    }

    /// The token with this uid.
    pub fn find_by_uid(&self, uid: u128) -> Option<AuthView> {
        self.uid_slot(uid)
            .and_then(|index| self.slot(index))
            .map(|slot| self.view(slot))
    }

    /// The token with this name.
    pub fn find_by_name(&self, namespace: &str, token_id: &str) -> Option<AuthView> {
        let index = self.name_slot(namespace, token_id)?;
        self.slot(index).map(|slot| self.view(slot))
    }

    fn name_slot(&self, namespace: &str, token_id: &str) -> Option<u32> {
        self.by_name
            .find(self.name_hash(namespace, token_id), |index| {
                self.slot(*index).is_some_and(|slot| {
                    **self.namespace(slot) == *namespace && self.token_id(slot) == token_id
                })
            })
            .copied()
    }

    /// Active tokens (neither revoked nor expired at `now`, in microseconds)
    /// per namespace, for metrics: one pass over the slab.
    pub fn active_by_namespace(&self, now: i64) -> HashMap<Arc<str>, u64> {
        let mut counts = vec![0u64; self.namespaces.len()];
        for slot in self.slots.iter().flatten() {
            if slot.revoke_time == NONE && slot.expire_time > now {
                counts[slot.namespace as usize] += 1;
            }
        }
        counts
            .into_iter()
            .enumerate()
            .filter(|(_, count)| *count > 0)
            .map(|(number, count)| (Arc::clone(&self.namespaces[number]), count))
            .collect()
    }

    fn uid_slot(&self, uid: u128) -> Option<u32> {
        self.by_uid
            .find(uid_hash(uid), |index| {
                self.slot(*index).is_some_and(|slot| slot.uid() == uid)
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
            self.vacate(index);
        }
        // A name is unique among stored tokens: a holder with another uid was
        // purged (its event may not have arrived yet).
        let namespace = row.name.namespace().as_str();
        let token_id = row.name.token_id();
        if let Some(stale) = self.name_slot(namespace, token_id) {
            self.vacate(stale);
        }
        let Some(token_id) = self.store_text(token_id) else {
            error!("a token id longer than 255 bytes, or the index's id text full (4 GiB)");
            return false;
        };
        let Some(namespace) = self.intern(namespace) else {
            error!("the token index is full (4 billion namespaces)");
            return false;
        };
        let previous = row.previous_secret_hash.map(|hash| Previous {
            hash: hash.tag(),
            until: micros(row.previous_secret_expire_time),
        });
        let slot = Slot {
            id: row.id,
            version: row.version,
            uid: split_uid(uid),
            secret_hash: row.secret_hash.tag(),
            expire_time: micros(row.expire_time),
            revoke_time: micros(row.revoke_time),
            extra: (previous.is_some() || row.rate_limit.is_some()).then(|| {
                Box::new(Extra {
                    previous,
                    rate_limit: row.rate_limit,
                })
            }),
            namespace,
            token_id,
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
                if self.slots.len() == self.slots.capacity() {
                    // An eighth more, not twice as many: at a million tokens,
                    // doubling would leave about 100 MB reserved for growth.
                    self.slots
                        .reserve_exact((self.slots.capacity() / 8).max(1024));
                }
                self.slots.push(None);
                index
            }
        };
        self.slots[index as usize] = Some(slot);
        self.link(index);
        self.len += 1;
        self.generations[namespace as usize] = next_generation();
        true
    }

    /// The generation of `namespace`: it changes whenever one of its tokens
    /// is inserted, changed, removed or [touched](TokenTable::touch); 0 for
    /// a namespace the table has never held a token of.
    pub fn generation(&self, namespace: &str) -> u64 {
        self.namespace_numbers
            .get(namespace)
            .map_or(0, |number| self.generations[*number as usize])
    }

    /// Marks the namespace of `uid` changed although its row's version is
    /// not (its usage figures were written).
    pub fn touch(&mut self, uid: u128) {
        if let Some(number) = self
            .uid_slot(uid)
            .and_then(|index| self.slot(index))
            .map(|slot| slot.namespace)
        {
            self.generations[number as usize] = next_generation();
        }
    }

    /// Forgets the token with this uid (purged). Returns whether it was held.
    pub fn remove(&mut self, uid: u128) -> bool {
        let Some(index) = self.uid_slot(uid) else {
            return false;
        };
        self.vacate(index);
        true
    }

    /// Empties the slot at `index` (held): its keys, its text.
    fn vacate(&mut self, index: u32) {
        self.unlink(index);
        if let Some(slot) = self.slots[index as usize].take() {
            self.garbage += usize::from(slot.token_id.len);
            self.generations[slot.namespace as usize] = next_generation();
        }
        self.free.push(index);
        self.len -= 1;
    }

    /// Appends `token_id` to the arena (compacting it first when mostly
    /// garbage). `None` past 4 GiB of text. Token ids are at most 63 bytes
    /// (validated before any write).
    fn store_text(&mut self, token_id: &str) -> Option<Text> {
        let len = u8::try_from(token_id.len()).ok()?;
        if self.garbage > ARENA_SLACK && self.garbage > self.arena.len() - self.garbage {
            self.compact();
        }
        let start = u32::try_from(self.arena.len()).ok()?;
        u32::try_from(self.arena.len() + token_id.len()).ok()?;
        self.arena.push_str(token_id);
        Some(Text { start, len })
    }

    /// Rewrites the arena with only the slots' text.
    fn compact(&mut self) {
        let live = self.arena.len() - self.garbage;
        let mut arena = String::with_capacity(live + live / 2);
        for slot in self.slots.iter_mut().flatten() {
            let start = arena.len() as u32;
            arena.push_str(text(&self.arena, slot.token_id));
            slot.token_id.start = start;
        }
        self.arena = arena;
        self.garbage = 0;
    }

    fn intern(&mut self, namespace: &str) -> Option<u32> {
        if let Some(number) = self.namespace_numbers.get(namespace) {
            return Some(*number);
        }
        let number = u32::try_from(self.namespaces.len()).ok()?;
        let interned: Arc<str> = namespace.into();
        self.namespaces.push(Arc::clone(&interned));
        self.namespace_numbers.insert(interned, number);
        self.generations.push(next_generation());
        Some(number)
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
        if let Some(previous) = slot.previous() {
            self.by_hash
                .insert_unique(previous.hash.table_hash(), (index << 1) | 1, rehash);
        }
        self.by_uid
            .insert_unique(uid_hash(slot.uid()), index, |other| {
                slots[*other as usize]
                    .as_ref()
                    .map_or(0, |slot| uid_hash(slot.uid()))
            });
        let (names, namespaces, arena) = (&self.names, &self.namespaces, &self.arena);
        let name_hash = |slot: &Slot| {
            names.hash_one((
                &*namespaces[slot.namespace as usize],
                text(arena, slot.token_id),
            ))
        };
        self.by_name.insert_unique(name_hash(slot), index, |other| {
            slots[*other as usize].as_ref().map_or(0, name_hash)
        });
    }

    /// Removes the keys of the slot at `index` from the tables.
    fn unlink(&mut self, index: u32) {
        let Some(slot) = self.slots[index as usize].as_ref() else {
            return;
        };
        let current = slot.secret_hash.table_hash();
        let previous = slot.previous().map(|previous| previous.hash.table_hash());
        let uid = uid_hash(slot.uid());
        let name = self.name_hash(self.namespace(slot), self.token_id(slot));
        let keys = [
            Some((current, index << 1)),
            previous.map(|hash| (hash, (index << 1) | 1)),
        ];
        for (hash, entry) in keys.into_iter().flatten() {
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
        slot.previous().map(|previous| previous.hash.table_hash())
    }
}

fn text(arena: &str, text: Text) -> &str {
    let start = text.start as usize;
    arena
        .get(start..start + usize::from(text.len))
        .unwrap_or_default()
}

impl TokenTable {
    fn view(&self, slot: &Slot) -> AuthView {
        AuthView {
            id: slot.id,
            uid: slot.uid(),
            namespace: Arc::clone(self.namespace(slot)),
            token_id: self.token_id(slot).into(),
            version: slot.version,
            role: slot.role,
            interceptor: slot.interceptor,
            rate_limit: slot.extra.as_ref().and_then(|extra| extra.rate_limit),
            expire_time: time(slot.expire_time),
            revoke_time: time(slot.revoke_time),
            previous_secret_expire_time: slot.previous().and_then(|p| time(p.until)),
            end_grace_on_first_use: slot.end_grace_on_first_use,
        }
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
    fn a_namespace_generation_changes_with_each_of_its_tokens_only() {
        let mut table = TokenTable::default();
        assert_eq!(table.generation("team-a"), 0, "never held");
        let first = row(1, "first");
        table.upsert(&first);
        let mut seen = vec![table.generation("team-a")];
        let mut changed = first.clone();
        changed.version = 2;
        table.upsert(&changed);
        seen.push(table.generation("team-a"));
        // An older row changes nothing, so neither does the generation.
        table.upsert(&first);
        assert_eq!(table.generation("team-a"), seen[1]);
        let uid = parse_uid(&first.uid).expect("uuid");
        table.touch(uid);
        seen.push(table.generation("team-a"));
        let mut elsewhere = row(2, "other");
        elsewhere.name = TokenName::from_stored("team-b", "other");
        table.upsert(&elsewhere);
        assert_eq!(table.generation("team-a"), seen[2], "another namespace");
        table.remove(uid);
        seen.push(table.generation("team-a"));
        seen.dedup();
        assert_eq!(seen.len(), 4, "{seen:?}");
        // A rebuilt table never repeats a generation.
        let mut rebuilt = TokenTable::default();
        rebuilt.upsert(&first);
        assert!(!seen.contains(&rebuilt.generation("team-a")));
    }

    #[test]
    fn a_slot_stays_small() {
        // The figure the module's memory budget is built on.
        assert!(
            std::mem::size_of::<Option<Slot>>() <= 88,
            "{}",
            std::mem::size_of::<Option<Slot>>()
        );
    }

    #[test]
    fn churn_compacts_the_id_text_and_keeps_every_name() {
        let mut table = TokenTable::default();
        let keep: Vec<AuthRow> = (0..100).map(|i| row(i, &format!("kept-{i}"))).collect();
        for row in &keep {
            table.upsert(row);
        }
        // Far more id text created and purged than ARENA_SLACK.
        for i in 0..60_000 {
            let row = row(1000 + i, &format!("short-lived-token-number-{i}"));
            table.upsert(&row);
            assert!(table.remove(parse_uid(&row.uid).expect("uuid")));
        }
        assert!(table.arena.len() < 2 * ARENA_SLACK, "{}", table.arena.len());
        assert_eq!(table.len(), 100);
        for row in &keep {
            let found = table
                .find_by_name("team-a", row.name.token_id())
                .expect("kept");
            assert_eq!(found.id, row.id);
            assert_eq!(&*found.token_id, row.name.token_id());
            let (by_hash, _) = table.find_by_hash(&row.secret_hash).expect("hash");
            assert_eq!(by_hash.name(), row.name);
        }
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
