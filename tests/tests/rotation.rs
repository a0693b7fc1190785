//! Rotation with a grace period, through the real gRPC surface and through
//! the interceptor.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use apitoken_domain::Role;
use apitoken_example::pb::ListItemsRequest;
use apitoken_tests::{
    ExampleService, NAMESPACE, TestServer, authed, backend_tests, bad_fields, fast_settings,
    reason,
    v1::{
        GetApiTokenRequest, RegenerateApiTokenRequest, RegenerateApiTokenResponse,
        RevokeApiTokenRequest, VerifyApiTokenRequest,
    },
};
use tonic::Code;

backend_tests!(
    both_secrets_work_during_the_grace_period,
    first_use_of_the_new_secret_ends_the_grace,
    revoking_ends_the_grace,
    grace_periods_are_bounded,
    the_interceptor_honours_grace,
);

fn name(id: &str) -> String {
    format!("namespaces/{NAMESPACE}/apitokens/{id}")
}

async fn regenerate(
    server: &TestServer,
    id: &str,
    grace: Duration,
    end_on_first_use: bool,
) -> RegenerateApiTokenResponse {
    server
        .client()
        .await
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name(id),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: i64::try_from(grace.as_secs()).unwrap(),
                    nanos: 0,
                }),
                end_grace_on_first_use: end_on_first_use,
            },
        ))
        .await
        .expect("regenerate")
        .into_inner()
}

async fn works(server: &TestServer, secret: &str) -> Result<(), tonic::Status> {
    server
        .client()
        .await
        .verify_api_token(authed(secret, VerifyApiTokenRequest::default()))
        .await
        .map(drop)
}

async fn both_secrets_work_during_the_grace_period(server: TestServer) {
    let (_, old) = server.create("rolling", Role::Editor).await;
    let reply = regenerate(&server, "rolling", Duration::from_secs(3600), false).await;
    let token = reply.api_token.expect("token");
    let grace_end = token.previous_secret_expire_time.expect("grace end shown");
    assert_eq!(grace_end, apitoken_tests::in_seconds(&server, 3600));
    works(&server, &old).await.expect("old secret during grace");
    works(&server, &reply.secret).await.expect("new secret");
    // The old secret's reply says when it stops working.
    let verified = server
        .client()
        .await
        .verify_api_token(VerifyApiTokenRequest {
            secret: old.clone(),
            ..Default::default()
        })
        .await
        .expect("verify old")
        .into_inner();
    assert_eq!(verified.secret_expire_time, Some(grace_end));
    server.clock.advance(chrono::Duration::seconds(3600));
    let status = works(&server, &old).await.expect_err("grace over");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    works(&server, &reply.secret)
        .await
        .expect("new secret still works");
}

async fn first_use_of_the_new_secret_ends_the_grace(server: TestServer) {
    let (_, old) = server.create("switching", Role::Viewer).await;
    let reply = regenerate(&server, "switching", Duration::from_secs(86_400), true).await;
    works(&server, &old)
        .await
        .expect("old works until the new one is used");
    works(&server, &old).await.expect("still");
    works(&server, &reply.secret)
        .await
        .expect("first use of the new secret");
    let status = works(&server, &old).await.expect_err("grace ended");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    let token = server
        .client()
        .await
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: name("switching"),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert!(token.previous_secret_expire_time.is_none());
}

async fn revoking_ends_the_grace(server: TestServer) {
    let (_, old) = server.create("doomed", Role::Viewer).await;
    let reply = regenerate(&server, "doomed", Duration::from_secs(3600), false).await;
    server
        .client()
        .await
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest {
                name: name("doomed"),
            },
        ))
        .await
        .expect("revoke");
    for secret in [&old, &reply.secret] {
        let status = works(&server, secret).await.expect_err("revoked");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = works(&server, &reply.secret).await.expect_err("revoked");
    assert_eq!(reason(&status), "TOKEN_REVOKED");
    // The old secret is forgotten with the revocation.
    let status = works(&server, &old).await.expect_err("gone");
    assert_eq!(reason(&status), "TOKEN_INVALID");
}

async fn grace_periods_are_bounded(server: TestServer) {
    server.create("bounded", Role::Viewer).await;
    let mut client = server.client().await;
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("bounded"),
                previous_secret_ttl: Some(prost_types::Duration {
                    seconds: 8 * 86_400,
                    nanos: 0,
                }),
                end_grace_on_first_use: false,
            },
        ))
        .await
        .expect_err("over the maximum");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["previous_secret_ttl"]);
    assert!(status.message().contains("7d"), "{}", status.message());
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: name("bounded"),
                end_grace_on_first_use: true,
                ..Default::default()
            },
        ))
        .await
        .expect_err("no grace to end");
    assert_eq!(bad_fields(&status), ["end_grace_on_first_use"]);
}

async fn the_interceptor_honours_grace(server: TestServer) {
    let example = ExampleService::start(&server, fast_settings()).await;
    let mut client = example.client().await;
    let list = |secret: &str| {
        authed(
            secret,
            ListItemsRequest {
                namespace: NAMESPACE.into(),
            },
        )
    };
    let (_, old) = server.create("fleet", Role::Viewer).await;
    client.list_items(list(&old)).await.expect("cached");
    let reply = regenerate(&server, "fleet", Duration::from_secs(600), false).await;
    // The regeneration event drops the cache; the old secret is verified
    // again, and works during the grace period, as does the new one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .list_items(list(&old))
        .await
        .expect("old secret during grace");
    client
        .list_items(list(&reply.secret))
        .await
        .expect("new secret");
    // When the grace period ends, the interceptor refuses the old secret on
    // its own (it knows when that secret stops working).
    let verifications = server.calls("VerifyApiToken");
    server.clock.advance(chrono::Duration::seconds(600));
    let status = client.list_items(list(&old)).await.expect_err("grace over");
    assert_eq!(reason(&status), "TOKEN_INVALID");
    assert_eq!(
        server.calls("VerifyApiToken"),
        verifications,
        "decided from the cache"
    );
    client
        .list_items(list(&reply.secret))
        .await
        .expect("new secret still works");
    example.stop().await;
}
