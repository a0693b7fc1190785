//! Domain rules of apitoken, free of storage and transport wiring.
//!
//! - [`token`]: the secret format (prefix, randomness, checksum) and its
//!   redacted [`token::Secret`] type.
//! - [`hash`]: the keyed, domain-separated blake3 hash that is all the
//!   database ever sees of a secret.
//! - [`role`], [`name`], [`validate`], [`filter`], [`page`]: roles, resource
//!   names, field rules, list filters and page tokens.
//! - [`input`]: bounds on caller input, and the one way input is quoted
//!   back in errors (short, escaped).
//! - [`principal`]: the authenticated caller and its authorization checks.
//! - [`error`] and [`status`]: the domain error and the one place it becomes
//!   a `tonic::Status` with `google.rpc` details.
//! - [`access`]: which role and namespace each path needs: path patterns,
//!   the one matching rule (interceptor and ext_authz), the policy file.
//! - [`clock`]: an injectable clock.
//!
//! Architecture invariant: this crate never depends on sea-orm or the server;
//! the interceptor crate uses it to parse tokens and map errors.

pub mod access;
pub mod audit;
pub mod clock;
pub mod error;
pub mod event;
pub mod expiry;
pub mod filter;
pub mod hash;
pub mod input;
pub mod name;
pub mod page;
pub mod peer;
pub mod principal;
pub mod ratelimit;
pub mod role;
pub mod state;
pub mod status;
pub mod token;
pub mod validate;

pub use error::{AuthFailure, DenyReason, Error};
pub use principal::Principal;
pub use role::Role;
pub use state::TokenState;

/// The `domain` of every `google.rpc.ErrorInfo` this product emits.
pub const ERROR_DOMAIN: &str = "apitoken";

/// The principal recorded for tokens made by `apitoken-server bootstrap`.
pub const BOOTSTRAP_PRINCIPAL: &str = "bootstrap";
