//! Role sets: listed for the resync (`limit`/`offset`, oldest first, with `total_count`) and
//! read one at a time by key or id (the self-heal of a hotel fetches its organization's role
//! set; the resync confirms a delete by id).

use super::access::found;
use super::response::parse_list;
use super::{ClerkApiError, ClerkClient, Page, PAGE_LIMIT};
use crate::clerk::RoleSet;

impl ClerkClient {
    /// `GET /v1/role_sets`: every role set of the instance with its roles, oldest first.
    pub async fn list_role_sets(&self, offset: u32, limit: u32) -> Result<Page<RoleSet>, ClerkApiError> {
        let query = [
            ("order_by", "created_at".to_owned()),
            ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
            ("offset", offset.to_string()),
        ];
        let body = self.get("role_sets", "/v1/role_sets", &query).await?;
        parse_list(&body, "GET /v1/role_sets")
    }

    /// `GET /v1/role_sets/{key_or_id}`: Ok(None) when Clerk answers 404. `key_or_id` is a
    /// [`crate::clerk::RoleSetId`] or a role set key as Clerk holds it; one holding anything but
    /// ASCII letters, digits, `_` and `:` cannot name a role set (and must not reshape the
    /// path): it is answered None without a request.
    pub async fn get_role_set(&self, key_or_id: &str) -> Result<Option<RoleSet>, ClerkApiError> {
        let plain = !key_or_id.is_empty()
            && key_or_id.len() <= 256
            && key_or_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
        if !plain {
            return Ok(None);
        }
        let path = format!("/v1/role_sets/{key_or_id}");
        found(self.get("role_set", &path, &[]).await, "GET /v1/role_sets/{key_or_id}")
    }
}
