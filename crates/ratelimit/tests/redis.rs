//! The shared store against a real Redis (`APITOKEN_TEST_REDIS_URL`, e.g.
//! `redis://127.0.0.1:6379`; without it these tests print that they were
//! skipped, unless `APITOKEN_REQUIRE_REDIS=1`, as in CI). Each test uses
//! its own key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![cfg(feature = "redis")]

use std::{net::IpAddr, sync::Arc, time::Duration};

use apitoken_domain::{
    clock::{SharedClock, SystemClock},
    ratelimit::{FailureOutcome, RateLimit, Scope},
};
use apitoken_ratelimit::{Call, Limiter, LimiterConfig, RedisConfig};

fn redis_url() -> Option<String> {
    match std::env::var("APITOKEN_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("APITOKEN_REQUIRE_REDIS").is_err(),
                "APITOKEN_REQUIRE_REDIS is set but APITOKEN_TEST_REDIS_URL is not"
            );
            eprintln!("skipped: set APITOKEN_TEST_REDIS_URL to run the Redis tests");
            None
        }
    }
}

fn config(url: &str, prefix: &str) -> LimiterConfig {
    LimiterConfig {
        failed_auth: "3/m".parse().expect("limit"),
        redis: Some(RedisConfig {
            key_prefix: prefix.to_owned(),
            probe_interval: Duration::from_millis(50),
            ..RedisConfig::new(url)
        }),
    }
}

fn prefix() -> String {
    format!(
        "apitoken-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos()
    )
}

async fn shared(config: &LimiterConfig) -> Arc<Limiter> {
    let clock: SharedClock = Arc::new(SystemClock);
    let limiter = Limiter::new(clock, config).expect("limiter");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !limiter.is_shared() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    limiter
}

fn call<'a>(uid: &'a str, token: &str, namespace: &str) -> Call<'a> {
    Call {
        namespace: "team-a",
        uid,
        token: token.parse().expect("limit"),
        namespace_limit: namespace.parse().expect("limit"),
    }
}

#[tokio::test]
async fn processes_share_one_count_per_token() {
    let Some(url) = redis_url() else { return };
    let config = config(&url, &prefix());
    let (a, b) = (shared(&config).await, shared(&config).await);
    let mut allowed = 0;
    for i in 0..20 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let decision = limiter
            .check(&call("tok", "5/h", "1000/h"))
            .await
            .expect("limited");
        assert!(a.is_shared() && b.is_shared());
        if decision.allowed {
            allowed += 1;
            assert_eq!(decision.remaining, 5 - allowed);
        } else {
            assert_eq!(decision.scope, Scope::Token);
            let wait = decision.retry_after.expect("wait");
            assert!(wait > Duration::from_secs(3500), "{wait:?}");
        }
    }
    assert_eq!(allowed, 5, "one count for both processes");
}

#[tokio::test]
async fn a_call_is_counted_in_every_scope_or_none() {
    let Some(url) = redis_url() else { return };
    let limiter = shared(&config(&url, &prefix())).await;
    // The namespace allows 3; token x takes 1 and is then refused by its
    // own limit: those refusals must not use up the namespace.
    assert!(
        limiter
            .check(&call("x", "1/h", "3/h"))
            .await
            .unwrap()
            .allowed
    );
    for _ in 0..5 {
        let refused = limiter.check(&call("x", "1/h", "3/h")).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.scope, Scope::Token);
    }
    assert!(
        limiter
            .check(&call("y", "10/h", "3/h"))
            .await
            .unwrap()
            .allowed
    );
    let last = limiter.check(&call("z", "10/h", "3/h")).await.unwrap();
    assert!(last.allowed);
    assert_eq!((last.scope, last.remaining), (Scope::Namespace, 0));
    let refused = limiter.check(&call("w", "10/h", "3/h")).await.unwrap();
    assert_eq!((refused.allowed, refused.scope), (false, Scope::Namespace));
    // Unlimited tokens need no call at all.
    let free = Call {
        token: RateLimit::Unlimited,
        namespace_limit: RateLimit::Unlimited,
        ..call("v", "1/h", "1/h")
    };
    assert_eq!(limiter.check(&free).await, None);
}

#[tokio::test]
async fn no_second_window_holds_more_than_the_limit() {
    let Some(url) = redis_url() else { return };
    let config = config(&url, &prefix());
    let (a, b) = (shared(&config).await, shared(&config).await);
    let started = tokio::time::Instant::now();
    let mut accepted = Vec::new();
    while started.elapsed() < Duration::from_millis(2_500) {
        for limiter in [&a, &b] {
            let before = started.elapsed();
            let decision = limiter
                .check(&call("fast", "10/s", "unlimited"))
                .await
                .unwrap();
            if decision.allowed {
                accepted.push((before, started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Sound on the client's clock: the requests surely decided within a
    // window (sent after its start, answered before its end) are at most 10.
    for (sent, _) in &accepted {
        let inside = accepted
            .iter()
            .filter(|(s, r)| s >= sent && *r < *sent + Duration::from_secs(1))
            .count();
        assert!(inside <= 10, "{inside} accepted within one second");
    }
    assert!(
        accepted.len() >= 20,
        "about 10 a second: {}",
        accepted.len()
    );
}

#[tokio::test]
async fn a_burst_is_reported_once_across_processes() {
    let Some(url) = redis_url() else { return };
    let config = config(&url, &prefix());
    let (a, b) = (shared(&config).await, shared(&config).await);
    let peer: IpAddr = "192.0.2.50".parse().unwrap();
    let mut outcomes = Vec::new();
    for limiter in [&a, &b, &a, &b, &a] {
        outcomes.push(limiter.record_failure(peer).await);
    }
    assert_eq!(
        outcomes[..3],
        [
            FailureOutcome::Counted,
            FailureOutcome::Counted,
            FailureOutcome::BurstStarted
        ]
    );
    assert!(matches!(outcomes[3], FailureOutcome::Throttled(Some(_))));
    assert!(b.blocked(peer).await.is_some());
    assert_eq!(a.blocked("192.0.2.51".parse().unwrap()).await, None);
}

#[tokio::test]
async fn an_unreachable_redis_means_local_limits_without_waiting() {
    // Nothing listens on port 1.
    let clock: SharedClock = Arc::new(SystemClock);
    let limiter = Limiter::new(clock, &config("redis://127.0.0.1:1", &prefix())).expect("lazy");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(limiter.state().fallback());
    assert!(limiter.state().detail().is_some());
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert!(
            limiter
                .check(&call("t", "10/m", "10/m"))
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "no call waited"
    );
    assert!(Limiter::new(Arc::new(SystemClock), &config("http://x", "p")).is_err());
}
