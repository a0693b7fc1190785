//! Envoy's side of ext_authz for the tests: `CheckRequest`s shaped as
//! Envoy's HTTP filter sends them, a `Check` client, and readers of the
//! answer.

use std::{collections::HashMap, net::SocketAddr};

use envoy_types::pb::envoy::{
    config::core::v3::{
        Address, HeaderValueOption, SocketAddress, address, socket_address::PortSpecifier,
    },
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
        attribute_context::{HttpRequest, Peer, Request as AttrRequest},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};

use crate::TestServer;

/// A request as Envoy's HTTP filter sends it: `method` and `path` (with its
/// query), `headers` (lowercase) plus the pseudo-headers, `user-agent` and
/// for `grpc` the gRPC content type, from the client `source`.
pub fn envoy_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    source: &str,
    grpc: bool,
) -> CheckRequest {
    let mut map: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    map.insert(":method".into(), method.into());
    map.insert(":path".into(), path.into());
    map.insert(":authority".into(), "shop.internal".into());
    map.insert("user-agent".into(), "ext-authz-test/1".into());
    if grpc {
        map.insert("content-type".into(), "application/grpc".into());
        map.insert("te".into(), "trailers".into());
    }
    let address = |ip: &str, port: u32| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(address(source, 51_234)),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(address("10.0.0.9", 8080)),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "envoy-req-1".into(),
                    method: method.into(),
                    headers: map,
                    path: path.into(),
                    host: "shop.internal".into(),
                    scheme: "http".into(),
                    protocol: if grpc { "HTTP/2" } else { "HTTP/1.1" }.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `Check` on `addr`.
pub async fn check_on(addr: SocketAddr, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .check(request)
        .await
        .expect("check answers")
        .into_inner()
}

/// `Check` on the server's ext_authz port of its own.
pub async fn check(server: &TestServer, request: CheckRequest) -> CheckResponse {
    check_on(server.ext_authz_addr.expect("ext_authz port"), request).await
}

/// `Bearer <secret>`.
pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// The `OkHttpResponse` of an allowed request (status OK), or a panic.
pub fn ok(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(0),
        "{response:?}"
    );
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not allowed: {other:?}"),
    }
}

/// The `DeniedHttpResponse` of a refused request, or a panic.
pub fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("not denied: {other:?}"),
    }
}

/// Header names to values.
pub fn headers(list: &[HeaderValueOption]) -> HashMap<String, String> {
    list.iter()
        .filter_map(|option| option.header.as_ref())
        .map(|header| (header.key.clone(), header.value.clone()))
        .collect()
}

/// The HTTP status, the body's `ErrorInfo` reason (if any) and the
/// `CheckResponse.status` code of a denial.
pub fn refusal(response: &CheckResponse) -> (i32, Option<String>, i32) {
    let denied = denied(response);
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json body");
    let reason = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .map(|info| info["reason"].as_str().expect("reason").to_owned());
    assert_eq!(
        body["error"]["code"],
        denied.status.as_ref().expect("http status").code
    );
    (
        denied.status.as_ref().expect("http status").code,
        reason,
        response.status.as_ref().expect("status").code,
    )
}
