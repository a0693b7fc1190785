//! Kinds of token events, as stored and as streamed by `WatchApiTokenEvents`.

use apitoken_proto::v1::api_token_event::Kind;

/// What happened to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Revoked.
    Revoked,
    /// Got a new secret.
    Regenerated,
    /// Role, expiry or attributes changed.
    Updated,
    /// Reached its expiry.
    Expired,
    /// The previous secret's grace period ended early.
    GraceEnded,
    /// Reached an expiry warning lead time.
    ExpiryWarning,
    /// Created.
    Created,
    /// Purged after the retention period.
    Purged,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 8] = [
        EventKind::Revoked,
        EventKind::Regenerated,
        EventKind::Updated,
        EventKind::Expired,
        EventKind::GraceEnded,
        EventKind::ExpiryWarning,
        EventKind::Created,
        EventKind::Purged,
    ];

    /// The number stored in the database (as on the wire).
    pub fn as_i16(self) -> i16 {
        match self {
            EventKind::Revoked => 1,
            EventKind::Regenerated => 2,
            EventKind::Updated => 3,
            EventKind::Expired => 4,
            EventKind::GraceEnded => 5,
            EventKind::ExpiryWarning => 6,
            EventKind::Created => 7,
            EventKind::Purged => 8,
        }
    }

    /// The inverse of [`EventKind::as_i16`].
    pub fn from_i16(value: i16) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_i16() == value)
    }

    /// The wire enum.
    pub fn to_proto(self) -> Kind {
        match self {
            EventKind::Revoked => Kind::Revoked,
            EventKind::Regenerated => Kind::Regenerated,
            EventKind::Updated => Kind::Updated,
            EventKind::Expired => Kind::Expired,
            EventKind::GraceEnded => Kind::GraceEnded,
            EventKind::ExpiryWarning => Kind::ExpiryWarning,
            EventKind::Created => Kind::Created,
            EventKind::Purged => Kind::Purged,
        }
    }

    /// Whether the event changed what verification reads of the token's row
    /// (expiry and warnings change nothing there: expiry is a matter of time).
    pub fn changes_row(self) -> bool {
        !matches!(self, EventKind::ExpiryWarning | EventKind::Expired)
    }

    /// Whether a token cached before this event may now be stale (created
    /// and warned tokens are not: nothing about them changed).
    pub fn invalidates(self) -> bool {
        !matches!(self, EventKind::ExpiryWarning | EventKind::Created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_i16(kind.as_i16()), Some(kind));
            assert_eq!(kind.to_proto() as i16, kind.as_i16());
        }
        assert_eq!(EventKind::from_i16(0), None);
    }
}
