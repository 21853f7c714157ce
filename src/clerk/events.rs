//! The typed Clerk events orgsync reconciles (the envelope is `clerk::envelope`).
//!
//! Shapes follow Clerk's OpenAPI webhook description; unknown fields are skipped without being
//! decoded, so that Clerk adding fields (or a user filling `unsafe_metadata` with anything)
//! never breaks ingestion. Text fields get the treatment of `clerk::row_text`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{HotelId, InvitationId, PermissionId, RoleId, UserId};
use super::row_text::{metadata, optional_text, text, text_list};

/// Milliseconds since the Unix epoch: the unit Clerk uses for `created_at`/`updated_at`, and
/// the unit of every row's `clerk_version`.
pub type Millis = i64;

/// Below this, an envelope `timestamp` is in seconds (Clerk's OpenAPI examples), above it in
/// milliseconds (Clerk's docs). 10^11 seconds is the year 5138; 10^11 ms is March 1973.
const SECONDS_CUTOFF: i64 = 100_000_000_000;

/// Normalises an envelope `timestamp` to milliseconds, whichever unit it came in.
pub fn normalize_event_time(raw: i64) -> Millis {
    if raw.abs() < SECONDS_CUTOFF {
        raw.saturating_mul(1000)
    } else {
        raw
    }
}

/// A Clerk organization (webhook `data` or Backend API object).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Organization {
    pub id: HotelId,
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub slug: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub image_url: Option<String>,
    #[serde(default = "empty_object", deserialize_with = "metadata")]
    pub public_metadata: Value,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The key of the role set the organization's members' roles come from (see
    /// `clerk::role_set`); absent (null) on instances without role sets.
    #[serde(default, deserialize_with = "optional_text")]
    pub role_set_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EmailAddress {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(deserialize_with = "text")]
    pub email_address: String,
}

/// A Clerk user (webhook `data` or Backend API object).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct User {
    pub id: UserId,
    #[serde(default, deserialize_with = "optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub image_url: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub primary_email_address_id: Option<String>,
    #[serde(default)]
    pub email_addresses: Vec<EmailAddress>,
    /// Banned or locked users hold no permissions (see the `member_permissions` view).
    #[serde(default, deserialize_with = "flag")]
    pub banned: bool,
    #[serde(default, deserialize_with = "flag")]
    pub locked: bool,
    #[serde(default, deserialize_with = "optional_text")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub external_id: Option<String>,
    #[serde(default = "empty_object", deserialize_with = "metadata")]
    pub public_metadata: Value,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl User {
    /// The primary email address, if the user has one.
    pub fn primary_email(&self) -> Option<&str> {
        let primary = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .iter()
            .find(|e| e.id == primary)
            .map(|e| e.email_address.as_str())
    }
}

/// The organization embedded in a membership; only its id matters to orgsync.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct OrganizationRef {
    pub id: HotelId,
}

/// The user summary embedded in a membership, used to create a user stub.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PublicUserData {
    pub user_id: UserId,
    #[serde(default, deserialize_with = "optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub image_url: Option<String>,
    /// The user's identifier (usually the email address).
    #[serde(default, deserialize_with = "optional_text")]
    pub identifier: Option<String>,
}

/// A Clerk organization membership (webhook `data` or Backend API object).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Membership {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(deserialize_with = "role_key")]
    pub role: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub role_name: Option<String>,
    /// The permission keys Clerk lists on the membership: what the member holds when the role
    /// itself is not (yet) mirrored.
    #[serde(default, deserialize_with = "text_list")]
    pub permissions: Vec<String>,
    pub organization: OrganizationRef,
    pub public_user_data: PublicUserData,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A Clerk organization permission (webhook `data`, or embedded in a role).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Permission {
    pub id: PermissionId,
    #[serde(deserialize_with = "non_empty_text")]
    pub key: String,
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub description: Option<String>,
    /// `system`, `custom`, ... as Clerk sends it.
    #[serde(default, rename = "type", deserialize_with = "optional_text")]
    pub kind: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A Clerk organization role with its full permission set (webhook `data`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Role {
    pub id: RoleId,
    /// Normalised like a membership's role (see [`normalize_role`]).
    #[serde(deserialize_with = "role_key")]
    pub key: String,
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "permission_list")]
    pub permissions: Vec<Permission>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A Clerk organization invitation (webhook `data`). Its `url` is never decoded: it carries the
/// acceptance token.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Invitation {
    pub id: InvitationId,
    pub organization_id: HotelId,
    #[serde(deserialize_with = "text")]
    pub email_address: String,
    #[serde(deserialize_with = "role_key")]
    pub role: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub role_name: Option<String>,
    /// `pending`, `accepted`, `revoked`, ... as Clerk sends it.
    #[serde(deserialize_with = "non_empty_text")]
    pub status: String,
    /// The user who accepted it, when Clerk says.
    #[serde(default)]
    pub user_id: Option<UserId>,
    #[serde(default)]
    pub expires_at: Option<Millis>,
    /// Absent from some events (`organizationInvitation.revoked`).
    #[serde(default)]
    pub created_at: Option<Millis>,
    #[serde(default)]
    pub updated_at: Option<Millis>,
}

/// `{ "object", "id", "deleted": true }`: what `organization.deleted` and `user.deleted` carry.
#[derive(Debug, Clone, Deserialize)]
struct DeletedObject<Id> {
    id: Id,
}

/// A webhook event orgsync acts on, parsed from its type and payload.
#[derive(Debug, Clone, PartialEq)]
pub enum ClerkEvent {
    OrganizationUpserted(Organization),
    OrganizationDeleted {
        id: HotelId,
        at: Millis,
    },
    UserUpserted(User),
    UserDeleted {
        id: UserId,
        at: Millis,
    },
    MembershipUpserted(Membership),
    MembershipDeleted {
        membership: Membership,
        at: Millis,
    },
    RoleUpserted(Role),
    RoleDeleted {
        id: RoleId,
        at: Millis,
    },
    PermissionUpserted(Permission),
    PermissionDeleted {
        id: PermissionId,
        at: Millis,
    },
    /// An invitation created, accepted or revoked; `version` is its `updated_at`, or the event
    /// time when the payload has none (a revocation).
    InvitationWritten {
        invitation: Invitation,
        version: Millis,
    },
}

/// Why a stored payload is not the event its type claims: a permanent error (retrying the same
/// bytes cannot help).
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    #[error("{event_type} payload does not match its shape: {reason}")]
    Shape { event_type: String, reason: String },
    #[error("{0} carries no `timestamp`, which a delete needs as its version")]
    MissingTimestamp(String),
}

/// The event types orgsync reconciles; every other type is acknowledged and stored as skipped.
pub const HANDLED_TYPES: [&str; 18] = [
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "user.created",
    "user.updated",
    "user.deleted",
    "role.created",
    "role.updated",
    "role.deleted",
    "permission.created",
    "permission.updated",
    "permission.deleted",
    "organizationInvitation.created",
    "organizationInvitation.accepted",
    "organizationInvitation.revoked",
];

pub fn is_handled(event_type: &str) -> bool {
    HANDLED_TYPES.contains(&event_type)
}

/// Where a stored payload is decoded from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Value(&'a Value),
    Text(&'a str),
}

#[derive(Deserialize)]
struct TypedEnvelope<T> {
    data: T,
    timestamp: Option<i64>,
}

impl ClerkEvent {
    /// Parses a stored envelope. `Ok(None)`: a type orgsync does not handle. `Err`: the payload
    /// does not have the shape its type promises.
    pub fn parse(event_type: &str, payload: &Value) -> Result<Option<Self>, EventParseError> {
        Self::parse_from(event_type, Source::Value(payload))
    }

    /// [`ClerkEvent::parse`] of the payload's JSON text, decoded straight into the event (no
    /// intermediate `serde_json::Value`); text that is not JSON is a shape error.
    pub fn parse_str(event_type: &str, payload: &str) -> Result<Option<Self>, EventParseError> {
        Self::parse_from(event_type, Source::Text(payload))
    }

    fn parse_from(event_type: &str, payload: Source<'_>) -> Result<Option<Self>, EventParseError> {
        fn data<T: serde::de::DeserializeOwned>(
            event_type: &str,
            payload: Source<'_>,
        ) -> Result<(T, Option<Millis>), EventParseError> {
            let shape = |reason: String| EventParseError::Shape {
                event_type: event_type.to_owned(),
                reason,
            };
            let env: TypedEnvelope<T> = match payload {
                Source::Value(v) => serde::Deserialize::deserialize(v).map_err(|e| shape(e.to_string()))?,
                // serde's message when it quotes nothing of the input (`missing field ...`), else
                // only the category and position.
                Source::Text(t) => serde_json::from_str(t).map_err(|e| {
                    let message = e.to_string();
                    shape(if message.contains('"') {
                        format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())
                    } else {
                        message
                    })
                })?,
            };
            Ok((env.data, env.timestamp.map(normalize_event_time)))
        }
        let need_time = |t: Option<Millis>| t.ok_or_else(|| EventParseError::MissingTimestamp(event_type.to_owned()));

        let event = match event_type {
            "organization.created" | "organization.updated" => Self::OrganizationUpserted(data(event_type, payload)?.0),
            "organization.deleted" => {
                let (d, t): (DeletedObject<HotelId>, _) = data(event_type, payload)?;
                Self::OrganizationDeleted {
                    id: d.id,
                    at: need_time(t)?,
                }
            }
            "user.created" | "user.updated" => Self::UserUpserted(data(event_type, payload)?.0),
            "user.deleted" => {
                let (d, t): (DeletedObject<UserId>, _) = data(event_type, payload)?;
                Self::UserDeleted {
                    id: d.id,
                    at: need_time(t)?,
                }
            }
            "organizationMembership.created" | "organizationMembership.updated" => {
                Self::MembershipUpserted(data(event_type, payload)?.0)
            }
            "organizationMembership.deleted" => {
                let (membership, t): (Membership, _) = data(event_type, payload)?;
                // The payload is the membership as it was; the event time, when later, dates
                // the removal itself.
                let at = t.unwrap_or(membership.updated_at).max(membership.updated_at);
                Self::MembershipDeleted { membership, at }
            }
            "role.created" | "role.updated" => Self::RoleUpserted(data(event_type, payload)?.0),
            "role.deleted" => {
                let (d, t): (DeletedObject<RoleId>, _) = data(event_type, payload)?;
                Self::RoleDeleted {
                    id: d.id,
                    at: need_time(t)?,
                }
            }
            "permission.created" | "permission.updated" => Self::PermissionUpserted(data(event_type, payload)?.0),
            "permission.deleted" => {
                let (d, t): (DeletedObject<PermissionId>, _) = data(event_type, payload)?;
                Self::PermissionDeleted {
                    id: d.id,
                    at: need_time(t)?,
                }
            }
            "organizationInvitation.created" | "organizationInvitation.accepted" | "organizationInvitation.revoked" => {
                let (invitation, t): (Invitation, _) = data(event_type, payload)?;
                let version = match invitation.updated_at {
                    Some(v) => v,
                    None => need_time(t)?,
                };
                Self::InvitationWritten { invitation, version }
            }
            _ => return Ok(None),
        };
        Ok(Some(event))
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Older Clerk instances use `admin` / `basic_member`; newer ones `org:admin` / `org:member`.
/// Rows always hold the newer keys, so the application checks one spelling.
pub fn normalize_role(role: &str) -> String {
    match role {
        "admin" => "org:admin".to_owned(),
        "basic_member" => "org:member".to_owned(),
        other => other.to_owned(),
    }
}

pub(crate) fn role_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(normalize_role(&non_empty_text(d)?))
}

/// Longest key or status orgsync stores (Clerk's are far shorter).
const MAX_KEY: usize = 256;

/// A required text field that identifies something (a key, a status): cleaned like [`text`],
/// then 1-256 characters.
pub(crate) fn non_empty_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = text(d)?;
    if raw.is_empty() || raw.chars().count() > MAX_KEY {
        return Err(serde::de::Error::custom("key must hold 1-256 characters"));
    }
    Ok(raw)
}

/// A boolean; `null` is false.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A role's embedded permissions; `null` is none.
fn permission_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Permission>, D::Error> {
    Ok(Option::<Vec<Permission>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_time_is_normalised_from_seconds_or_milliseconds() {
        assert_eq!(normalize_event_time(1_716_883_200), 1_716_883_200_000);
        assert_eq!(normalize_event_time(1_716_883_200_123), 1_716_883_200_123);
    }

    #[test]
    fn legacy_role_keys_are_normalised() {
        assert_eq!(normalize_role("admin"), "org:admin");
        assert_eq!(normalize_role("basic_member"), "org:member");
        assert_eq!(normalize_role("org:front_desk"), "org:front_desk");
    }

    #[test]
    fn delete_without_timestamp_is_a_permanent_parse_error() {
        let payload = json!({"object": "event", "type": "user.deleted",
                             "data": {"object": "user", "id": "user_1", "deleted": true}});
        assert!(matches!(
            ClerkEvent::parse("user.deleted", &payload),
            Err(EventParseError::MissingTimestamp(_))
        ));
    }

    #[test]
    fn unhandled_type_parses_to_none() {
        let payload = json!({"object": "event", "type": "session.created", "data": {}});
        assert!(ClerkEvent::parse("session.created", &payload).unwrap().is_none());
        assert!(!is_handled("session.created"));
    }

    #[test]
    fn a_revoked_invitation_without_updated_at_is_versioned_by_the_event_time() {
        let payload = json!({"object": "event", "type": "organizationInvitation.revoked", "timestamp": 1_716_883_200,
            "data": {"object": "organization_invitation", "id": "orginv_1", "email_address": "a@x.test",
                     "role": "basic_member", "organization_id": "org_1", "status": "revoked",
                     "url": "https://x.test/accept?token=secret", "expires_at": 1}});
        let Some(ClerkEvent::InvitationWritten { invitation, version }) =
            ClerkEvent::parse("organizationInvitation.revoked", &payload).unwrap()
        else {
            panic!("not an invitation");
        };
        assert_eq!(version, 1_716_883_200_000);
        assert_eq!(invitation.role, "org:member");
        assert_eq!(invitation.created_at, None);
        let mut untimed = payload.clone();
        untimed.as_object_mut().unwrap().remove("timestamp");
        assert!(matches!(
            ClerkEvent::parse("organizationInvitation.revoked", &untimed),
            Err(EventParseError::MissingTimestamp(_))
        ));
    }

    #[test]
    fn role_ids_and_keys_are_validated() {
        let role = |id: &str, key: &str| {
            json!({"object": "event", "type": "role.created",
                   "data": {"id": id, "key": key, "name": "n", "created_at": 1, "updated_at": 2,
                            "permissions": [{"id": "perm_1", "key": "org:x:read", "name": "X", "type": "custom",
                                             "created_at": 1, "updated_at": 1}]}})
        };
        assert!(ClerkEvent::parse("role.created", &role("role_1", "admin")).is_ok());
        assert!(ClerkEvent::parse("role.created", &role("perm_1", "org:a")).is_err());
        assert!(ClerkEvent::parse("role.created", &role("role_1", "")).is_err());
        assert!(ClerkEvent::parse("role.created", &role("role_1", &"k".repeat(300))).is_err());
    }

    #[test]
    fn primary_email_is_the_one_the_id_points_at() {
        let user: User = serde_json::from_value(json!({
            "id": "user_1", "created_at": 1, "updated_at": 2,
            "primary_email_address_id": "idn_b",
            "email_addresses": [{"id": "idn_a", "email_address": "a@x.test"},
                                {"id": "idn_b", "email_address": "b@x.test"}]
        }))
        .unwrap();
        assert_eq!(user.primary_email(), Some("b@x.test"));
    }
}
