//! Rate limits as data: `GetNamespaceLimits`, `UpdateNamespaceLimits`
//! (never above the deployment's figure), and the parsing of a token's own
//! limit on create and update.

use super::*;

impl ApiTokenService {
    /// The wire form of a namespace's limits.
    pub(super) async fn namespace_limits(
        &self,
        namespace: &Namespace,
    ) -> Result<v1::NamespaceLimits, Error> {
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

    pub(super) async fn get_namespace_limits(
        &self,
        request: Request<v1::GetNamespaceLimitsRequest>,
    ) -> Result<v1::NamespaceLimits, Error> {
        let caller = self.auth.authenticate(&request).await?;
        let namespace = limits_namespace("name", &request.get_ref().name)?;
        caller.authorize(namespace.as_str(), Role::Viewer)?;
        self.namespace_limits(&namespace).await
    }

    pub(super) async fn update_namespace_limits(
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
}

/// A token's own limit as given on create or update: `limit`, or the older
/// `rate_limit` (a minute), or neither (`None`: the role's default). Never
/// above `max`; every refusal names the field and the bound.
pub(super) fn requested_limit(
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
pub(super) fn describe_rate_limit(limit: RateLimit) -> String {
    match limit {
        RateLimit::Unlimited => "unlimited".to_owned(),
        RateLimit::Limited(limit) => {
            format!("{} requests a {}", limit.count, limit.window.word())
        }
    }
}

/// The namespace of `namespaces/{namespace}/limits` given as `field`.
pub(super) fn limits_namespace(field: &str, name: &str) -> Result<Namespace, Error> {
    let parent = name.strip_suffix("/limits").ok_or_else(|| {
        Error::invalid(field, "must be of the form namespaces/{namespace}/limits")
    })?;
    Namespace::parse_parent(field, parent)
}
