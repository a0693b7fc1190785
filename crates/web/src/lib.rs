//! The web console of apitoken.
