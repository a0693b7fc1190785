//! Wire types of apitoken: the `apitoken.v1` messages, the generated tonic
//! client and server for `ApiTokenService`, and the encoded file descriptor
//! set for server reflection; [`endpoint`] makes channels to apitoken that
//! use TLS for `https://` and refuse plaintext to hosts that are not
//! loopback; [`pem`] reads certificates and keys with bounds; [`peer`] finds
//! a request's peer address over plaintext and TLS alike.
//!
//! `tonic` and `prost` are re-exported so that services importing this crate
//! (and the interceptor) stay on the same versions.

pub use prost;
pub use prost_types;
pub use tonic;

pub mod endpoint;
pub mod peer;
pub mod pem;

/// The `apitoken.v1` package.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("apitoken.v1");

    mod redacted_debug {
        //! `Debug` for messages that carry a secret: the secret is never printed.
        use std::fmt;

        const REDACTED: &str = "<redacted>";

        impl fmt::Debug for super::CreateApiTokenResponse {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("CreateApiTokenResponse")
                    .field("api_token", &self.api_token)
                    .field("secret", &REDACTED)
                    .finish()
            }
        }

        impl fmt::Debug for super::RegenerateApiTokenResponse {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("RegenerateApiTokenResponse")
                    .field("api_token", &self.api_token)
                    .field("secret", &REDACTED)
                    .finish()
            }
        }

        impl fmt::Debug for super::VerifyApiTokenRequest {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("VerifyApiTokenRequest")
                    .field("secret", &REDACTED)
                    .finish()
            }
        }
    }
}

/// The full name of the service, as used by health checks and reflection.
pub const SERVICE_NAME: &str = "apitoken.v1.ApiTokenService";

/// The encoded `FileDescriptorSet` of every apitoken proto and its imports,
/// for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("apitoken_descriptor");

#[cfg(test)]
mod tests {
    use super::v1::{CreateApiTokenResponse, VerifyApiTokenRequest};

    #[test]
    fn debug_never_prints_secrets() {
        let response = CreateApiTokenResponse {
            api_token: None,
            secret: "apitoken_secretvalue".into(),
        };
        let request = VerifyApiTokenRequest {
            secret: "apitoken_othersecret".into(),
            ..Default::default()
        };
        let printed = format!("{response:?} {request:?}");
        assert!(!printed.contains("secretvalue"), "{printed}");
        assert!(!printed.contains("othersecret"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
