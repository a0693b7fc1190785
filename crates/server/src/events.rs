//! The token event stream (`WatchApiTokenEvents`) and the expiry sweeper.
//!
//! Events are rows of `api_token_events`, appended in the same transaction
//! as the change they describe. The index's follower reads the log once for
//! the whole process ([`crate::index`]) and keeps the recent events in
//! memory; a stream sends the events after its cursor from there (from the
//! database only when its cursor is older than what memory holds), and is
//! woken each time the follower advances. So an up-to-date stream costs no
//! query, however many are open. With nothing to send, a heartbeat carrying
//! the cursor goes out every `heartbeat_interval`, so the watcher can tell a
//! quiet stream from a dead one. The stream ends with `UNAVAILABLE` when the
//! server shuts down, and with `UNAUTHENTICATED` when the watcher's own token
//! stops being valid. Streams are capped per token and per process.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use apitoken_domain::{AuthFailure, Error, TokenState, clock::SharedClock, name::TokenName};

use crate::index::TokenIndex;
use apitoken_proto::v1::{ApiTokenEvent, WatchApiTokenEventsResponse};
use apitoken_store::{EventRecord, TokenStore};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;
use tracing::{info, warn};

use crate::convert::timestamp;

/// Most events in one stream message.
const BATCH: usize = 500;

/// The stream type of `WatchApiTokenEvents`.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<WatchApiTokenEventsResponse, Status>> + Send>>;

/// Timing of event delivery, and how many streams may be open.
#[derive(Debug, Clone, Copy)]
pub struct EventTiming {
    /// Most streams open at once with one token (a fleet of replicas of one
    /// service may share a watch token).
    pub max_streams_per_token: usize,
    /// Most streams open at once in this process.
    pub max_streams: usize,
    /// How often watchers look for events committed by other replicas.
    pub poll_interval: Duration,
    /// How often a quiet stream sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How often expired tokens are looked for.
    pub expiry_sweep_interval: Duration,
}

impl Default for EventTiming {
    fn default() -> Self {
        Self {
            max_streams_per_token: 64,
            max_streams: 10_000,
            poll_interval: Duration::from_millis(250),
            heartbeat_interval: Duration::from_secs(2),
            expiry_sweep_interval: Duration::from_secs(1),
        }
    }
}

/// Shared by the handlers that append events and the streams that deliver them.
#[derive(Debug)]
pub struct EventHub {
    store: TokenStore,
    index: Arc<TokenIndex>,
    clock: SharedClock,
    stopping: watch::Receiver<bool>,
    timing: EventTiming,
    /// Open streams per watcher uid (entries leave at zero).
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// A slot among the open streams; released when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    watcher: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.watcher) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.watcher);
            }
        }
    }
}

impl EventHub {
    /// A hub over `store`; streams end when `stopping` turns true.
    pub fn new(
        store: TokenStore,
        index: Arc<TokenIndex>,
        clock: SharedClock,
        stopping: watch::Receiver<bool>,
        timing: EventTiming,
    ) -> Self {
        Self {
            store,
            index,
            clock,
            stopping,
            timing,
            open: Arc::default(),
        }
    }

    /// Reserves a stream for the watcher token `uid`, or refuses
    /// (`RESOURCE_EXHAUSTED` naming the limit) when it, or the process, has
    /// as many open as allowed.
    pub fn reserve(&self, uid: &str, watcher: &TokenName) -> Result<StreamSlot, Error> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let mine = open.get(uid).copied().unwrap_or(0);
        if mine >= self.timing.max_streams_per_token {
            return Err(Error::ResourceExhausted {
                subject: watcher.to_string(),
                description: format!(
                    "{watcher} already has {mine} event streams open, the most one token may (--max-streams-per-token): close some first"
                ),
                retry_after: None,
            });
        }
        if total >= self.timing.max_streams {
            return Err(Error::ResourceExhausted {
                subject: "event streams".to_owned(),
                description: format!(
                    "this server already has {total} event streams open, its limit: retry later or on another replica"
                ),
                retry_after: Some(Duration::from_secs(5)),
            });
        }
        *open.entry(uid.to_owned()).or_insert(0) += 1;
        Ok(StreamSlot {
            open: Arc::clone(&self.open),
            watcher: uid.to_owned(),
        })
    }

    /// How many event streams are open.
    pub fn open_streams(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }

    /// An event was appended in this process: have the follower read it
    /// now (it then wakes the streams).
    pub fn appended(&self) {
        self.index.nudge();
    }

    /// Where a new stream starts: after `after_sequence`, or at the end of
    /// the log for 0. A cursor beyond the end is `OUT_OF_RANGE` (the log was
    /// reset: the watcher must drop its cache).
    pub async fn start(&self, after_sequence: i64) -> Result<i64, Error> {
        if after_sequence < 0 {
            return Err(Error::invalid("after_sequence", "must not be negative"));
        }
        let end = self.store.last_event_sequence().await?;
        if after_sequence > 0 && after_sequence < self.store.events_pruned_through().await? {
            return Err(Error::OutOfRange(format!(
                "events after {after_sequence} were pruned (older than the event retention): drop cached tokens and start from 0"
            )));
        }
        if after_sequence > end {
            return Err(Error::OutOfRange(format!(
                "after_sequence {after_sequence} is beyond the end of the event log ({end}): drop cached tokens and start from 0"
            )));
        }
        Ok(if after_sequence == 0 {
            end
        } else {
            after_sequence
        })
    }

    /// The stream of `namespace`'s events after `cursor`, for `watcher`.
    pub fn stream(
        self: &Arc<Self>,
        namespace: String,
        cursor: i64,
        watcher: u128,
        slot: StreamSlot,
    ) -> EventStream {
        let (sender, receiver) = mpsc::channel(16);
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(status) = hub.deliver(&namespace, cursor, watcher, &sender).await {
                let _ = sender.send(Err(status)).await;
            }
        });
        Box::pin(ReceiverStream::new(receiver))
    }

    async fn deliver(
        &self,
        namespace: &str,
        mut cursor: i64,
        watcher: u128,
        sender: &mpsc::Sender<Result<WatchApiTokenEventsResponse, Status>>,
    ) -> Result<(), Status> {
        let mut stopping = self.stopping.clone();
        let mut advanced = self.index.subscribe();
        let send = |response| async move { sender.send(Ok(response)).await.is_ok() };
        if !send(heartbeat(cursor)).await {
            return Ok(());
        }
        let mut last_sent = tokio::time::Instant::now();
        loop {
            if *stopping.borrow() {
                return Err(Status::unavailable(
                    "server shutting down: reconnect with after_sequence",
                ));
            }
            advanced.borrow_and_update();
            // `live`: from memory, as they happen (a replay from the log is
            // not lag).
            let (events, through, live) = match self.index.recent_events(namespace, cursor, BATCH) {
                Some(recent) => (recent.events, recent.through, true),
                None => {
                    // Older than what memory holds: read the log.
                    let events = self
                        .store
                        .events_after(namespace, cursor, BATCH as u64)
                        .await?;
                    let through = events.last().map_or(cursor, |event| event.sequence);
                    (events, through, false)
                }
            };
            if let Some(last) = events.last() {
                cursor = last.sequence;
                if live {
                    let lag = (self.clock.now() - last.event_time)
                        .to_std()
                        .unwrap_or_default();
                    metrics::histogram!(crate::metrics::names::EVENT_DELIVERY_LAG)
                        .record(lag.as_secs_f64());
                }
                let response = WatchApiTokenEventsResponse {
                    events: events.iter().map(api_token_event).collect(),
                    sequence: cursor,
                };
                if !send(response).await {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            // Nothing of this namespace up to `through`: resume from there.
            cursor = cursor.max(through);
            if last_sent.elapsed() >= self.timing.heartbeat_interval {
                self.check_watcher(watcher)?;
                if !send(heartbeat(cursor)).await {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
            }
            let next_heartbeat = last_sent + self.timing.heartbeat_interval;
            tokio::select! {
                _ = advanced.changed() => {}
                () = tokio::time::sleep_until(next_heartbeat) => {}
                _ = stopping.changed() => {}
                () = sender.closed() => return Ok(()),
            }
        }
    }

    /// Ends the stream when the watcher's own token is no longer valid.
    fn check_watcher(&self, watcher: u128) -> Result<(), Status> {
        let view = self
            .index
            .by_uid(watcher)
            .ok_or(Error::Unauthenticated(AuthFailure::Invalid))?;
        match TokenState::at(view.revoke_time, view.expire_time, self.clock.now()) {
            TokenState::Active => Ok(()),
            TokenState::Expired => Err(Error::Unauthenticated(AuthFailure::Expired).into()),
            TokenState::Revoked => Err(Error::Unauthenticated(AuthFailure::Revoked).into()),
        }
    }

    /// Appends `Expired` events for tokens past their expiry, every
    /// `expiry_sweep_interval`, until `stopping`.
    pub fn spawn_expiry_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut stopping = hub.stopping.clone();
            let mut ticker = tokio::time::interval(hub.timing.expiry_sweep_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopping.changed() => return,
                }
                match hub.store.sweep_expired(hub.clock.now(), BATCH as u64).await {
                    Ok(expired) if !expired.is_empty() => {
                        for record in &expired {
                            info!(token = %record.name, "token expired");
                        }
                        hub.appended();
                    }
                    Ok(_) => {}
                    Err(error) => warn!(error = %error, "expiry sweep failed; will retry"),
                }
            }
        })
    }
}

fn heartbeat(sequence: i64) -> WatchApiTokenEventsResponse {
    WatchApiTokenEventsResponse {
        events: Vec::new(),
        sequence,
    }
}

fn api_token_event(event: &EventRecord) -> ApiTokenEvent {
    ApiTokenEvent {
        sequence: event.sequence,
        kind: event.kind.to_proto().into(),
        api_token: event.name.to_string(),
        uid: event.uid.clone(),
        event_time: Some(timestamp(event.event_time)),
    }
}
