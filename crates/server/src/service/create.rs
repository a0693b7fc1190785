//! `CreateApiToken`: the new token's fields validated against the policy
//! (role no higher than the caller's, expiry within the namespace's bounds,
//! quota), then the row, its event and audit entry in one transaction.

use super::limits::requested_limit;
use super::*;

impl ApiTokenService {
    pub(super) async fn create(
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
        // A token that never expires outlives any maximum lifetime.
        if expire_time.is_none() && (policy.required || policy.max_lifetime.is_some()) {
            let description = match policy.max_lifetime {
                Some(max) => format!(
                    "is required by the expiry policy of namespace {namespace} (tokens live at most {}): set api_token.expire_time or ttl",
                    human(max)
                ),
                None => format!(
                    "is required by the expiry policy of namespace {namespace}: set api_token.expire_time or ttl"
                ),
            };
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
}
