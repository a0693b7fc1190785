//! Bounded reading and checking of PEM files (certificates, private keys),
//! shared by the client helper ([`crate::endpoint`]) and the server.
//!
//! Every error names the file (or `what` the bytes are) and, for sizes, the
//! limit; never the contents.

use std::{io::Read, path::Path};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The largest PEM file read: 1 MiB (a long CA bundle is about 250 KiB).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Reads `path`, refusing more than [`MAX_PEM_BYTES`]. `what` names the
/// file's role in errors (e.g. `--tls-cert`).
pub fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path)
        .map_err(|err| format!("{what} {}: cannot open: {err}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("{what} {}: cannot read: {err}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{what} {}: larger than the limit of {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Every certificate in `pem`; at least one.
pub fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{what}: not valid PEM: {err}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
pub fn private_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{what}: no PRIVATE KEY block found")
        }
        // Never quote a key's bytes: name the kind of failure only.
        _ => format!("{what}: not a valid PEM private key"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_PEM_BYTES + 1) as usize]).expect("write");
        let err = read_file("--ca-cert", &big).expect_err("too big");
        assert!(
            err.contains("--ca-cert") && err.contains("big.pem") && err.contains("1048576"),
            "{err}"
        );
        let err = read_file("--ca-cert", &dir.path().join("missing.pem")).expect_err("missing");
        assert!(err.contains("missing.pem"), "{err}");
        let err = certificates("--ca-cert", b"hello").expect_err("no cert");
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let err = private_key(
            "--client-key",
            b"-----BEGIN PRIVATE KEY-----\nsecretstuff!!\n-----END PRIVATE KEY-----\n",
        )
        .expect_err("bad key");
        assert!(!err.contains("secretstuff"), "{err}");
    }
}
