//! The web console's changes through the real server in-process: an
//! update saved and then refused for a stale page, the service's rate
//! limit as a 429 page with `Retry-After`, the grace and expiry choices
//! narrowed to the service's bounds (which still refuse a forged one), and
//! sign-in and sign-out audited.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use apitoken_domain::ratelimit::RateLimit;
use support::{Browser, Reply, create, owner_with_ci_deploy, start, start_with};

/// The `value` of the hidden `name="etag"` field of a token page, as a
/// browser sends it back (the page escapes its quotes as `&#34;`).
fn etag(page: &Reply) -> String {
    let marker = "name=\"etag\" value=\"";
    let start = page.body.find(marker).expect("an etag field") + marker.len();
    page.body[start..]
        .split('"')
        .next()
        .expect("value")
        .replace("&#34;", "\"")
}

/// The text of fact `term` on a token page (`<dt>term</dt><dd>…</dd>`).
fn fact(page: &Reply, term: &str) -> String {
    let marker = format!("<dt>{term}</dt><dd>");
    let start = page.body.find(&marker).expect("the fact") + marker.len();
    page.body[start..]
        .split("</dd>")
        .next()
        .expect("value")
        .to_owned()
}

#[tokio::test]
async fn an_update_is_saved_and_a_stale_page_is_refused_with_409() {
    let server = start().await;
    let mut browser = owner_with_ci_deploy(&server).await;
    let before = browser.get("/tokens/ci-deploy").await;
    assert_eq!(before.status, 200);
    let stale = etag(&before);
    assert!(!stale.is_empty());
    let expiry = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let saved = browser
        .post(
            "/tokens/ci-deploy/update",
            &[
                ("csrf", &before.csrf()),
                ("etag", &stale),
                ("display_name", "Deploy bot"),
                ("description", "Pushes releases"),
                ("labels", "team=payments\nenv=prod"),
                ("role", "viewer"),
                ("expire_date", &expiry),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{saved:?}");
    assert_eq!(
        saved.header("location"),
        Some("/tokens/ci-deploy?done=updated")
    );
    let after = browser.get("/tokens/ci-deploy?done=updated").await;
    assert!(after.body.contains("Saved."));
    assert_eq!(fact(&after, "Name"), "Deploy bot");
    assert_eq!(fact(&after, "Description"), "Pushes releases");
    assert_eq!(fact(&after, "Role"), "Viewer");
    assert_eq!(fact(&after, "Labels"), "env=prod, team=payments");
    assert_eq!(fact(&after, "Expires"), format!("{expiry} 00:00 UTC"));
    assert_ne!(etag(&after), stale, "the etag moves with the change");
    // The role can only be lowered: the form of a viewer token offers no more.
    assert!(!after.body.contains("<option value=\"editor\""));

    // A second tab still holding the first page: the service says ABORTED,
    // the console says so with 409 and keeps what is stored.
    let conflict = browser
        .post(
            "/tokens/ci-deploy/update",
            &[
                ("csrf", &after.csrf()),
                ("etag", &stale),
                ("display_name", "Overwritten"),
                ("description", "Pushes releases"),
                ("labels", "team=payments\nenv=prod"),
                ("role", "viewer"),
            ],
        )
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(
        conflict
            .body
            .contains("The token changed since this page was loaded")
    );
    assert_eq!(fact(&conflict, "Name"), "Deploy bot");
    // The change is in the audit log, by the signed-in token.
    let audit = browser.get("/audit?action=UPDATE&token=ci-deploy").await;
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("namespaces/team-a/apitokens/owner-a"));
}

#[tokio::test]
async fn the_service_rate_limit_is_a_429_page_with_retry_after() {
    let server = start_with(|config| {
        config.limits.role_rate_limits = [RateLimit::per_minute(6); 3];
    })
    .await;
    let mut browser = Browser::new(server.web);
    assert_eq!(browser.sign_in(&server.viewer).await.status, 303);
    let mut refused = None;
    for _ in 0..20 {
        let page = browser.get("/tokens").await;
        match page.status {
            200 => continue,
            429 => {
                refused = Some(page);
                break;
            }
            other => panic!("unexpected {other}: {}", page.body),
        }
    }
    let refused = refused.expect("a 429 within 20 pages at 6 a minute");
    let seconds: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    // The budget was spent at once: it is back after the window and one
    // of its 50 buckets (61.2 s), rounded up.
    assert!((1..=62).contains(&seconds), "{seconds}");
    assert!(
        refused
            .body
            .contains(&format!("Too many requests: try again in {seconds} second")),
        "{}",
        refused.body
    );
    // Still signed in: a limit is not a sign-out.
    assert!(browser.cookies.contains_key("apitoken_session"));
    // Another token of the namespace is not limited by this one.
    let mut owner = Browser::new(server.web);
    owner.sign_in(&server.owner).await;
    assert_eq!(owner.get("/tokens").await.status, 200);
}

#[tokio::test]
async fn a_grace_past_the_services_bound_is_refused_by_the_service() {
    let server = start_with(|config| {
        config.policy.max_grace = Duration::from_secs(3600);
    })
    .await;
    let mut browser = owner_with_ci_deploy(&server).await;
    let shown = browser.get("/secret?token=ci-deploy").await;
    assert_eq!(shown.status, 200);
    let csrf = browser.csrf().await;
    // The form offers only what this deployment allows (an hour)...
    let page = browser.get("/tokens/ci-deploy").await;
    assert!(page.body.contains("<option value=\"3600\""));
    assert!(!page.body.contains("<option value=\"86400\""));
    assert!(!page.body.contains("<option value=\"604800\""));
    // ...and a forged day is the service's to refuse.
    let refused = browser
        .post(
            "/tokens/ci-deploy/regenerate",
            &[("csrf", &csrf), ("grace", "86400")],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("previous_secret_ttl"),
        "the field is named: {}",
        refused.body
    );
    // Nothing changed: no secret waits to be shown, no grace is running.
    let page = browser.get("/tokens/ci-deploy").await;
    assert!(!page.body.contains("Previous secret works until"));
    let nothing = browser.get("/secret?token=ci-deploy").await;
    assert!(nothing.body.contains("was shown once and is gone"));
    // An hour is within the bound.
    let accepted = browser
        .post(
            "/tokens/ci-deploy/regenerate",
            &[("csrf", &csrf), ("grace", "3600")],
        )
        .await;
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    let page = browser.get("/tokens/ci-deploy").await;
    assert!(page.body.contains("Previous secret works until"));
}

#[tokio::test]
async fn the_create_form_offers_what_the_expiry_policy_allows() {
    use apitoken_server::policy::ExpiryPolicy;
    let server = start_with(|config| {
        config.policy.namespace_expiry.insert(
            "team-a".into(),
            ExpiryPolicy {
                required: false,
                max_lifetime: Some(Duration::from_secs(90 * 86_400)),
                default_lifetime: None,
            },
        );
    })
    .await;
    let mut browser = Browser::new(server.web);
    browser.sign_in(&server.owner).await;
    let form = browser.get("/tokens/new").await;
    assert_eq!(form.status, 200);
    for offered in ["30", "90", "custom"] {
        assert!(
            form.body.contains(&format!("id=\"expiry-{offered}\"")),
            "{offered} is offered"
        );
    }
    for withheld in ["365", "never"] {
        assert!(
            !form.body.contains(&format!("id=\"expiry-{withheld}\"")),
            "{withheld} is not offered"
        );
    }
    let latest = (chrono::Utc::now() + chrono::Duration::days(90))
        .format("%Y-%m-%d")
        .to_string();
    assert!(form.body.contains(&format!("max=\"{latest}\"")));
    assert!(form.body.contains("tokens live at most 90 days"));
    // A forged choice is the service's to refuse, naming its limit.
    for (forged, field) in [("365", "ttl"), ("never", "api_token.expire_time")] {
        let refused = support::create(
            &mut browser,
            &format!("t-{forged}"),
            "viewer",
            &[("expiry", forged)],
        )
        .await;
        assert_eq!(refused.status, 400, "{forged}: {}", refused.body);
        assert!(refused.body.contains(field), "{forged}: {}", refused.body);
        assert!(refused.body.contains("90d"), "{forged}: {}", refused.body);
    }
    assert_eq!(
        create(&mut browser, "quarterly", "viewer", &[("expiry", "90")])
            .await
            .status,
        303
    );
    // Another namespace, with no rule, is offered every choice.
    let mut other = Browser::new(server.web);
    other.sign_in(&server.other).await;
    let open = other.get("/tokens/new").await;
    assert!(open.body.contains("id=\"expiry-never\""));
    assert!(open.body.contains("id=\"expiry-365\""));
    assert!(!open.body.contains("expiry-policy"));
}

#[tokio::test]
async fn signing_in_and_out_is_audited_in_the_tokens_namespace() {
    let server = start().await;
    let mut viewer = Browser::new(server.web);
    assert_eq!(viewer.sign_in(&server.viewer).await.status, 303);
    let csrf = viewer.csrf().await;
    assert_eq!(
        viewer.post("/sign-out", &[("csrf", &csrf)]).await.status,
        303
    );
    let mut owner = Browser::new(server.web);
    owner.sign_in(&server.owner).await;
    let ins = owner.get("/audit?action=CONSOLE_SIGN_IN").await;
    assert_eq!(ins.status, 200);
    for who in [
        "namespaces/team-a/apitokens/viewer-a",
        "namespaces/team-a/apitokens/owner-a",
    ] {
        assert!(ins.body.contains(who), "{who} signed in: {}", ins.body);
    }
    assert!(
        ins.body.contains("127.0.0.1") && ins.body.contains("web-test/1.0"),
        "the browser's address and user agent: {}",
        ins.body
    );
    let outs = owner.get("/audit?action=CONSOLE_SIGN_OUT").await;
    assert!(outs.body.contains("namespaces/team-a/apitokens/viewer-a"));
    assert!(!outs.body.contains("namespaces/team-a/apitokens/owner-a"));
    // Another namespace's log holds none of it.
    let mut other = Browser::new(server.web);
    other.sign_in(&server.other).await;
    let theirs = other.get("/audit?action=CONSOLE_SIGN_IN").await;
    assert!(theirs.body.contains("namespaces/team-b/apitokens/owner-b"));
    assert!(!theirs.body.contains("team-a"), "{}", theirs.body);
}
