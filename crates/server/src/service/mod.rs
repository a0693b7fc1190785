//! The `ApiTokenService` handlers: authenticate, authorize, validate (naming
//! every bad field), then one store call. Every write is a single statement
//! or one transaction. This module holds the service, what every handler
//! shares (authorization on a parent or a name, policy refusals, paging,
//! the rate-limit headers) and the RPC table; the handlers live in one
//! submodule per concern.

mod audit;
mod callers;
mod create;
mod limits;
mod rotation;
mod sessions;
mod tokens;

pub use callers::{MAX_USAGE_REPORTS, MAX_USE_COUNT};

use std::collections::BTreeMap;

use apitoken_domain::audit::{Action, AuditFilter};
use apitoken_domain::{
    Error, Principal, Role, TokenState,
    clock::SharedClock,
    filter::ListFilter,
    hash::Keys,
    input::{MAX_ETAG_LEN, MAX_MASK_PATHS, quote},
    name::{Namespace, TokenName, check_id},
    page::{self, QueryFingerprint},
    ratelimit::{self, RateLimit},
    token::{Secret, TokenFormat},
    validate::{self, Violations},
};
use apitoken_proto::v1::{self, api_token_service_server::ApiTokenService as ApiTokenServiceRpc};
use apitoken_store::{Grace, ListQuery, NewToken, TokenChanges, TokenRecord, TokenStore};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    audit::{Actor, RequestContext, audit_event},
    auth::{Authenticator, RATE_DECISION},
    convert::{api_token, from_timestamp, required},
    events::{EventHub, EventStream},
    limits::add_rate_headers,
    policy::{Policy, human},
};
use apitoken_store::UsageReport;
use std::sync::Arc;

/// Default `page_size` of `ListApiTokens`.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest `page_size`; larger values are lowered to it (AIP-158).
pub const MAX_PAGE_SIZE: u64 = 1000;

/// The service.
#[derive(Debug, Clone)]
pub struct ApiTokenService {
    store: TokenStore,
    auth: Authenticator,
    format: TokenFormat,
    keys: Keys,
    clock: SharedClock,
    events: Arc<EventHub>,
    policy: Arc<Policy>,
}

/// A new secret, ready to be stored (hash and hint) and shown once.
struct Minted {
    secret: Secret,
    hash: apitoken_domain::hash::SecretHash,
    hint: String,
}

impl ApiTokenService {
    /// The service over `store`.
    pub fn new(
        store: TokenStore,
        auth: Authenticator,
        format: TokenFormat,
        keys: Keys,
        clock: SharedClock,
        events: Arc<EventHub>,
        policy: Arc<Policy>,
    ) -> Self {
        Self {
            store,
            auth,
            format,
            keys,
            clock,
            events,
            policy,
        }
    }

    /// Records a policy refusal in the audit log and returns the error the
    /// caller gets (`INVALID_ARGUMENT` naming the field and the limit).
    async fn refuse_by_policy(
        &self,
        context: &RequestContext,
        caller: &Principal,
        resource: String,
        field: &str,
        description: String,
    ) -> Error {
        let namespace = caller.namespace().to_owned();
        let mut entry = context.entry(
            &namespace,
            Action::PolicyRefusal,
            Actor::Token(caller),
            resource,
            self.clock.now(),
        );
        entry.details.insert("field".into(), field.to_owned());
        entry.details.insert("reason".into(), description.clone());
        if let Err(error) = self.store.record_audit(entry).await {
            return error;
        }
        Error::invalid(field, description)
    }

    /// The wire form of a token, with the rate limit in force for it.
    fn present(&self, record: &TokenRecord, now: DateTime<Utc>) -> v1::ApiToken {
        api_token(record, now, self.auth.limits().token_limit(record))
    }

    fn mint(&self) -> Result<Minted, Error> {
        let secret = self.format.generate()?;
        let well_formed = self.format.parse(secret.clone())?;
        Ok(Minted {
            hash: self.keys.hash_secret(&well_formed),
            hint: self.format.hint(&well_formed),
            secret,
        })
    }
}

impl ApiTokenService {
    /// Authenticates the caller and authorizes `min_role` on the namespace
    /// named by `parent` (`namespaces/{namespace}`).
    async fn authorize_on_parent<T>(
        &self,
        request: &Request<T>,
        parent: &str,
        min_role: Role,
    ) -> Result<(Principal, Namespace), Error> {
        let caller = self.auth.authenticate(request).await?;
        let namespace = Namespace::parse_parent("parent", parent)?;
        caller.authorize(namespace.as_str(), min_role)?;
        Ok((caller, namespace))
    }

    /// Authenticates the caller and authorizes `min_role` on the namespace of
    /// the token named in `field`.
    async fn authorize_on_name<T>(
        &self,
        request: &Request<T>,
        field: &str,
        name: &str,
        min_role: Role,
    ) -> Result<(Principal, TokenName), Error> {
        let caller = self.auth.authenticate(request).await?;
        let name = TokenName::parse(field, name)?;
        caller.authorize(name.namespace().as_str(), min_role)?;
        Ok((caller, name))
    }
}

/// `page_size` (AIP-158): 0 means the default, larger than the maximum is
/// lowered to it, negative is a violation.
fn page_size(violations: &mut Violations, requested: i32) -> u64 {
    match u64::try_from(requested) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) => size.min(MAX_PAGE_SIZE),
        Err(_) => {
            violations.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
    }
}

/// Cuts `records` (fetched with one extra row) to a page and returns the
/// token of the next page, empty on the last one.
fn next_page<T>(
    records: &mut Vec<T>,
    page_size: u64,
    token_after: impl Fn(&T) -> String,
) -> String {
    if records.len() as u64 <= page_size {
        return String::new();
    }
    records.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
    records.last().map(token_after).unwrap_or_default()
}

/// [`next_page`] for records that are shared (a cached page): the page's
/// rows, and the token of the next page, empty on the last one.
fn page_of<T>(records: &[T], page_size: u64, token_after: impl Fn(&T) -> String) -> (&[T], String) {
    let shown = usize::try_from(page_size).unwrap_or(usize::MAX);
    if records.len() <= shown {
        return (records, String::new());
    }
    let page = &records[..shown];
    (page, page.last().map(token_after).unwrap_or_default())
}

/// Runs a handler with room for its rate-limit decision, and puts the
/// `x-ratelimit-*` headers on its reply, success or error.
async fn with_rate_headers<T>(
    handler: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    RATE_DECISION
        .scope(std::cell::Cell::new(None), async {
            let result = handler.await;
            let decision = RATE_DECISION.with(std::cell::Cell::get);
            match result {
                Ok(reply) => {
                    let mut response = Response::new(reply);
                    if let Some(decision) = &decision {
                        add_rate_headers(response.metadata_mut(), decision);
                    }
                    Ok(response)
                }
                Err(error) => {
                    let mut status = Status::from(error);
                    if let Some(decision) = &decision {
                        add_rate_headers(status.metadata_mut(), decision);
                    }
                    Err(status)
                }
            }
        })
        .await
}

#[tonic::async_trait]
impl ApiTokenServiceRpc for ApiTokenService {
    async fn create_api_token(
        &self,
        request: Request<v1::CreateApiTokenRequest>,
    ) -> Result<Response<v1::CreateApiTokenResponse>, Status> {
        with_rate_headers(self.create(request)).await
    }

    async fn get_api_token(
        &self,
        request: Request<v1::GetApiTokenRequest>,
    ) -> Result<Response<v1::ApiToken>, Status> {
        with_rate_headers(self.get(request)).await
    }

    async fn list_api_tokens(
        &self,
        request: Request<v1::ListApiTokensRequest>,
    ) -> Result<Response<v1::ListApiTokensResponse>, Status> {
        with_rate_headers(self.list(request)).await
    }

    async fn update_api_token(
        &self,
        request: Request<v1::UpdateApiTokenRequest>,
    ) -> Result<Response<v1::ApiToken>, Status> {
        with_rate_headers(self.update(request)).await
    }

    async fn regenerate_api_token(
        &self,
        request: Request<v1::RegenerateApiTokenRequest>,
    ) -> Result<Response<v1::RegenerateApiTokenResponse>, Status> {
        with_rate_headers(self.regenerate(request)).await
    }

    async fn revoke_api_token(
        &self,
        request: Request<v1::RevokeApiTokenRequest>,
    ) -> Result<Response<v1::ApiToken>, Status> {
        with_rate_headers(self.revoke(request)).await
    }

    type WatchApiTokenEventsStream = EventStream;

    async fn list_audit_events(
        &self,
        request: Request<v1::ListAuditEventsRequest>,
    ) -> Result<Response<v1::ListAuditEventsResponse>, Status> {
        with_rate_headers(self.list_audit(request)).await
    }

    async fn watch_api_token_events(
        &self,
        request: Request<v1::WatchApiTokenEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        with_rate_headers(self.watch(request)).await
    }

    async fn report_api_token_usage(
        &self,
        request: Request<v1::ReportApiTokenUsageRequest>,
    ) -> Result<Response<v1::ReportApiTokenUsageResponse>, Status> {
        with_rate_headers(self.report_usage(request)).await
    }

    async fn verify_api_token(
        &self,
        request: Request<v1::VerifyApiTokenRequest>,
    ) -> Result<Response<v1::VerifyApiTokenResponse>, Status> {
        with_rate_headers(self.verify(request)).await
    }

    async fn get_namespace_limits(
        &self,
        request: Request<v1::GetNamespaceLimitsRequest>,
    ) -> Result<Response<v1::NamespaceLimits>, Status> {
        with_rate_headers(ApiTokenService::get_namespace_limits(self, request)).await
    }

    async fn update_namespace_limits(
        &self,
        request: Request<v1::UpdateNamespaceLimitsRequest>,
    ) -> Result<Response<v1::NamespaceLimits>, Status> {
        with_rate_headers(ApiTokenService::update_namespace_limits(self, request)).await
    }
}
