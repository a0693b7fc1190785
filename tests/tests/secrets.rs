//! The secret is shown once: only Create and Regenerate replies carry it;
//! the database holds only its hash.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, TestServer, authed, backend_tests,
    v1::{
        ApiToken, GetApiTokenRequest, ListApiTokensRequest, RegenerateApiTokenRequest,
        RevokeApiTokenRequest, UpdateApiTokenRequest, VerifyApiTokenRequest,
    },
};
use prost::Message;

backend_tests!(secrets_are_shown_once_and_never_stored);

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn secrets_are_shown_once_and_never_stored(server: TestServer) {
    let mut client = server.client().await;
    let (_, first) = server.create("shown-once", Role::Editor).await;
    let name = format!("namespaces/{NAMESPACE}/apitokens/shown-once");
    let regenerated = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("regenerate")
        .into_inner();
    let second = regenerated.secret.clone();
    assert!(contains(&regenerated.encode_to_vec(), &second));

    // Every other reply, encoded, contains neither secret.
    let mut replies: Vec<Vec<u8>> = Vec::new();
    replies.push(
        client
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest { name: name.clone() },
            ))
            .await
            .expect("get")
            .into_inner()
            .encode_to_vec(),
    );
    replies.push(
        client
            .list_api_tokens(authed(
                &server.owner,
                ListApiTokensRequest {
                    parent: format!("namespaces/{NAMESPACE}"),
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner()
            .encode_to_vec(),
    );
    replies.push(
        client
            .verify_api_token(VerifyApiTokenRequest {
                secret: second.clone(),
                ..Default::default()
            })
            .await
            .expect("verify")
            .into_inner()
            .encode_to_vec(),
    );
    replies.push(
        client
            .verify_api_token(authed(&second, VerifyApiTokenRequest::default()))
            .await
            .expect("who am i")
            .into_inner()
            .encode_to_vec(),
    );
    replies.push(
        client
            .update_api_token(authed(
                &server.owner,
                UpdateApiTokenRequest {
                    api_token: Some(ApiToken {
                        name: name.clone(),
                        description: "x".into(),
                        ..Default::default()
                    }),
                    update_mask: None,
                },
            ))
            .await
            .expect("update")
            .into_inner()
            .encode_to_vec(),
    );
    replies.push(
        client
            .revoke_api_token(authed(&server.owner, RevokeApiTokenRequest { name }))
            .await
            .expect("revoke")
            .into_inner()
            .encode_to_vec(),
    );
    // Error replies do not echo the secret either.
    let status = client
        .verify_api_token(VerifyApiTokenRequest {
            secret: second.clone(),
            ..Default::default()
        })
        .await
        .expect_err("revoked");
    replies.push(status.message().as_bytes().to_vec());
    replies.push(status.details().to_vec());
    for reply in &replies {
        for secret in [&first, &second, &server.owner] {
            // The hint (prefix and four characters) is shown; the rest never.
            assert!(
                !contains(reply, &secret["apitoken_".len() + 4..]),
                "a reply leaked a secret"
            );
        }
    }

    // Flush usage, stop, and read every byte the database holds.
    let mut server = server;
    server.stop_in_place().await;
    let dump = server.database_dump().await;
    assert!(contains(&dump, "shown-once"), "the dump is real");
    for secret in [&first, &second, &server.owner, &server.other_owner] {
        assert!(!contains(&dump, secret), "a secret is in the database");
        assert!(
            !contains(&dump, &secret["apitoken_".len() + 4..]),
            "a secret's body is in the database"
        );
    }
}
