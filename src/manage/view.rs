//! What the write path answers with: the mirror's rows as they stand (read in the transaction
//! that wrote them, so an answer is exactly what the app's own queries see from then on).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A hotel and its live members.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotelView {
    pub id: String,
    pub name: String,
    pub slug: Option<String>,
    pub image_url: Option<String>,
    pub public_metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once the hotel is deleted (a tombstone: final).
    pub deleted_at: Option<DateTime<Utc>>,
    pub members: Vec<MemberView>,
}

/// A membership of a hotel, with what the mirror knows of its user.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    pub hotel_id: String,
    pub user_id: String,
    /// Clerk's membership id (`orgmem_…`).
    pub membership_id: String,
    pub role: String,
    pub role_name: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once the membership ended.
    pub removed_at: Option<DateTime<Utc>>,
}

/// An invitation to a hotel (its acceptance URL is never stored, so never shown).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvitationView {
    pub id: String,
    pub hotel_id: String,
    pub email_address: String,
    pub role: String,
    /// `pending`, `accepted`, `revoked`, … as Clerk says.
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// The hotel `id` with its live members; None when the mirror has no row for it.
pub async fn hotel(conn: &mut PgConnection, id: &str) -> Result<Option<HotelView>, sqlx::Error> {
    let Some(h) = sqlx::query!(
        r#"select id, name, slug, image_url, public_metadata, created_at, updated_at, deleted_at
           from hotels where id = $1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let members = members(conn, id, false).await?;
    Ok(Some(HotelView {
        id: h.id,
        name: h.name,
        slug: h.slug,
        image_url: h.image_url,
        public_metadata: h.public_metadata,
        created_at: h.created_at,
        updated_at: h.updated_at,
        deleted_at: h.deleted_at,
        members,
    }))
}

/// The members of hotel `id`, oldest first; with `removed`, ended memberships too.
pub async fn members(conn: &mut PgConnection, id: &str, removed: bool) -> Result<Vec<MemberView>, sqlx::Error> {
    sqlx::query_as!(
        MemberView,
        r#"select m.hotel_id, m.user_id, m.clerk_membership_id as membership_id, m.role, m.role_name,
                  u.email as "email?", u.first_name as "first_name?", u.last_name as "last_name?",
                  m.created_at, m.updated_at, m.deleted_at as removed_at
           from memberships m left join users u on u.id = m.user_id
           where m.hotel_id = $1 and ($2 or m.deleted_at is null)
           order by m.created_at, m.user_id"#,
        id,
        removed
    )
    .fetch_all(conn)
    .await
}

/// The membership of `user` in `hotel`, live or ended; None when the mirror never had one.
pub async fn member(conn: &mut PgConnection, hotel: &str, user: &str) -> Result<Option<MemberView>, sqlx::Error> {
    sqlx::query_as!(
        MemberView,
        r#"select m.hotel_id, m.user_id, m.clerk_membership_id as membership_id, m.role, m.role_name,
                  u.email as "email?", u.first_name as "first_name?", u.last_name as "last_name?",
                  m.created_at, m.updated_at, m.deleted_at as removed_at
           from memberships m left join users u on u.id = m.user_id
           where m.hotel_id = $1 and m.user_id = $2"#,
        hotel,
        user
    )
    .fetch_optional(conn)
    .await
}

/// The invitations among `ids`, in the order given (missing ones left out).
pub async fn invitations(conn: &mut PgConnection, ids: &[String]) -> Result<Vec<InvitationView>, sqlx::Error> {
    sqlx::query_as!(
        InvitationView,
        r#"select i.id, i.hotel_id, i.email_address, i.role, i.status, i.expires_at, i.created_at, i.updated_at
           from unnest($1::text[]) with ordinality as x(id, n)
           join invitations i on i.id = x.id
           order by x.n"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// The users among `ids` the mirror has a real row for (not a stub from a membership).
pub async fn known_users(conn: &mut PgConnection, ids: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from users where id = any($1) and clerk_version > 0",
        ids as &[&str]
    )
    .fetch_all(conn)
    .await
}

/// True when the mirror has a row (live or not) for hotel `id`.
pub async fn hotel_known(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from hotels where id = $1) as "known!""#, id)
        .fetch_one(conn)
        .await
}
