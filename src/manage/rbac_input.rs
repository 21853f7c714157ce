//! What the RBAC write path accepts, parsed at the edge (API JSON, CLI arguments): keys in the
//! shapes Clerk takes, names and descriptions it stores, lists of the lengths it allows. A
//! malformed request is refused naming its field, and nothing is sent to Clerk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::input::RoleKey;
use crate::clerk::{PermissionId, RoleSetKey};

/// Most roles one role set request names (Clerk's limit).
pub const MAX_ROLES_PER_REQUEST: usize = 10;

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

checked_string!(
    /// A permission key as Clerk makes them: `org:<feature>:<action>`, each part lowercase
    /// letters, digits or `_` (and not a system permission, `org:sys_…`).
    PermissionKey,
    check_permission_key
);
checked_string!(
    /// A custom role key: `org:` and lowercase letters, digits or `_`.
    CustomRoleKey,
    check_role_key
);
checked_string!(
    /// A display name: trimmed, 1-256 characters, no control characters.
    DisplayName,
    check_name
);
checked_string!(
    /// A description: at most 1,000 characters, no control characters but line breaks.
    Description,
    check_description
);

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_permission_key(value: String) -> Result<String, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 3
        && parts[0] == "org"
        && segment_ok(parts[1])
        && segment_ok(parts[2])
        && !parts[1].starts_with("sys_")
        && value.len() <= 256;
    if ok {
        Ok(value)
    } else {
        Err("must be org:<feature>:<action> (lowercase letters, digits or '_'; not org:sys_…)".into())
    }
}

fn check_role_key(value: String) -> Result<String, String> {
    let ok = value.strip_prefix("org:").is_some_and(segment_ok) && value.len() <= 256;
    if ok {
        Ok(value)
    } else {
        Err("must be org:<name> (lowercase letters, digits or '_')".into())
    }
}

fn check_name(value: String) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().count() > 256 || v.chars().any(char::is_control) {
        return Err("must hold at most 256 characters, none of them control characters".into());
    }
    Ok(v.to_owned())
}

fn check_description(value: String) -> Result<String, String> {
    if value.chars().count() > 1000 || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must hold at most 1000 characters, no control characters but line breaks".into());
    }
    Ok(value)
}

/// `POST /v1/permissions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPermissionInput {
    pub name: DisplayName,
    pub key: PermissionKey,
    #[serde(default)]
    pub description: Option<Description>,
}

/// `PATCH /v1/permissions/{id}`: at least one field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionUpdate {
    #[serde(default)]
    pub name: Option<DisplayName>,
    #[serde(default)]
    pub key: Option<PermissionKey>,
    #[serde(default)]
    pub description: Option<Description>,
}

/// `POST /v1/roles`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoleInput {
    pub name: DisplayName,
    pub key: CustomRoleKey,
    #[serde(default)]
    pub description: Option<Description>,
    /// The permission ids it grants.
    #[serde(default)]
    pub permissions: Option<Vec<PermissionId>>,
    /// Also add it to the initial role set (the one new organizations get).
    #[serde(default)]
    pub include_in_initial_role_set: Option<bool>,
}

/// `PATCH /v1/roles/{id}`: at least one field; `permissions` replaces the whole set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    #[serde(default)]
    pub name: Option<DisplayName>,
    #[serde(default)]
    pub key: Option<CustomRoleKey>,
    #[serde(default)]
    pub description: Option<Description>,
    #[serde(default)]
    pub permissions: Option<Vec<PermissionId>>,
}

/// `initial` (the role set new organizations get) or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RoleSetType {
    Initial,
    Custom,
}

impl RoleSetType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Custom => "custom",
        }
    }
}

/// `POST /v1/role_sets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoleSetInput {
    pub name: DisplayName,
    /// Generated by Clerk from the name when absent.
    #[serde(default)]
    pub key: Option<RoleSetKey>,
    #[serde(default)]
    pub description: Option<Description>,
    pub default_role_key: RoleKey,
    pub creator_role_key: RoleKey,
    #[serde(default, rename = "type")]
    pub kind: Option<RoleSetType>,
    /// 1 to 10 role keys.
    pub roles: Vec<RoleKey>,
}

/// `PATCH /v1/role_sets/{key}`: at least one field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSetUpdate {
    #[serde(default)]
    pub name: Option<DisplayName>,
    #[serde(default)]
    pub key: Option<RoleSetKey>,
    #[serde(default)]
    pub description: Option<Description>,
    /// Only `initial` can be set (the former initial role set becomes `custom`).
    #[serde(default, rename = "type")]
    pub kind: Option<RoleSetType>,
    #[serde(default)]
    pub default_role_key: Option<RoleKey>,
    #[serde(default)]
    pub creator_role_key: Option<RoleKey>,
}

/// `POST /v1/role_sets/{key}/roles`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSetAddition {
    /// 1 to 10 role keys.
    pub role_keys: Vec<RoleKey>,
    #[serde(default)]
    pub default_role_key: Option<RoleKey>,
    #[serde(default)]
    pub creator_role_key: Option<RoleKey>,
}

/// `POST /v1/role_sets/{key}/replace`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSetReplacement {
    pub dest_role_set_key: RoleSetKey,
    /// Source role key → destination role key, for members whose role the destination lacks.
    #[serde(default)]
    pub reassignment_mappings: HashMap<RoleKey, RoleKey>,
}

impl RoleSetReplacement {
    pub fn mappings(&self) -> BTreeMap<String, String> {
        self.reassignment_mappings
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect()
    }
}

/// `POST /v1/role_sets/{key}/roles/replace`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleReplacement {
    /// The role leaving the role set.
    pub role_key: RoleKey,
    /// The role its holders move to.
    pub to_role_key: RoleKey,
}

/// Err naming `field` unless `roles` holds 1 to [`MAX_ROLES_PER_REQUEST`] keys.
pub fn check_role_list(field: &str, roles: &[RoleKey]) -> Result<(), super::ManageError> {
    if roles.is_empty() || roles.len() > MAX_ROLES_PER_REQUEST {
        return Err(super::ManageError::invalid(
            field,
            format!("must name 1 to {MAX_ROLES_PER_REQUEST} roles"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_clerk_shaped() {
        assert!(PermissionKey::from_str("org:reservations:manage").is_ok());
        for bad in [
            "org:reservations",
            "org:sys_memberships:read",
            "org:Res:x",
            "x:a:b",
            "org:a:b:c",
        ] {
            assert!(PermissionKey::from_str(bad).is_err(), "{bad}");
        }
        assert!(CustomRoleKey::from_str("org:front_desk").is_ok());
        for bad in ["front_desk", "org:", "org:Front", "org:a:b"] {
            assert!(CustomRoleKey::from_str(bad).is_err(), "{bad}");
        }
        assert!(DisplayName::from_str("  ").is_err());
        assert_eq!(DisplayName::from_str(" Front desk ").unwrap().as_str(), "Front desk");
    }

    #[test]
    fn bodies_are_strict() {
        let ok: NewRoleSetInput = serde_json::from_str(
            r#"{"name": "Front", "key": "role_set:front", "default_role_key": "org:desk",
                "creator_role_key": "org:admin", "type": "custom", "roles": ["org:admin", "org:desk"]}"#,
        )
        .unwrap();
        assert_eq!(ok.kind, Some(RoleSetType::Custom));
        assert!(serde_json::from_str::<NewRoleSetInput>(
            r#"{"name": "F", "key": "front", "default_role_key": "a", "creator_role_key": "a", "roles": ["a"]}"#
        )
        .is_err());
        assert!(serde_json::from_str::<RoleUpdate>(r#"{"colour": 1}"#).is_err());
        assert!(check_role_list("roles", &[]).is_err());
    }
}
