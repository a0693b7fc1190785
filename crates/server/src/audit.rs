//! Audit entries of requests: who (the authenticated token), from where
//! (peer address, user agent), and which request (`x-request-id` or one made
//! up, the W3C trace id of `traceparent`). Never a secret.
//!
//! What a caller sends is bounded and sanitized before it reaches the log:
//! the user agent is escaped (no control or bidirectional characters) and cut
//! to [`MAX_USER_AGENT`] characters; an `x-request-id` is kept only if it is
//! 1 to [`MAX_REQUEST_ID`] characters of `[A-Za-z0-9._:-]`, otherwise the
//! server makes one up.

use std::{collections::BTreeMap, sync::OnceLock};

use apitoken_domain::{
    Principal,
    audit::Action,
    input::{MAX_REQUEST_ID, MAX_USER_AGENT, escape, truncate},
};
use apitoken_proto::v1;
use apitoken_store::{AuditEntry, AuditRecord};
use chrono::{DateTime, Utc};
use tonic::Request;

use crate::convert::timestamp;

/// Where a request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// Peer address.
    pub peer_address: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`, or the server's id of the request (the one its log
    /// lines carry, [`crate::telemetry::ServerRequestId`]), or one made up
    /// the first time an entry needs it.
    request_id: OnceLock<String>,
    /// The server's id of the request, when the layer gave it one.
    server_request_id: Option<std::sync::Arc<str>>,
    /// The trace id of `traceparent`.
    pub trace_id: Option<String>,
}

impl RequestContext {
    /// The context of `request` from `client` (its address, see
    /// [`crate::peer`]).
    pub fn of<T>(request: &Request<T>, client: Option<std::net::IpAddr>) -> Self {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let server_request_id = request
            .extensions()
            .get::<crate::telemetry::ServerRequestId>()
            .map(|id| std::sync::Arc::clone(&id.0));
        let request_id = header("x-request-id")
            .filter(|id| is_request_id(id))
            .map(str::to_owned)
            .or_else(|| server_request_id.as_deref().map(str::to_owned));
        Self {
            peer_address: client.map(|ip| ip.to_string()),
            user_agent: header("user-agent").map(|agent| escape(truncate(agent, MAX_USER_AGENT))),
            request_id: request_id.map(OnceLock::from).unwrap_or_default(),
            server_request_id,
            trace_id: header("traceparent").and_then(trace_id),
        }
    }

    /// The same context with the server's request id, for entries about
    /// callers that did not authenticate (they choose no field of an audit
    /// entry but their user agent, escaped and bounded).
    pub fn without_caller_request_id(mut self) -> Self {
        self.request_id = self
            .server_request_id
            .as_deref()
            .map(|id| OnceLock::from(id.to_owned()))
            .unwrap_or_default();
        self
    }

    /// A context for what a rule does, outside any request.
    pub fn rule() -> Self {
        Self::default()
    }

    /// The request id: `x-request-id`, or one made up once.
    pub fn request_id(&self) -> &str {
        self.request_id.get_or_init(uuid_like)
    }

    /// An audit entry of `action` on `resource` by `actor`.
    pub fn entry(
        &self,
        namespace: &str,
        action: Action,
        actor: Actor<'_>,
        resource: String,
        time: DateTime<Utc>,
    ) -> AuditEntry {
        let (actor, actor_uid) = match actor {
            Actor::Token(principal) => (principal.name.to_string(), Some(principal.uid.clone())),
            Actor::Named(name) => (name.to_owned(), None),
        };
        AuditEntry {
            namespace: namespace.to_owned(),
            time,
            action,
            actor,
            actor_uid,
            resource,
            resource_uid: None,
            peer_address: self.peer_address.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id().to_owned(),
            trace_id: self.trace_id.clone(),
            details: BTreeMap::new(),
        }
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A token.
    Token(&'a Principal),
    /// `bootstrap`, `rule:inactivity`, ...
    Named(&'a str),
}

/// Whether a caller's `x-request-id` may be kept as it is.
pub(crate) fn is_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The trace id (second field) of a W3C `traceparent`.
pub(crate) fn trace_id(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The wire form of an audit record.
pub fn audit_event(record: &AuditRecord) -> v1::AuditEvent {
    let entry = &record.entry;
    v1::AuditEvent {
        name: format!("namespaces/{}/auditEvents/{}", entry.namespace, record.id),
        event_time: Some(timestamp(entry.time)),
        action: entry.action.to_proto().into(),
        actor: entry.actor.clone(),
        actor_uid: entry.actor_uid.clone().unwrap_or_default(),
        resource: entry.resource.clone(),
        resource_uid: entry.resource_uid.clone().unwrap_or_default(),
        peer_address: entry.peer_address.clone().unwrap_or_default(),
        user_agent: entry.user_agent.clone().unwrap_or_default(),
        request_id: entry.request_id.clone(),
        trace_id: entry.trace_id.clone().unwrap_or_default(),
        details: entry.details.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn caller_headers_are_bounded_and_sanitized() {
        let mut request = Request::new(());
        let metadata = request.metadata_mut();
        metadata.insert("user-agent", "a".repeat(5000).parse().expect("ascii"));
        metadata.insert("x-request-id", "id with spaces".parse().expect("ascii"));
        let context = RequestContext::of(&request, None);
        assert_eq!(
            context.user_agent.as_deref().map(str::len),
            Some(MAX_USER_AGENT)
        );
        assert_ne!(context.request_id(), "id with spaces");
        assert!(
            is_request_id(context.request_id()),
            "{}",
            context.request_id()
        );
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("x-request-id", "req-42.a:b_c".parse().expect("ascii"));
        assert_eq!(
            RequestContext::of(&request, None).request_id(),
            "req-42.a:b_c"
        );
        assert!(!is_request_id(&"x".repeat(MAX_REQUEST_ID + 1)));
    }
}
