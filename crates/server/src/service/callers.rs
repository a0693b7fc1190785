//! What interceptors and other services call: `VerifyApiToken`,
//! `WatchApiTokenEvents` (the cache-invalidation stream) and
//! `ReportApiTokenUsage` (bounded, saturating, interceptor tokens only).

use super::*;

/// Most usages in one `ReportApiTokenUsage` call.
pub const MAX_USAGE_REPORTS: usize = 1000;
/// Most uses of one token in one usage report.
pub const MAX_USE_COUNT: i64 = 1_000_000_000;
/// Longest token uid (a UUID is 36).
const MAX_UID_LEN: usize = 64;

impl ApiTokenService {
    pub(super) async fn verify(
        &self,
        request: Request<v1::VerifyApiTokenRequest>,
    ) -> Result<v1::VerifyApiTokenResponse, Error> {
        let verified = if request.get_ref().secret.is_empty() {
            self.auth.authenticate_verified(&request).await?
        } else {
            // An interceptor names the address of the call it authenticates;
            // anyone else is taken to be calling from where they call.
            let peer = self.auth.client_address(&request);
            let named = if request.get_ref().caller_address.is_empty() {
                None
            } else {
                Some(
                    validate::ip_address("caller_address", &request.get_ref().caller_address)
                        .map_err(|violation| Error::InvalidArgument(vec![violation]))?,
                )
            };
            let caller = match named {
                Some(address) if self.auth.interceptor_of(&request).await.is_some() => {
                    Some(address)
                }
                _ => peer,
            };
            let secret = Secret::new(request.get_ref().secret.clone());
            self.auth.verify(secret, caller, &request).await?
        };
        let record = self.auth.index().record(&verified.view).await?;
        let secret_expire_time = verified.secret_expire_time;
        let namespace_limit = self.auth.namespace_limit(record.name.namespace().as_str());
        Ok(v1::VerifyApiTokenResponse {
            secret_expire_time: secret_expire_time.map(crate::convert::timestamp),
            api_token: Some(self.present(&record, self.clock.now())),
            namespace_rate_limit: namespace_limit.per_minute_figure(),
            namespace_limit: Some(ratelimit::to_proto(namespace_limit)),
        })
    }

    pub(super) async fn watch(
        &self,
        request: Request<v1::WatchApiTokenEventsRequest>,
    ) -> Result<EventStream, Error> {
        let (caller, namespace) = self
            .authorize_on_parent(&request, &request.get_ref().parent, Role::Viewer)
            .await?;
        let request = request.into_inner();
        let slot = self.events.reserve(&caller.uid, &caller.name)?;
        let cursor = self.events.start(request.after_sequence).await?;
        info!(namespace = %namespace, cursor, watcher = %caller.name, "event stream opened");
        let watcher = crate::index::parse_uid(&caller.uid).ok_or(Error::Internal)?;
        Ok(self
            .events
            .stream(namespace.as_str().to_owned(), cursor, watcher, slot))
    }

    pub(super) async fn report_usage(
        &self,
        request: Request<v1::ReportApiTokenUsageRequest>,
    ) -> Result<v1::ReportApiTokenUsageResponse, Error> {
        let caller = self.auth.authenticate(&request).await?;
        let namespace = Namespace::parse_parent("parent", &request.get_ref().parent)?;
        caller.authorize_interceptor(namespace.as_str())?;
        let request = request.into_inner();
        let now = self.clock.now();
        let mut violations = Violations::default();
        if request.usages.len() > MAX_USAGE_REPORTS {
            violations.add(
                "usages",
                format!("must have at most {MAX_USAGE_REPORTS} entries"),
            );
        }
        let mut reports = Vec::with_capacity(request.usages.len());
        for (index, usage) in request.usages.iter().enumerate() {
            let field = |name: &str| format!("usages[{index}].{name}");
            if usage.uid.is_empty() {
                violations.add(field("uid"), "is required");
            } else if usage.uid.len() > MAX_UID_LEN {
                violations.add(field("uid"), format!("must be at most {MAX_UID_LEN} bytes"));
            }
            if !(1..=MAX_USE_COUNT).contains(&usage.use_count) {
                violations.add(
                    field("use_count"),
                    format!("must be from 1 to {MAX_USE_COUNT}"),
                );
            }
            let last_use_time = match usage
                .last_use_time
                .as_ref()
                .map(|t| from_timestamp(&field("last_use_time"), t))
            {
                None => {
                    violations.add(field("last_use_time"), "is required");
                    continue;
                }
                Some(Err(violation)) => {
                    violations.check(Err(violation));
                    continue;
                }
                // A reporter's clock may run ahead: never record a use in the future.
                Some(Ok(time)) => time.min(now),
            };
            let last_use_ip = if usage.last_use_ip.is_empty() {
                None
            } else {
                match validate::ip_address(&field("last_use_ip"), &usage.last_use_ip) {
                    Ok(ip) => Some(ip.to_string()),
                    Err(violation) => {
                        violations.check(Err(violation));
                        continue;
                    }
                }
            };
            reports.push(UsageReport {
                namespace: namespace.as_str().to_owned(),
                uid: usage.uid.clone(),
                count: usage.use_count,
                last_use_time,
                last_use_ip,
            });
        }
        violations.finish()?;
        let accepted = self.store.record_usage(&reports).await?;
        Ok(v1::ReportApiTokenUsageResponse {
            accepted: i32::try_from(accepted).unwrap_or(i32::MAX),
        })
    }
}
