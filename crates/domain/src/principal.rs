//! The authenticated caller and the authorization checks made on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::{DenyReason, Error, Role, name::TokenName};

/// The token that authenticated a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's resource name.
    pub name: TokenName,
    /// The token's uid.
    pub uid: String,
    /// The token's role.
    pub role: Role,
    /// When the token expires, if ever.
    pub expire_time: Option<DateTime<Utc>>,
    /// The token belongs to an interceptor or proxy (may report usage and
    /// name the address of the calls it verifies).
    pub interceptor: bool,
    /// The token's display name, as apitoken returned it with the
    /// verification (what an interceptor hands its handlers). Empty in the
    /// apitoken server's own handlers, which authorize from memory and never
    /// read it.
    pub display_name: String,
    /// The token's labels, likewise (e.g. `env=prod`, for handlers that
    /// decide by them); empty in the apitoken server's own handlers.
    pub labels: BTreeMap<String, String>,
}

impl Principal {
    /// The namespace the token belongs to.
    pub fn namespace(&self) -> &str {
        self.name.namespace().as_str()
    }

    /// Allows the call if the token belongs to `namespace` and has at least
    /// `min_role`; else `PERMISSION_DENIED` with the reason.
    pub fn authorize(&self, namespace: &str, min_role: Role) -> Result<(), Error> {
        if self.namespace() != namespace {
            return Err(Error::denied(
                DenyReason::NamespaceMismatch,
                format!(
                    "token of namespace {:?} may not act on namespace {namespace:?}",
                    self.namespace()
                ),
            ));
        }
        if self.role < min_role {
            return Err(Error::denied(
                DenyReason::RoleTooLow,
                format!(
                    "this call needs role {min_role}; the token has role {}",
                    self.role
                ),
            ));
        }
        Ok(())
    }

    /// Allows the call if the token is an interceptor's token of `namespace`
    /// (with at least viewer); else `PERMISSION_DENIED`.
    pub fn authorize_interceptor(&self, namespace: &str) -> Result<(), Error> {
        self.authorize(namespace, Role::Viewer)?;
        if !self.interceptor {
            return Err(Error::denied(
                DenyReason::InterceptorRequired,
                "only an interceptor token (created with `interceptor: true`) may do this",
            ));
        }
        Ok(())
    }

    /// Refuses to give a token a role above the caller's own.
    pub fn may_grant(&self, role: Role) -> Result<(), Error> {
        if role > self.role {
            return Err(Error::denied(
                DenyReason::RoleEscalation,
                format!("a token with role {} cannot grant role {role}", self.role),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::TokenName;

    fn principal(role: Role) -> Principal {
        Principal {
            name: TokenName::from_stored("team-a", "ci"),
            uid: "uid".into(),
            role,
            expire_time: None,
            interceptor: false,
            display_name: String::new(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn authorize_checks_namespace_then_role() {
        let editor = principal(Role::Editor);
        assert!(editor.authorize("team-a", Role::Viewer).is_ok());
        assert!(editor.authorize("team-a", Role::Editor).is_ok());
        assert!(matches!(
            editor.authorize("team-a", Role::Owner),
            Err(Error::PermissionDenied {
                reason: DenyReason::RoleTooLow,
                ..
            })
        ));
        assert!(matches!(
            editor.authorize("team-b", Role::Viewer),
            Err(Error::PermissionDenied {
                reason: DenyReason::NamespaceMismatch,
                ..
            })
        ));
    }

    #[test]
    fn no_grant_above_own_role() {
        let editor = principal(Role::Editor);
        assert!(editor.may_grant(Role::Viewer).is_ok());
        assert!(editor.may_grant(Role::Editor).is_ok());
        assert!(editor.may_grant(Role::Owner).is_err());
    }
}
