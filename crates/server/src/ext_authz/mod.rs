//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`:
//! Envoy (Istio, Envoy Gateway) asks, for every request, whether it may
//! reach its upstream; apitoken answers from the same in-memory
//! verification as its own API.
//!
//! Served only with `--ext-authz-policy FILE` (the routes: which role and
//! namespace each path needs, [`apitoken_domain::access`]), on the main
//! port and, with `--ext-authz-listen`, on a port of its own. Without a
//! policy the service is not registered: `Check` is `UNIMPLEMENTED` and
//! reflection does not list it.
//!
//! One `Check` is, in order: the request's attributes, read and bounded
//! ([`request`]); its route; for a public route, allowed at once (the
//! identity headers a client might have forged are removed); for a route
//! no rule allows, `403 ROUTE_NOT_ALLOWED`; else the bearer token through
//! [`Authenticator::identify`] (format, index, revocation, expiry, grace,
//! usage, the failed-authentication throttle and its audit, exactly as a
//! gRPC call), the route's namespace and role through
//! [`apitoken_domain::access::Route::authorize`], then the token's and its
//! namespace's rate limits ([`Authenticator::admit`]). The answer is built
//! by [`response`]. The types are the `envoy-types` crate's; reflection
//! serves the descriptors of the wire-compatible subset vendored under
//! `tests/clients/envoy/` ([`FILE_DESCRIPTOR_SET`]).

pub mod request;
pub mod response;

use std::{cell::Cell, net::SocketAddr, path::PathBuf, sync::Arc};

use apitoken_domain::{
    AuthFailure, Error,
    access::{AccessPolicy, MAX_POLICY_BYTES, Route},
    token::{Secret, parse_bearer},
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse,
    authorization_server::{Authorization, AuthorizationServer},
};
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, RATE_DECISION};
use request::Attributes;

/// The encoded descriptors of `envoy.service.auth.v3` (and what it
/// imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// The path of `Check`.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Longest `authorization` header read (a token is far shorter).
pub const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Where ext_authz is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzConfig {
    /// The policy file (`--ext-authz-policy`).
    pub policy_file: PathBuf,
    /// A port of its own (`--ext-authz-listen`), besides the main one.
    pub listen: Option<SocketAddr>,
}

/// Reads and parses the policy file; the error names the file, the line
/// and the problem.
pub fn load_policy(path: &std::path::Path) -> Result<AccessPolicy, String> {
    use std::io::Read as _;
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|err| format!("{shown}: cannot read: {err}"))?;
    let mut text = String::new();
    let limit = u64::try_from(MAX_POLICY_BYTES).unwrap_or(u64::MAX) + 1;
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|err| format!("{shown}: cannot read: {err}"))?;
    AccessPolicy::parse(&shown, &text).map_err(|error| error.to_string())
}

/// The `Authorization` service.
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    auth: Authenticator,
    policy: Arc<AccessPolicy>,
}

impl ExtAuthzService {
    /// The service deciding by `policy` with `auth`.
    pub fn new(auth: Authenticator, policy: Arc<AccessPolicy>) -> Self {
        Self { auth, policy }
    }

    /// The tonic server of it, with the request size bound.
    pub fn into_server(self, max_request: usize) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(max_request)
    }

    /// The answer to one `Check`.
    async fn decide(&self, check: &Request<CheckRequest>) -> CheckResponse {
        let attributes = match Attributes::of(check.get_ref()) {
            Ok(attributes) => attributes,
            Err(error) => return response::denied(&Status::from(error), false, None),
        };
        let grpc = attributes.grpc;
        let deny = |error: Error| response::denied(&Status::from(error), grpc, None);
        let route = self.policy.route(attributes.method, attributes.path);
        match route {
            Route::Public => return response::allowed(&self.policy, None, None),
            Route::Deny => return deny(apitoken_domain::access::route_not_allowed()),
            Route::Protected { .. } => {}
        }
        let secret = match attributes.header("authorization") {
            Ok(value) => bearer(value),
            Err(error) => return deny(error),
        };
        let stand_in = attributes.stand_in(check, |address| self.auth.trusts_proxy(address));
        let client = self.auth.client_address(&stand_in);
        let authenticated = match self.auth.identify(secret, client, &stand_in).await {
            Ok(authenticated) => authenticated,
            Err(error) => return deny(error),
        };
        let principal = authenticated.principal();
        if let Err(error) = route.authorize(&principal) {
            return deny(error);
        }
        let admitted = self.auth.admit(&authenticated.view).await;
        let decision = RATE_DECISION.try_with(Cell::get).ok().flatten();
        match admitted {
            Ok(()) => response::allowed(&self.policy, Some(&principal), decision.as_ref()),
            Err(error) => response::denied(&Status::from(error), grpc, decision.as_ref()),
        }
    }
}

/// The bearer secret of an `authorization` value (the one parsing rule,
/// [`parse_bearer`]), bounded.
fn bearer(value: Option<&str>) -> Result<Secret, AuthFailure> {
    let value = value.ok_or(AuthFailure::Missing)?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthFailure::Malformed);
    }
    parse_bearer(value)
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let reply = RATE_DECISION
            .scope(Cell::new(None), self.decide(&request))
            .await;
        Ok(Response::new(reply))
    }
}
