//! Rate limits that mean what they say: a limit of `n` per window means at
//! most `n` requests accepted in **any** window of that length.
//!
//! - [`window`]: the sliding window with sub-buckets (pure arithmetic, no
//!   IO, no clock), and the proof of the bound.
//! - [`local`]: the in-process stores built on it: [`local::LocalLimiter`]
//!   (per-token and per-namespace limits, checked together, all or
//!   nothing) and [`local::LocalThrottle`] (failed authentications per
//!   address, bounded memory).
//!
//! The same algorithm runs in Redis (crate `apitoken-ratelimit`) so that
//! every replica and interceptor can share one counter per key.
//!
//! Limits are written `120/m`, `10/s`, `5000/h` or `unlimited` (a bare
//! number is per minute).

pub mod local;
pub mod window;

use std::{fmt, str::FromStr, time::Duration};

pub use local::{LocalLimiter, LocalThrottle};

/// The largest count of a limit, per window (a bound on operator and owner
/// input; "unlimited" is the way to say more).
pub const MAX_COUNT: u32 = 1_000_000_000;

/// The length of a limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::Second, Window::Minute, Window::Hour];

    /// Its length in seconds.
    pub const fn seconds(self) -> u32 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3600,
        }
    }

    /// Its length in microseconds.
    pub const fn micros(self) -> i64 {
        self.seconds() as i64 * 1_000_000
    }

    /// The window of `seconds` (1, 60 or 3600).
    pub fn from_seconds(seconds: u32) -> Option<Window> {
        Window::ALL
            .into_iter()
            .find(|window| window.seconds() == seconds)
    }

    /// `s`, `m` or `h`.
    pub const fn unit(self) -> &'static str {
        match self {
            Window::Second => "s",
            Window::Minute => "m",
            Window::Hour => "h",
        }
    }

    /// `second`, `minute` or `hour`.
    pub const fn word(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
        }
    }
}

/// At most `count` requests in any window of length `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests, 1 to [`MAX_COUNT`].
    pub count: u32,
    /// The window.
    pub window: Window,
}

impl Limit {
    /// `count` a minute.
    pub const fn per_minute(count: u32) -> Limit {
        Limit {
            count,
            window: Window::Minute,
        }
    }

    /// The most requests this limit lets through in one window of length
    /// `window`: its count if its own window is at least as long (they may
    /// all arrive at once), else its count for every one of its windows in
    /// `window`.
    pub fn most_in(self, window: Window) -> u64 {
        let own = u64::from(self.window.seconds());
        let other = u64::from(window.seconds());
        if own >= other {
            u64::from(self.count)
        } else {
            u64::from(self.count) * (other / own)
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.window.unit())
    }
}

/// A limit, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimit {
    /// Not limited (other limits, such as the namespace's, still apply).
    Unlimited,
    /// Limited.
    Limited(Limit),
}

impl RateLimit {
    /// `count` a minute.
    pub const fn per_minute(count: u32) -> RateLimit {
        RateLimit::Limited(Limit::per_minute(count))
    }

    /// The limit, unless unlimited.
    pub fn limit(self) -> Option<Limit> {
        match self {
            RateLimit::Unlimited => None,
            RateLimit::Limited(limit) => Some(limit),
        }
    }

    /// Whether this limit lets no more through than `max` in any window of
    /// `max`'s length (so in no window can it exceed what `max` allows).
    pub fn within(self, max: RateLimit) -> bool {
        match (self, max) {
            (_, RateLimit::Unlimited) => true,
            (RateLimit::Unlimited, RateLimit::Limited(_)) => false,
            (RateLimit::Limited(limit), RateLimit::Limited(max)) => {
                limit.most_in(max.window) <= u64::from(max.count)
            }
        }
    }

    /// The most requests it lets through in one minute, saturating at
    /// `i32::MAX` (unlimited too): the figure of the older per-minute
    /// fields of the API.
    pub fn per_minute_figure(self) -> i32 {
        match self {
            RateLimit::Unlimited => i32::MAX,
            RateLimit::Limited(limit) => {
                i32::try_from(limit.most_in(Window::Minute)).unwrap_or(i32::MAX)
            }
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimit::Unlimited => f.write_str("unlimited"),
            RateLimit::Limited(limit) => limit.fmt(f),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `120/m`, `120/min`, `10/s`, `5000/h`, `unlimited`; a bare number is
    /// per minute.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(RateLimit::Unlimited);
        }
        let bad = || {
            format!(
                "{} is not a limit like 120/m, 10/s, 5000/h or unlimited",
                crate::input::quote(text)
            )
        };
        let (count, unit) = text.split_once('/').unwrap_or((text, "m"));
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => Window::Second,
            "m" | "min" | "minute" => Window::Minute,
            "h" | "hour" => Window::Hour,
            _ => return Err(bad()),
        };
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(format!(
                "the count of {} must be from 1 to {MAX_COUNT} (or say unlimited)",
                crate::input::quote(text)
            ));
        }
        Ok(RateLimit::Limited(Limit { count, window }))
    }
}

/// The wire form of a limit.
pub fn to_proto(limit: RateLimit) -> apitoken_proto::v1::RateLimit {
    use apitoken_proto::v1::rate_limit::Window as Wire;
    match limit {
        RateLimit::Unlimited => apitoken_proto::v1::RateLimit {
            unlimited: true,
            ..Default::default()
        },
        RateLimit::Limited(limit) => apitoken_proto::v1::RateLimit {
            requests: i64::from(limit.count),
            window: match limit.window {
                Window::Second => Wire::Second,
                Window::Minute => Wire::Minute,
                Window::Hour => Wire::Hour,
            }
            .into(),
            unlimited: false,
        },
    }
}

/// A limit from the wire, or why not: `(field suffix, description)`, the
/// suffix (`requests`, `window`, or empty) naming the offending subfield.
pub fn from_proto(
    wire: &apitoken_proto::v1::RateLimit,
) -> Result<RateLimit, (&'static str, String)> {
    use apitoken_proto::v1::rate_limit::Window as Wire;
    if wire.unlimited {
        if wire.requests != 0 || wire.window != 0 {
            return Err((
                "",
                "set unlimited, or requests and window, not both".to_owned(),
            ));
        }
        return Ok(RateLimit::Unlimited);
    }
    let count = u32::try_from(wire.requests)
        .ok()
        .filter(|count| (1..=MAX_COUNT).contains(count))
        .ok_or_else(|| {
            (
                "requests",
                format!("must be from 1 to {MAX_COUNT} (or set unlimited)"),
            )
        })?;
    let window = match Wire::try_from(wire.window) {
        Ok(Wire::Second) => Window::Second,
        Ok(Wire::Minute) => Window::Minute,
        Ok(Wire::Hour) => Window::Hour,
        _ => {
            return Err((
                "window",
                "is required: WINDOW_SECOND, WINDOW_MINUTE or WINDOW_HOUR".to_owned(),
            ));
        }
    };
    Ok(RateLimit::Limited(Limit { count, window }))
}

/// Which limit a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The token's own limit.
    Token,
    /// The namespace's aggregate limit.
    Namespace,
}

impl Scope {
    /// `token` or `namespace`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Token => "token",
            Scope::Namespace => "namespace",
        }
    }
}

/// One limit to check: the key's scope, the key, the limit.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// Token or namespace.
    pub scope: Scope,
    /// The token's uid or the namespace.
    pub key: &'a str,
    /// Its limit.
    pub limit: RateLimit,
}

/// The outcome of a check, with what the `x-ratelimit-*` headers report:
/// the limit that binds (refusing, or with the fewest requests left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit reported.
    pub limit: Limit,
    /// Which limit that is.
    pub scope: Scope,
    /// Requests left right now under that limit.
    pub remaining: u32,
    /// Unix time (seconds, rounded up) at which that limit's whole budget
    /// is free again.
    pub reset_unix: i64,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// The reply headers that report this decision: `x-ratelimit-limit`
    /// (requests), `x-ratelimit-window` (its length, seconds),
    /// `x-ratelimit-remaining`, `x-ratelimit-reset` (Unix seconds) and
    /// `x-ratelimit-scope` (`token` or `namespace`). The server and the
    /// interceptor both send exactly these.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            ("x-ratelimit-limit", self.limit.count.to_string()),
            (
                "x-ratelimit-window",
                self.limit.window.seconds().to_string(),
            ),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_unix.to_string()),
            ("x-ratelimit-scope", self.scope.as_str().to_owned()),
        ]
    }

    /// "rate limit of 120 requests a minute exceeded for {subject}".
    pub fn describe(&self, subject: &str) -> String {
        format!(
            "rate limit of {} requests a {} exceeded for {subject}",
            self.limit.count,
            self.limit.window.word()
        )
    }
}

/// What counting a failed authentication observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Still under the limit.
    Counted,
    /// This failure used up the budget: a burst starts (reported once per
    /// burst, however many processes share the count).
    BurstStarted,
    /// Already throttled: not counted, the caller is refused. Carries how
    /// long until a failure would be counted again.
    Throttled(Option<Duration>),
}

/// The per-process key of an address for the failed-authentication
/// throttle: IPv4 addresses as they are, IPv6 ones by their /64 (a client
/// usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
pub fn throttle_key(address: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_print() {
        assert_eq!("120/m".parse(), Ok(RateLimit::per_minute(120)));
        assert_eq!("120".parse(), Ok(RateLimit::per_minute(120)));
        assert_eq!(
            "10/s".parse(),
            Ok(RateLimit::Limited(Limit {
                count: 10,
                window: Window::Second
            }))
        );
        assert_eq!("unlimited".parse(), Ok(RateLimit::Unlimited));
        assert_eq!(
            "5000/h".parse::<RateLimit>().map(|l| l.to_string()),
            Ok("5000/h".to_owned())
        );
        for bad in ["0/m", "1000000001/s", "5/d", "x", "", "-1"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn within_compares_what_each_lets_through_in_any_window() {
        let l = |text: &str| text.parse::<RateLimit>().expect("limit");
        assert!(l("60/m").within(l("60/m")));
        assert!(!l("61/m").within(l("60/m")));
        // 2/s lets 120 through in a minute.
        assert!(!l("2/s").within(l("60/m")));
        assert!(l("1/s").within(l("60/m")));
        // 60/m may all arrive in one second.
        assert!(!l("60/m").within(l("10/s")));
        assert!(l("3600/h").within(l("3600/h")));
        assert!(!l("3600/h").within(l("100/m")));
        assert!(l("unlimited").within(l("unlimited")));
        assert!(!l("unlimited").within(l("1000000000/s")));
        assert_eq!(l("2/s").per_minute_figure(), 120);
        assert_eq!(l("7/h").per_minute_figure(), 7);
        assert_eq!(l("unlimited").per_minute_figure(), i32::MAX);
    }
}
