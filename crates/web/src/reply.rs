//! What every handler shares: the request's context (client, cookies,
//! origin), bounded form fields, rendering, redirects, error pages and the
//! security headers of every response.

use std::convert::Infallible;

use askama::Template;
use axum::{
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use tracing::warn;

use crate::{
    api::{ApiError, Client},
    serve::Connection,
    views::{ErrorPage, Layout, Problem},
};

/// The session cookie.
pub const SESSION_COOKIE: &str = "apitoken_session";
/// The sign-in form's CSRF cookie (double submit: no session exists yet).
pub const SIGN_IN_COOKIE: &str = "apitoken_signin";
/// Most fields in one form.
pub const MAX_FIELDS: usize = 32;
/// Longest value of one form field (a description is at most 500 bytes,
/// labels 64 lines).
pub const MAX_FIELD: usize = 8 * 1024;

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The request's context.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Where it came from, as the service layer will see it.
    pub client: Client,
    /// The session cookie's value.
    pub session: Option<String>,
    /// The sign-in CSRF cookie's value.
    pub sign_in: Option<String>,
    /// Whether it comes from another site (`Origin` or `Sec-Fetch-Site`).
    pub cross_site: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let connection = parts.extensions.get::<Connection>().copied();
        let headers = &parts.headers;
        Ok(Ctx {
            client: Client {
                remote: connection.map(|c| c.remote),
                local: connection.and_then(|c| c.local),
                user_agent: headers.get(header::USER_AGENT).cloned(),
                forwarded_for: headers.get("x-forwarded-for").cloned(),
            },
            session: cookie(headers, SESSION_COOKIE),
            sign_in: cookie(headers, SIGN_IN_COOKIE),
            cross_site: cross_site(headers),
        })
    }
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Whether the browser says the request comes from another origin:
/// `Sec-Fetch-Site` other than `same-origin` or `none` when the browser
/// sends it (every current one does); else an `Origin` that is not this
/// `Host`. (`Origin` alone cannot decide: under `Referrer-Policy:
/// no-referrer` browsers send `Origin: null` for same-origin forms.)
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_none_or(|(_, authority)| authority != host),
        (Some(_), None) => true,
    }
}

/// The fields of a submitted form, bounded.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Checks the bounds of `pairs`.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        if pairs.len() > MAX_FIELDS {
            return Err(ApiError::field(
                "form",
                format!("has more than {MAX_FIELDS} fields"),
            ));
        }
        if let Some((name, _)) = pairs.iter().find(|(_, value)| value.len() > MAX_FIELD) {
            return Err(ApiError::field(
                truncated(name),
                format!("is longer than {MAX_FIELD} bytes"),
            ));
        }
        Ok(Self(pairs))
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// Whether checkbox `name` is checked.
    pub fn checked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

/// At most 40 bytes of a field name, for an error message.
fn truncated(name: &str) -> String {
    apitoken_domain::input::truncate(name, 40).to_owned()
}

/// `page` rendered with `status`; a rendering failure is logged and
/// answered with a plain 500.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(error) => {
            warn!(%error, "cannot render a console page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A `303 See Other` to `location` (a path of the console).
pub fn redirect(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}

/// An error page of `status` with `message`, in `layout`.
pub fn error_page(status: StatusCode, mut layout: Layout, problem: Problem) -> Response {
    if layout.title.is_empty() {
        layout.title = status.canonical_reason().unwrap_or("Error").to_owned();
    }
    render(status, &ErrorPage { layout, problem })
}

/// 403: a form without its CSRF token, or from another site.
pub fn forbidden_csrf(layout: Layout) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        Layout {
            title: "Refused".into(),
            ..layout
        },
        Problem {
            message: "This form was refused: it did not carry this session's CSRF token or came \
                      from another site. Reload the page and try again."
                .into(),
            fields: Vec::new(),
        },
    )
}

/// 403: the signed-in token may only read.
pub fn forbidden_role(layout: Layout) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        Layout {
            title: "Read only".into(),
            ..layout
        },
        Problem {
            message: "Your token may only read: changing tokens takes an owner token.".into(),
            fields: Vec::new(),
        },
    )
}

/// The page of a refusal by the service.
pub fn api_error_page(layout: Layout, error: &ApiError) -> Response {
    let status = error.http_status();
    let response = error_page(
        status,
        Layout {
            title: status.canonical_reason().unwrap_or("Error").into(),
            ..layout
        },
        Problem::from(error),
    );
    with_retry_after(response, error)
}

/// `response` with the service's `Retry-After`, when `error` has one.
pub fn with_retry_after(mut response: Response, error: &ApiError) -> Response {
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A `Set-Cookie` value with the console's flags.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age}{secure}"
    );
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds the security headers to every response.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The stylesheet, embedded in the binary.
pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/console.css"),
    )
        .into_response()
}

/// The copy button's script, embedded in the binary.
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/console.js"),
    )
        .into_response()
}

/// 404 for every other path.
pub async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Layout {
            title: "Not found".into(),
            nav: None,
        },
        Problem {
            message: "There is no such page.".into(),
            fields: Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; apitoken_session=xyz"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), None);
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:50053"));
        assert!(!cross_site(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:50053"),
        );
        assert!(!cross_site(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_site(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_site(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&headers));
    }

    #[test]
    fn field_bounds() {
        assert!(Fields::new(vec![("a".into(), "x".repeat(MAX_FIELD + 1))]).is_err());
        let many = (0..=MAX_FIELDS)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(Fields::new(many).is_err());
        let fields = Fields::new(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(
            fields.map(|f| f.get("a").to_owned()).ok().as_deref(),
            Some("1")
        );
    }
}
