//! Roles, ordered viewer < editor < owner.

use std::fmt;

use apitoken_proto::v1;

/// The permission level of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May read.
    Viewer,
    /// May read and write.
    Editor,
    /// May also manage the namespace's tokens.
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Owner];

    /// The lowercase name (`viewer`, `editor`, `owner`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    /// The number stored in the database (1, 2, 3, as on the wire).
    pub fn as_i16(self) -> i16 {
        match self {
            Role::Viewer => 1,
            Role::Editor => 2,
            Role::Owner => 3,
        }
    }

    /// The inverse of [`Role::as_i16`].
    pub fn from_i16(value: i16) -> Option<Role> {
        match value {
            1 => Some(Role::Viewer),
            2 => Some(Role::Editor),
            3 => Some(Role::Owner),
            _ => None,
        }
    }

    /// Parses `viewer`, `VIEWER` or `ROLE_VIEWER` (any case).
    pub fn parse(text: &str) -> Option<Role> {
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("ROLE_").unwrap_or(&upper);
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(bare))
    }

    /// The wire enum.
    pub fn to_proto(self) -> v1::Role {
        match self {
            Role::Viewer => v1::Role::Viewer,
            Role::Editor => v1::Role::Editor,
            Role::Owner => v1::Role::Owner,
        }
    }

    /// The role of a wire value; `None` for `ROLE_UNSPECIFIED` and unknown numbers.
    pub fn from_proto(value: i32) -> Option<Role> {
        match v1::Role::try_from(value).ok()? {
            v1::Role::Unspecified => None,
            v1::Role::Viewer => Some(Role::Viewer),
            v1::Role::Editor => Some(Role::Editor),
            v1::Role::Owner => Some(Role::Owner),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Editor);
        assert!(Role::Editor < Role::Owner);
    }

    #[test]
    fn roles_round_trip_through_every_encoding() {
        for role in Role::ALL {
            assert_eq!(Role::from_i16(role.as_i16()), Some(role));
            assert_eq!(Role::from_proto(role.to_proto() as i32), Some(role));
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(Role::parse(role.to_proto().as_str_name()), Some(role));
        }
        assert_eq!(Role::from_proto(0), None);
        assert_eq!(Role::from_proto(42), None);
        assert_eq!(Role::parse("root"), None);
    }
}
