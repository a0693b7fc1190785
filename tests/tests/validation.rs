//! Bad input: INVALID_ARGUMENT naming each field (google.rpc.BadRequest),
//! ALREADY_EXISTS, NOT_FOUND, and nothing half-written after any error.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use apitoken_domain::Role;
use apitoken_tests::{
    NAMESPACE, TestServer, authed, backend_tests, bad_fields, in_seconds,
    v1::{
        self, ApiToken, CreateApiTokenRequest, GetApiTokenRequest, ListApiTokensRequest,
        RegenerateApiTokenRequest, RevokeApiTokenRequest,
    },
};
use tonic::Code;

backend_tests!(
    create_names_each_bad_field,
    create_reports_every_violation_at_once,
    bad_resource_names_are_invalid_arguments,
    duplicates_and_unknown_tokens,
    nothing_is_half_written_after_errors,
);

fn create(parent: &str, id: &str, token: Option<ApiToken>) -> CreateApiTokenRequest {
    CreateApiTokenRequest {
        parent: parent.to_owned(),
        api_token_id: id.to_owned(),
        api_token: token,
        ..Default::default()
    }
}

fn viewer() -> ApiToken {
    ApiToken {
        role: v1::Role::Viewer.into(),
        ..Default::default()
    }
}

async fn create_names_each_bad_field(server: TestServer) {
    let mut client = server.client().await;
    let parent = format!("namespaces/{NAMESPACE}");
    let long_label_value = "v".repeat(64);
    let too_many_labels: HashMap<String, String> =
        (0..65).map(|i| (format!("k{i}"), String::new())).collect();
    let cases: Vec<(CreateApiTokenRequest, &str)> = vec![
        (create(&parent, "", Some(viewer())), "api_token_id"),
        (create(&parent, "ab", Some(viewer())), "api_token_id"),
        (
            create(&parent, &"a".repeat(51), Some(viewer())),
            "api_token_id",
        ),
        (create(&parent, "1st-token", Some(viewer())), "api_token_id"),
        (create(&parent, "Upper", Some(viewer())), "api_token_id"),
        (create(&parent, "trailing-", Some(viewer())), "api_token_id"),
        (
            create(&parent, "under_score", Some(viewer())),
            "api_token_id",
        ),
        (create(&parent, "no-body", None), "api_token"),
        (
            create(&parent, "no-role", Some(ApiToken::default())),
            "api_token.role",
        ),
        (
            create(
                &parent,
                "bad-role",
                Some(ApiToken {
                    role: 42,
                    ..Default::default()
                }),
            ),
            "api_token.role",
        ),
        (
            create(
                &parent,
                "long-name",
                Some(ApiToken {
                    display_name: "x".repeat(101),
                    ..viewer()
                }),
            ),
            "api_token.display_name",
        ),
        (
            create(
                &parent,
                "long-desc",
                Some(ApiToken {
                    description: "x".repeat(501),
                    ..viewer()
                }),
            ),
            "api_token.description",
        ),
        (
            create(
                &parent,
                "bad-label",
                Some(ApiToken {
                    labels: [("Env".to_owned(), "prod".to_owned())].into(),
                    ..viewer()
                }),
            ),
            "api_token.labels[\"Env\"]",
        ),
        (
            create(
                &parent,
                "long-label",
                Some(ApiToken {
                    labels: [("env".to_owned(), long_label_value)].into(),
                    ..viewer()
                }),
            ),
            "api_token.labels[\"env\"]",
        ),
        (
            create(
                &parent,
                "many-labels",
                Some(ApiToken {
                    labels: too_many_labels,
                    ..viewer()
                }),
            ),
            "api_token.labels",
        ),
        (
            create(
                &parent,
                "past",
                Some(ApiToken {
                    expire_time: Some(in_seconds(&server, -60)),
                    ..viewer()
                }),
            ),
            "api_token.expire_time",
        ),
        (
            create(
                &parent,
                "bad-time",
                Some(ApiToken {
                    expire_time: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: -5,
                    }),
                    ..viewer()
                }),
            ),
            "api_token.expire_time",
        ),
        (
            create(
                &parent,
                "mismatch",
                Some(ApiToken {
                    name: "namespaces/team-a/apitokens/other".into(),
                    ..viewer()
                }),
            ),
            "api_token.name",
        ),
    ];
    for (request, field) in cases {
        let id = request.api_token_id.clone();
        let status = client
            .create_api_token(authed(&server.owner, request))
            .await
            .expect_err(&id);
        assert_eq!(status.code(), Code::InvalidArgument, "{id}: {status:?}");
        assert_eq!(bad_fields(&status), [field], "{id}");
        assert!(
            status.message().contains(field),
            "{id}: message {:?} names the field",
            status.message()
        );
    }
}

async fn create_reports_every_violation_at_once(server: TestServer) {
    let status = server
        .client()
        .await
        .create_api_token(authed(
            &server.owner,
            create(
                &format!("namespaces/{NAMESPACE}"),
                "X",
                Some(ApiToken {
                    display_name: "x".repeat(101),
                    description: "x".repeat(501),
                    expire_time: Some(in_seconds(&server, -1)),
                    ..Default::default()
                }),
            ),
        ))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "api_token.description",
            "api_token.display_name",
            "api_token.expire_time",
            "api_token.role",
            "api_token_id"
        ]
    );
}

async fn bad_resource_names_are_invalid_arguments(server: TestServer) {
    let mut client = server.client().await;
    for parent in [
        "",
        "team-a",
        "namespaces/",
        "namespaces/Team-A",
        "projects/team-a",
    ] {
        let status = client
            .create_api_token(authed(
                &server.owner,
                create(parent, "valid-id", Some(viewer())),
            ))
            .await
            .expect_err(parent);
        assert_eq!(status.code(), Code::InvalidArgument, "{parent}");
        assert_eq!(bad_fields(&status), ["parent"], "{parent}");
        let status = client
            .list_api_tokens(authed(
                &server.owner,
                ListApiTokensRequest {
                    parent: parent.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(parent);
        assert_eq!(bad_fields(&status), ["parent"], "{parent}");
    }
    for name in [
        "",
        "namespaces/team-a",
        "namespaces/team-a/apitokens",
        "namespaces/team-a/apitokens/X",
        "a/b/c/d",
    ] {
        let status = client
            .get_api_token(authed(
                &server.owner,
                GetApiTokenRequest { name: name.into() },
            ))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert_eq!(bad_fields(&status), ["name"], "{name}");
        let status = client
            .revoke_api_token(authed(
                &server.owner,
                RevokeApiTokenRequest { name: name.into() },
            ))
            .await
            .expect_err(name);
        assert_eq!(bad_fields(&status), ["name"], "{name}");
    }
}

async fn duplicates_and_unknown_tokens(server: TestServer) {
    let mut client = server.client().await;
    server.create("taken", Role::Viewer).await;
    let status = client
        .create_api_token(authed(
            &server.owner,
            create(&format!("namespaces/{NAMESPACE}"), "taken", Some(viewer())),
        ))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status
            .message()
            .contains("namespaces/team-a/apitokens/taken")
    );
    // The same id in another namespace is fine.
    server
        .create_in(
            apitoken_tests::OTHER_NAMESPACE,
            &server.other_owner,
            "taken",
            Role::Viewer,
        )
        .await;

    let missing = format!("namespaces/{NAMESPACE}/apitokens/missing");
    let status = client
        .get_api_token(authed(
            &server.owner,
            GetApiTokenRequest {
                name: missing.clone(),
            },
        ))
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&missing));
    let status = client
        .regenerate_api_token(authed(
            &server.owner,
            RegenerateApiTokenRequest {
                name: missing.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .revoke_api_token(authed(
            &server.owner,
            RevokeApiTokenRequest { name: missing },
        ))
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
}

async fn nothing_is_half_written_after_errors(server: TestServer) {
    let mut client = server.client().await;
    let list = ListApiTokensRequest {
        parent: format!("namespaces/{NAMESPACE}"),
        show_revoked: true,
        ..Default::default()
    };
    let before = client
        .list_api_tokens(authed(&server.owner, list.clone()))
        .await
        .expect("list")
        .into_inner();
    // A batch of failing creates: invalid, duplicate, unauthorized.
    for request in [
        create(
            &format!("namespaces/{NAMESPACE}"),
            "bootstrap-owner",
            Some(viewer()),
        ),
        create(
            &format!("namespaces/{NAMESPACE}"),
            "half",
            Some(ApiToken {
                display_name: "x".repeat(200),
                ..viewer()
            }),
        ),
        create(&format!("namespaces/{NAMESPACE}"), "half", None),
    ] {
        client
            .create_api_token(authed(&server.owner, request))
            .await
            .expect_err("fails");
    }
    client
        .create_api_token(authed(
            &server.other_owner,
            create(&format!("namespaces/{NAMESPACE}"), "half", Some(viewer())),
        ))
        .await
        .expect_err("other namespace");
    let after = client
        .list_api_tokens(authed(&server.owner, list))
        .await
        .expect("list")
        .into_inner();
    let names = |response: &v1::ListApiTokensResponse| {
        response
            .api_tokens
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&after), names(&before));
}
