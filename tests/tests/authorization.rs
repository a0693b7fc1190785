//! Who may call what: authentication failures with their ErrorInfo reasons,
//! namespace isolation, the role matrix, and no escalation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, OTHER_NAMESPACE, TestServer, authed, backend_tests, reason,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
        RegenerateApiTokenRequest, RevokeApiTokenRequest, UpdateApiTokenRequest,
        VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient,
    },
};
use tonic::{Code, Request, Status, transport::Channel};

backend_tests!(
    every_rpc_needs_a_valid_token,
    failures_carry_the_reason,
    namespaces_are_isolated,
    roles_gate_every_rpc,
    no_token_mints_or_raises_above_its_own_role,
);

fn name(namespace: &str, id: &str) -> String {
    format!("namespaces/{namespace}/apitokens/{id}")
}

/// Calls every RPC that needs credentials with `credentials` (None: no
/// metadata) on resources of `namespace`; returns each outcome's code.
async fn call_all(
    client: &mut ApiTokenServiceClient<Channel>,
    credentials: Option<&str>,
    namespace: &str,
    target: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    fn request<T>(credentials: Option<&str>, message: T) -> Request<T> {
        match credentials {
            Some(secret) => authed(secret, message),
            None => Request::new(message),
        }
    }
    let parent = format!("namespaces/{namespace}");
    let target = name(namespace, target);
    vec![
        (
            "Create",
            client
                .create_api_token(request(
                    credentials,
                    CreateApiTokenRequest {
                        parent: parent.clone(),
                        api_token_id: "fresh-token".into(),
                        api_token: Some(ApiToken {
                            role: v1::Role::Viewer.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "Get",
            client
                .get_api_token(request(
                    credentials,
                    GetApiTokenRequest {
                        name: target.clone(),
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "List",
            client
                .list_api_tokens(request(
                    credentials,
                    ListApiTokensRequest {
                        parent,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "Update",
            client
                .update_api_token(request(
                    credentials,
                    UpdateApiTokenRequest {
                        api_token: Some(ApiToken {
                            name: target.clone(),
                            description: "touched".into(),
                            ..Default::default()
                        }),
                        update_mask: None,
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "Regenerate",
            client
                .regenerate_api_token(request(
                    credentials,
                    RegenerateApiTokenRequest {
                        name: target.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "Revoke",
            client
                .revoke_api_token(request(credentials, RevokeApiTokenRequest { name: target }))
                .await
                .map(drop),
        ),
        (
            "Verify (self)",
            client
                .verify_api_token(request(credentials, VerifyApiTokenRequest::default()))
                .await
                .map(drop),
        ),
    ]
}

async fn every_rpc_needs_a_valid_token(server: TestServer) {
    let mut client = server.client().await;
    server.create("target", Role::Viewer).await;
    let malformed = format!("{}x", server.owner);
    let unknown = {
        // Well-formed (right prefix and checksum) but never issued here.
        let format = apitoken_domain::token::TokenFormat::default();
        format.generate().expect("secret").expose().to_owned()
    };
    for (credentials, expected) in [
        (None, "TOKEN_MISSING"),
        (Some("not-a-token"), "TOKEN_MALFORMED"),
        (Some(malformed.as_str()), "TOKEN_MALFORMED"),
        (Some(unknown.as_str()), "TOKEN_INVALID"),
    ] {
        for (rpc, outcome) in call_all(&mut client, credentials, NAMESPACE, "target").await {
            let status = outcome.expect_err(rpc);
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{rpc} with {credentials:?}"
            );
            assert_eq!(reason(&status), expected, "{rpc} with {credentials:?}");
        }
    }
    // Expired and revoked tokens, on every RPC.
    let expiring = client
        .create_api_token(authed(
            &server.owner,
            CreateApiTokenRequest {
                parent: format!("namespaces/{NAMESPACE}"),
                api_token_id: "expiring".into(),
                api_token: Some(ApiToken {
                    role: v1::Role::Owner.into(),
                    expire_time: Some(apitoken_tests::in_seconds(&server, 30)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("create")
        .into_inner()
        .secret;
    let (_, revoked) = server.create("revoked-owner", Role::Owner).await;
    client
        .revoke_api_token(authed(
            &revoked,
            RevokeApiTokenRequest {
                name: name(NAMESPACE, "revoked-owner"),
            },
        ))
        .await
        .expect("self revoke");
    server.clock.advance(chrono::Duration::seconds(31));
    for (credentials, expected) in [
        (expiring.as_str(), "TOKEN_EXPIRED"),
        (revoked.as_str(), "TOKEN_REVOKED"),
    ] {
        for (rpc, outcome) in call_all(&mut client, Some(credentials), NAMESPACE, "target").await {
            let status = outcome.expect_err(rpc);
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc}");
            assert_eq!(reason(&status), expected, "{rpc}");
        }
    }
    // Nothing happened to the target.
    let target = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name(NAMESPACE, "target"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(target.state(), v1::api_token::State::Active);
    assert_eq!(target.description, "");
}

async fn failures_carry_the_reason(server: TestServer) {
    let mut client = server.client().await;
    // Not a Bearer credential.
    let mut request = Request::new(VerifyApiTokenRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", server.owner).parse().expect("ascii"),
    );
    let status = client.verify_api_token(request).await.expect_err("basic");
    assert_eq!(reason(&status), "TOKEN_MALFORMED");
    // ErrorInfo domain, and no secret echoed back.
    let status = client
        .verify_api_token(authed(
            "apitoken_definitelynotvalid",
            VerifyApiTokenRequest::default(),
        ))
        .await
        .expect_err("malformed");
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("info");
    assert_eq!(info.domain, "apitoken");
    assert!(!status.message().contains("definitelynotvalid"));
    // Bearer scheme is case-insensitive.
    let mut request = Request::new(VerifyApiTokenRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("bearer {}", server.owner).parse().expect("ascii"),
    );
    client
        .verify_api_token(request)
        .await
        .expect("lowercase bearer");
}

async fn namespaces_are_isolated(server: TestServer) {
    let mut client = server.client().await;
    server
        .create_in(OTHER_NAMESPACE, &server.other_owner, "theirs", Role::Viewer)
        .await;
    // team-a's owner cannot touch team-b at all.
    for (rpc, outcome) in
        call_all(&mut client, Some(&server.owner), OTHER_NAMESPACE, "theirs").await
    {
        if rpc == "Verify (self)" {
            outcome.expect("verify self is namespace-free");
            continue;
        }
        let status = outcome.expect_err(rpc);
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc}");
        assert_eq!(reason(&status), "NAMESPACE_MISMATCH", "{rpc}");
    }
    // And team-b's list never shows team-a's tokens, nor the reverse.
    let listed = client
        .list_api_tokens(authed(
            &server.other_owner,
            ListApiTokensRequest {
                parent: format!("namespaces/{OTHER_NAMESPACE}"),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed
            .api_tokens
            .iter()
            .all(|t| t.name.starts_with("namespaces/team-b/"))
    );
    assert_eq!(listed.api_tokens.len(), 2);
    let theirs = client
        .get_api_token(authed(
            &server.other_owner,
            GetApiTokenRequest {
                name: name(OTHER_NAMESPACE, "theirs"),
            },
        ))
        .await
        .expect("owner of b reads b")
        .into_inner();
    assert_eq!(theirs.state(), v1::api_token::State::Active);
}

async fn roles_gate_every_rpc(server: TestServer) {
    let mut client = server.client().await;
    let (_, viewer) = server.create("the-viewer", Role::Viewer).await;
    let (_, editor) = server.create("the-editor", Role::Editor).await;
    // Viewer and editor: read only.
    for (secret, target) in [(&viewer, "target-v"), (&editor, "target-e")] {
        server.create(target, Role::Viewer).await;
        for (rpc, outcome) in call_all(&mut client, Some(secret), NAMESPACE, target).await {
            match rpc {
                "Get" | "List" | "Verify (self)" => {
                    outcome.unwrap_or_else(|status| panic!("{rpc}: {status:?}"));
                }
                _ => {
                    let status = outcome.expect_err(rpc);
                    assert_eq!(status.code(), Code::PermissionDenied, "{rpc}");
                    assert_eq!(reason(&status), "ROLE_TOO_LOW", "{rpc}");
                }
            }
        }
    }
    // Owner: everything.
    server.create("target-o", Role::Viewer).await;
    for (rpc, outcome) in call_all(&mut client, Some(&server.owner), NAMESPACE, "target-o").await {
        outcome.unwrap_or_else(|status| panic!("owner {rpc}: {status:?}"));
    }
}

async fn no_token_mints_or_raises_above_its_own_role(server: TestServer) {
    let mut client = server.client().await;
    let (_, editor) = server.create("mid-level", Role::Editor).await;
    // An editor cannot create tokens at all, not even viewers.
    for role in [v1::Role::Viewer, v1::Role::Editor, v1::Role::Owner] {
        let status = client
            .create_api_token(authed(
                &editor,
                CreateApiTokenRequest {
                    parent: format!("namespaces/{NAMESPACE}"),
                    api_token_id: "minted".into(),
                    api_token: Some(ApiToken {
                        role: role.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("editor cannot mint");
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    // Nor raise its own role.
    let status = client
        .update_api_token(authed(
            &editor,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name(NAMESPACE, "mid-level"),
                    role: v1::Role::Owner.into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("no self-promotion");
    assert_eq!(status.code(), Code::PermissionDenied);
    // An owner can raise nobody either: roles only go down.
    let (_, _) = server.create("low", Role::Viewer).await;
    let status = client
        .update_api_token(authed(
            &server.owner,
            UpdateApiTokenRequest {
                api_token: Some(ApiToken {
                    name: name(NAMESPACE, "low"),
                    role: v1::Role::Editor.into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("no raise");
    assert_eq!(status.code(), Code::InvalidArgument);
    let low = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name(NAMESPACE, "low"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(low.role(), v1::Role::Viewer);
}
