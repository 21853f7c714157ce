//! What the RBAC write path answers with, read from the mirror in the transaction that wrote it:
//! permissions, roles (with their permission sets and how many live members hold them) and role
//! sets (with their roles and how many live hotels use them).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// An organization permission.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PermissionView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    /// `system`, `user`, … as Clerk says.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Set once deleted (a tombstone: final).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An organization role and what it grants.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoleView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    /// The keys of its live permissions, sorted.
    pub permissions: Vec<String>,
    /// Live members of live hotels holding it (each has exactly `permissions` in
    /// `member_permissions`, unless banned or locked).
    pub members: i64,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A role set and its roles.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoleSetView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub default_role_key: Option<String>,
    pub creator_role_key: Option<String>,
    /// Role keys, sorted.
    pub roles: Vec<String>,
    /// Live hotels using it.
    pub hotels: i64,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The answer to a role set replacement: the replaced role set (a tombstone now), the one its
/// hotels moved to, and how many hotels' members were re-listed from Clerk and written.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplacedView {
    pub replaced: Option<RoleSetView>,
    pub destination: Option<RoleSetView>,
    pub hotels_relisted: usize,
}

pub async fn permission(conn: &mut PgConnection, id: &str) -> Result<Option<PermissionView>, sqlx::Error> {
    sqlx::query_as!(
        PermissionView,
        r#"select id, key, name, description, type as kind, updated_at, deleted_at from permissions where id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

pub async fn role(conn: &mut PgConnection, id: &str) -> Result<Option<RoleView>, sqlx::Error> {
    sqlx::query_as!(
        RoleView,
        r#"
        select r.id, r.key, r.name, r.description,
               array(select p.key from role_permissions rp join permissions p on p.id = rp.permission_id
                     where rp.role_id = r.id and p.deleted_at is null order by p.key) as "permissions!",
               (select count(*) from memberships m join hotels h on h.id = m.hotel_id and h.deleted_at is null
                where m.role = r.key and m.deleted_at is null and r.deleted_at is null) as "members!",
               r.updated_at, r.deleted_at
        from roles r where r.id = $1
        "#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// The role set whose id or live key is `key_or_id` (a live one first).
pub async fn role_set(conn: &mut PgConnection, key_or_id: &str) -> Result<Option<RoleSetView>, sqlx::Error> {
    Ok(role_sets(conn, Some(key_or_id)).await?.into_iter().next())
}

/// Every role set (tombstones last), or the one `key_or_id` names.
pub async fn role_sets(conn: &mut PgConnection, key_or_id: Option<&str>) -> Result<Vec<RoleSetView>, sqlx::Error> {
    sqlx::query_as!(
        RoleSetView,
        r#"
        select s.id, s.key, s.name, s.description, s.type as kind, s.default_role_key, s.creator_role_key,
               array(select x.role_key from role_set_roles x where x.role_set_id = s.id order by 1) as "roles!",
               (select count(*) from hotels h where h.role_set_key = s.key and h.deleted_at is null
                and s.deleted_at is null) as "hotels!",
               s.updated_at, s.deleted_at
        from role_sets s
        where $1::text is null or s.id = $1 or (s.key = $1 and s.deleted_at is null)
        order by s.deleted_at is not null, s.key, s.id
        "#,
        key_or_id
    )
    .fetch_all(conn)
    .await
}

/// The ids of the live role sets listing role `role_id`.
pub async fn role_sets_with_role(conn: &mut PgConnection, role_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select distinct s.id from role_sets s join role_set_roles x on x.role_set_id = s.id
           where x.role_id = $1 and s.deleted_at is null order by 1"#,
        role_id
    )
    .fetch_all(conn)
    .await
}

/// The keys of the live role sets of type `initial`.
pub async fn initial_role_sets(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(r#"select key from role_sets where type = 'initial' and deleted_at is null order by 1"#)
        .fetch_all(conn)
        .await
}

/// The live hotels using role set `key` (with `holding`, only those with a live member holding
/// that role).
pub async fn hotels_using(
    conn: &mut PgConnection,
    key: &str,
    holding: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        select h.id from hotels h
        where h.role_set_key = $1 and h.deleted_at is null
          and ($2::text is null or exists (select 1 from memberships m
                                           where m.hotel_id = h.id and m.role = $2 and m.deleted_at is null))
        order by h.id
        "#,
        key,
        holding
    )
    .fetch_all(conn)
    .await
}

/// The current key of role `id`, if the mirror has it live.
pub async fn role_key(conn: &mut PgConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("select key from roles where id = $1 and deleted_at is null", id)
        .fetch_optional(conn)
        .await
}
