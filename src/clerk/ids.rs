//! Clerk id newtypes. A hotel's id *is* its Clerk organization id.

use std::fmt;

/// Why a string is not a Clerk id of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} id {value:?} must start with {prefix:?} and hold 1-128 ASCII letters, digits or '_'")]
pub struct IdError {
    what: &'static str,
    prefix: &'static str,
    value: String,
}

fn parse_id(what: &'static str, prefix: &'static str, value: &str) -> Result<String, IdError> {
    let valid = value.len() > prefix.len()
        && value.len() <= 128
        && value.starts_with(prefix)
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(IdError {
            what,
            prefix,
            // Never echo a huge or binary value back into an error (and so a log line).
            value: value.chars().take(64).collect(),
        })
    }
}

macro_rules! clerk_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        pub struct $name(String);

        impl $name {
            /// Ok when `value` is a well-formed id of this kind; Err names the expected shape.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                parse_id($what, $prefix, value).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

clerk_id!(
    /// A Clerk organization id (`org_...`), which is also the hotel's primary key.
    HotelId, "organization", "org_"
);
clerk_id!(
    /// A Clerk user id (`user_...`).
    UserId, "user", "user_"
);

clerk_id!(
    /// A Clerk organization role id (`role_...`).
    RoleId, "role", "role_"
);
clerk_id!(
    /// A Clerk organization permission id (`perm_...`).
    PermissionId, "permission", "perm_"
);
clerk_id!(
    /// A Clerk organization invitation id (`orginv_...`).
    InvitationId, "invitation", "orginv_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_clerk_shaped_ids() {
        assert_eq!(HotelId::parse("org_2abc").unwrap().as_str(), "org_2abc");
        assert!(UserId::parse("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S").is_ok());
    }

    #[test]
    fn rejects_wrong_prefix_empty_and_odd_characters() {
        assert!(HotelId::parse("user_2abc").is_err());
        assert!(HotelId::parse("org_").is_err());
        assert!(HotelId::parse("org_a b").is_err());
        assert!(UserId::parse(&format!("user_{}", "x".repeat(200))).is_err());
    }
}
