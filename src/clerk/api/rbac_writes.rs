//! The Backend API's instance RBAC writes, for the write path (`crate::manage::rbac`):
//! organization permissions, organization roles (and a role's permissions), and role sets. Same
//! contract as every write of [`super::writes`]: bounded by a deadline, 429s waited out within
//! it, creates ([`Repeat::Never`]) never re-sent after a lost answer (the caller looks the
//! object up by key first), everything else retried on 5xx and timeouts, Clerk's 4xx returned
//! with its status and code. Each answers the object Clerk returns, with its `Date`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::writes::{found, path_segment, to_body, Call, ClerkWriteError, Dated, Repeat};
use super::{ClerkClient, PAGE_LIMIT};
use crate::clerk::{Permission, PermissionId, Role, RoleId, RoleSet};

/// `POST /v1/organization_permissions`.
#[derive(Debug, Clone, Serialize)]
pub struct NewPermission {
    pub name: String,
    /// `org:<feature>:<action>`.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PATCH /v1/organization_permissions/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PermissionChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `POST /v1/organization_roles`.
#[derive(Debug, Clone, Serialize)]
pub struct NewRole {
    pub name: String,
    /// `org:<name>`.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Permission ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_in_initial_role_set: Option<bool>,
}

/// `PATCH /v1/organization_roles/{id}`: the fields to change (`permissions` replaces the set).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoleChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
}

/// `POST /v1/role_sets`.
#[derive(Debug, Clone, Serialize)]
pub struct NewRoleSet {
    pub name: String,
    /// Sent whenever the caller gave one (the write path finds a create whose answer was lost
    /// by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub default_role_key: String,
    pub creator_role_key: String,
    /// `initial` or `custom`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Role keys (1 to 10).
    pub roles: Vec<String>,
}

/// `PATCH /v1/role_sets/{key_or_id}`: the fields to change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoleSetChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Only `initial` (makes this the role set of new organizations).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_role_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_role_key: Option<String>,
}

/// `POST /v1/role_sets/{key_or_id}/roles`.
#[derive(Debug, Clone, Serialize)]
pub struct RoleSetRoles {
    pub role_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_role_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator_role_key: Option<String>,
}

impl ClerkClient {
    /// `POST /v1/organization_permissions`. Never re-sent after a lost answer: look the key up
    /// with [`Self::permission_by_key`] first.
    pub async fn create_permission(
        &self,
        permission: &NewPermission,
        deadline: Instant,
    ) -> Result<Dated<Permission>, ClerkWriteError> {
        self.send_json(
            write_call(
                Method::POST,
                "create_permission",
                "/v1/organization_permissions".into(),
                Some(permission),
                Repeat::Never,
            ),
            deadline,
        )
        .await
    }

    /// `PATCH /v1/organization_permissions/{id}`.
    pub async fn update_permission(
        &self,
        id: &PermissionId,
        changes: &PermissionChanges,
        deadline: Instant,
    ) -> Result<Dated<Permission>, ClerkWriteError> {
        let path = format!("/v1/organization_permissions/{}", id.as_str());
        self.send_json(
            write_call(Method::PATCH, "update_permission", path, Some(changes), Repeat::Safe),
            deadline,
        )
        .await
    }

    /// `DELETE /v1/organization_permissions/{id}`. `value` is false when a repeated request
    /// found it gone already (deleted either way).
    pub async fn delete_permission(
        &self,
        id: &PermissionId,
        deadline: Instant,
    ) -> Result<Dated<bool>, ClerkWriteError> {
        let path = format!("/v1/organization_permissions/{}", id.as_str());
        self.delete_call("delete_permission", path, deadline).await
    }

    /// The permission holding `key`, if any (`GET /v1/organization_permissions?query=`, exact
    /// key match among the answers).
    pub async fn permission_by_key(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Dated<Permission>>, ClerkWriteError> {
        let query = by_key(key);
        let found: Dated<List<Permission>> = self
            .send_json(
                query_call("organization_permissions", "/v1/organization_permissions", &query),
                deadline,
            )
            .await?;
        Ok(pick(found, |p| p.key == key))
    }

    /// `POST /v1/organization_roles`. Never re-sent after a lost answer: look the key up with
    /// [`Self::role_by_key`] first.
    pub async fn create_role(&self, role: &NewRole, deadline: Instant) -> Result<Dated<Role>, ClerkWriteError> {
        self.send_json(
            write_call(
                Method::POST,
                "create_role",
                "/v1/organization_roles".into(),
                Some(role),
                Repeat::Never,
            ),
            deadline,
        )
        .await
    }

    /// `PATCH /v1/organization_roles/{id}`.
    pub async fn update_role(
        &self,
        id: &RoleId,
        changes: &RoleChanges,
        deadline: Instant,
    ) -> Result<Dated<Role>, ClerkWriteError> {
        let path = format!("/v1/organization_roles/{}", id.as_str());
        self.send_json(
            write_call(Method::PATCH, "update_role", path, Some(changes), Repeat::Safe),
            deadline,
        )
        .await
    }

    /// `DELETE /v1/organization_roles/{id}`. `value` is false when a repeated request found it
    /// gone already.
    pub async fn delete_role(&self, id: &RoleId, deadline: Instant) -> Result<Dated<bool>, ClerkWriteError> {
        let path = format!("/v1/organization_roles/{}", id.as_str());
        self.delete_call("delete_role", path, deadline).await
    }

    /// `POST` (grant) or `DELETE` (revoke) `/v1/organization_roles/{id}/permissions/{id}`: the
    /// role with its new permission set. Repeating it is refused by Clerk (409 already assigned,
    /// 422 not assigned), which the caller reads as "already so".
    pub async fn set_role_permission(
        &self,
        role: &RoleId,
        permission: &PermissionId,
        grant: bool,
        deadline: Instant,
    ) -> Result<Dated<Role>, ClerkWriteError> {
        let path = format!(
            "/v1/organization_roles/{}/permissions/{}",
            role.as_str(),
            permission.as_str()
        );
        let (method, label) = if grant {
            (Method::POST, "assign_role_permission")
        } else {
            (Method::DELETE, "remove_role_permission")
        };
        self.send_json(write_call::<()>(method, label, path, None, Repeat::Safe), deadline)
            .await
    }

    /// `GET /v1/organization_roles/{id}`: None when Clerk has no such role.
    pub async fn role_before(&self, id: &RoleId, deadline: Instant) -> Result<Option<Dated<Role>>, ClerkWriteError> {
        let path = format!("/v1/organization_roles/{}", id.as_str());
        found(self.send_json(read_call("organization_role", path), deadline).await)
    }

    /// The role holding `key`, if any (exact key match among `?query=` answers).
    pub async fn role_by_key(&self, key: &str, deadline: Instant) -> Result<Option<Dated<Role>>, ClerkWriteError> {
        let query = by_key(key);
        let found: Dated<List<Role>> = self
            .send_json(
                query_call("organization_roles", "/v1/organization_roles", &query),
                deadline,
            )
            .await?;
        Ok(pick(found, |r| r.key == key))
    }

    /// `POST /v1/role_sets`. Never re-sent after a lost answer: look its key up with
    /// [`Self::role_set_before`] first.
    pub async fn create_role_set(
        &self,
        set: &NewRoleSet,
        deadline: Instant,
    ) -> Result<Dated<RoleSet>, ClerkWriteError> {
        self.send_json(
            write_call(
                Method::POST,
                "create_role_set",
                "/v1/role_sets".into(),
                Some(set),
                Repeat::Never,
            ),
            deadline,
        )
        .await
    }

    /// `PATCH /v1/role_sets/{key_or_id}`.
    pub async fn update_role_set(
        &self,
        key_or_id: &str,
        changes: &RoleSetChanges,
        deadline: Instant,
    ) -> Result<Dated<RoleSet>, ClerkWriteError> {
        let path = format!("/v1/role_sets/{}", path_segment(key_or_id));
        self.send_json(
            write_call(Method::PATCH, "update_role_set", path, Some(changes), Repeat::Safe),
            deadline,
        )
        .await
    }

    /// `POST /v1/role_sets/{key_or_id}/roles`.
    pub async fn add_role_set_roles(
        &self,
        key_or_id: &str,
        roles: &RoleSetRoles,
        deadline: Instant,
    ) -> Result<Dated<RoleSet>, ClerkWriteError> {
        let path = format!("/v1/role_sets/{}/roles", path_segment(key_or_id));
        self.send_json(
            write_call(Method::POST, "add_role_set_roles", path, Some(roles), Repeat::Safe),
            deadline,
        )
        .await
    }

    /// `POST /v1/role_sets/{key_or_id}/replace`: the role set is deleted and its organizations
    /// (and their members, by `reassignment_mappings`) move to `dest_role_set_key`. Ok(true):
    /// Clerk answered the deleted object; Ok(false): a repeated request found it gone already.
    pub async fn replace_role_set(
        &self,
        key_or_id: &str,
        dest_role_set_key: &str,
        reassignment_mappings: &BTreeMap<String, String>,
        deadline: Instant,
    ) -> Result<Dated<bool>, ClerkWriteError> {
        #[derive(Serialize)]
        struct Body<'a> {
            dest_role_set_key: &'a str,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            reassignment_mappings: &'a BTreeMap<String, String>,
        }
        let path = format!("/v1/role_sets/{}/replace", path_segment(key_or_id));
        let body = Body {
            dest_role_set_key,
            reassignment_mappings,
        };
        let call = write_call(Method::POST, "replace_role_set", path, Some(&body), Repeat::Safe);
        let (answer, attempts) = self.send(call, deadline).await;
        match answer {
            Ok((_, date)) => Ok(Dated { value: true, date }),
            Err(ClerkWriteError::NotFound { .. }) if attempts > 1 => Ok(Dated {
                value: false,
                date: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/role_sets/{key_or_id}/roles/replace`: `role_key` leaves the role set and its
    /// holders move to `to_role_key`.
    pub async fn replace_role_set_role(
        &self,
        key_or_id: &str,
        role_key: &str,
        to_role_key: &str,
        deadline: Instant,
    ) -> Result<Dated<RoleSet>, ClerkWriteError> {
        #[derive(Serialize)]
        struct Body<'a> {
            role_key: &'a str,
            to_role_key: &'a str,
        }
        let path = format!("/v1/role_sets/{}/roles/replace", path_segment(key_or_id));
        let body = Body { role_key, to_role_key };
        self.send_json(
            write_call(Method::POST, "replace_role_set_role", path, Some(&body), Repeat::Safe),
            deadline,
        )
        .await
    }

    /// `GET /v1/role_sets/{key_or_id}`: None when Clerk has no such role set.
    pub async fn role_set_before(
        &self,
        key_or_id: &str,
        deadline: Instant,
    ) -> Result<Option<Dated<RoleSet>>, ClerkWriteError> {
        let path = format!("/v1/role_sets/{}", path_segment(key_or_id));
        found(self.send_json(read_call("role_set", path), deadline).await)
    }

    async fn delete_call(
        &self,
        label: &'static str,
        path: String,
        deadline: Instant,
    ) -> Result<Dated<bool>, ClerkWriteError> {
        let (answer, attempts) = self
            .send(
                write_call::<()>(Method::DELETE, label, path, None, Repeat::Safe),
                deadline,
            )
            .await;
        match answer {
            Ok((_, date)) => Ok(Dated { value: true, date }),
            Err(ClerkWriteError::NotFound { .. }) if attempts > 1 => Ok(Dated {
                value: false,
                date: None,
            }),
            Err(e) => Err(e),
        }
    }
}

/// A `{data, total_count}` listing.
#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
}

fn pick<T>(list: Dated<List<T>>, wanted: impl Fn(&T) -> bool) -> Option<Dated<T>> {
    let date = list.date;
    list.value
        .data
        .into_iter()
        .find(|x| wanted(x))
        .map(|value| Dated { value, date })
}

fn write_call<B: Serialize>(
    method: Method,
    label: &'static str,
    path: String,
    body: Option<&B>,
    repeat: Repeat,
) -> Call<'static> {
    Call {
        method,
        label,
        path,
        query: &[],
        body: body.map(to_body),
        repeat,
        write: true,
    }
}

fn read_call(label: &'static str, path: String) -> Call<'static> {
    Call {
        method: Method::GET,
        label,
        path,
        query: &[],
        body: None,
        repeat: Repeat::Safe,
        write: false,
    }
}

/// A listing filtered by `query` (Clerk matches keys partially; callers pick the exact one).
fn query_call<'a>(label: &'static str, path: &str, query: &'a [(&'a str, String)]) -> Call<'a> {
    Call {
        query,
        ..read_call(label, path.to_owned())
    }
}

/// The parameters of a listing by key: `query` and the largest page.
fn by_key(key: &str) -> [(&'static str, String); 2] {
    [("query", key.to_owned()), ("limit", PAGE_LIMIT.to_string())]
}
