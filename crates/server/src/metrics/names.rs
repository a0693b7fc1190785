//! Every metric the server exports: name, labels and help, in one table
//! (the README's metrics table is this one).

use metrics::Unit;

/// gRPC calls received (`method`, `code`).
pub const REQUESTS: &str = "apitoken_grpc_requests_total";
/// Time from a call's arrival to its last byte (`method`).
pub const REQUEST_DURATION: &str = "apitoken_grpc_request_duration_seconds";
/// Secrets checked (`outcome`: `ok`, `missing`, `malformed`, `invalid`,
/// `expired`, `revoked`, `throttled`).
pub const VERIFICATIONS: &str = "apitoken_verifications_total";
/// Bursts of failed authentications from one address (each starts a
/// throttled period).
pub const FAILED_AUTH_BURSTS: &str = "apitoken_failed_auth_bursts_total";
/// Calls refused by a rate limit (`scope`: `token`, `namespace`).
pub const RATE_LIMITED: &str = "apitoken_rate_limited_total";
/// Lookups in the cache of full records (`result`: `hit`, `miss`).
pub const RECORD_CACHE: &str = "apitoken_record_cache_requests_total";
/// Full records cached.
pub const RECORD_CACHE_ENTRIES: &str = "apitoken_record_cache_entries";
/// Counter of web console requests, by `route` (the route's pattern, or
/// `other`) and HTTP `status`.
pub const WEB_REQUESTS: &str = "apitoken_web_requests_total";
/// Histogram of web console request durations, by `route`.
pub const WEB_REQUEST_DURATION: &str = "apitoken_web_request_duration_seconds";
/// Counter of `ListApiTokens` pages looked up in the page cache, by `result`.
pub const LIST_CACHE: &str = "apitoken_list_cache_requests_total";
/// Tokens in the in-memory verification index.
pub const INDEX_TOKENS: &str = "apitoken_index_tokens";
/// The last event the index applied.
pub const INDEX_CURSOR: &str = "apitoken_index_event_sequence";
/// 1 while other replicas' changes arrive by notification (PostgreSQL
/// `LISTEN`), 0 while only polling finds them.
pub const INDEX_LISTENING: &str = "apitoken_index_listening";
/// Active tokens (`namespace`; at most `--metrics-max-namespaces` values,
/// the rest under `_other`).
pub const ACTIVE_TOKENS: &str = "apitoken_active_tokens";
/// Open `WatchApiTokenEvents` streams.
pub const EVENT_WATCHERS: &str = "apitoken_event_watchers";
/// Time from an event's commit to its delivery to a watcher.
pub const EVENT_DELIVERY_LAG: &str = "apitoken_event_delivery_lag_seconds";
/// Database connections (`state`: `busy`, `idle`).
pub const DB_POOL_CONNECTIONS: &str = "apitoken_db_pool_connections";
/// The most database connections the pool opens.
pub const DB_POOL_MAX: &str = "apitoken_db_pool_max_connections";
/// Database errors (`kind`: `unavailable`, `query`).
pub const DB_ERRORS: &str = apitoken_store::DB_ERRORS;
/// 1 if a health check passes, 0 if not (`check`).
pub const HEALTH_CHECK: &str = "apitoken_health_check";
/// 1 while the server reports SERVING.
pub const SERVING: &str = "apitoken_serving";
/// 1 if rate limits are configured to be shared through Redis.
pub const REDIS_CONFIGURED: &str = "apitoken_redis_configured";
/// 1 while Redis is configured but unreachable, so this replica enforces
/// local limits.
pub const REDIS_FALLBACK: &str = "apitoken_redis_fallback";
/// Always 1 (`version`).
pub const BUILD_INFO: &str = "apitoken_build_info";

/// Histogram buckets for call durations (seconds): 50 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "gRPC calls received, by method and code");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a call's arrival to its last byte, by method"
    );
    describe_counter!(VERIFICATIONS, "Secrets checked, by outcome");
    describe_counter!(
        FAILED_AUTH_BURSTS,
        "Bursts of failed authentications from one address"
    );
    describe_counter!(RATE_LIMITED, "Calls refused by a rate limit, by scope");
    describe_counter!(RECORD_CACHE, "Lookups in the cache of full token records");
    describe_gauge!(RECORD_CACHE_ENTRIES, "Full token records cached");
    describe_counter!(
        LIST_CACHE,
        "Lookups of ListApiTokens pages in the page cache"
    );
    describe_gauge!(INDEX_TOKENS, "Tokens in the in-memory verification index");
    describe_gauge!(INDEX_CURSOR, "The last event the index applied");
    describe_gauge!(
        INDEX_LISTENING,
        "1 while other replicas' changes arrive by notification"
    );
    describe_gauge!(ACTIVE_TOKENS, "Active tokens, by namespace");
    describe_gauge!(EVENT_WATCHERS, "Open WatchApiTokenEvents streams");
    describe_histogram!(
        EVENT_DELIVERY_LAG,
        Unit::Seconds,
        "Time from an event's commit to its delivery to a watcher"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database connections, by state");
    describe_gauge!(DB_POOL_MAX, "The most database connections the pool opens");
    describe_counter!(DB_ERRORS, "Database errors, by kind");
    describe_gauge!(HEALTH_CHECK, "1 if a health check passes, by check");
    describe_gauge!(SERVING, "1 while the server reports SERVING");
    describe_gauge!(
        REDIS_CONFIGURED,
        "1 if rate limits are shared through Redis"
    );
    describe_gauge!(
        REDIS_FALLBACK,
        "1 while Redis is unreachable and local limits are enforced"
    );
    describe_gauge!(BUILD_INFO, "Always 1, with the server's version");
}
