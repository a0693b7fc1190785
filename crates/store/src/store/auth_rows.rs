//! What the in-memory verification index loads.
