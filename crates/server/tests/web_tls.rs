//! The web console under `--tls-cert`: served over TLS with the server's
//! certificate to a client that speaks only HTTP/1.1, session cookies
//! marked `Secure`, and no plaintext answer on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use apitoken_server::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{Browser, start_with};

#[tokio::test]
async fn under_tls_the_console_speaks_http1_and_its_cookies_are_secure() {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "web-test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let ca_der = ca_cert.der().clone();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let server = start_with(|config| {
        config.transport.tls = Some(TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
            client_ca: None,
        });
    })
    .await;

    let mut browser = Browser::with_tls(server.web, ca_der);
    let signed_in = browser.sign_in(&server.owner).await;
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    let session = signed_in
        .set_cookies()
        .into_iter()
        .find(|cookie| cookie.starts_with("apitoken_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(session.ends_with("; Secure"), "{session}");
    assert!(session.contains("; HttpOnly; SameSite=Strict"), "{session}");
    let list = browser.get("/tokens").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("owner-a"));
    let out = browser.post("/sign-out", &[("csrf", &list.csrf())]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.set_cookies()
            .iter()
            .any(|cookie| cookie.starts_with("apitoken_session=;") && cookie.contains("Secure")),
        "{out:?}"
    );

    // The same port answers no plaintext request.
    let mut plain = tokio::net::TcpStream::connect(server.web)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /sign-in HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut reply),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&reply).contains("HTTP/1.1 200"),
        "plaintext answered: {}",
        String::from_utf8_lossy(&reply)
    );
    drop(dir);
}
