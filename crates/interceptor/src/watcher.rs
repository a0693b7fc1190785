//! Following `WatchApiTokenEvents` for one accepted namespace: every event
//! drops the affected token from the cache; a fresh start (no cursor, or a
//! cursor the server no longer knows) drops the whole namespace. The time of
//! the last message tells whether the namespace's cache may be trusted.
//!
//! When apitoken refuses the watch credential itself (revoked, expired,
//! not an interceptor token of the namespace), that is not an outage to
//! retry quietly: it is logged as an error once (again when the reason
//! changes), counted, and retried slowly (`Settings::credential_retry`).

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use apitoken_domain::token::Secret;
use apitoken_proto::v1::{WatchApiTokenEventsRequest, api_token_event::Kind};
use tokio::{sync::watch, time::Instant};
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::auth::{Shared, authorized};

/// First wait before reopening a failed stream.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The event stream of one namespace, as seen by the cache.
#[derive(Debug)]
pub struct NamespaceWatch {
    namespace: String,
    credential: Secret,
    /// When the watch was made: `last_message` counts from it.
    base: Instant,
    /// Milliseconds from `base` to the last message, plus one (0: never).
    last_message: AtomicU64,
    generation: AtomicU64,
    cursor: Mutex<i64>,
    /// The last refusal of the credential, logged once.
    refused: Mutex<Option<String>>,
}

impl NamespaceWatch {
    /// The watch of `namespace`, followed with `credential`.
    pub fn new(namespace: String, credential: Secret) -> Self {
        Self {
            namespace,
            credential,
            base: Instant::now(),
            last_message: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            cursor: Mutex::new(0),
            refused: Mutex::new(None),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The credential used for this namespace's calls to apitoken.
    pub fn credential(&self) -> &Secret {
        &self.credential
    }

    /// Whether the stream spoke within `bound` of `now`.
    pub fn is_fresh(&self, now: Instant, bound: Duration) -> bool {
        self.silent_for(now).is_some_and(|silence| silence < bound)
    }

    /// How long the stream has been silent at `now`; `None` if it never
    /// spoke.
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        match self.last_message.load(Ordering::Acquire) {
            0 => None,
            millis => {
                Some(now.saturating_duration_since(self.base + Duration::from_millis(millis - 1)))
            }
        }
    }

    /// Why apitoken refuses the credential, if it does (last answer).
    pub fn credential_refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes whenever cached tokens of this namespace may have become
    /// stale; a verification that started before a change is not cached.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The last sequence received.
    pub fn cursor(&self) -> i64 {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn touch(&self) {
        let millis = u64::try_from(Instant::now().duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX - 1);
        self.last_message.store(millis + 1, Ordering::Release);
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
        crate::metrics::stream_up(&self.namespace, true);
    }

    /// Records a refusal of the credential; whether it is news (to log).
    fn refuse(&self, why: &str) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if refused.as_deref() == Some(why) {
            return false;
        }
        *refused = Some(why.to_owned());
        true
    }

    fn invalidated(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn set_cursor(&self, cursor: i64) {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = cursor;
    }
}

/// Follows the stream of namespace `index` until `stop`.
pub(crate) async fn follow(shared: Arc<Shared>, index: usize, mut stop: watch::Receiver<bool>) {
    let Some(watch) = shared.namespaces.get(index) else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let cursor = watch.cursor();
        let request = authorized(
            watch.credential(),
            WatchApiTokenEventsRequest {
                parent: format!("namespaces/{}", watch.namespace()),
                after_sequence: cursor,
            },
        );
        let mut client = shared.verifier.client();
        let opened = tokio::select! {
            opened = tokio::time::timeout(shared.settings.call_timeout, client.watch_api_token_events(request)) => opened,
            _ = stop.changed() => return,
        };
        let failure = match opened {
            Err(_) => "opening the event stream timed out".to_owned(),
            Ok(Err(status)) if credential_refused(&status) => {
                crate::metrics::stream_up(watch.namespace(), false);
                let why = refusal(&status);
                shared.stats.credential_refusals.add();
                if watch.refuse(&why) {
                    error!(
                        namespace = watch.namespace(),
                        reason = %why,
                        retry_in = ?shared.settings.credential_retry,
                        "apitoken refuses this service's credential for the namespace: its tokens cannot be trusted from the cache; give the service a valid interceptor token of the namespace"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(shared.settings.credential_retry) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Ok(Err(status)) => reset_on(&shared, watch, &status),
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                let mut first = true;
                loop {
                    // A stream silent past the staleness bound is as good as
                    // dead (heartbeats are far more frequent): reopen it.
                    let message = tokio::select! {
                        message = tokio::time::timeout(shared.settings.staleness_bound, stream.message()) => message,
                        _ = stop.changed() => return,
                    };
                    let Ok(message) = message else {
                        break "the event stream went silent".to_owned();
                    };
                    match message {
                        Ok(Some(message)) => {
                            if first && cursor == 0 {
                                // A fresh start: anything cached may predate it.
                                shared.cache.clear_namespace(watch.namespace());
                                watch.invalidated();
                                info!(
                                    namespace = watch.namespace(),
                                    sequence = message.sequence,
                                    "event stream started"
                                );
                            }
                            first = false;
                            for event in &message.events {
                                if matches!(event.kind(), Kind::ExpiryWarning | Kind::Created) {
                                    // Nothing cached about the token changed.
                                    continue;
                                }
                                let dropped = shared.cache.invalidate_uid(&event.uid);
                                watch.invalidated();
                                shared.stats.invalidations.add();
                                debug!(token = %event.api_token, kind = event.kind, dropped, "token event");
                            }
                            watch.set_cursor(message.sequence);
                            watch.touch();
                            backoff = FIRST_BACKOFF;
                        }
                        Ok(None) => break "the event stream ended".to_owned(),
                        Err(status) => break reset_on(&shared, watch, &status),
                    }
                }
            }
        };
        crate::metrics::stream_up(watch.namespace(), false);
        warn!(namespace = watch.namespace(), reason = %failure, retry_in = ?backoff, "event stream down");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(shared.settings.max_reconnect_backoff);
    }
}

/// Whether the stream was refused because of the credential itself.
fn credential_refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
}

/// The reason of a refusal, for the log: the code and the `ErrorInfo`
/// reason (never the credential).
fn refusal(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    format!("{:?} {reason}", status.code())
}

/// Handles a stream error; on `OUT_OF_RANGE` (the server does not know the
/// cursor) drops the namespace's cache and starts again from the end.
fn reset_on(shared: &Shared, watch: &NamespaceWatch, status: &tonic::Status) -> String {
    if status.code() == Code::OutOfRange {
        shared.cache.clear_namespace(watch.namespace());
        watch.invalidated();
        watch.set_cursor(0);
    }
    format!("{:?}: {}", status.code(), status.message())
}
