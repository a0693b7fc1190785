//! ListApiTokens: newest first, pagination across pages, unforgeable page
//! tokens, page size rules, filters on role and state, and pages asked
//! again (served from the page cache) showing every change at once.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, OTHER_NAMESPACE, TestServer, authed, backend_tests, bad_fields, in_seconds,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
        ListApiTokensResponse, RevokeApiTokenRequest, UpdateApiTokenRequest,
    },
};
use tonic::Code;

backend_tests!(
    pages_cover_every_token_once_newest_first,
    page_tokens_cannot_cross_namespaces_or_queries,
    page_size_rules,
    filters_on_role_and_state,
    a_page_asked_again_shows_every_change_at_once,
);

fn request(parent: &str) -> ListApiTokensRequest {
    ListApiTokensRequest {
        parent: parent.to_owned(),
        ..Default::default()
    }
}

async fn list(
    server: &TestServer,
    secret: &str,
    request: ListApiTokensRequest,
) -> ListApiTokensResponse {
    server
        .client()
        .await
        .list_api_tokens(authed(secret, request))
        .await
        .expect("list")
        .into_inner()
}

async fn pages_cover_every_token_once_newest_first(server: TestServer) {
    for i in 0..23 {
        server.create(&format!("token-{i:03}"), Role::Viewer).await;
    }
    let parent = format!("namespaces/{NAMESPACE}");
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let response = list(
            &server,
            &server.owner,
            ListApiTokensRequest {
                page_size: 10,
                page_token: page_token.clone(),
                ..request(&parent)
            },
        )
        .await;
        pages += 1;
        assert!(response.api_tokens.len() <= 10);
        seen.extend(response.api_tokens.into_iter().map(|t| t.name));
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    // 23 created + the bootstrap owner = 24 tokens: pages of 10, 10, 4.
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 24);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        24,
        "no token twice"
    );
    let expected: Vec<String> = (0..23)
        .rev()
        .map(|i| format!("namespaces/{NAMESPACE}/apitokens/token-{i:03}"))
        .chain([format!("namespaces/{NAMESPACE}/apitokens/bootstrap-owner")])
        .collect();
    assert_eq!(seen, expected, "newest first");

    // Default page size is 50: everything on one page here.
    let all = list(&server, &server.owner, request(&parent)).await;
    assert_eq!(all.api_tokens.len(), 24);
    assert!(all.next_page_token.is_empty());
}

async fn page_tokens_cannot_cross_namespaces_or_queries(server: TestServer) {
    for i in 0..3 {
        server.create(&format!("mine-{i}"), Role::Viewer).await;
        server
            .create_in(
                OTHER_NAMESPACE,
                &server.other_owner,
                &format!("theirs-{i}"),
                Role::Viewer,
            )
            .await;
    }
    let mine = format!("namespaces/{NAMESPACE}");
    let theirs = format!("namespaces/{OTHER_NAMESPACE}");
    let first = list(
        &server,
        &server.owner,
        ListApiTokensRequest {
            page_size: 1,
            ..request(&mine)
        },
    )
    .await;
    assert!(!first.next_page_token.is_empty());
    let mut client = server.client().await;
    // team-b's owner replays team-a's page token against team-b, and
    // team-a's token is replayed with another filter: both refused.
    for (secret, replay) in [
        (
            &server.other_owner,
            ListApiTokensRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..request(&theirs)
            },
        ),
        (
            &server.owner,
            ListApiTokensRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
                filter: "role = ROLE_VIEWER".into(),
                ..request(&mine)
            },
        ),
        (
            &server.owner,
            ListApiTokensRequest {
                page_size: 1,
                page_token: "bm90IGEgdG9rZW4".into(),
                ..request(&mine)
            },
        ),
    ] {
        let status = client
            .list_api_tokens(authed(secret, replay))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), ["page_token"]);
    }
    // The page token is opaque: it does not spell out a namespace or an id.
    assert!(!first.next_page_token.contains("team"));
}

async fn page_size_rules(server: TestServer) {
    let parent = format!("namespaces/{NAMESPACE}");
    let status = server
        .client()
        .await
        .list_api_tokens(authed(
            &server.owner,
            ListApiTokensRequest {
                page_size: -1,
                ..request(&parent)
            },
        ))
        .await
        .expect_err("negative");
    assert_eq!(bad_fields(&status), ["page_size"]);
    // Above the maximum: lowered to 1000, not refused.
    let response = list(
        &server,
        &server.owner,
        ListApiTokensRequest {
            page_size: 5000,
            ..request(&parent)
        },
    )
    .await;
    assert_eq!(response.api_tokens.len(), 1);
}

async fn filters_on_role_and_state(server: TestServer) {
    let mut client = server.client().await;
    server.create("viewer-1", Role::Viewer).await;
    server.create("editor-1", Role::Editor).await;
    server.create("editor-2", Role::Editor).await;
    server.create("revoked-1", Role::Editor).await;
    client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: format!("namespaces/{NAMESPACE}/apitokens/revoked-1"),
            },
        ))
        .await
        .expect("revoke");
    client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "expiring-1".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    expire_time: Some(in_seconds(&server, 10)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create");
    server.clock.advance(chrono::Duration::seconds(11));

    let parent = format!("namespaces/{NAMESPACE}");
    let ids = |response: ListApiTokensResponse| {
        let mut ids: Vec<String> = response
            .api_tokens
            .into_iter()
            .map(|t| t.name.rsplit('/').next().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let filtered = |filter: &str, show_revoked: bool| ListApiTokensRequest {
        filter: filter.into(),
        show_revoked,
        ..request(&parent)
    };
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("role = ROLE_EDITOR", false)
        )
        .await),
        ["editor-1", "editor-2"]
    );
    assert_eq!(
        ids(list(&server, &server.owner, filtered("role = ROLE_EDITOR", true)).await),
        ["editor-1", "editor-2", "revoked-1"]
    );
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("state = STATE_EXPIRED", false)
        )
        .await),
        ["expiring-1"]
    );
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("state = STATE_REVOKED", false)
        )
        .await),
        ["revoked-1"]
    );
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("state = active AND role != owner", false)
        )
        .await),
        ["editor-1", "editor-2", "viewer-1"]
    );
    // `!=` holds for a token with no expiry (no SQL NULL swallows it).
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("state != STATE_EXPIRED AND role = editor", true)
        )
        .await),
        ["editor-1", "editor-2", "revoked-1"]
    );
    assert_eq!(
        ids(list(
            &server,
            &server.owner,
            filtered("state != STATE_ACTIVE AND role != owner", true)
        )
        .await),
        ["expiring-1", "revoked-1"]
    );
    let status = client
        .list_api_tokens(authed(&server.owner, filtered("colour = blue", false)))
        .await
        .expect_err("bad filter");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["filter"]);
}

/// The page cache (a page asked again is served from memory) never shows a
/// page older than the last change: an update, a revocation, a creation and
/// written usage each show on the very next call, filtered or not.
async fn a_page_asked_again_shows_every_change_at_once(server: TestServer) {
    let mut client = server.client().await;
    let (_, viewer) = server.create("viewer-1", Role::Viewer).await;
    server.create("editor-1", Role::Editor).await;
    let parent = format!("namespaces/{NAMESPACE}");
    let editors = || ListApiTokensRequest {
        filter: "role = ROLE_EDITOR".into(),
        ..request(&parent)
    };
    let all = || request(&parent);
    let describe = |response: &ListApiTokensResponse| {
        let mut rows: Vec<(String, String, i64)> = response
            .api_tokens
            .iter()
            .map(|t| {
                (
                    t.name.rsplit('/').next().expect("id").to_owned(),
                    t.description.clone(),
                    t.use_count,
                )
            })
            .collect();
        rows.sort();
        rows
    };
    // Asked twice: the same answer (the second from the cache).
    for _ in 0..2 {
        assert_eq!(
            describe(&list(&server, &server.owner, editors()).await),
            [("editor-1".to_owned(), String::new(), 0)]
        );
        assert_eq!(
            list(&server, &server.owner, all()).await.api_tokens.len(),
            3
        );
    }

    client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: format!("{parent}/apitokens/editor-1"),
                    description: "changed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .expect("update");
    assert_eq!(
        describe(&list(&server, &server.owner, editors()).await),
        [("editor-1".to_owned(), "changed".to_owned(), 0)],
        "an update shows at once"
    );

    server.create("editor-2", Role::Editor).await;
    assert_eq!(
        list(&server, &server.owner, editors()).await.api_tokens[0].name,
        format!("{parent}/apitokens/editor-2"),
        "a creation shows at once, first"
    );
    client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: format!("{parent}/apitokens/editor-1"),
            },
        ))
        .await
        .expect("revoke");
    assert_eq!(
        describe(&list(&server, &server.owner, editors()).await),
        [("editor-2".to_owned(), String::new(), 0)],
        "a revocation shows at once"
    );
    assert_eq!(
        list(&server, &server.owner, all()).await.api_tokens.len(),
        3
    );

    // Usage written by this server moves the page too (well before the
    // usage TTL of the cached figures, 2 s).
    let before = describe(&list(&server, &viewer, all()).await);
    assert!(
        before.contains(&("viewer-1".to_owned(), String::new(), 0)),
        "{before:?}"
    );
    client
        .get_api_token(authed(
            &viewer,
            GetApiTokenRequest {
                name: format!("{parent}/apitokens/editor-2"),
            },
        ))
        .await
        .expect("get");
    server.wait_for_usage(&["viewer-1"]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let rows = describe(&list(&server, &server.owner, all()).await);
        let uses = rows
            .iter()
            .find(|(id, _, _)| id == "viewer-1")
            .map(|(_, _, uses)| *uses);
        if uses >= Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "written usage not shown within 1 s: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
