//! Clerk role sets: which organization roles an organization may hand out. Each organization
//! names one (`role_set_key`); Clerk refuses a membership role its organization's role set does
//! not list. Clerk sends no webhook for role sets: they reach the mirror through the resync, the
//! self-heal of a hotel and orgsync's own write path.
//!
//! Shapes follow the `RoleSet` and `RoleSetItem` schemas of Clerk's Backend API; unknown fields
//! (`members_count`, `role_set_migration`, …) are skipped without being decoded.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::events::{non_empty_text, role_key, Millis};
use super::ids::RoleId;
use super::row_text::{optional_text, text};

/// Why a string is not a role set id or key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RoleSetIdError(String);

/// A Clerk role set id. Clerk documents no prefix for it, so any 1-128 ASCII letters, digits
/// or `_` are accepted (what every Clerk id is made of).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RoleSetId(String);

impl RoleSetId {
    pub fn parse(value: &str) -> Result<Self, RoleSetIdError> {
        let valid = !value.is_empty()
            && value.len() <= 128
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(RoleSetIdError(format!(
                "role set id {:?} must hold 1-128 ASCII letters, digits or '_'",
                value.chars().take(64).collect::<String>()
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoleSetId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A role set key as Clerk makes them: `role_set:` followed by 1-120 lowercase ASCII letters,
/// digits or `_`. What orgsync accepts from a caller naming a role set (listed role sets keep
/// whatever key Clerk sends).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RoleSetKey(String);

impl RoleSetKey {
    pub const PREFIX: &'static str = "role_set:";

    pub fn parse(value: &str) -> Result<Self, RoleSetIdError> {
        let rest = value.strip_prefix(Self::PREFIX).unwrap_or("");
        let valid = !rest.is_empty()
            && rest.len() <= 120
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(RoleSetIdError(format!(
                "role set key {:?} must be {}<lowercase letters, digits or '_'>",
                value.chars().take(64).collect::<String>(),
                Self::PREFIX
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleSetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One role of a role set (Clerk's `RoleSetItem`): the role's id and key as the role set lists
/// them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RoleSetItem {
    pub id: RoleId,
    /// Normalised like a membership's role (`admin` → `org:admin`).
    #[serde(deserialize_with = "role_key")]
    pub key: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub name: Option<String>,
}

/// A Clerk role set (`GET /v1/role_sets` item, or the answer to a role set write).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RoleSet {
    pub id: RoleSetId,
    #[serde(deserialize_with = "non_empty_text")]
    pub key: String,
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub description: Option<String>,
    /// `initial` (the role set new organizations get) or `custom`, as Clerk sends it.
    #[serde(default, rename = "type", deserialize_with = "optional_text")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "item_list")]
    pub roles: Vec<RoleSetItem>,
    /// The role new members get.
    #[serde(default)]
    pub default_role: Option<RoleSetItem>,
    /// The role an organization's creator gets.
    #[serde(default)]
    pub creator_role: Option<RoleSetItem>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl RoleSet {
    /// True when the role set lists the role `key`.
    pub fn has_role(&self, key: &str) -> bool {
        self.roles.iter().any(|r| r.key == key)
    }
}

/// A role set's roles; `null` is none.
fn item_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RoleSetItem>, D::Error> {
    Ok(Option::<Vec<RoleSetItem>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "object": "role_set", "id": "rs_2front000000000000000001", "key": "role_set:front_desk",
            "name": "Front desk", "description": null, "type": "custom",
            "roles": [
                {"object": "role_set_item", "id": "role_2admin", "key": "admin", "name": "Admin",
                 "description": null, "members_count": 3, "created_at": 1, "updated_at": 2},
                {"object": "role_set_item", "id": "role_2desk", "key": "org:desk", "name": "Desk",
                 "description": "front desk", "created_at": 1, "updated_at": 2}
            ],
            "default_role": {"object": "role_set_item", "id": "role_2desk", "key": "org:desk", "name": "Desk",
                             "description": null, "created_at": 1, "updated_at": 2},
            "creator_role": null,
            "role_set_migration": {"object": "role_set_migration", "id": "x"},
            "created_at": 10, "updated_at": 20
        })
    }

    #[test]
    fn a_role_set_parses_normalises_role_keys_and_survives_a_round_trip() {
        let set: RoleSet = serde_json::from_value(sample()).unwrap();
        assert_eq!(set.key, "role_set:front_desk");
        assert!(set.has_role("org:admin"), "legacy keys are normalised");
        assert_eq!(set.default_role.as_ref().unwrap().key, "org:desk");
        assert!(set.creator_role.is_none());
        assert_eq!(set.kind.as_deref(), Some("custom"));
        let back: RoleSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn ids_and_keys_are_checked() {
        let mut bad = sample();
        bad["id"] = json!("rs 1");
        assert!(serde_json::from_value::<RoleSet>(bad).is_err());
        let mut keyless = sample();
        keyless["key"] = json!("");
        assert!(serde_json::from_value::<RoleSet>(keyless).is_err());
        assert!(RoleSetKey::parse("role_set:front_desk_2").is_ok());
        for bad in ["front_desk", "role_set:", "role_set:Front", "role_set:a-b", "role_set:a/b"] {
            assert!(RoleSetKey::parse(bad).is_err(), "{bad}");
        }
    }
}
