//! [`ExpiryPolicy`]: what a namespace's expiry rules are (must tokens
//! expire, their longest and default lifetime). The server's `Policy`
//! holds one per deployment and per namespace and applies it at creation;
//! the web console reads it to offer only the choices it allows.

use std::time::Duration;

/// The expiry rules of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiryPolicy {
    /// A token must have an expiry.
    pub required: bool,
    /// The longest lifetime from creation.
    pub max_lifetime: Option<Duration>,
    /// The lifetime of a token created without expiry.
    pub default_lifetime: Option<Duration>,
}
