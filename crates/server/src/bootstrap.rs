//! `apitoken-server bootstrap`: the first owner token of a namespace, made
//! straight in the database (creator `bootstrap`). Only its secret goes to
//! standard output.

use std::time::Duration;

use apitoken_domain::audit::Action;
use apitoken_domain::{
    BOOTSTRAP_PRINCIPAL, Error, Role,
    clock::SharedClock,
    hash::Keys,
    name::{Namespace, TokenName},
    token::{Secret, TokenFormat},
};
use apitoken_store::{NewToken, TokenRecord, TokenStore};

use crate::audit::{Actor, RequestContext};
use tracing::info;

/// What to create.
#[derive(Debug, Clone)]
pub struct BootstrapRequest {
    /// Namespace id.
    pub namespace: String,
    /// Token id.
    pub token_id: String,
    /// Role.
    pub role: Role,
    /// Lifetime; none: never expires.
    pub ttl: Option<Duration>,
    /// An interceptor's token (may report usage and name caller addresses).
    pub interceptor: bool,
}

/// Creates the token and returns it with its secret.
pub async fn bootstrap_token(
    store: &TokenStore,
    format: &TokenFormat,
    keys: &Keys,
    clock: &SharedClock,
    request: &BootstrapRequest,
) -> Result<(TokenRecord, Secret), Error> {
    let namespace = Namespace::new("namespace", &request.namespace)?;
    let name = TokenName::new(namespace, "name", &request.token_id)?;
    let now = clock.now();
    let expire_time = match request.ttl {
        Some(ttl) => {
            let expiry = chrono::Duration::from_std(ttl)
                .ok()
                .and_then(|ttl| now.checked_add_signed(ttl))
                .ok_or_else(|| Error::invalid("ttl", "is too long"))?;
            apitoken_domain::validate::expire_time("ttl", expiry, now)
                .map_err(|violation| Error::InvalidArgument(vec![violation]))?;
            Some(expiry)
        }
        None => None,
    };
    let secret = format.generate()?;
    let well_formed = format.parse(secret.clone())?;
    let record = store
        .insert(
            NewToken {
                name,
                display_name: "Bootstrap token".to_owned(),
                description: "Created by apitoken-server bootstrap".to_owned(),
                role: request.role,
                labels: Default::default(),
                creator: BOOTSTRAP_PRINCIPAL.to_owned(),
                expire_time,
                secret_hash: keys.hash_secret(&well_formed),
                secret_hint: format.hint(&well_formed),
                rate_limit: None,
                interceptor: request.interceptor,
                now,
            },
            // The escape hatch is not bound by the quota.
            None,
            {
                let mut entry = RequestContext::rule().entry(
                    &request.namespace,
                    Action::Create,
                    Actor::Named(BOOTSTRAP_PRINCIPAL),
                    format!(
                        "namespaces/{}/apitokens/{}",
                        request.namespace, request.token_id
                    ),
                    now,
                );
                entry
                    .details
                    .insert("role".into(), request.role.to_string());
                if request.interceptor {
                    entry.details.insert("interceptor".into(), "true".into());
                }
                entry
            },
        )
        .await?;
    info!(token = %record.name, role = %record.role, "bootstrap token created");
    Ok((record, secret))
}
