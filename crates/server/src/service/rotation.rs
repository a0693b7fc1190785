//! The end of a secret's life: `RegenerateApiToken` (a new secret, the old
//! one kept for an optional grace period) and `RevokeApiToken` (at once,
//! everywhere, for good; any token may revoke itself).

use super::*;

impl ApiTokenService {
    pub(super) async fn regenerate(
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

    pub(super) async fn revoke(
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
}
