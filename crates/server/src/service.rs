//! The `ApiTokenService` handlers: authenticate, authorize, validate (naming
//! every bad field), then one store call. Every write is a single statement
//! or one transaction.

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

/// The mutable fields of a token, as named in an update mask
/// (`rate_limit`, the older form of `limit`, is taken as `limit`).
const UPDATABLE: [&str; 6] = [
    "display_name",
    "description",
    "labels",
    "expire_time",
    "role",
    "limit",
];

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

/// Most usages in one `ReportApiTokenUsage` call.
pub const MAX_USAGE_REPORTS: usize = 1000;
/// Most uses of one token in one usage report.
pub const MAX_USE_COUNT: i64 = 1_000_000_000;
/// Longest token uid (a UUID is 36).
const MAX_UID_LEN: usize = 64;

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

    async fn create(
        &self,
        request: Request<v1::CreateApiTokenRequest>,
    ) -> Result<v1::CreateApiTokenResponse, Error> {
        let context = self.auth.context(&request);
        let (caller, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Owner)
            .await?;
        let request = request.into_inner();

        let now = self.clock.now();
        let mut violations = Violations::default();
        violations.check(check_id("api_token_id", &request.api_token_id));
        let Some(token) = request.api_token.as_ref() else {
            violations.add("api_token", "is required");
            return Err(violations.into_error());
        };
        let role = Role::from_proto(token.role);
        if role.is_none() {
            violations.add(
                "api_token.role",
                "is required: ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER",
            );
        }
        violations.check(validate::display_name(
            "api_token.display_name",
            &token.display_name,
        ));
        violations.check(validate::description(
            "api_token.description",
            &token.description,
        ));
        let labels: BTreeMap<String, String> = token.labels.clone().into_iter().collect();
        validate::labels("api_token.labels", &labels, &mut violations);
        let expire_time = match &token.expire_time {
            Some(timestamp) => {
                let parsed = from_timestamp("api_token.expire_time", timestamp).and_then(|time| {
                    validate::expire_time("api_token.expire_time", time, now).map(|()| time)
                });
                match parsed {
                    Ok(time) => Some(time),
                    Err(violation) => {
                        violations.check(Err(violation));
                        None
                    }
                }
            }
            None => None,
        };
        let ttl = match &request.ttl {
            None => None,
            Some(ttl) => match validate::duration(
                "ttl",
                ttl.seconds,
                ttl.nanos,
                chrono::Duration::days(validate::MAX_LIFETIME_DAYS),
                "36525 days (100 years)",
            ) {
                Ok(Some(ttl)) => Some(ttl),
                Ok(None) => {
                    violations.add("ttl", "must be a positive duration");
                    None
                }
                Err(violation) => {
                    violations.check(Err(violation));
                    None
                }
            },
        };
        if token.expire_time.is_some() && request.ttl.is_some() {
            violations.add("ttl", "set api_token.expire_time or ttl, not both");
        }
        let expire_time = expire_time.or_else(|| ttl.and_then(|ttl| now.checked_add_signed(ttl)));
        let rate_limit = requested_limit(
            token,
            self.auth.limits().max_token_rate_limit,
            &mut violations,
        );
        let expected_name = format!(
            "{}/apitokens/{}",
            namespace.resource_name(),
            request.api_token_id
        );
        if !token.name.is_empty() && token.name != expected_name {
            violations.add(
                "api_token.name",
                "must be empty or match parent and api_token_id",
            );
        }
        violations.finish()?;
        let role = role.ok_or(Error::Internal)?;
        caller.may_grant(role)?;

        // The expiry policy of the namespace.
        let policy = self.policy.expiry(namespace.as_str());
        let field = if request.ttl.is_some() {
            "ttl"
        } else {
            "api_token.expire_time"
        };
        let expire_time = expire_time.or_else(|| {
            policy
                .default_lifetime
                .and_then(|lifetime| chrono::Duration::from_std(lifetime).ok())
                .and_then(|lifetime| now.checked_add_signed(lifetime))
        });
        if expire_time.is_none() && policy.required {
            let description = format!(
                "is required by the expiry policy of namespace {namespace}: set api_token.expire_time or ttl"
            );
            return Err(self
                .refuse_by_policy(
                    &context,
                    &caller,
                    expected_name,
                    "api_token.expire_time",
                    description,
                )
                .await);
        }
        if let (Some(expire_time), Some(max)) = (expire_time, policy.max_lifetime)
            && chrono::Duration::from_std(max)
                .ok()
                .and_then(|max| now.checked_add_signed(max))
                .is_some_and(|latest| expire_time > latest)
        {
            let description = format!(
                "must be at most {} from now: the maximum lifetime of tokens in namespace {namespace}",
                human(max)
            );
            return Err(self
                .refuse_by_policy(&context, &caller, expected_name, field, description)
                .await);
        }

        let namespace_id = namespace.clone();
        let name = TokenName::new(namespace, "api_token_id", &request.api_token_id)?;
        let minted = self.mint()?;
        let record = self
            .store
            .insert(
                NewToken {
                    name,
                    display_name: token.display_name.clone(),
                    description: token.description.clone(),
                    role,
                    labels,
                    creator: caller.name.to_string(),
                    expire_time,
                    secret_hash: minted.hash,
                    secret_hint: minted.hint,
                    rate_limit,
                    interceptor: token.interceptor,
                    now,
                },
                Some(self.auth.limits().quota(namespace_id.as_str())),
                {
                    let mut entry = context.entry(
                        namespace_id.as_str(),
                        Action::Create,
                        Actor::Token(&caller),
                        expected_name.clone(),
                        now,
                    );
                    entry.details.insert("role".into(), role.to_string());
                    if token.interceptor {
                        entry.details.insert("interceptor".into(), "true".into());
                    }
                    if let Some(expiry) = expire_time {
                        entry
                            .details
                            .insert("expire_time".into(), expiry.to_rfc3339());
                    }
                    entry
                },
            )
            .await?;
        info!(token = %record.name, role = %record.role, actor = %caller.name, "token created");
        Ok(v1::CreateApiTokenResponse {
            api_token: Some(self.present(&record, now)),
            secret: minted.secret.expose().to_owned(),
        })
    }

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

    async fn get(&self, request: Request<v1::GetApiTokenRequest>) -> Result<v1::ApiToken, Error> {
        let (_, name) = self
            .authorize_on_name(&request, "name", &request.get_ref().name, Role::Viewer)
            .await?;
        // From memory when the index holds it (the usual case); a token
        // created on another replica a moment ago may not be there yet.
        let index = self.auth.index();
        let record = match index.by_name(name.namespace().as_str(), name.token_id()) {
            Some(view) => index.record(&view).await?,
            None => Arc::new(self.store.get(&name).await?),
        };
        Ok(self.present(&record, self.clock.now()))
    }

    async fn list(
        &self,
        request: Request<v1::ListApiTokensRequest>,
    ) -> Result<v1::ListApiTokensResponse, Error> {
        let (_, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Viewer)
            .await?;
        let request = request.into_inner();

        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.page_size);
        let filter = violations.take(ListFilter::parse("filter", &request.filter))?;
        let query = QueryFingerprint::of(&request.parent, &request.filter, request.show_revoked);
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            violations.take(page::decode(
                &self.keys,
                "page_token",
                query,
                &request.page_token,
            ))?
        };
        violations.finish()?;
        let filter = filter.unwrap_or_default();

        let now = self.clock.now();
        let include_revoked = request.show_revoked || filter.asks_for_revoked();
        let mut records = self
            .store
            .list(&ListQuery {
                namespace: namespace.as_str().to_owned(),
                filter,
                include_revoked,
                before_id,
                limit: page_size + 1,
                now,
            })
            .await?;
        let next_page_token = next_page(&mut records, page_size, |last| {
            page::encode(&self.keys, query, last.id)
        });
        Ok(v1::ListApiTokensResponse {
            api_tokens: records
                .iter()
                .map(|record| self.present(record, now))
                .collect(),
            next_page_token,
        })
    }

    async fn update(
        &self,
        request: Request<v1::UpdateApiTokenRequest>,
    ) -> Result<v1::ApiToken, Error> {
        let context = self.auth.context(&request);
        let token = required("api_token", request.get_ref().api_token.as_ref())?.clone();
        let (caller, name) = self
            .authorize_on_name(&request, "api_token.name", &token.name, Role::Owner)
            .await?;
        let paths = update_paths(&token, request.get_ref().update_mask.as_ref())?;
        if token.etag.len() > MAX_ETAG_LEN {
            return Err(Error::invalid(
                "api_token.etag",
                format!("must be at most {MAX_ETAG_LEN} bytes: send back the etag the server gave"),
            ));
        }
        let now = self.clock.now();
        let mut entry = context.entry(
            name.namespace().as_str(),
            Action::Update,
            Actor::Token(&caller),
            name.to_string(),
            now,
        );
        entry.details.insert("fields".into(), paths.join(","));
        let max_limit = self.auth.limits().max_token_rate_limit;
        let record = self
            .store
            .update(
                &name,
                now,
                |current| changes_for(&token, &paths, current, &caller, now, max_limit),
                entry,
            )
            .await?;
        self.events.appended();
        info!(token = %record.name, fields = ?paths, actor = %caller.name, "token updated");
        Ok(self.present(&record, now))
    }

    async fn regenerate(
        &self,
        request: Request<v1::RegenerateApiTokenRequest>,
    ) -> Result<v1::RegenerateApiTokenResponse, Error> {
        let context = self.auth.context(&request);
        let (caller, name) = self
            .authorize_on_name(&request, "name", &request.get_ref().name, Role::Owner)
            .await?;
        let now = self.clock.now();
        let grace_ttl = match &request.get_ref().previous_secret_ttl {
            None => None,
            Some(ttl) => validate::duration(
                "previous_secret_ttl",
                ttl.seconds,
                ttl.nanos,
                chrono::Duration::days(validate::MAX_LIFETIME_DAYS),
                "36525 days",
            )
            .map_err(|violation| Error::InvalidArgument(vec![violation]))?,
        };
        if let Some(ttl) = grace_ttl
            && chrono::Duration::from_std(self.policy.max_grace).is_ok_and(|max| ttl > max)
        {
            let description = format!(
                "must be at most {}: the longest grace period of this deployment",
                human(self.policy.max_grace)
            );
            return Err(self
                .refuse_by_policy(
                    &context,
                    &caller,
                    name.to_string(),
                    "previous_secret_ttl",
                    description,
                )
                .await);
        }
        let end_on_first_use = request.get_ref().end_grace_on_first_use;
        if end_on_first_use && grace_ttl.is_none() {
            return Err(Error::invalid(
                "end_grace_on_first_use",
                "needs a previous_secret_ttl: without a grace period the previous secret dies at once",
            ));
        }
        let grace = grace_ttl
            .and_then(|ttl| now.checked_add_signed(ttl))
            .map(|until| Grace {
                until,
                end_on_first_use,
            });
        let current = self.store.get(&name).await?;
        if current.state(now) == TokenState::Expired {
            return Err(Error::FailedPrecondition {
                resource: name.to_string(),
                kind: "TOKEN_EXPIRED",
                message: "an expired token cannot be regenerated: create a new one".to_owned(),
            });
        }
        let minted = self.mint()?;
        let mut entry = context.entry(
            name.namespace().as_str(),
            Action::Regenerate,
            Actor::Token(&caller),
            name.to_string(),
            now,
        );
        if let Some(grace) = grace {
            entry.details.insert(
                "previous_secret_expire_time".into(),
                grace.until.to_rfc3339(),
            );
            entry.details.insert(
                "end_grace_on_first_use".into(),
                grace.end_on_first_use.to_string(),
            );
        }
        let record = self
            .store
            .regenerate(&name, &minted.hash, minted.hint, now, grace, entry)
            .await?;
        self.events.appended();
        info!(token = %record.name, actor = %caller.name, "token regenerated");
        Ok(v1::RegenerateApiTokenResponse {
            api_token: Some(self.present(&record, now)),
            secret: minted.secret.expose().to_owned(),
        })
    }

    async fn revoke(
        &self,
        request: Request<v1::RevokeApiTokenRequest>,
    ) -> Result<v1::ApiToken, Error> {
        let context = self.auth.context(&request);
        let caller = self.auth.authenticate(&request).await?;
        let name = TokenName::parse("name", &request.get_ref().name)?;
        // Any token may revoke itself: the first thing to do with a leak.
        let itself = caller.name == name;
        if !itself {
            caller.authorize(name.namespace().as_str(), Role::Owner)?;
        }
        let now = self.clock.now();
        let mut entry = context.entry(
            name.namespace().as_str(),
            Action::Revoke,
            Actor::Token(&caller),
            name.to_string(),
            now,
        );
        if itself {
            entry.details.insert("self".into(), "true".into());
        }
        let record = self
            .store
            .revoke(&name, &caller.name.to_string(), now, entry)
            .await?;
        self.events.appended();
        info!(token = %record.name, actor = %caller.name, "token revoked");
        Ok(self.present(&record, now))
    }

    async fn verify(
        &self,
        request: Request<v1::VerifyApiTokenRequest>,
    ) -> Result<v1::VerifyApiTokenResponse, Error> {
        let verified = if request.get_ref().secret.is_empty() {
            self.auth.authenticate_verified(&request).await?
        } else {
            // An interceptor names the address of the call it authenticates;
            // anyone else is taken to be calling from where they call.
            let peer = self.auth.client_address(&request);
            let named = if request.get_ref().caller_address.is_empty() {
                None
            } else {
                Some(
                    validate::ip_address("caller_address", &request.get_ref().caller_address)
                        .map_err(|violation| Error::InvalidArgument(vec![violation]))?,
                )
            };
            let caller = match named {
                Some(address) if self.auth.interceptor_of(&request).await.is_some() => {
                    Some(address)
                }
                _ => peer,
            };
            let secret = Secret::new(request.get_ref().secret.clone());
            self.auth.verify(secret, caller, &request).await?
        };
        let record = self.auth.index().record(&verified.view).await?;
        let secret_expire_time = verified.secret_expire_time;
        let namespace_limit = self.auth.namespace_limit(record.name.namespace().as_str());
        Ok(v1::VerifyApiTokenResponse {
            secret_expire_time: secret_expire_time.map(crate::convert::timestamp),
            api_token: Some(self.present(&record, self.clock.now())),
            namespace_rate_limit: namespace_limit.per_minute_figure(),
            namespace_limit: Some(ratelimit::to_proto(namespace_limit)),
        })
    }
}

impl ApiTokenService {
    async fn watch(
        &self,
        request: Request<v1::WatchApiTokenEventsRequest>,
    ) -> Result<EventStream, Error> {
        let (caller, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Viewer)
            .await?;
        let request = request.into_inner();
        let slot = self.events.reserve(&caller.uid, &caller.name)?;
        let cursor = self.events.start(request.after_sequence).await?;
        info!(namespace = %namespace, cursor, watcher = %caller.name, "event stream opened");
        let watcher = crate::index::parse_uid(&caller.uid).ok_or(Error::Internal)?;
        Ok(self
            .events
            .stream(namespace.as_str().to_owned(), cursor, watcher, slot))
    }

    async fn report_usage(
        &self,
        request: Request<v1::ReportApiTokenUsageRequest>,
    ) -> Result<v1::ReportApiTokenUsageResponse, Error> {
        let caller = self.auth.authenticate(&request).await?;
        let namespace = Namespace::parse_parent("parent", &request.get_ref().parent)?;
        caller.authorize_interceptor(namespace.as_str())?;
        let request = request.into_inner();
        let now = self.clock.now();
        let mut violations = Violations::default();
        if request.usages.len() > MAX_USAGE_REPORTS {
            violations.add(
                "usages",
                format!("must have at most {MAX_USAGE_REPORTS} entries"),
            );
        }
        let mut reports = Vec::with_capacity(request.usages.len());
        for (index, usage) in request.usages.iter().enumerate() {
            let field = |name: &str| format!("usages[{index}].{name}");
            if usage.uid.is_empty() {
                violations.add(field("uid"), "is required");
            } else if usage.uid.len() > MAX_UID_LEN {
                violations.add(field("uid"), format!("must be at most {MAX_UID_LEN} bytes"));
            }
            if !(1..=MAX_USE_COUNT).contains(&usage.use_count) {
                violations.add(
                    field("use_count"),
                    format!("must be from 1 to {MAX_USE_COUNT}"),
                );
            }
            let last_use_time = match usage
                .last_use_time
                .as_ref()
                .map(|t| from_timestamp(&field("last_use_time"), t))
            {
                None => {
                    violations.add(field("last_use_time"), "is required");
                    continue;
                }
                Some(Err(violation)) => {
                    violations.check(Err(violation));
                    continue;
                }
                // A reporter's clock may run ahead: never record a use in the future.
                Some(Ok(time)) => time.min(now),
            };
            let last_use_ip = if usage.last_use_ip.is_empty() {
                None
            } else {
                match validate::ip_address(&field("last_use_ip"), &usage.last_use_ip) {
                    Ok(ip) => Some(ip.to_string()),
                    Err(violation) => {
                        violations.check(Err(violation));
                        continue;
                    }
                }
            };
            reports.push(UsageReport {
                namespace: namespace.as_str().to_owned(),
                uid: usage.uid.clone(),
                count: usage.use_count,
                last_use_time,
                last_use_ip,
            });
        }
        violations.finish()?;
        let accepted = self.store.record_usage(&reports).await?;
        Ok(v1::ReportApiTokenUsageResponse {
            accepted: i32::try_from(accepted).unwrap_or(i32::MAX),
        })
    }
}

impl ApiTokenService {
    /// The wire form of a namespace's limits.
    async fn namespace_limits(&self, namespace: &Namespace) -> Result<v1::NamespaceLimits, Error> {
        let limits = self.auth.limits();
        let ceiling = limits.operator_namespace_limit(namespace.as_str());
        let own = self.store.namespace_limit(namespace.as_str()).await?;
        Ok(v1::NamespaceLimits {
            name: format!("{}/limits", namespace.resource_name()),
            rate_limit: Some(ratelimit::to_proto(
                self.auth.namespace_limit(namespace.as_str()),
            )),
            max_rate_limit: Some(ratelimit::to_proto(ceiling)),
            token_quota: i32::try_from(limits.quota(namespace.as_str())).unwrap_or(i32::MAX),
            update_time: own
                .as_ref()
                .map(|own| crate::convert::timestamp(own.update_time)),
            updater: own.map(|own| own.updater).unwrap_or_default(),
        })
    }

    async fn get_namespace_limits(
        &self,
        request: Request<v1::GetNamespaceLimitsRequest>,
    ) -> Result<v1::NamespaceLimits, Error> {
        let caller = self.auth.authenticate(&request).await?;
        let namespace = limits_namespace("name", &request.get_ref().name)?;
        caller.authorize(namespace.as_str(), Role::Viewer)?;
        self.namespace_limits(&namespace).await
    }

    async fn update_namespace_limits(
        &self,
        request: Request<v1::UpdateNamespaceLimitsRequest>,
    ) -> Result<v1::NamespaceLimits, Error> {
        let context = self.auth.context(&request);
        let caller = self.auth.authenticate(&request).await?;
        let limits = required(
            "namespace_limits",
            request.get_ref().namespace_limits.as_ref(),
        )?;
        let namespace = limits_namespace("namespace_limits.name", &limits.name)?;
        caller.authorize(namespace.as_str(), Role::Owner)?;
        let paths: &[String] = request
            .get_ref()
            .update_mask
            .as_ref()
            .map_or(&[], |mask| mask.paths.as_slice());
        if paths.len() > MAX_MASK_PATHS {
            return Err(Error::invalid(
                "update_mask",
                format!("must have at most {MAX_MASK_PATHS} paths"),
            ));
        }
        if let Some(path) = paths
            .iter()
            .find(|path| !matches!(path.as_str(), "rate_limit" | "*"))
        {
            return Err(Error::invalid(
                "update_mask",
                format!("{} cannot be updated: use rate_limit", quote(path)),
            ));
        }
        let ceiling = self
            .auth
            .limits()
            .operator_namespace_limit(namespace.as_str());
        let own = match &limits.rate_limit {
            None => None,
            Some(wire) => {
                let limit = ratelimit::from_proto(wire).map_err(|(subfield, description)| {
                    let field = if subfield.is_empty() {
                        "namespace_limits.rate_limit".to_owned()
                    } else {
                        format!("namespace_limits.rate_limit.{subfield}")
                    };
                    Error::invalid(&field, description)
                })?;
                if !limit.within(ceiling) {
                    return Err(Error::invalid(
                        "namespace_limits.rate_limit",
                        format!(
                            "must be at most {ceiling} ({}): the deployment's figure for namespace {namespace}",
                            describe_rate_limit(ceiling)
                        ),
                    ));
                }
                Some(limit)
            }
        };
        let now = self.clock.now();
        let resource = format!("{}/limits", namespace.resource_name());
        let mut entry = context.entry(
            namespace.as_str(),
            Action::Update,
            Actor::Token(&caller),
            resource.clone(),
            now,
        );
        entry.details.insert(
            "rate_limit".into(),
            own.map_or_else(|| format!("default ({ceiling})"), |own| own.to_string()),
        );
        self.store
            .set_namespace_limit(
                namespace.as_str(),
                own,
                &caller.name.to_string(),
                now,
                entry,
            )
            .await?;
        self.auth.namespaces().set(namespace.as_str(), own);
        info!(%resource, rate_limit = ?own, actor = %caller.name, "namespace limit updated");
        self.namespace_limits(&namespace).await
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditEventsRequest>,
    ) -> Result<v1::ListAuditEventsResponse, Error> {
        let (_, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Owner)
            .await?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.page_size);
        let filter = violations.take(AuditFilter::parse("filter", &request.filter))?;
        let query =
            QueryFingerprint::of(&request.parent, &format!("audit:{}", request.filter), false);
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            violations.take(page::decode(
                &self.keys,
                "page_token",
                query,
                &request.page_token,
            ))?
        };
        violations.finish()?;
        let filter = filter.unwrap_or_default();
        let mut records = self
            .store
            .list_audit(namespace.as_str(), &filter, before_id, page_size + 1)
            .await?;
        let next_page_token = next_page(&mut records, page_size, |last| {
            page::encode(&self.keys, query, last.id)
        });
        Ok(v1::ListAuditEventsResponse {
            audit_events: records.iter().map(audit_event).collect(),
            next_page_token,
        })
    }
}

/// A token's own limit as given on create or update: `limit`, or the older
/// `rate_limit` (a minute), or neither (`None`: the role's default). Never
/// above `max`; every refusal names the field and the bound.
fn requested_limit(
    token: &v1::ApiToken,
    max: RateLimit,
    violations: &mut Violations,
) -> Option<RateLimit> {
    let requested = match (&token.limit, token.rate_limit) {
        (Some(limit), legacy) => match ratelimit::from_proto(limit) {
            // A token read back (both forms, agreeing) is fine.
            Ok(limit) if legacy == 0 || legacy == limit.per_minute_figure() => limit,
            Ok(_) => {
                violations.add(
                    "api_token.rate_limit",
                    "set api_token.limit or api_token.rate_limit, not both",
                );
                return None;
            }
            Err((subfield, description)) => {
                let field = if subfield.is_empty() {
                    "api_token.limit".to_owned()
                } else {
                    format!("api_token.limit.{subfield}")
                };
                violations.add(field, description);
                return None;
            }
        },
        (None, 0) => return None,
        (None, legacy) => match u32::try_from(legacy)
            .ok()
            .filter(|count| (1..=ratelimit::MAX_COUNT).contains(count))
        {
            Some(count) => RateLimit::per_minute(count),
            None => {
                violations.add(
                    "api_token.rate_limit",
                    format!(
                        "must be from 1 to {} requests a minute, or 0 for the role's default",
                        ratelimit::MAX_COUNT
                    ),
                );
                return None;
            }
        },
    };
    if !requested.within(max) {
        let field = if token.limit.is_some() {
            "api_token.limit"
        } else {
            "api_token.rate_limit"
        };
        violations.add(
            field,
            format!(
                "must be at most {max} ({}): the deployment's maximum for a token's own limit",
                describe_rate_limit(max)
            ),
        );
        return None;
    }
    Some(requested)
}

/// "120 requests a minute", or "unlimited".
fn describe_rate_limit(limit: RateLimit) -> String {
    match limit {
        RateLimit::Unlimited => "unlimited".to_owned(),
        RateLimit::Limited(limit) => {
            format!("{} requests a {}", limit.count, limit.window.word())
        }
    }
}

/// The namespace of `namespaces/{namespace}/limits` given as `field`.
fn limits_namespace(field: &str, name: &str) -> Result<Namespace, Error> {
    let parent = name.strip_suffix("/limits").ok_or_else(|| {
        Error::invalid(field, "must be of the form namespaces/{namespace}/limits")
    })?;
    Namespace::parse_parent(field, parent)
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

/// The fields an update touches: the mask's paths (`*` for all), or, with
/// no mask, every mutable field set in `token` (AIP-134).
fn update_paths(
    token: &v1::ApiToken,
    mask: Option<&prost_types::FieldMask>,
) -> Result<Vec<&'static str>, Error> {
    let paths: &[String] = mask.map_or(&[], |mask| mask.paths.as_slice());
    if paths.len() > MAX_MASK_PATHS {
        return Err(Error::invalid(
            "update_mask",
            format!("must have at most {MAX_MASK_PATHS} paths"),
        ));
    }
    if paths.is_empty() {
        let set = [
            !token.display_name.is_empty(),
            !token.description.is_empty(),
            !token.labels.is_empty(),
            token.expire_time.is_some(),
            token.role != 0,
            token.limit.is_some() || token.rate_limit != 0,
        ];
        let implied: Vec<_> = UPDATABLE
            .into_iter()
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|(path, _)| path)
            .collect();
        if implied.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "is required when no field is set",
            ));
        }
        return Ok(implied);
    }
    if paths.iter().any(|path| path == "*") {
        if paths.len() > 1 {
            return Err(Error::invalid("update_mask", "`*` must be the only path"));
        }
        return Ok(UPDATABLE.to_vec());
    }
    let mut violations = Violations::default();
    let mut known = Vec::new();
    for path in paths {
        let path = if path == "rate_limit" { "limit" } else { path };
        match UPDATABLE.iter().find(|field| **field == path) {
            Some(field) if !known.contains(field) => known.push(*field),
            Some(_) => {}
            None => violations.add(
                "update_mask",
                format!(
                    "{} cannot be updated: use display_name, description, labels, expire_time, role or limit",
                    quote(path)
                ),
            ),
        }
    }
    violations.finish()?;
    Ok(known)
}

/// The changes an update makes to `current`, enforcing the rules: text and
/// labels valid, expiry only earlier (and in the future), role only lower,
/// etag (if given) current.
fn changes_for(
    token: &v1::ApiToken,
    paths: &[&str],
    current: &TokenRecord,
    caller: &Principal,
    now: DateTime<Utc>,
    max_limit: RateLimit,
) -> Result<TokenChanges, Error> {
    if !token.etag.is_empty() && token.etag != current.etag() {
        return Err(Error::Aborted(format!(
            "etag {} does not match the current etag of {}: read it again and retry",
            quote(&token.etag),
            current.name
        )));
    }
    let mut violations = Violations::default();
    let mut changes = TokenChanges::default();
    for path in paths {
        match *path {
            "display_name" => {
                violations.check(validate::display_name(
                    "api_token.display_name",
                    &token.display_name,
                ));
                changes.display_name = Some(token.display_name.clone());
            }
            "description" => {
                violations.check(validate::description(
                    "api_token.description",
                    &token.description,
                ));
                changes.description = Some(token.description.clone());
            }
            "labels" => {
                let labels: BTreeMap<_, _> = token.labels.clone().into_iter().collect();
                validate::labels("api_token.labels", &labels, &mut violations);
                changes.labels = Some(labels);
            }
            "expire_time" => match expiry_change(token, current, now) {
                Ok(expiry) => changes.expire_time = expiry,
                Err(violation) => violations.check(Err(violation)),
            },
            "role" => match Role::from_proto(token.role) {
                None => violations.add(
                    "api_token.role",
                    "is required: ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER",
                ),
                Some(role) if role > current.role => violations.add(
                    "api_token.role",
                    format!(
                        "may only be lowered (currently {}): create a new token for a higher role",
                        current.role
                    ),
                ),
                Some(role) => {
                    caller.may_grant(role)?;
                    changes.role = (role != current.role).then_some(role);
                }
            },
            "limit" => {
                let requested = requested_limit(token, max_limit, &mut violations);
                if requested != current.rate_limit {
                    changes.rate_limit = Some(requested);
                }
            }
            _ => return Err(Error::Internal),
        }
    }
    violations.finish()?;
    // Unchanged values are no change at all (no new etag).
    if changes.display_name.as_ref() == Some(&current.display_name) {
        changes.display_name = None;
    }
    if changes.description.as_ref() == Some(&current.description) {
        changes.description = None;
    }
    if changes.labels.as_ref() == Some(&current.labels) {
        changes.labels = None;
    }
    Ok(changes)
}

/// The new expiry, if it changes: it must be set, in the future, and no
/// later than the current one.
fn expiry_change(
    token: &v1::ApiToken,
    current: &TokenRecord,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, apitoken_domain::error::FieldViolation> {
    let field = "api_token.expire_time";
    let Some(timestamp) = &token.expire_time else {
        return match current.expire_time {
            None => Ok(None),
            Some(_) => Err(apitoken_domain::error::FieldViolation::new(
                field,
                "may only be shortened: it cannot be removed",
            )),
        };
    };
    let expiry = from_timestamp(field, timestamp)?;
    validate::expire_time(field, expiry, now)?;
    match current.expire_time {
        Some(existing) if expiry > existing => Err(apitoken_domain::error::FieldViolation::new(
            field,
            format!("may only be shortened: it is {}", existing.to_rfc3339()),
        )),
        Some(existing) if expiry == existing => Ok(None),
        _ => Ok(Some(expiry)),
    }
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
