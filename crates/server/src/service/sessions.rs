//! Audit entries of web console sessions: signing in and signing out are
//! recorded in the token's namespace, with the browser's address and user
//! agent (through the trusted proxies, as for any call). Only the console
//! in this process reaches this (it is no RPC), with the identity the
//! service's own `VerifyApiToken` answered.

use apitoken_domain::{audit::ConsoleSession, name::TokenName};
use tonic::Request;
use tracing::warn;

use super::ApiTokenService;
use crate::audit::Actor;

impl ApiTokenService {
    /// Audits `event` of the session of token `token_name` (uid `uid`),
    /// from the browser `request` describes. A failed write is logged:
    /// the session is not refused for it.
    pub async fn audit_console_session(
        &self,
        request: &Request<()>,
        token_name: &str,
        uid: &str,
        event: ConsoleSession,
    ) {
        let Ok(name) = TokenName::parse("name", token_name) else {
            return;
        };
        let mut entry = self.auth.context(request).entry(
            name.namespace().as_str(),
            event.action(),
            Actor::Named(token_name),
            token_name.to_owned(),
            self.clock.now(),
        );
        entry.actor_uid = Some(uid.to_owned());
        entry.resource_uid = Some(uid.to_owned());
        if let Err(error) = self.store.record_audit(entry).await {
            warn!(error = %error, token = %name, "could not audit a console session");
        }
    }
}
