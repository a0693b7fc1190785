//! Who may reach which path: the vocabulary shared by the interceptor
//! (`require("/pkg.Svc/*", Role::Viewer)`) and the ext_authz policy file
//! that the apitoken server reads for Envoy.
//!
//! - [`pattern`]: path patterns (`/pkg.Svc/Method`, `/pkg.Svc/*`,
//!   `/api/**`) and the one matching rule ([`PathTable`]).
//! - [`file`]: the policy file's parser ([`AccessPolicy::parse`]), with
//!   errors naming the file, the line and the problem, and its bounds.
//!
//! Without IO: the server reads the file (bounded by [`MAX_POLICY_BYTES`])
//! and hands its text here.

pub mod file;
pub mod pattern;

pub use file::{MAX_POLICY_BYTES, MAX_RULES, PolicyError};
pub use pattern::{MAX_PATTERN_LEN, PathTable, Pattern};

use crate::{DenyReason, Error, Principal, Role, name::Namespace};

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// No token at all (health checks, reflection, public pages).
    Public,
    /// A token with at least this role.
    Role(Role),
}

/// What one route of the policy file needs: a requirement, and for a role
/// the namespace the route belongs to (only that namespace's tokens pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No token needed.
    Public,
    /// A token of `namespace` with at least `role`.
    Protected {
        /// The least role.
        role: Role,
        /// The namespace whose tokens are accepted.
        namespace: Namespace,
    },
    /// Nobody (the default for paths no rule names, unless the file says
    /// otherwise).
    Deny,
}

impl Route {
    /// Allows `principal` on this route, or says why not
    /// (`PERMISSION_DENIED`: `NAMESPACE_MISMATCH`, `ROLE_TOO_LOW`, or
    /// `ROUTE_NOT_ALLOWED`), through the same check as every RPC
    /// ([`Principal::authorize`]).
    pub fn authorize(&self, principal: &Principal) -> Result<(), Error> {
        match self {
            Route::Public => Ok(()),
            Route::Protected { role, namespace } => principal.authorize(namespace.as_str(), *role),
            Route::Deny => Err(route_not_allowed()),
        }
    }
}

/// The rules of one pattern: for some HTTP methods (`methods=GET,HEAD`),
/// and for every other method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodRoutes {
    /// Uppercase methods and their route, in the file's order.
    by_method: Vec<(String, Route)>,
    /// The route of every method not named.
    any: Option<Route>,
}

/// The route of a method that no rule of a pattern names.
static DENY: Route = Route::Deny;

impl MethodRoutes {
    /// The route of `method`: the rule naming it, else the pattern's rule
    /// for every method, else [`Route::Deny`].
    pub fn route(&self, method: &str) -> &Route {
        self.by_method
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(method))
            .map(|(_, route)| route)
            .or(self.any.as_ref())
            .unwrap_or(&DENY)
    }

    /// Sets the route of `method` (`None`: every other method); the route
    /// it replaces, if any.
    pub(crate) fn set(&mut self, method: Option<&str>, route: Route) -> Option<Route> {
        match method {
            None => self.any.replace(route),
            Some(method) => {
                if let Some(slot) = self.by_method.iter_mut().find(|(known, _)| known == method) {
                    return Some(std::mem::replace(&mut slot.1, route));
                }
                self.by_method.push((method.to_owned(), route));
                None
            }
        }
    }
}

/// The refusal of a path that no rule allows.
pub fn route_not_allowed() -> Error {
    Error::denied(
        DenyReason::RouteNotAllowed,
        "no rule of the access policy allows this path",
    )
}

/// Names of the headers that tell the upstream who called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHeaders {
    /// The token's resource name (`namespaces/<ns>/apitokens/<id>`).
    pub name: String,
    /// The token's uid.
    pub uid: String,
    /// The token's namespace.
    pub namespace: String,
    /// The token's role (`viewer`, `editor`, `owner`).
    pub role: String,
}

impl Default for UpstreamHeaders {
    fn default() -> Self {
        Self {
            name: "x-apitoken-name".to_owned(),
            uid: "x-apitoken-uid".to_owned(),
            namespace: "x-apitoken-namespace".to_owned(),
            role: "x-apitoken-role".to_owned(),
        }
    }
}

impl UpstreamHeaders {
    /// Every name, in the order name, uid, namespace, role.
    pub fn all(&self) -> [&str; 4] {
        [&self.name, &self.uid, &self.namespace, &self.role]
    }
}

/// A parsed policy file: routes by path pattern, the default route, the
/// upstream header names, and whether the bearer token is removed before
/// the request goes upstream.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    routes: PathTable<MethodRoutes>,
    rules: usize,
    default: Route,
    headers: UpstreamHeaders,
    strip_authorization: bool,
}

impl AccessPolicy {
    /// The route of a request: `method` (`GET`, `POST`, ...) on `path` (a
    /// path without query string). The best pattern decides (see
    /// [`pattern`]); among its rules, the one naming the method, else its
    /// rule for every method, else none: [`Route::Deny`].
    pub fn route(&self, method: &str, path: &str) -> &Route {
        match self.routes.lookup(path) {
            Some(rules) => rules.route(method),
            None => &self.default,
        }
    }

    /// The upstream header names.
    pub fn headers(&self) -> &UpstreamHeaders {
        &self.headers
    }

    /// Whether `authorization` is removed from requests sent upstream.
    pub fn strip_authorization(&self) -> bool {
        self.strip_authorization
    }

    /// How many rules the policy has (`require` and `public` lines).
    pub fn rules(&self) -> usize {
        self.rules
    }
}
