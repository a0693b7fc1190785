//! The audit log: a scripted sequence of actions, failures included, must
//! leave exactly the expected trail; ListAuditEvents filters, pages and
//! checks its caller.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use apitoken_domain::Role;
use apitoken_server::limits::Limits;
use apitoken_tests::{
    Backend, NAMESPACE, Options, TestServer, authed, bad_fields, generous_limits,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListAuditEventsRequest,
        RegenerateApiTokenRequest, RevokeApiTokenRequest, UpdateApiTokenRequest,
        audit_event::Action,
    },
};
use prost::Message;
use tonic::{Code, Request};

macro_rules! audit_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(apitoken_tests::Backend::Sqlite).await; } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] #[cfg_attr(not(apitoken_postgres), ignore = "PostgreSQL variant: set APITOKEN_TEST_POSTGRES_URL (then cargo rebuilds the tests)")] async fn $name() { super::$name(apitoken_tests::Backend::Postgres).await; } )* }
    };
}

audit_tests!(
    a_scripted_sequence_leaves_exactly_its_trail,
    the_log_filters_pages_and_is_for_owners
);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// `message` from the owner with request id `id`, a user agent and a trace.
fn scripted<T>(secret: &str, id: &str, message: T) -> Request<T> {
    let mut request = authed(secret, message);
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", id.parse().unwrap());
    metadata.insert("user-agent", "scripted-test/1.0".parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{TRACE}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    request
}

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

async fn trail(server: &TestServer, filter: &str) -> Vec<v1::AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .client()
            .await
            .list_audit_events(authed(
                &server.owner,
                ListAuditEventsRequest {
                    parent: format!("namespaces/{NAMESPACE}"),
                    filter: filter.into(),
                    page_size: 2,
                    page_token,
                },
            ))
            .await
            .expect("audit")
            .into_inner();
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

async fn a_scripted_sequence_leaves_exactly_its_trail(backend: Backend) {
    let limits = Limits {
        failed_auth_limit: apitoken_domain::ratelimit::RateLimit::per_minute(3),
        ..generous_limits()
    };
    let Some(server) = TestServer::start_with(
        backend,
        Options {
            limits,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let mut client = server.client().await;
    let owner = server.owner.clone();

    // 1. create, 2. update, 3. regenerate with grace, 4. a grace beyond the
    // policy (refused), 5. a viewer's create (denied: not a change, not
    // audited), 6. revoke, 7. a burst of failed authentications.
    let created = client
        .create_api_token(scripted(
            &owner,
            "req-1",
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "scripted".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Editor.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    client
        .update_api_token(scripted(
            &owner,
            "req-2",
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("scripted"),
                    description: "audited".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect("update");
    let regenerated = client
        .regenerate_api_token(scripted(
            &owner,
            "req-3",
            RegenerateApiTokenRequest {
                name: name("scripted"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                end_grace_on_first_use: false,
            },
        ))
        .await
        .expect("regenerate")
        .into_inner();
    let status = client
        .regenerate_api_token(scripted(
            &owner,
            "req-4",
            RegenerateApiTokenRequest {
                name: name("scripted"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: 30 * 86_400,
                    nanos: 0,
                }),
                end_grace_on_first_use: false,
            },
        ))
        .await
        .expect_err("beyond the maximum grace");
    assert_eq!(bad_fields(&status), ["previous_secret_ttl"]);
    let (_, viewer) = server.create("a-viewer", Role::Viewer).await;
    let status = client
        .create_api_token(scripted(
            &viewer,
            "req-5",
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "escalation".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Owner.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect_err("viewer cannot create");
    assert_eq!(status.code(), Code::PermissionDenied);
    client
        .revoke_api_token(scripted(
            &owner,
            "req-6",
            RevokeApiTokenRequest {
                name: name("scripted"),
            },
        ))
        .await
        .expect("revoke");
    // The revoked token keeps trying: a burst, audited in its namespace
    // (a known token's) with a request id the caller did not choose.
    for attempt in 0..3 {
        client
            .get_api_token(scripted(
                &regenerated.secret,
                &format!("req-7-{attempt}"),
                GetApiTokenRequest {
                    name: name("scripted"),
                },
            ))
            .await
            .expect_err("revoked token");
    }
    // Good tokens keep working from the throttled address.
    server.clock.advance(chrono::Duration::seconds(1));

    let events = trail(&server, "").await;
    let summary: Vec<(Action, &str, &str, &str)> = events
        .iter()
        .map(|event| {
            (
                event.action(),
                event.actor.as_str(),
                event.resource.as_str(),
                event.request_id.as_str(),
            )
        })
        .collect();
    let owner_name = name("bootstrap-owner");
    let target = name("scripted");
    let burst_id = summary
        .iter()
        .find(|(action, ..)| *action == Action::AuthFailureBurst)
        .map(|(.., id)| *id)
        .expect("the burst is audited");
    assert!(!burst_id.starts_with("req-"), "{burst_id}");
    let expected = [
        (
            Action::AuthFailureBurst,
            "unauthenticated",
            target.as_str(),
            burst_id,
        ),
        (
            Action::Revoke,
            owner_name.as_str(),
            target.as_str(),
            "req-6",
        ),
        (
            Action::PolicyRefusal,
            owner_name.as_str(),
            target.as_str(),
            "req-4",
        ),
        (
            Action::Regenerate,
            owner_name.as_str(),
            target.as_str(),
            "req-3",
        ),
        (
            Action::Update,
            owner_name.as_str(),
            target.as_str(),
            "req-2",
        ),
        (
            Action::Create,
            owner_name.as_str(),
            target.as_str(),
            "req-1",
        ),
    ];
    // The viewer's own creation (by the harness) sits between; leave it out
    // of the comparison but check it is there.
    let scripted_only: Vec<_> = summary
        .iter()
        .filter(|(_, _, resource, _)| *resource != name("a-viewer"))
        .filter(|(_, actor, resource, _)| {
            !(*actor == "bootstrap" || resource.ends_with("/bootstrap-owner"))
        })
        .copied()
        .collect();
    assert_eq!(scripted_only, expected);
    assert!(
        summary
            .iter()
            .any(|(action, _, resource, _)| *action == Action::Create
                && *resource == name("a-viewer"))
    );
    assert!(
        summary
            .iter()
            .any(|(action, actor, resource, _)| *action == Action::Create
                && *actor == "bootstrap"
                && *resource == owner_name),
        "the bootstrap token's creation is audited too"
    );
    assert!(
        summary.iter().all(|(_, _, _, id)| *id != "req-5"),
        "a denied call changes nothing and is not audited"
    );

    // Who, from where, which request: on every request-driven entry.
    for event in events
        .iter()
        .filter(|event| event.request_id.starts_with("req-"))
    {
        assert_eq!(event.peer_address, "127.0.0.1", "{event:?}");
        assert_eq!(
            event.user_agent.split(' ').next(),
            Some("scripted-test/1.0"),
            "{event:?}"
        );
        assert_eq!(event.trace_id, TRACE, "{event:?}");
        assert!(event.event_time.is_some());
        assert!(event.name.starts_with("namespaces/team-a/auditEvents/"));
    }
    let create = events
        .iter()
        .find(|event| event.request_id == "req-1")
        .expect("create");
    assert_eq!(
        create.resource_uid,
        created.api_token.as_ref().expect("token").uid
    );
    assert!(!create.actor_uid.is_empty());
    assert_eq!(
        create.details.get("role").map(String::as_str),
        Some("editor")
    );
    let update = events
        .iter()
        .find(|event| event.request_id == "req-2")
        .expect("update");
    assert_eq!(
        update.details.get("fields").map(String::as_str),
        Some("description")
    );
    let regenerate = events
        .iter()
        .find(|event| event.request_id == "req-3")
        .expect("regenerate");
    assert!(
        regenerate
            .details
            .contains_key("previous_secret_expire_time")
    );
    let refusal = events
        .iter()
        .find(|event| event.request_id == "req-4")
        .expect("refusal");
    assert_eq!(
        refusal.details.get("field").map(String::as_str),
        Some("previous_secret_ttl")
    );
    let burst = &events[0];
    assert_eq!(
        burst.details.get("address").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(burst.peer_address, "127.0.0.1");
    assert_eq!(
        burst.resource_uid,
        created.api_token.as_ref().expect("token").uid
    );

    // Never a secret.
    let encoded: Vec<u8> = events.iter().flat_map(Message::encode_to_vec).collect();
    for secret in [&created.secret, &regenerated.secret, &owner, &viewer] {
        let body = &secret["apitoken_".len() + 4..];
        assert!(
            !encoded
                .windows(body.len())
                .any(|window| window == body.as_bytes()),
            "a secret in the audit log"
        );
    }
}

async fn the_log_filters_pages_and_is_for_owners(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut client = server.client().await;
    for id in ["one", "two", "three"] {
        server.create(id, Role::Viewer).await;
    }
    client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: name("two") },
        ))
        .await
        .expect("revoke");
    let revokes = trail(&server, "action = ACTION_REVOKE").await;
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].resource, name("two"));
    let about_one = trail(&server, &format!("resource = \"{}\"", name("one"))).await;
    assert_eq!(about_one.len(), 1);
    assert_eq!(about_one[0].action(), Action::Create);
    // Newest first, across pages of two.
    let all = trail(&server, "").await;
    assert!(all.len() >= 5);
    let ids: Vec<i64> = all
        .iter()
        .map(|event| event.name.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "{ids:?}");
    // Time range: nothing after now + 1 h, everything since an hour ago.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert!(
        trail(&server, &format!("event_time >= \"{later}\""))
            .await
            .is_empty()
    );
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        trail(&server, &format!("event_time >= \"{earlier}\""))
            .await
            .len(),
        all.len()
    );
    // Owners only, own namespace only, valid filters only.
    let (_, editor) = server.create("an-editor", Role::Editor).await;
    let request = |parent: &str, filter: &str| ListAuditEventsRequest {
        parent: parent.into(),
        filter: filter.into(),
        ..Default::default()
    };
    let status = client
        .list_audit_events(authed(&editor, request("namespaces/team-a", "")))
        .await
        .expect_err("editor");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .list_audit_events(authed(
            &server.other_owner,
            request("namespaces/team-a", ""),
        ))
        .await
        .expect_err("other namespace");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .list_audit_events(authed(
            &server.owner,
            request("namespaces/team-a", "action = ACTION_NAP"),
        ))
        .await
        .expect_err("bad filter");
    assert_eq!(bad_fields(&status), ["filter"]);
}
