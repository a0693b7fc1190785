//! The ext_authz scenario: `envoy.service.auth.v3.Authorization/Check` as
//! Envoy's HTTP filter sends it (a GET with its `authorization` header,
//! the client's address), which the server allows (every path needs a
//! viewer of the benchmark's namespace).

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Peer, Request},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};
use tonic::transport::Channel;

/// A `CheckRequest` with `authorization` (`Bearer …`).
pub(crate) fn check_request(authorization: &str) -> CheckRequest {
    let headers = [
        (":method", "GET"),
        (":path", "/api/orders/7?expand=items"),
        (":authority", "shop.internal"),
        ("user-agent", "apitoken-bench"),
        ("authorization", authorization),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "192.0.2.10".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(40_000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/api/orders/7?expand=items".to_owned(),
                    host: "shop.internal".to_owned(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One `Check`, which must allow.
pub(crate) async fn check(channel: Channel, request: CheckRequest) -> Result<(), String> {
    let reply = AuthorizationClient::new(channel)
        .check(request)
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    match reply.http_response {
        Some(HttpResponse::OkResponse(_)) => Ok(()),
        _ => Err(format!(
            "denied: {}",
            reply
                .status
                .map(|status| status.message)
                .unwrap_or_default()
        )),
    }
}
