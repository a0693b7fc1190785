//! The web console over HTTP: the real server in-process, driven by a
//! cookie-keeping HTTP/1.1 client (`support`): sessions, CSRF, security
//! headers, the secret shown once, escaping, and refusals by the service.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::{Browser, create, owner_with_ci_deploy, start};

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_session_cookie() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    let reply = browser.sign_in(&server.owner).await;
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.header("location"), Some("/tokens"));
    let session = reply
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("apitoken_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(session.contains("; HttpOnly"), "{session}");
    assert!(session.contains("; SameSite=Strict"), "{session}");
    assert!(session.contains("; Path=/;"), "{session}");
    assert!(
        !session.contains("Secure"),
        "plaintext on loopback: {session}"
    );
    let id = &session["apitoken_session=".len()..session.find(';').expect(";")];
    assert_eq!(id.len(), 64);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    let list = browser.get("/tokens").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("owner-a") && list.body.contains("viewer-a"));
    // The token is never sent back, nor the session id in a page.
    for seen in &browser.seen {
        assert!(
            !seen.contains(&server.owner),
            "the signed-in token leaked: {seen}"
        );
    }
    assert!(!list.body.contains(id));
    // Signing out ends the session on the server.
    let csrf = list.csrf();
    let out = browser.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    browser
        .cookies
        .insert("apitoken_session".into(), id.to_owned());
    let after = browser.get("/tokens").await;
    assert_eq!(after.status, 303);
    assert_eq!(after.header("location"), Some("/sign-in"));
}

#[tokio::test]
async fn a_bad_token_is_refused_in_words() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    let reply = browser.sign_in("apitoken_not-a-real-token").await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(
        reply.body.contains("That token was not accepted"),
        "{}",
        reply.body
    );
    assert!(!browser.cookies.contains_key("apitoken_session"));
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_forbidden() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    // Sign-in without the double-submitted cookie value.
    let reply = browser.post("/sign-in", &[("token", &server.owner)]).await;
    assert_eq!(reply.status, 403);
    browser.sign_in(&server.owner).await;
    let form = [
        ("api_token_id", "no-csrf"),
        ("role", "viewer"),
        ("expiry", "30"),
    ];
    assert_eq!(browser.post("/tokens", &form).await.status, 403);
    let mut wrong = form.to_vec();
    let bad = "0".repeat(64);
    wrong.push(("csrf", &bad));
    assert_eq!(browser.post("/tokens", &wrong).await.status, 403);
    // The right token from another site is refused too.
    let csrf = browser.csrf().await;
    let mut right = form.to_vec();
    right.push(("csrf", &csrf));
    let cross = browser
        .send(
            "POST",
            "/tokens",
            Some(&right),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(cross.status, 403);
    let list = browser.get("/tokens").await;
    assert!(!list.body.contains("no-csrf"), "nothing was created");
}

#[tokio::test]
async fn a_viewer_reads_but_a_forced_post_is_forbidden() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    browser.sign_in(&server.viewer).await;
    let list = browser.get("/tokens").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("owner-a"));
    assert!(
        !list.body.contains("Create token"),
        "no create button for a viewer"
    );
    assert_eq!(browser.get("/tokens/new").await.status, 403);
    let detail = browser.get("/tokens/owner-a").await;
    assert_eq!(detail.status, 200);
    assert!(!detail.body.contains("Regenerate secret"));
    let csrf = list.csrf();
    // Forced posts reach the service, whose refusal is the page: the
    // console has no role rule of its own.
    let forced = create(&mut browser, "forced", "viewer", &[]).await;
    assert_eq!(forced.status, 403);
    assert!(forced.body.contains("needs role owner"), "{}", forced.body);
    for path in [
        "/tokens/owner-a/revoke",
        "/tokens/owner-a/regenerate",
        "/tokens/owner-a/update",
    ] {
        let reply = browser
            .post(path, &[("csrf", &csrf), ("confirm", "yes"), ("grace", "0")])
            .await;
        assert_eq!(reply.status, 403, "{path}");
        assert!(
            reply.body.contains("needs role owner"),
            "{path}: {}",
            reply.body
        );
    }
    let audit = browser.get("/audit").await;
    assert_eq!(audit.status, 403);
    assert!(audit.body.contains("needs role owner"), "{}", audit.body);
    assert!(browser.get("/tokens/owner-a").await.body.contains("Active"));
}

#[tokio::test]
async fn another_namespace_sees_nothing() {
    let server = start().await;
    let mut owner = Browser::new(server.web);
    owner.sign_in(&server.owner).await;
    assert_eq!(
        create(&mut owner, "ci-deploy", "editor", &[]).await.status,
        303
    );
    let mut other = Browser::new(server.web);
    other.sign_in(&server.other).await;
    let list = other.get("/tokens").await;
    assert!(list.body.contains("owner-b"));
    for id in ["ci-deploy", "owner-a", "viewer-a", "team-a"] {
        assert!(!list.body.contains(id), "{id} seen from team-b");
    }
    assert_eq!(other.get("/tokens/ci-deploy").await.status, 404);
    let audit = other.get("/audit").await;
    assert_eq!(audit.status, 200);
    assert!(!audit.body.contains("team-a"));
}

#[tokio::test]
async fn the_secret_is_shown_once_and_never_again() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    browser.sign_in(&server.owner).await;
    let created = create(
        &mut browser,
        "ci-deploy",
        "editor",
        &[("display_name", "CI deploy")],
    )
    .await;
    assert_eq!(created.status, 303, "{created:?}");
    let location = created.header("location").expect("location").to_owned();
    assert_eq!(location, "/secret?token=ci-deploy");
    let shown = browser.get(&location).await;
    let marker = "id=\"secret\" readonly value=\"";
    let start = shown.body.find(marker).expect("the secret") + marker.len();
    let secret = shown.body[start..]
        .split('"')
        .next()
        .expect("value")
        .to_owned();
    assert!(secret.starts_with("apitoken_"), "{secret}");
    assert!(shown.body.contains("shown only once"));
    let again = browser.get(&location).await;
    assert!(again.body.contains("was shown once and is gone"));
    // Regenerating shows the new secret once, too.
    let csrf = browser.csrf().await;
    let regenerated = browser
        .post(
            "/tokens/ci-deploy/regenerate",
            &[("csrf", &csrf), ("grace", "3600")],
        )
        .await;
    assert_eq!(regenerated.status, 303);
    let second = browser.get("/secret?token=ci-deploy").await;
    let start = second.body.find(marker).expect("the new secret") + marker.len();
    let new_secret = second.body[start..]
        .split('"')
        .next()
        .expect("value")
        .to_owned();
    assert_ne!(new_secret, secret);
    let shown_at = browser.seen.len();
    for path in [
        "/tokens",
        "/tokens/ci-deploy",
        "/audit",
        "/whoami",
        "/secret?token=ci-deploy",
    ] {
        assert_eq!(browser.get(path).await.status, 200, "{path}");
    }
    for seen in &browser.seen[shown_at..] {
        assert!(
            !seen.contains(&secret) && !seen.contains(&new_secret),
            "a secret leaked: {seen}"
        );
    }
    for seen in &browser.seen {
        assert!(!seen.contains(&server.owner), "the signed-in token leaked");
    }
    let detail = browser.get("/tokens/ci-deploy").await;
    assert!(detail.body.contains("Previous secret works until"));
}

#[tokio::test]
async fn every_response_has_the_security_headers() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    for path in [
        "/sign-in",
        "/static/console.css",
        "/static/console.js",
        "/nowhere",
        "/tokens",
    ] {
        let reply = browser.get(path).await;
        let csp = reply.header("content-security-policy").expect("CSP");
        assert_eq!(
            csp,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
    // No inline script in any page.
    let page = browser.get("/sign-in").await;
    assert!(!page.body.contains("<script>"));
    assert!(
        page.body
            .contains("<script src=\"/static/console.js\"></script>")
    );
}

#[tokio::test]
async fn bad_input_gets_a_readable_error_and_everything_is_escaped() {
    let server = start().await;
    let mut browser = Browser::new(server.web);
    browser.sign_in(&server.owner).await;
    let bad = create(&mut browser, "A", "owner", &[]).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body
            .contains("<code>api_token_id</code>: must be 3 to 50 characters"),
        "{}",
        bad.body
    );
    assert!(!bad.body.contains("panicked"));
    let labels = create(
        &mut browser,
        "labelled",
        "viewer",
        &[("labels", "no equals sign")],
    )
    .await;
    assert_eq!(labels.status, 400);
    assert!(labels.body.contains("line 1 is not key=value"));
    let past = create(
        &mut browser,
        "past",
        "viewer",
        &[("expiry", "custom"), ("expire_date", "2001-01-01")],
    );
    let past = past.await;
    assert_eq!(past.status, 400, "{}", past.body);
    assert!(past.body.contains("expire"), "{}", past.body);
    // An owner may grant at most owner; a name that exists is refused.
    assert_eq!(
        create(&mut browser, "owner-a", "viewer", &[]).await.status,
        409
    );
    let evil = "<script>alert(1)</script>";
    let made = create(
        &mut browser,
        "escaped",
        "viewer",
        &[("display_name", evil), ("description", "<b>bold</b>")],
    )
    .await;
    assert_eq!(made.status, 303, "{}", made.body);
    for path in ["/tokens", "/tokens/escaped"] {
        let page = browser.get(path).await;
        assert!(!page.body.contains(evil), "{path} is not escaped");
        assert!(
            page.body.contains("&#60;script&#62;") || page.body.contains("&lt;script&gt;"),
            "{}",
            page.body
        );
    }
    // Oversized bodies are refused before any work.
    let csrf = browser.csrf().await;
    let huge = "x".repeat(64 * 1024);
    let reply = browser
        .post("/tokens", &[("csrf", &csrf), ("description", &huge)])
        .await;
    assert!(
        reply.status == 413 || reply.status == 400,
        "{}",
        reply.status
    );
}

#[tokio::test]
async fn revoke_takes_a_confirmation_and_is_audited() {
    let server = start().await;
    let mut browser = owner_with_ci_deploy(&server).await;
    let confirm = browser.get("/tokens/ci-deploy/revoke").await;
    assert_eq!(confirm.status, 200);
    assert!(confirm.body.contains("cannot be undone"));
    let csrf = confirm.csrf();
    // Without the confirmation field, nothing happens.
    let unconfirmed = browser
        .post("/tokens/ci-deploy/revoke", &[("csrf", &csrf)])
        .await;
    assert_eq!(
        unconfirmed.header("location"),
        Some("/tokens/ci-deploy/revoke")
    );
    assert!(
        browser
            .get("/tokens/ci-deploy")
            .await
            .body
            .contains("Active")
    );
    let revoked = browser
        .post(
            "/tokens/ci-deploy/revoke",
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(revoked.status, 303);
    let detail = browser.get("/tokens/ci-deploy").await;
    assert!(detail.body.contains("Revoked"));
    let audit = browser.get("/audit?action=REVOKE").await;
    assert!(audit.body.contains("namespaces/team-a/apitokens/ci-deploy"));
    // The audit entry names the browser's address and user agent.
    assert!(
        audit.body.contains("127.0.0.1") && audit.body.contains("web-test/1.0"),
        "{}",
        audit.body
    );
    let creates = browser.get("/audit?action=CREATE&token=ci-deploy").await;
    assert!(creates.body.contains("CREATE") && !creates.body.contains(">REVOKE<"));
}
