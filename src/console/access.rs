//! The access explorer: find a user and a hotel (by id, or by the start of an email, a name or a
//! slug), then see what `orgsync access USER HOTEL [PERMISSION]` answers
//! ([`crate::ops::check_access`], the same function): the membership, its role, the permissions
//! it grants and where they come from, and why access is refused.
//!
//! Searches are prefix matches, case-insensitive, through the expression indexes of migration
//! `20261203000050_console.sql`; a user's hotels come through `memberships_user_id`, a hotel's
//! members through the memberships key.

use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use sqlx::PgPool;

use super::auth::Operator;
use super::layout::{self, query_value, Section};
use super::{ConsoleResult, ConsoleState};
use crate::ops::access::{Access, GrantSource};

/// Results per search, and memberships listed per user or hotel.
pub const LIMIT: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct AccessParams {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub hotel: String,
    #[serde(default)]
    pub permission: String,
}

/// A user found by a search.
#[derive(Debug, Clone)]
pub struct UserHit {
    pub id: String,
    pub email: Option<String>,
    pub name: String,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A hotel found by a search.
#[derive(Debug, Clone)]
pub struct HotelHit {
    pub id: String,
    pub name: String,
    pub slug: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One membership of a user or of a hotel.
struct MembershipRow {
    hotel_id: String,
    hotel_name: String,
    user_id: String,
    user_email: Option<String>,
    user_name: String,
    role: String,
    deleted_at: Option<DateTime<Utc>>,
}

/// `text` as a `like` pattern matching what starts with it (case-folded; `%`, `_` and `\` taken
/// literally).
fn prefix_pattern(text: &str) -> String {
    let mut p = String::new();
    for c in text.trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A transaction whose statements are planned for their parameters' values. A `like 'prefix%'`
/// on a parameter can use the `text_pattern_ops` indexes only in a plan made for the value;
/// the generic plan Postgres switches a prepared statement to after five runs reads the table
/// whole (seen at 10,000 hotels in the bench's console phase).
async fn custom_plans(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set local plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Users whose id is `q`, or whose email, full name or last name starts with it.
pub async fn search_users(pool: &PgPool, q: &str) -> Result<Vec<UserHit>, sqlx::Error> {
    let pattern = prefix_pattern(q);
    let mut tx = custom_plans(pool).await?;
    let hits = sqlx::query_as!(
        UserHit,
        r#"
        select id as "id!", email, name as "name!", deleted_at from (
            (select id, email, trim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) as name, deleted_at
             from users where id = $1)
            union
            (select id, email, trim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), deleted_at
             from users where lower(email) like $2 limit $3)
            union
            (select id, email, trim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), deleted_at
             from users where lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) like $2 limit $3)
            union
            (select id, email, trim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), deleted_at
             from users where lower(last_name) like $2 limit $3)
        ) u order by deleted_at is not null, email, id limit $3
        "#,
        q.trim(),
        pattern,
        LIMIT
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(hits)
}

/// Hotels whose id is `q`, or whose name or slug starts with it.
pub async fn search_hotels(pool: &PgPool, q: &str) -> Result<Vec<HotelHit>, sqlx::Error> {
    let pattern = prefix_pattern(q);
    let mut tx = custom_plans(pool).await?;
    let hits = sqlx::query_as!(
        HotelHit,
        r#"
        select id as "id!", name as "name!", slug, deleted_at from (
            (select id, name, slug, deleted_at from hotels where id = $1)
            union
            (select id, name, slug, deleted_at from hotels where lower(name) like $2 limit $3)
            union
            (select id, name, slug, deleted_at from hotels where lower(slug) like $2 limit $3)
        ) h order by deleted_at is not null, name, id limit $3
        "#,
        q.trim(),
        pattern,
        LIMIT
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(hits)
}

async fn memberships_of_user(pool: &PgPool, user_id: &str) -> Result<Vec<MembershipRow>, sqlx::Error> {
    sqlx::query_as!(
        MembershipRow,
        r#"
        select m.hotel_id, h.name as hotel_name, m.user_id, u.email as user_email,
               trim(coalesce(u.first_name, '') || ' ' || coalesce(u.last_name, '')) as "user_name!",
               m.role, m.deleted_at
        from memberships m join hotels h on h.id = m.hotel_id join users u on u.id = m.user_id
        where m.user_id = $1
        order by m.deleted_at is not null, h.name, m.hotel_id limit $2
        "#,
        user_id,
        LIMIT
    )
    .fetch_all(pool)
    .await
}

async fn memberships_of_hotel(pool: &PgPool, hotel_id: &str) -> Result<Vec<MembershipRow>, sqlx::Error> {
    sqlx::query_as!(
        MembershipRow,
        r#"
        select m.hotel_id, h.name as hotel_name, m.user_id, u.email as user_email,
               trim(coalesce(u.first_name, '') || ' ' || coalesce(u.last_name, '')) as "user_name!",
               m.role, m.deleted_at
        from memberships m join hotels h on h.id = m.hotel_id join users u on u.id = m.user_id
        where m.hotel_id = $1
        order by m.user_id limit $2
        "#,
        hotel_id,
        LIMIT
    )
    .fetch_all(pool)
    .await
}

/// `GET /console/access?q=…&user=…&hotel=…&permission=…`.
pub async fn page(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(p): Query<AccessParams>,
) -> ConsoleResult<Markup> {
    let pool = &state.pool;
    let (q, user, hotel, permission) = (p.q.trim(), p.user.trim(), p.hotel.trim(), p.permission.trim());
    let (users, hotels) = if q.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (search_users(pool, q).await?, search_hotels(pool, q).await?)
    };
    let answer = if !user.is_empty() && !hotel.is_empty() {
        let permission = (!permission.is_empty()).then_some(permission);
        Some(crate::ops::check_access(pool, user, hotel, permission).await?)
    } else {
        None
    };
    let of_user = if !user.is_empty() && answer.is_none() {
        memberships_of_user(pool, user).await?
    } else {
        Vec::new()
    };
    let of_hotel = if !hotel.is_empty() && answer.is_none() {
        memberships_of_hotel(pool, hotel).await?
    } else {
        Vec::new()
    };
    // Links keep what is already chosen: picking a hotel after a user asks about both.
    let pick_user = |id: &str| format!("/console/access?user={}&hotel={}", query_value(id), query_value(hotel));
    let pick_hotel = |id: &str| format!("/console/access?user={}&hotel={}", query_value(user), query_value(id));
    Ok(layout::page(
        "Access explorer",
        Section::Access,
        &operator,
        html! {
            h1 { "Access explorer" }
            p.note { "Why can (or can't) a user do something in a hotel? The answer is " code { "orgsync access" } "'s, "
                "read from the same view the application checks (" code { "member_permissions" } ")." }
            form.filters method="get" action="/console/access" {
                label { "find a user or hotel (id, email, name or slug)"
                    input #q type="search" name="q" value=(q) size="40" placeholder="maria@ or Alpine or org_…"; }
                input type="hidden" name="user" value=(user);
                input type="hidden" name="hotel" value=(hotel);
                button type="submit" { "Search" }
                @if !user.is_empty() || !hotel.is_empty() { a href="/console/access" { "start over" } }
            }
            @if !q.is_empty() {
                div.split {
                    div {
                        h2 { "Users" }
                        @if users.is_empty() { p.note { "No user matches." } }
                        ul #user-hits { @for u in &users { li {
                            a href=(pick_user(&u.id)) { (u.email.as_deref().unwrap_or("(no email)")) }
                            " " (u.name) " " span.mono.muted { (u.id) }
                            @if u.deleted_at.is_some() { " " span.badge { "deleted" } }
                        } } }
                    }
                    div {
                        h2 { "Hotels" }
                        @if hotels.is_empty() { p.note { "No hotel matches." } }
                        ul #hotel-hits { @for h in &hotels { li {
                            a href=(pick_hotel(&h.id)) { (h.name) }
                            @if let Some(slug) = &h.slug { " (" (slug) ")" }
                            " " span.mono.muted { (h.id) }
                            @if h.deleted_at.is_some() { " " span.badge { "deleted" } }
                        } } }
                    }
                }
            }
            @if let Some(a) = &answer { (render_answer(a)) }
            @if !of_user.is_empty() || (!user.is_empty() && answer.is_none()) {
                h2 { "Hotels of " span.mono { (user) } }
                (membership_table(&of_user, |m| pick_hotel(&m.hotel_id), true))
            }
            @if !of_hotel.is_empty() || (!hotel.is_empty() && answer.is_none()) {
                h2 { "Members of " span.mono { (hotel) } }
                (membership_table(&of_hotel, |m| pick_user(&m.user_id), false))
            }
        },
    ))
}

fn membership_table(rows: &[MembershipRow], link: impl Fn(&MembershipRow) -> String, by_hotel: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            p.note { "No memberships." }
        } @else {
            table.memberships {
                thead { tr { th { @if by_hotel { "hotel" } @else { "user" } } th { "role" } th { "state" } th {} } }
                tbody {
                    @for m in rows {
                        tr {
                            td {
                                @if by_hotel { (m.hotel_name) " " span.mono.muted { (m.hotel_id) } }
                                @else { (m.user_email.as_deref().unwrap_or("(no email)")) " " (m.user_name) " " span.mono.muted { (m.user_id) } }
                            }
                            td.mono { (m.role) }
                            td { @if m.deleted_at.is_some() { "removed" } @else { "member" } }
                            td { a href=(link(m)) { "explain access" } }
                        }
                    }
                }
            }
        }
    }
}

/// The answer of `orgsync access`, for a person.
fn render_answer(a: &Access) -> Markup {
    let base = format!(
        "/console/access?user={}&hotel={}",
        query_value(&a.user_id),
        query_value(&a.hotel_id)
    );
    html! {
        section #answer {
            h2 { "User " span.mono { (a.user_id) } " in hotel " span.mono { (a.hotel_id) } }
            @match &a.membership {
                None => p #membership { "No membership of this user in this hotel." },
                Some(m) => dl.facts #membership {
                    dt { "user" } dd { (m.user_email.as_deref().unwrap_or("(no email)"))
                        @if m.banned { " " span.badge.problem { "banned" } } @if m.locked { " " span.badge.problem { "locked" } } }
                    dt { "hotel" } dd { (m.hotel_name) }
                    dt { "membership" } dd { @match m.removed_at { Some(at) => { "removed " (layout::when(at)) }, None => { "member since " (layout::when(m.since)) } } }
                    dt { "role" } dd #role { span.mono { (m.role) } @if let Some(n) = &m.role_name { " (" (n) ")" } }
                    dt { "granted by" } dd #granted-by {
                        @match &m.source {
                            GrantSource::Role { role_id, name } => { "role " span.mono { (role_id) } " (" (name) "), its current permission set" }
                            GrantSource::MembershipPermissions => { "the membership's own permissions (no live role has this key yet)" }
                        }
                    }
                    @if let Some(set) = &m.role_set {
                        dt { "role set" } dd #role-set {
                            span.mono { (set.key) } @if let Some(n) = &set.name { " (" (n) ")" } ", "
                            @match set.lists_role {
                                Some(true) => { "lists this role" },
                                Some(false) => span.badge.problem { "does not list this role" },
                                None => { "not mirrored" },
                            }
                        }
                    }
                }
            }
            h2 { "Permissions held" }
            @if a.grants.is_empty() {
                p #grants { "None." }
            } @else {
                ul #grants.mono { @for g in &a.grants {
                    li { a href=(format!("{base}&permission={}", query_value(g))) { (g) } }
                } }
            }
            form.filters method="get" action="/console/access" {
                input type="hidden" name="user" value=(a.user_id);
                input type="hidden" name="hotel" value=(a.hotel_id);
                label { "does the user hold this permission here?"
                    input #permission name="permission" value=(a.permission.as_deref().unwrap_or("")) placeholder="org:bookings:read" size="30"; }
                button type="submit" { "Check" }
            }
            @if let (Some(p), Some(held)) = (&a.permission, a.held) {
                p #held class=(if held { "ok" } else { "problem" }) { span.mono { (p) } ": " @if held { "held" } @else { "not held" } }
            }
            @if !a.reasons.is_empty() {
                ul #reasons.problem { @for r in &a.reasons { li { "because " (r) } } }
            } @else if a.membership.is_some() && a.held != Some(false) {
                p.ok { "The user has access as a member of this hotel." }
            }
            @if !a.notes.is_empty() {
                ul #notes { @for n in &a.notes { li { "note: " (n) } } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_patterns_are_literal_prefixes() {
        assert_eq!(prefix_pattern(" Maria "), "maria%");
        assert_eq!(prefix_pattern("50%_off\\"), "50\\%\\_off\\\\%");
    }
}
