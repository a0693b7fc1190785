//! Domain values to and from wire types.

use apitoken_domain::{Error, error::FieldViolation, ratelimit::RateLimit};
use apitoken_proto::v1;
use apitoken_store::TokenRecord;
use chrono::{DateTime, SubsecRound, Utc};
use prost_types::Timestamp;

/// A wire timestamp.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A wire timestamp given as `field`, truncated to microseconds (the
/// precision stored).
pub fn from_timestamp(field: &str, timestamp: &Timestamp) -> Result<DateTime<Utc>, FieldViolation> {
    // The protobuf range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    if !RANGE.contains(&timestamp.seconds) {
        return Err(FieldViolation::new(
            field,
            "is not a valid timestamp (years 1 to 9999)",
        ));
    }
    u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .map(|time| time.trunc_subsecs(6))
        .ok_or_else(|| FieldViolation::new(field, "is not a valid timestamp"))
}

/// The wire form of a stored token at `now` (the state is derived), with
/// the rate limit in force for it.
pub fn api_token(record: &TokenRecord, now: DateTime<Utc>, rate_limit: RateLimit) -> v1::ApiToken {
    v1::ApiToken {
        name: record.name.to_string(),
        uid: record.uid.clone(),
        display_name: record.display_name.clone(),
        description: record.description.clone(),
        role: record.role.to_proto().into(),
        labels: record.labels.clone().into_iter().collect(),
        create_time: Some(timestamp(record.create_time)),
        creator: record.creator.clone(),
        expire_time: record.expire_time.map(timestamp),
        state: record.state(now).to_proto().into(),
        revoke_time: record.revoke_time.map(timestamp),
        revoker: record.revoker.clone().unwrap_or_default(),
        secret_hint: record.secret_hint.clone(),
        last_use_time: record.last_use_time.map(timestamp),
        use_count: record.use_count,
        etag: record.etag(),
        update_time: Some(timestamp(record.update_time)),
        rate_limit: rate_limit.per_minute_figure(),
        limit: Some(apitoken_domain::ratelimit::to_proto(rate_limit)),
        last_use_ip: record.last_use_ip.clone().unwrap_or_default(),
        previous_secret_expire_time: record.grace_until(now).map(timestamp),
        interceptor: record.interceptor,
    }
}

/// A required message field given as `field`.
pub fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, Error> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        let now = Utc::now().trunc_subsecs(6);
        assert_eq!(from_timestamp("t", &timestamp(now)), Ok(now));
    }

    #[test]
    fn invalid_timestamps_name_the_field() {
        for bad in [
            Timestamp {
                seconds: 0,
                nanos: -1,
            },
            Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
            Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            },
        ] {
            let violation = from_timestamp("api_token.expire_time", &bad).expect_err("invalid");
            assert_eq!(violation.field, "api_token.expire_time");
        }
    }
}
