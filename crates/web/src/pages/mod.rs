//! The handlers, one module per page group, and what they share: the
//! signed-in session, the page frame, and the checks of every form
//! (same site, CSRF token, owner role).
//!
//! - [`auth`]: sign in, sign out, who am I.
//! - [`tokens`]: the token list, a token's page, update, regenerate, revoke.
//! - [`create`]: the create form and the page that shows a secret once.
//! - [`audit`]: the audit log.
//! - `forms`: labels, dates, limits and roles shared by the forms.

pub mod audit;
pub mod auth;
pub mod create;
mod forms;
pub mod tokens;

use std::sync::Arc;

use apitoken_domain::{Role, token::Secret};
use apitoken_proto::v1::api_token_service_server::ApiTokenService;
use axum::response::Response;
use tonic::{Code, Request};

use crate::{
    Console,
    api::{self, ApiError},
    reply::{self, Ctx, Fields},
    session::{Identity, same},
    views::{Layout, Nav},
};

/// A signed-in request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The session's cookie value.
    pub session: String,
    /// The signed-in token.
    pub token: Secret,
    /// Who that is.
    pub identity: Identity,
    /// The session's CSRF token.
    pub csrf: String,
}

impl Auth {
    /// Whether to offer an owner's actions (buttons, the create and revoke
    /// pages). Presentation only: every change and the audit log are
    /// allowed or refused by the service.
    pub fn owner(&self) -> bool {
        self.identity.role == Role::Owner
    }

    /// The page frame.
    pub fn layout(&self, title: impl Into<String>, current: &'static str) -> Layout {
        Layout {
            title: title.into(),
            nav: Some(Nav {
                namespace: self.identity.namespace.clone(),
                token_id: crate::views::token_id(&self.identity.token_name),
                role: self.identity.role.as_str().to_owned(),
                owner: self.owner(),
                csrf: self.csrf.clone(),
                current,
            }),
        }
    }

    /// `namespaces/<ns>`.
    pub fn parent(&self) -> String {
        format!("namespaces/{}", self.identity.namespace)
    }

    /// `namespaces/<ns>/apitokens/<id>`.
    pub fn token_name(&self, id: &str) -> String {
        format!("namespaces/{}/apitokens/{id}", self.identity.namespace)
    }
}

impl<S: ApiTokenService> Console<S> {
    /// The signed-in session of `ctx`, if any.
    pub(crate) fn auth(&self, ctx: &Ctx) -> Option<Auth> {
        let id = ctx.session.as_deref()?;
        self.sessions().with(id, |session| Auth {
            session: id.to_owned(),
            token: session.token.clone(),
            identity: session.identity.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// The request for `message` on behalf of `auth` from `ctx`'s client.
    pub(crate) fn request<T>(
        &self,
        auth: &Auth,
        ctx: &Ctx,
        message: T,
    ) -> Result<Request<T>, ApiError> {
        api::request(message, Some(&auth.token), &ctx.client)
    }

    /// The page for a refusal by the service. `UNAUTHENTICATED` means the
    /// signed-in token is no longer accepted: the session ends.
    pub(crate) fn failure(&self, auth: &Auth, layout: Layout, error: &ApiError) -> Response {
        if error.code == Code::Unauthenticated {
            self.sessions().end(&auth.session);
            return reply::redirect("/sign-in?ended=1");
        }
        reply::api_error_page(layout, error)
    }

    /// The checks of every form that changes something: same site, signed
    /// in, this session's CSRF token. Whether the token may do what the form
    /// asks is the service's decision (its `PERMISSION_DENIED` becomes a 403
    /// page), never the console's. `Err` is the response to send instead.
    pub(crate) fn check_form(
        &self,
        ctx: &Ctx,
        fields: Result<Fields, ApiError>,
    ) -> Result<(Auth, Fields), Box<Response>> {
        let anonymous = Layout {
            title: String::new(),
            nav: None,
        };
        if ctx.cross_site {
            return Err(Box::new(reply::forbidden_csrf(anonymous)));
        }
        let Some(auth) = self.auth(ctx) else {
            return Err(Box::new(reply::redirect("/sign-in?ended=1")));
        };
        let layout = auth.layout("", "tokens");
        let fields =
            fields.map_err(|error| Box::new(reply::api_error_page(layout.clone(), &error)))?;
        if !same(fields.get("csrf"), &auth.csrf) {
            return Err(Box::new(reply::forbidden_csrf(layout)));
        }
        Ok((auth, fields))
    }
}

/// The shared state of the handlers.
pub(crate) type Shared<S> = Arc<Console<S>>;

/// A form body, bounded.
pub(crate) type Form = axum::Form<Vec<(String, String)>>;

/// A query string.
pub(crate) type Query = axum::extract::Query<Vec<(String, String)>>;

/// The bounded fields of a form, or why not.
pub(crate) fn fields(
    form: Result<Form, axum::extract::rejection::FormRejection>,
) -> Result<Fields, ApiError> {
    match form {
        Ok(axum::Form(pairs)) => Fields::new(pairs),
        Err(_) => Err(ApiError::field(
            "form",
            "is not a well-formed form submission",
        )),
    }
}

/// The bounded fields of a query string.
pub(crate) fn query(pairs: Query) -> Fields {
    Fields::new(pairs.0).unwrap_or_default()
}

/// Whether `id` is a valid token id (AIP-122), so it can be put in a name.
pub(crate) fn valid_id(id: &str) -> bool {
    apitoken_domain::name::check_id("id", id).is_ok()
}

/// `value` percent-encoded for a query string.
pub(crate) fn encode(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if !value.is_empty() {
            serializer.append_pair(key, value);
        }
    }
    serializer.finish()
}
