//! The token lifecycle through the real gRPC surface: create, get, list,
//! update, regenerate, revoke, verify, expiry.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, TestServer, authed, backend_tests, bad_fields, in_seconds, reason,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
        RegenerateApiTokenRequest, RevokeApiTokenRequest, UpdateApiTokenRequest,
        VerifyApiTokenRequest, api_token::State,
    },
};
use tonic::Code;

backend_tests!(
    create_returns_the_secret_once_and_get_shows_the_token,
    verify_answers_for_a_secret_and_for_the_caller,
    regenerate_replaces_the_secret_at_once,
    revoke_is_immediate_final_and_visible,
    any_token_may_revoke_itself,
    expiry_is_enforced_and_reported,
    update_changes_fields_and_etag,
    update_enforces_shorter_expiry_and_lower_role,
    update_with_stale_etag_is_aborted,
    revoked_tokens_cannot_be_updated_or_regenerated,
    expired_tokens_cannot_be_regenerated,
    custom_token_prefix_is_used,
);

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

async fn create_returns_the_secret_once_and_get_shows_the_token(server: TestServer) {
    let mut client = server.client().await;
    let expire_time = in_seconds(&server, 3600);
    let created = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "ci-deploy".into(),
                api_token: Some(ApiToken {
                    display_name: "CI deploy".into(),
                    description: "GitHub Actions, production".into(),
                    role: v1::Role::Editor.into(),
                    labels: [("env".to_owned(), "prod".to_owned())].into(),
                    expire_time: Some(expire_time),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    let token = created.api_token.expect("token");
    assert!(created.secret.starts_with("apitoken_"));
    assert_eq!(created.secret.len(), "apitoken_".len() + 49);
    assert_eq!(token.name, name("ci-deploy"));
    assert_eq!(token.role(), v1::Role::Editor);
    assert_eq!(token.state(), State::Active);
    assert_eq!(token.creator, name("bootstrap-owner"));
    assert_eq!(token.expire_time, Some(expire_time));
    assert!(created.secret.starts_with(&token.secret_hint));
    assert_eq!(token.secret_hint.len(), "apitoken_".len() + 4);
    assert!(!token.uid.is_empty());
    assert!(!token.etag.is_empty());

    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("ci-deploy"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, token);

    // The new token works as a credential of its own.
    let me = client
        .verify_api_token(authed(&created.secret, VerifyApiTokenRequest::default()))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(me.api_token.expect("token").name, name("ci-deploy"));
}

async fn verify_answers_for_a_secret_and_for_the_caller(server: TestServer) {
    let mut client = server.client().await;
    let (token, secret) = server.create("checker", Role::Viewer).await;
    // With a secret: no credentials needed.
    let verified = client
        .verify_api_token(VerifyApiTokenRequest {
            secret: secret.clone(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
        .api_token
        .expect("token");
    assert_eq!(verified.name, token.name);
    assert_eq!(verified.role(), v1::Role::Viewer);
    // Without: "who am I" for the bearer.
    let me = client
        .verify_api_token(authed(&server.owner, VerifyApiTokenRequest::default()))
        .await
        .expect("who am i")
        .into_inner()
        .api_token
        .expect("token");
    assert_eq!(me.name, name("bootstrap-owner"));
    assert_eq!(me.role(), v1::Role::Owner);
    // Wrong secrets get the same reasons as authentication.
    let unknown = server.create("to-replace", Role::Viewer).await.1;
    client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("to-replace"),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate");
    for (secret, expected) in [
        ("apitoken_short".to_owned(), "TOKEN_MALFORMED"),
        (unknown, "TOKEN_INVALID"),
    ] {
        let status = client
            .verify_api_token(VerifyApiTokenRequest {
                secret,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(&status), expected);
    }
    let status = client
        .verify_api_token(VerifyApiTokenRequest::default())
        .await
        .expect_err("no credentials");
    assert_eq!(reason(&status), "TOKEN_MISSING");
}

async fn regenerate_replaces_the_secret_at_once(server: TestServer) {
    let mut client = server.client().await;
    let (before, old_secret) = server.create("rotating", Role::Editor).await;
    let regenerated = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("rotating"),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate")
        .into_inner();
    let after = regenerated.api_token.expect("token");
    assert_ne!(regenerated.secret, old_secret);
    assert!(regenerated.secret.starts_with(&after.secret_hint));
    // Same token: name, uid, role, settings.
    assert_eq!(after.name, before.name);
    assert_eq!(after.uid, before.uid);
    assert_eq!(after.role, before.role);
    assert_eq!(after.display_name, before.display_name);
    assert_eq!(after.create_time, before.create_time);
    assert_ne!(after.etag, before.etag);

    let status = client
        .verify_api_token(authed(&old_secret, VerifyApiTokenRequest::default()))
        .await
        .expect_err("old secret refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_INVALID");
    let me = client
        .verify_api_token(authed(
            &regenerated.secret,
            VerifyApiTokenRequest::default(),
        ))
        .await
        .expect("new secret works")
        .into_inner();
    assert_eq!(me.api_token.expect("token").uid, before.uid);
}

async fn revoke_is_immediate_final_and_visible(server: TestServer) {
    let mut client = server.client().await;
    let (token, secret) = server.create("leaked", Role::Editor).await;
    // Works before.
    client
        .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
        .await
        .expect("works");
    let revoked = client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("leaked"),
            },
        ))
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.state(), State::Revoked);
    assert!(revoked.revoke_time.is_some());
    assert_eq!(revoked.revoker, name("bootstrap-owner"));
    assert_eq!(revoked.uid, token.uid);

    // Refused at once, on this and on a new connection.
    for mut client in [client.clone(), server.client().await] {
        let status = client
            .verify_api_token(authed(&secret, VerifyApiTokenRequest::default()))
            .await
            .expect_err("revoked");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(&status), "TOKEN_REVOKED");
    }
    // Revoking again changes nothing.
    let again = client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("leaked"),
            },
        ))
        .await
        .expect("revoke again")
        .into_inner();
    let without_usage = |token: ApiToken| ApiToken {
        last_use_time: None,
        use_count: 0,
        last_use_ip: String::new(),
        ..token
    };
    assert_eq!(without_usage(again), without_usage(revoked.clone()));
    // Still visible by name, and in lists with show_revoked only.
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("leaked"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.state(), State::Revoked);
    let list = |show_revoked| ListApiTokensRequest {
        parent: format!("namespaces/{NAMESPACE}"),
        show_revoked,
        ..Default::default()
    };
    let hidden = client
        .list_api_tokens(authed(&server.owner, list(false)))
        .await
        .expect("list")
        .into_inner();
    assert!(hidden.api_tokens.iter().all(|t| t.name != name("leaked")));
    let shown = client
        .list_api_tokens(authed(&server.owner, list(true)))
        .await
        .expect("list")
        .into_inner();
    let listed = shown
        .api_tokens
        .iter()
        .find(|t| t.name == name("leaked"))
        .expect("listed");
    assert_eq!(listed.state(), State::Revoked);
    // Its id stays taken.
    let status = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "leaked".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect_err("id taken");
    assert_eq!(status.code(), Code::AlreadyExists);
}

async fn any_token_may_revoke_itself(server: TestServer) {
    let mut client = server.client().await;
    let (_, viewer) = server.create("self-revoker", Role::Viewer).await;
    let (_, other) = server.create("bystander", Role::Viewer).await;
    // A viewer may not revoke another token...
    let status = client
        .revoke_api_token(authed(
            &viewer,
            RevokeApiTokenRequest {
                name: name("bystander"),
            },
        ))
        .await
        .expect_err("not owner");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "ROLE_TOO_LOW");
    // ...but may revoke itself.
    let revoked = client
        .revoke_api_token(authed(
            &viewer,
            RevokeApiTokenRequest {
                name: name("self-revoker"),
            },
        ))
        .await
        .expect("self revoke")
        .into_inner();
    assert_eq!(revoked.state(), State::Revoked);
    assert_eq!(revoked.revoker, name("self-revoker"));
    let status = client
        .verify_api_token(authed(&viewer, VerifyApiTokenRequest::default()))
        .await
        .expect_err("revoked");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    client
        .verify_api_token(authed(&other, VerifyApiTokenRequest::default()))
        .await
        .expect("bystander unaffected");
}

async fn expiry_is_enforced_and_reported(server: TestServer) {
    let mut client = server.client().await;
    let created = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "short-lived".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    expire_time: Some(in_seconds(&server, 60)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    client
        .verify_api_token(authed(&created.secret, VerifyApiTokenRequest::default()))
        .await
        .expect("works before expiry");

    server.clock.advance(chrono::Duration::seconds(61));

    let status = client
        .verify_api_token(authed(&created.secret, VerifyApiTokenRequest::default()))
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_EXPIRED");
    let status = client
        .list_api_tokens(authed(
            &created.secret,
            ListApiTokensRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                ..Default::default()
            },
        ))
        .await
        .expect_err("expired token cannot list");
    assert_eq!(reason(&status), "TOKEN_EXPIRED");
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("short-lived"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.state(), State::Expired);
}

async fn update_changes_fields_and_etag(server: TestServer) {
    let mut client = server.client().await;
    let (before, _) = server.create("updatable", Role::Editor).await;
    let updated = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("updatable"),
                    display_name: "Renamed".into(),
                    description: "now with a description".into(),
                    labels: [("team".to_owned(), "payments".to_owned())].into(),
                    // Not in the mask: must be ignored.
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into(), "description".into(), "labels".into()],
                }),
            },
        ))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.display_name, "Renamed");
    assert_eq!(updated.description, "now with a description");
    assert_eq!(
        updated.labels.get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(updated.role(), v1::Role::Editor, "role not in mask");
    assert_ne!(updated.etag, before.etag);
    assert!(updated.update_time.is_some());
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("updatable"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, updated);

    // No mask: the fields that are set.
    let updated = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("updatable"),
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect("update without mask")
        .into_inner();
    assert_eq!(updated.role(), v1::Role::Viewer);
    assert_eq!(updated.display_name, "Renamed", "unset fields untouched");

    // Unknown and output-only paths are refused, naming update_mask.
    for path in ["secret_hint", "uid", "colour"] {
        let status = client
            .update_api_token(authed(
                &server.owner,
                UpdateApiTokenRequest {
                    api_token: Some(ApiToken {
                        name: name("updatable"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![path.into()],
                    }),
                },
            ))
            .await
            .expect_err("bad path");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), ["update_mask"]);
    }
}

async fn update_enforces_shorter_expiry_and_lower_role(server: TestServer) {
    let mut client = server.client().await;
    let created = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "bounded".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Editor.into(),
                    expire_time: Some(in_seconds(&server, 7200)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner();
    let update = |token: ApiToken, path: &str| {
        authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("bounded"),
                    ..token
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![path.into()],
                }),
            },
        )
    };
    // Longer expiry, removed expiry, past expiry: refused, naming the field.
    for expire_time in [
        Some(in_seconds(&server, 7201)),
        None,
        Some(in_seconds(&server, -1)),
    ] {
        let status = client
            .update_api_token(update(
                ApiToken {
                    expire_time,
                    ..Default::default()
                },
                "expire_time",
            ))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), ["api_token.expire_time"]);
    }
    // Raising the role: refused.
    let status = client
        .update_api_token(update(
            ApiToken {
                role: v1::Role::Owner.into(),
                ..Default::default()
            },
            "role",
        ))
        .await
        .expect_err("raise refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["api_token.role"]);
    // Shorter expiry and lower role: fine.
    let shorter = in_seconds(&server, 600);
    let updated = client
        .update_api_token(update(
            ApiToken {
                expire_time: Some(shorter),
                ..Default::default()
            },
            "expire_time",
        ))
        .await
        .expect("shorten")
        .into_inner();
    assert_eq!(updated.expire_time, Some(shorter));
    let updated = client
        .update_api_token(update(
            ApiToken {
                role: v1::Role::Viewer.into(),
                ..Default::default()
            },
            "role",
        ))
        .await
        .expect("lower")
        .into_inner();
    assert_eq!(updated.role(), v1::Role::Viewer);
    // The lowered role takes effect for the token itself at once.
    let status = client
        .create_api_token(authed(
            &created.secret,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "nope".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect_err("viewer cannot create");
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn update_with_stale_etag_is_aborted(server: TestServer) {
    let mut client = server.client().await;
    let (token, _) = server.create("contended", Role::Editor).await;
    let rename = |etag: String, display_name: &str| {
        authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("contended"),
                    display_name: display_name.into(),
                    etag,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
        )
    };
    let first = client
        .update_api_token(rename(token.etag.clone(), "first"))
        .await
        .expect("first")
        .into_inner();
    let status = client
        .update_api_token(rename(token.etag.clone(), "second"))
        .await
        .expect_err("stale");
    assert_eq!(status.code(), Code::Aborted);
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("contended"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.display_name, "first");
    client
        .update_api_token(rename(first.etag, "second"))
        .await
        .expect("fresh etag");
}

async fn revoked_tokens_cannot_be_updated_or_regenerated(server: TestServer) {
    let mut client = server.client().await;
    server.create("gone", Role::Viewer).await;
    client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: name("gone") },
        ))
        .await
        .expect("revoke");
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("gone"),
                ..Default::default()
            },
        ))
        .await
        .expect_err("regenerate refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name("gone"),
                    display_name: "back".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("update refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let fetched = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest { name: name("gone") },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.state(), State::Revoked);
    assert_ne!(fetched.display_name, "back");
}

async fn expired_tokens_cannot_be_regenerated(server: TestServer) {
    let mut client = server.client().await;
    client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "lapsed".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Viewer.into(),
                    expire_time: Some(in_seconds(&server, 5)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create");
    server.clock.advance(chrono::Duration::seconds(10));
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("lapsed"),
                ..Default::default()
            },
        ))
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

async fn custom_token_prefix_is_used(server: TestServer) {
    // The default server uses the default prefix; a second server on the
    // same backend with `vf_tok` mints and accepts only its own.
    let custom = TestServer::start_with(
        server.backend,
        apitoken_tests::Options {
            token_prefix: Some("vf_tok".into()),
            ..Default::default()
        },
    )
    .await
    .expect("backend available");
    assert!(custom.owner.starts_with("vf_tok_"));
    let (_, secret) = custom.create("prefixed", Role::Viewer).await;
    assert!(secret.starts_with("vf_tok_"));
    let status = custom
        .client()
        .await
        .verify_api_token(VerifyApiTokenRequest {
            secret: server.owner.clone(),
            ..Default::default()
        })
        .await
        .expect_err("foreign prefix");
    assert_eq!(reason(&status), "TOKEN_MALFORMED");
}
