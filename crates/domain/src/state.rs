//! The state of a token, derived from its revoke and expire times.

use apitoken_proto::v1::api_token::State;
use chrono::{DateTime, Utc};

/// Where a token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked, for good.
    Revoked,
}

impl TokenState {
    /// Every state.
    pub const ALL: [TokenState; 3] = [TokenState::Active, TokenState::Expired, TokenState::Revoked];

    /// The state at `now`. Revocation wins over expiry.
    pub fn at(
        revoke_time: Option<DateTime<Utc>>,
        expire_time: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> TokenState {
        if revoke_time.is_some() {
            TokenState::Revoked
        } else if expire_time.is_some_and(|expiry| expiry <= now) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> State {
        match self {
            TokenState::Active => State::Active,
            TokenState::Expired => State::Expired,
            TokenState::Revoked => State::Revoked,
        }
    }

    /// Parses `active`, `ACTIVE` or `STATE_ACTIVE` (any case).
    pub fn parse(text: &str) -> Option<TokenState> {
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("STATE_").unwrap_or(&upper);
        TokenState::ALL
            .into_iter()
            .find(|state| state.to_proto().as_str_name().trim_start_matches("STATE_") == bare)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn state_is_derived_from_times() {
        let now = Utc::now();
        let later = now + Duration::hours(1);
        let earlier = now - Duration::hours(1);
        assert_eq!(TokenState::at(None, None, now), TokenState::Active);
        assert_eq!(TokenState::at(None, Some(later), now), TokenState::Active);
        assert_eq!(TokenState::at(None, Some(now), now), TokenState::Expired);
        assert_eq!(
            TokenState::at(None, Some(earlier), now),
            TokenState::Expired
        );
        assert_eq!(
            TokenState::at(Some(earlier), Some(earlier), now),
            TokenState::Revoked
        );
    }

    #[test]
    fn states_parse_in_every_spelling() {
        assert_eq!(TokenState::parse("STATE_ACTIVE"), Some(TokenState::Active));
        assert_eq!(TokenState::parse("expired"), Some(TokenState::Expired));
        assert_eq!(TokenState::parse("Revoked"), Some(TokenState::Revoked));
        assert_eq!(TokenState::parse("STATE_UNSPECIFIED"), None);
    }
}
