//! The shared store: the sliding window as one Lua script (`window.lua`),
//! run with `EVALSHA` through a `redis` connection manager (reconnects by
//! itself), every call bounded by the configured timeout.
//!
//! Keys (the `{namespace}` hash tag keeps a call's keys in one Redis
//! Cluster slot, so the script may touch both):
//! - `<prefix>:rl:{<namespace>}:t:<uid>:<window seconds>`: a token;
//! - `<prefix>:rl:{<namespace>}:n:<window seconds>`: a namespace;
//! - `<prefix>:fa:<address>:<window seconds>`: failed authentications.
//!
//! A key lives at most one window and one bucket after its last counted
//! request, so a flood of made-up addresses costs Redis memory in
//! proportion to its rate over one window, never more.

use std::{net::IpAddr, time::Duration};

use apitoken_domain::{
    clock::Clock,
    ratelimit::{
        Check, Decision, Limit, RateLimit,
        local::decide,
        window::{Admission, SUB_BUCKETS, bucket_width},
    },
};
use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{Call, RedisConfig};

const SCRIPT: &str = include_str!("window.lua");

/// The shared store.
pub(crate) struct RedisBackend {
    manager: ConnectionManager,
    script: Script,
    timeout: Duration,
    prefix: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisBackend")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A failure's fate in the shared count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Counted; `started`: this failure used up the budget (first time in
    /// the burst, across every process).
    Counted { started: bool },
    /// Over the budget: not counted; how long until it would be.
    Refused(Option<Duration>),
}

fn describe(error: &redis::RedisError) -> String {
    // The error's text names neither the URL nor a password.
    format!("redis: {error}")
}

impl RedisBackend {
    /// A lazily connected store (nothing is sent until the first call).
    pub(crate) fn connect(config: &RedisConfig) -> Result<Self, String> {
        let client = Client::open(config.url.as_str())
            .map_err(|error| format!("--redis-url is not a Redis URL: {}", describe(&error)))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|error| describe(&error))?;
        Ok(Self {
            manager,
            script: Script::new(SCRIPT),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
        })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err(format!("redis: no answer within {:?}", self.timeout)),
        }
    }

    /// `PING`.
    pub(crate) async fn ping(&self) -> Result<(), String> {
        let mut connection = self.manager.clone();
        let pong: String = self
            .bounded(redis::cmd("PING").query_async(&mut connection))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("redis: PING answered {pong:?}"))
        }
    }

    /// Runs the script over `limits` (key, limit), counting the request in
    /// all or none; the admission of each.
    async fn run(&self, limits: &[(String, Limit)]) -> Result<Vec<Admission>, String> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(-1i64).arg(SUB_BUCKETS).arg(1u8).arg(0u8);
        for (key, limit) in limits {
            invocation
                .key(key)
                .arg(limit.count)
                .arg(bucket_width(limit.window.micros()));
        }
        let mut connection = self.manager.clone();
        let reply: Vec<i64> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        if reply.len() != 1 + 5 * limits.len() {
            return Err(format!("redis: unexpected script reply {reply:?}"));
        }
        Ok(reply[1..]
            .chunks_exact(5)
            .map(|item| Admission {
                allowed: item[0] == 1,
                remaining: u32::try_from(item[1].max(0)).unwrap_or(u32::MAX),
                reset_in: item[2].max(0),
                retry_in: (item[3] >= 0).then_some(item[3]),
            })
            .collect())
    }

    /// The call's decision in the shared count (counted in all or none).
    pub(crate) async fn check(
        &self,
        call: &Call<'_>,
        clock: &dyn Clock,
    ) -> Result<Option<Decision>, String> {
        let checks: Vec<(Check<'_>, Limit)> = call
            .checks()
            .into_iter()
            .filter_map(|check| match check.limit {
                RateLimit::Limited(limit) => Some((check, limit)),
                RateLimit::Unlimited => None,
            })
            .collect();
        if checks.is_empty() {
            return Ok(None);
        }
        let keys: Vec<(String, Limit)> = checks
            .iter()
            .map(|(check, limit)| {
                let scope = match check.scope {
                    apitoken_domain::ratelimit::Scope::Token => format!("t:{}", call.uid),
                    apitoken_domain::ratelimit::Scope::Namespace => "n".to_owned(),
                };
                (
                    format!(
                        "{}:rl:{{{}}}:{scope}:{}",
                        self.prefix,
                        call.namespace,
                        limit.window.seconds()
                    ),
                    *limit,
                )
            })
            .collect();
        let admissions = self.run(&keys).await?;
        let outcomes: Vec<_> = checks
            .into_iter()
            .zip(admissions)
            .map(|((check, limit), admission)| (check, limit, admission))
            .collect();
        Ok(decide(clock.now().timestamp_micros(), &outcomes))
    }

    /// Counts (or, with `consume` false, only looks at) a failure of `key`.
    pub(crate) async fn failure(
        &self,
        key: IpAddr,
        limit: Limit,
        consume: bool,
    ) -> Result<Failure, String> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(-1i64)
            .arg(SUB_BUCKETS)
            .arg(u8::from(consume))
            .arg(1u8)
            .key(format!(
                "{}:fa:{key}:{}",
                self.prefix,
                limit.window.seconds()
            ))
            .arg(limit.count)
            .arg(bucket_width(limit.window.micros()));
        let mut connection = self.manager.clone();
        let reply: Vec<i64> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        let [_, fits, _, _, retry_in, started] = reply[..] else {
            return Err(format!("redis: unexpected script reply {reply:?}"));
        };
        Ok(if fits == 1 {
            Failure::Counted {
                started: started == 1,
            }
        } else {
            Failure::Refused(u64::try_from(retry_in).ok().map(Duration::from_micros))
        })
    }
}
