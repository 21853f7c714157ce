//! What access is made of: organization roles (each with its permission set), organization
//! permissions and organization invitations, listed for the resync and asked for by id to confirm
//! a delete. All three list endpoints page by `limit`/`offset`, oldest first.

use super::response::{decode, parse_list};
use super::{ClerkApiError, ClerkClient, Page, PAGE_LIMIT};
use crate::clerk::{HotelId, Invitation, InvitationId, Permission, PermissionId, Role, RoleId};

impl ClerkClient {
    /// `GET /v1/organization_roles`: every organization role of the instance, each with its
    /// permissions, oldest first.
    pub async fn list_roles(&self, offset: u32, limit: u32) -> Result<Page<Role>, ClerkApiError> {
        let body = self
            .get(
                "organization_roles",
                "/v1/organization_roles",
                &oldest_first(offset, limit),
            )
            .await?;
        parse_list(&body, "GET /v1/organization_roles")
    }

    /// `GET /v1/organization_roles/{id}`: Ok(None) when Clerk answers 404.
    pub async fn get_role(&self, id: &RoleId) -> Result<Option<Role>, ClerkApiError> {
        let path = format!("/v1/organization_roles/{}", id.as_str());
        found(
            self.get("organization_role", &path, &[]).await,
            "GET /v1/organization_roles/{id}",
        )
    }

    /// `GET /v1/organization_permissions`: every organization permission, oldest first.
    pub async fn list_permissions(&self, offset: u32, limit: u32) -> Result<Page<Permission>, ClerkApiError> {
        let body = self
            .get(
                "organization_permissions",
                "/v1/organization_permissions",
                &oldest_first(offset, limit),
            )
            .await?;
        parse_list(&body, "GET /v1/organization_permissions")
    }

    /// `GET /v1/organization_permissions/{id}`: Ok(None) when Clerk answers 404.
    pub async fn get_permission(&self, id: &PermissionId) -> Result<Option<Permission>, ClerkApiError> {
        let path = format!("/v1/organization_permissions/{}", id.as_str());
        found(
            self.get("organization_permission", &path, &[]).await,
            "GET /v1/organization_permissions/{id}",
        )
    }

    /// `GET /v1/organization_invitations`: every invitation of the instance, whatever its status,
    /// oldest first.
    pub async fn list_invitations(&self, offset: u32, limit: u32) -> Result<Page<Invitation>, ClerkApiError> {
        let body = self
            .get(
                "organization_invitations",
                "/v1/organization_invitations",
                &oldest_first(offset, limit),
            )
            .await?;
        parse_list(&body, "GET /v1/organization_invitations")
    }

    /// `GET /v1/organizations/{organization}/invitations/{id}`: Ok(None) when Clerk answers 404
    /// (the invitation, or its organization, is gone).
    pub async fn get_invitation(
        &self,
        organization: &HotelId,
        id: &InvitationId,
    ) -> Result<Option<Invitation>, ClerkApiError> {
        let path = format!(
            "/v1/organizations/{}/invitations/{}",
            organization.as_str(),
            id.as_str()
        );
        found(
            self.get("organization_invitation", &path, &[]).await,
            "GET /v1/organizations/{id}/invitations/{id}",
        )
    }
}

fn oldest_first(offset: u32, limit: u32) -> [(&'static str, String); 3] {
    [
        ("order_by", "created_at".to_owned()),
        ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
        ("offset", offset.to_string()),
    ]
}

/// One object by id: None for Clerk's 404.
pub(super) fn found<T: serde::de::DeserializeOwned>(
    answer: Result<bytes::Bytes, ClerkApiError>,
    endpoint: &str,
) -> Result<Option<T>, ClerkApiError> {
    match answer {
        Ok(body) => decode::<T>(&body, endpoint).map(Some),
        Err(ClerkApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
