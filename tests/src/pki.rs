//! Real certificates for TLS tests, made with rcgen: a CA, server
//! certificates for `127.0.0.1` and `localhost`, client certificates, and
//! the PEM files the server and clients read.

use std::path::{Path, PathBuf};

use apitoken_proto::endpoint::{ClientIdentity, ConnectOptions, Pem};
use apitoken_server::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority.
pub struct TestCa {
    pub name: String,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, common_name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> CertPair {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(sans.iter().map(|san| (*san).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `sans` (DNS names or IP addresses).
    pub fn server_cert(&self, sans: &[&str]) -> CertPair {
        self.leaf(
            "apitoken test server",
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    pub fn client_cert(&self, name: &str) -> CertPair {
        self.leaf(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The SANs of test server certificates.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A directory of PEM files: `ca.pem`, `server.pem`, `server-key.pem`, and
/// whatever else a test writes.
#[derive(Debug)]
pub struct Pki {
    pub ca: TestCa,
    pub server: CertPair,
    dir: tempfile::TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A CA and a server certificate for 127.0.0.1 and localhost, written out.
    pub fn new() -> Pki {
        let ca = TestCa::new("apitoken test CA");
        let server = ca.server_cert(&SERVER_NAMES);
        let pki = Pki {
            ca,
            server,
            dir: tempfile::tempdir().expect("pki dir"),
        };
        pki.write("ca.pem", &pki.ca.cert_pem);
        pki.write("server.pem", &pki.server.cert_pem);
        pki.write("server-key.pem", &pki.server.key_pem);
        pki
    }

    /// Writes `contents` to `name` in the directory (atomically: a rename).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let temporary = self.path(&format!(".{name}.tmp"));
        std::fs::write(&temporary, contents).expect("write pem");
        std::fs::rename(&temporary, &path).expect("rename pem");
        path
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's files, without client authentication.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: None,
        }
    }

    /// Client options trusting this CA only.
    pub fn client_options(&self) -> ConnectOptions {
        ConnectOptions {
            ca: Some(Pem::File(self.path("ca.pem"))),
            ..ConnectOptions::default()
        }
    }

    /// Client options trusting this CA and presenting `pair`.
    pub fn client_options_with(&self, pair: &CertPair) -> ConnectOptions {
        ConnectOptions {
            identity: Some(ClientIdentity {
                cert: Pem::from(pair.cert_pem.clone()),
                key: Pem::from(pair.key_pem.clone()),
            }),
            ..self.client_options()
        }
    }
}
