//! What the write path accepts, parsed once at the edge (the API's JSON, the CLI's arguments):
//! each newtype holds only values Clerk can take, so nothing malformed is ever sent to Clerk.
//! Every type deserializes from its JSON string (the error says what is wrong, and the API names
//! the field) and parses from a command-line argument.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest hotel (organization) name Clerk accepts.
pub const MAX_NAME: usize = 256;
/// Longest slug orgsync sends.
pub const MAX_SLUG: usize = 64;
/// Longest metadata object (its JSON text), as Clerk limits it.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Most invitations Clerk takes in one bulk request.
pub const MAX_BULK_INVITATIONS: usize = 10;

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                $check(value).map(Self)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A hotel's name: trimmed, 1-256 characters, no control characters.
    HotelName,
    check_name
);
string_newtype!(
    /// An organization slug: 1-64 of `a-z`, `0-9` and `-`, not starting or ending with `-`.
    Slug,
    check_slug
);
string_newtype!(
    /// A role key such as `org:admin` or `org:front_desk`: 1-256 characters, no spaces or control
    /// characters.
    RoleKey,
    check_role
);
string_newtype!(
    /// An email address: `local@domain`, 3-320 characters, no spaces or control characters.
    EmailAddress,
    check_email
);

string_newtype!(
    /// Where an invitee lands after accepting: an `http(s)://` URL of at most 2,048 characters.
    RedirectUrl,
    check_url
);

fn check_url(value: String) -> Result<String, String> {
    let ok = (value.starts_with("https://") || value.starts_with("http://"))
        && value.len() <= 2048
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(value)
    } else {
        Err("must be an http(s) URL of at most 2048 characters".into())
    }
}

/// How many days an invitation stays valid: 1 to 365, as Clerk takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u16")]
pub struct ExpiresInDays(u16);

impl ExpiresInDays {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u64> for ExpiresInDays {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if (1..=365).contains(&v) {
            Ok(Self(v as u16))
        } else {
            Err("must be 1 to 365 days".into())
        }
    }
}

impl From<ExpiresInDays> for u16 {
    fn from(d: ExpiresInDays) -> u16 {
        d.0
    }
}

fn check_name(value: String) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().count() > MAX_NAME {
        return Err(format!("must hold at most {MAX_NAME} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(v.to_owned())
}

fn check_slug(value: String) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SLUG
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value)
    } else {
        Err(format!(
            "must hold 1-{MAX_SLUG} lowercase letters, digits or '-' (not first or last)"
        ))
    }
}

fn check_role(value: String) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.chars().count() <= 256
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(value)
    } else {
        Err("must be a role key such as org:admin (1-256 characters, no spaces)".into())
    }
}

fn check_email(value: String) -> Result<String, String> {
    let v = value.trim();
    let ok = (3..=320).contains(&v.len())
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && v.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err("must be an email address".into())
    }
}

impl Slug {
    /// A fresh slug for `name`: its ASCII letters and digits, lowercased, other runs as `-`
    /// (at most 40 characters), then `-` and 8 random letters and digits, so two hotels of the
    /// same name never collide and a create whose answer was lost can be found by it.
    pub fn generate(name: &HotelName) -> Self {
        let mut base = String::new();
        for c in name.as_str().chars() {
            if c.is_ascii_alphanumeric() {
                base.push(c.to_ascii_lowercase());
            } else if !base.ends_with('-') && !base.is_empty() {
                base.push('-');
            }
            if base.len() >= 40 {
                break;
            }
        }
        let base = base.trim_end_matches('-');
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let suffix: String = (0..8)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let slug = if base.is_empty() {
            format!("hotel-{suffix}")
        } else {
            format!("{base}-{suffix}")
        };
        Self(slug)
    }
}

/// A metadata object (public or private): a JSON object of at most 8 KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Metadata(serde_json::Value);

impl Metadata {
    pub fn into_value(self) -> serde_json::Value {
        self.0
    }
}

impl TryFrom<serde_json::Value> for Metadata {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        if !v.is_object() {
            return Err("must be a JSON object".into());
        }
        if v.to_string().len() > MAX_METADATA_BYTES {
            return Err(format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"));
        }
        Ok(Self(v))
    }
}

impl From<Metadata> for serde_json::Value {
    fn from(m: Metadata) -> Self {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(HotelName::from_str("  Hotel Alpine ").unwrap().as_str(), "Hotel Alpine");
        assert!(HotelName::from_str("   ").is_err());
        assert!(HotelName::from_str(&"x".repeat(257)).is_err());
        assert!(HotelName::from_str("a\u{0}b").is_err());
    }

    #[test]
    fn slugs_are_clerk_shaped_and_generated_ones_too() {
        assert!(Slug::from_str("hotel-alpine-2").is_ok());
        for bad in ["", "-a", "a-", "Hotel", "a b", "a_b"] {
            assert!(Slug::from_str(bad).is_err(), "{bad:?}");
        }
        let name = HotelName::from_str("Hôtel du Lac & Spa!").unwrap();
        let a = Slug::generate(&name);
        let b = Slug::generate(&name);
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("h-tel-du-lac-spa-"), "{a}");
        assert!(Slug::from_str(a.as_str()).is_ok());
        assert!(Slug::generate(&HotelName::from_str("日本").unwrap())
            .as_str()
            .starts_with("hotel-"));
    }

    #[test]
    fn roles_emails_and_metadata() {
        assert!(RoleKey::from_str("org:front_desk").is_ok());
        assert!(RoleKey::from_str("org: admin").is_err());
        assert!(EmailAddress::from_str("maria@example.com").is_ok());
        for bad in ["maria", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(EmailAddress::from_str(bad).is_err(), "{bad:?}");
        }
        assert!(Metadata::try_from(serde_json::json!({"a": 1})).is_ok());
        assert!(Metadata::try_from(serde_json::json!([1])).is_err());
        assert!(Metadata::try_from(serde_json::json!({"a": "x".repeat(9000)})).is_err());
    }
}
