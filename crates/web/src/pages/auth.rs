//! Sign in (by pasting a token), sign out, and who am I.
//!
//! Signing in asks the service who the token is (`VerifyApiToken` with no
//! secret, the API's "who am I", audited and rate-limited as usual). The
//! token then lives only in the server's session store; the browser gets a
//! random session id.

use apitoken_domain::{Role, audit::ConsoleSession, token::Secret};
use apitoken_proto::v1::{self, api_token_service_server::ApiTokenService};
use axum::extract::State;
use axum::{
    extract::rejection::FormRejection,
    response::{IntoResponse, Response},
};
use http::{StatusCode, header};

use super::{Form, Query, Shared, fields, query};
use crate::{
    api::{self, ApiError},
    reply::{self, Ctx, SESSION_COOKIE, SIGN_IN_COOKIE},
    session::{Identity, random_hex, same},
    views::{Fact, Layout, Problem, SignInPage, WhoamiPage, role_name, show},
};

/// Longest token accepted in the sign-in form.
const MAX_TOKEN: usize = 256;

/// `/`: the tokens when signed in, else the sign-in page.
pub async fn home<S: ApiTokenService>(State(console): State<Shared<S>>, ctx: Ctx) -> Response {
    match console.auth(&ctx) {
        Some(_) => reply::redirect("/tokens"),
        None => reply::redirect("/sign-in"),
    }
}

fn anonymous(title: &str) -> Layout {
    Layout {
        title: title.into(),
        nav: None,
    }
}

/// The sign-in page with a fresh double-submit CSRF token.
fn sign_in_page<S: ApiTokenService>(
    console: &crate::Console<S>,
    status: StatusCode,
    problem: Option<Problem>,
    note: Option<String>,
) -> Response {
    let Some(csrf) = random_hex() else {
        return reply::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            anonymous("Error"),
            Problem {
                message: "The server has no randomness available.".into(),
                fields: Vec::new(),
            },
        );
    };
    let page = SignInPage {
        layout: anonymous("Sign in"),
        csrf: csrf.clone(),
        problem,
        note,
    };
    let cookie = reply::set_cookie(
        SIGN_IN_COOKIE,
        &csrf,
        "/sign-in",
        3600,
        console.config().tls,
    );
    let mut response = reply::render(status, &page);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// `GET /sign-in`.
pub async fn sign_in_form<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    query_pairs: Query,
) -> Response {
    if console.auth(&ctx).is_some() {
        return reply::redirect("/tokens");
    }
    let query = query(query_pairs);
    let note = if query.checked("signed_out") {
        Some("You are signed out.".to_owned())
    } else if query.checked("ended") {
        Some("Your session ended: sign in again.".to_owned())
    } else {
        None
    };
    sign_in_page(&console, StatusCode::OK, None, note)
}

/// `POST /sign-in`: `csrf` (equal to the sign-in cookie) and `token`.
pub async fn sign_in<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    form: Result<Form, FormRejection>,
) -> Response {
    let refuse = |problem: ApiError| {
        sign_in_page(
            &console,
            problem.http_status(),
            Some(Problem::from(&problem)),
            None,
        )
    };
    let fields = match fields(form) {
        Ok(fields) => fields,
        Err(error) => return refuse(error),
    };
    let csrf_ok = ctx
        .sign_in
        .as_deref()
        .is_some_and(|cookie| same(fields.get("csrf"), cookie));
    if ctx.cross_site || !csrf_ok {
        return reply::forbidden_csrf(anonymous("Refused"));
    }
    let token = fields.get("token").trim();
    if token.is_empty() {
        return refuse(ApiError::field("token", "is required: paste an API token"));
    }
    if token.len() > MAX_TOKEN {
        return refuse(ApiError::field(
            "token",
            format!("is longer than {MAX_TOKEN} characters"),
        ));
    }
    let token = Secret::new(token);
    let request = match api::request(
        v1::VerifyApiTokenRequest::default(),
        Some(&token),
        &ctx.client,
    ) {
        Ok(request) => request,
        Err(error) => return refuse(error),
    };
    let reply = match console.api().verify_api_token(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let mut error = ApiError::from(status);
            if error.code == tonic::Code::Unauthenticated {
                error.message = "That token was not accepted: it is unknown, revoked, expired or \
                                 mistyped."
                    .into();
            }
            return refuse(error);
        }
    };
    let Some(identity) = reply.api_token.as_ref().and_then(identity) else {
        return refuse(ApiError::new(
            tonic::Code::Internal,
            "The service did not say who this token is.",
        ));
    };
    let Some(id) = console.sessions().create(token, identity.clone()) else {
        return refuse(ApiError::new(
            tonic::Code::Internal,
            "The server has no randomness available.",
        ));
    };
    console
        .audit_session(ConsoleSession::SignedIn, &identity, &ctx)
        .await;
    let tls = console.config().tls;
    let max_age = console.config().sessions.absolute.as_secs();
    let mut response = reply::redirect("/tokens");
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        reply::set_cookie(SESSION_COOKIE, id.as_str(), "/", max_age, tls),
    );
    headers.append(
        header::SET_COOKIE,
        reply::set_cookie(SIGN_IN_COOKIE, "", "/sign-in", 0, tls),
    );
    response
}

/// Who a verified token is.
fn identity(token: &v1::ApiToken) -> Option<Identity> {
    let name = apitoken_domain::name::TokenName::parse("name", &token.name).ok()?;
    Some(Identity {
        token_name: token.name.clone(),
        uid: token.uid.clone(),
        namespace: name.namespace().as_str().to_owned(),
        role: Role::from_proto(token.role)?,
    })
}

/// `POST /sign-out`: ends the session (CSRF-checked) and clears the cookie.
pub async fn sign_out<S: ApiTokenService>(
    State(console): State<Shared<S>>,
    ctx: Ctx,
    form: Result<Form, FormRejection>,
) -> Response {
    let (auth, _) = match console.check_form(&ctx, fields(form)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    console.sessions().end(&auth.session);
    console
        .audit_session(ConsoleSession::SignedOut, &auth.identity, &ctx)
        .await;
    let mut response = reply::redirect("/sign-in?signed_out=1");
    response.headers_mut().append(
        header::SET_COOKIE,
        reply::set_cookie(SESSION_COOKIE, "", "/", 0, console.config().tls),
    );
    response.into_response()
}

/// `GET /whoami`: the signed-in token, as `VerifyApiToken` says.
pub async fn whoami<S: ApiTokenService>(State(console): State<Shared<S>>, ctx: Ctx) -> Response {
    let Some(auth) = console.auth(&ctx) else {
        return reply::redirect("/sign-in");
    };
    let layout = auth.layout("Who am I", "whoami");
    let reply = match console.request(&auth, &ctx, v1::VerifyApiTokenRequest::default()) {
        Ok(request) => console
            .api()
            .verify_api_token(request)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let reply = match reply {
        Ok(reply) => reply.into_inner(),
        Err(error) => return console.failure(&auth, layout, &error),
    };
    let mut facts = Vec::new();
    let mut fact = |term: &str, value: String| {
        facts.push(Fact {
            term: term.into(),
            value,
        });
    };
    fact("Namespace", auth.identity.namespace.clone());
    if let Some(token) = &reply.api_token {
        fact("Token", token.name.clone());
        fact("Name", token.display_name.clone());
        fact("Role", role_name(token.role));
        fact(
            "Created",
            format!(
                "{} by {}",
                show(token.create_time.as_ref(), "—"),
                token.creator
            ),
        );
        fact("Expires", show(token.expire_time.as_ref(), "Never"));
        fact("Rate limit", super::forms::limit_text(token.limit.as_ref()));
    }
    fact(
        "This secret expires",
        show(reply.secret_expire_time.as_ref(), "Never"),
    );
    fact(
        "Namespace rate limit",
        super::forms::limit_text(reply.namespace_limit.as_ref()),
    );
    reply::render(
        StatusCode::OK,
        &WhoamiPage {
            layout,
            facts,
            problem: None,
        },
    )
}
