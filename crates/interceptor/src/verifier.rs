//! Remote verification with `VerifyApiToken`: one call per secret however
//! many requests carry it at once, a timeout on every call, W3C trace
//! context passed on ([`crate::trace`]: the layer's span as the parent),
//! and every failure mapped to what the caller sees.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use apitoken_domain::{
    AuthFailure, Error, Principal, Role,
    name::TokenName,
    ratelimit::{self, RateLimit},
    token::{Secret, WellFormed},
};
use apitoken_proto::v1::{VerifyApiTokenRequest, api_token_service_client::ApiTokenServiceClient};
use chrono::DateTime;
use tokio::sync::OnceCell;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;
use tracing::warn;

use crate::cache::CacheKey;

pub use crate::trace::TRACE_HEADERS;

/// A token apitoken vouched for, with the limits it enforces on it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The token.
    pub principal: std::sync::Arc<Principal>,
    /// Its rate limit.
    pub token_limit: RateLimit,
    /// Its namespace's aggregate limit.
    pub namespace_limit: RateLimit,
    /// When this secret stops working: a grace period's end for a previous
    /// secret (earlier than the token's expiry), else the token's expiry.
    pub secret_expire_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// What apitoken said of a secret.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Active; this is its token.
    Valid(Verified),
    /// Refused (unknown, revoked, expired): the same error the caller gets.
    Refused(Error),
    /// apitoken could not answer: the call fails closed.
    Unavailable(Error),
}

/// Verifies secrets against apitoken.
#[derive(Debug)]
pub struct Verifier {
    client: ApiTokenServiceClient<Channel>,
    /// This service's interceptor token, sent as its own credential so that
    /// apitoken honours `caller_address`.
    credential: Secret,
    timeout: Duration,
    in_flight: Mutex<HashMap<CacheKey, Arc<OnceCell<Outcome>>>>,
}

impl Verifier {
    /// A verifier over `channel`.
    pub fn new(channel: Channel, timeout: Duration, credential: Secret) -> Self {
        Self {
            client: ApiTokenServiceClient::new(channel),
            credential,
            timeout,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// A client on the same channel, for the other calls to apitoken.
    pub fn client(&self) -> ApiTokenServiceClient<Channel> {
        self.client.clone()
    }

    /// Verifies `secret`; concurrent calls with the same key share one
    /// remote call. The flag tells whether this call made it.
    pub async fn verify(
        &self,
        key: CacheKey,
        secret: &WellFormed,
        trace: &http::HeaderMap,
        caller: Option<std::net::IpAddr>,
    ) -> (Outcome, bool) {
        let cell = Arc::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key)
                .or_default(),
        );
        let mut initiated = false;
        let outcome = cell
            .get_or_init(|| {
                initiated = true;
                self.call(secret, trace, caller)
            })
            .await
            .clone();
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, &cell))
        {
            in_flight.remove(&key);
        }
        (outcome, initiated)
    }

    async fn call(
        &self,
        secret: &WellFormed,
        trace: &http::HeaderMap,
        caller: Option<std::net::IpAddr>,
    ) -> Outcome {
        let mut request = crate::auth::authorized(
            &self.credential,
            VerifyApiTokenRequest {
                secret: secret.secret().expose().to_owned(),
                caller_address: caller.map(|ip| ip.to_string()).unwrap_or_default(),
            },
        );
        request.set_timeout(self.timeout);
        crate::trace::propagate(request.metadata_mut(), trace);
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.verify_api_token(request)).await {
            Err(_) => unavailable(format!("apitoken did not answer within {:?}", self.timeout)),
            Ok(Ok(response)) => {
                let reply = response.into_inner();
                let verified = reply.api_token.as_ref().and_then(|token| {
                    Some(Verified {
                        principal: std::sync::Arc::new(principal_of(token)?),
                        token_limit: limit_of(token.limit.as_ref(), token.rate_limit)?,
                        namespace_limit: limit_of(
                            reply.namespace_limit.as_ref(),
                            reply.namespace_rate_limit,
                        )?,
                        secret_expire_time: match &reply.secret_expire_time {
                            Some(time) => Some(DateTime::from_timestamp(
                                time.seconds,
                                u32::try_from(time.nanos).ok()?,
                            )?),
                            None => None,
                        },
                    })
                });
                match verified {
                    Some(verified) => Outcome::Valid(verified),
                    None => unavailable("apitoken sent a malformed reply".to_owned()),
                }
            }
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                let reason = status.get_details_error_info().map(|info| info.reason);
                Outcome::Refused(Error::Unauthenticated(
                    reason
                        .and_then(|reason| AuthFailure::from_reason(&reason))
                        .unwrap_or(AuthFailure::Invalid),
                ))
            }
            Ok(Err(status)) => {
                warn!(code = ?status.code(), message = status.message(), "apitoken verification failed");
                unavailable(format!("apitoken is unavailable ({:?})", status.code()))
            }
        }
    }
}

/// A limit from a reply: the full form, or (from an older apitoken) the
/// per-minute figure.
fn limit_of(limit: Option<&apitoken_proto::v1::RateLimit>, per_minute: i32) -> Option<RateLimit> {
    match limit {
        Some(limit) => ratelimit::from_proto(limit).ok(),
        None => u32::try_from(per_minute)
            .ok()
            .filter(|count| *count > 0)
            .map(|count| RateLimit::per_minute(count.min(ratelimit::MAX_COUNT))),
    }
}

fn unavailable(message: String) -> Outcome {
    Outcome::Unavailable(Error::Unavailable(message))
}

/// The principal described by an `ApiToken` reply.
pub fn principal_of(token: &apitoken_proto::v1::ApiToken) -> Option<Principal> {
    let expire_time = match &token.expire_time {
        Some(timestamp) => Some(DateTime::from_timestamp(
            timestamp.seconds,
            u32::try_from(timestamp.nanos).ok()?,
        )?),
        None => None,
    };
    Some(Principal {
        name: TokenName::parse("name", &token.name).ok()?,
        uid: token.uid.clone(),
        role: Role::from_proto(token.role)?,
        expire_time,
        interceptor: token.interceptor,
        display_name: token.display_name.clone(),
        labels: token
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    })
}
