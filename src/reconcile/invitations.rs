//! Invitations to a hotel: an invitation needs its hotel (missing → wait; deleted → obsolete),
//! and newer wins, except that a settled invitation (any status but `pending`: accepted,
//! revoked, ...) is never set back to `pending`. Clerk sends a revocation without `updated_at`,
//! versioned by the event time (whole seconds in its examples), which can fall before the
//! creation's millisecond `updated_at`: ranking settled above pending keeps such a revocation
//! from being lost. The invitation `url` is never stored (it carries the acceptance token). A
//! deleted hotel's invitations are tombstoned with it (see [`super::hotels::delete`]), and so is
//! one Clerk no longer has ([`delete_inferred`]); a tombstone (`deleted_at`) is final: no write
//! revives or changes it.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::{to_time, Item, Outcome};
use crate::clerk::Invitation;

/// An invitation and the version it is written with (its `updated_at`, else the event time).
#[derive(Debug, Clone, Copy)]
pub struct InvitationWrite<'a> {
    pub invitation: &'a Invitation,
    pub version: i64,
}

/// Writes invitations, one outcome per item: [`Outcome::WaitingForHotel`] when the hotel has no
/// row, [`Outcome::Obsolete`] when it is a tombstone; otherwise, per id, the highest-ranked item
/// (settled above pending, then newer) is written when it outranks the row. The hotels are
/// locked `FOR KEY SHARE` (in id order) first, so a concurrent hotel delete either waits for
/// this transaction or is seen by it.
pub async fn upsert(conn: &mut PgConnection, items: &[Item<InvitationWrite<'_>>]) -> Result<Vec<Outcome>, sqlx::Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut hotel_ids: Vec<&str> = items
        .iter()
        .map(|i| i.value.invitation.organization_id.as_str())
        .collect();
    hotel_ids.sort_unstable();
    hotel_ids.dedup();
    let hotels: HashMap<String, bool> = sqlx::query!(
        r#"select id, deleted_at is not null as "deleted!" from hotels where id = any($1) order by id for key share"#,
        &hotel_ids as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.id, r.deleted))
    .collect();
    let mut out: Vec<Option<Outcome>> = items
        .iter()
        .map(|i| {
            let hotel = &i.value.invitation.organization_id;
            match hotels.get(hotel.as_str()) {
                None => Some(Outcome::WaitingForHotel(hotel.clone())),
                Some(true) => Some(Outcome::Obsolete),
                Some(false) => None,
            }
        })
        .collect();
    let todo: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
    if !todo.is_empty() {
        let written = write(conn, items, &todo).await?;
        for i in todo {
            out[i] = Some(if written.contains(&i) {
                Outcome::Written
            } else {
                Outcome::Unchanged
            });
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or(Outcome::Unchanged)).collect())
}

/// The conditional insert of the items `todo` (whose hotels are live and locked). Returns the
/// indexes of the items written.
async fn write(
    conn: &mut PgConnection,
    items: &[Item<InvitationWrite<'_>>],
    todo: &[usize],
) -> Result<HashSet<usize>, sqlx::Error> {
    let inv = |i: usize| items[i].value.invitation;
    let ids: Vec<&str> = todo.iter().map(|&i| inv(i).id.as_str()).collect();
    let hotels: Vec<&str> = todo.iter().map(|&i| inv(i).organization_id.as_str()).collect();
    let emails: Vec<&str> = todo.iter().map(|&i| inv(i).email_address.as_str()).collect();
    let roles: Vec<&str> = todo.iter().map(|&i| inv(i).role.as_str()).collect();
    let role_names: Vec<Option<&str>> = todo.iter().map(|&i| inv(i).role_name.as_deref()).collect();
    let statuses: Vec<&str> = todo.iter().map(|&i| inv(i).status.as_str()).collect();
    let users: Vec<Option<&str>> = todo
        .iter()
        .map(|&i| inv(i).user_id.as_ref().map(|u| u.as_str()))
        .collect();
    let expires: Vec<Option<_>> = todo.iter().map(|&i| inv(i).expires_at.map(to_time)).collect();
    let created: Vec<Option<_>> = todo.iter().map(|&i| inv(i).created_at.map(to_time)).collect();
    let versions: Vec<i64> = todo.iter().map(|&i| items[i].value.version).collect();
    let updated: Vec<_> = versions.iter().map(|&v| to_time(v)).collect();
    let jobs: Vec<Option<i64>> = todo.iter().map(|&i| items[i].job).collect();
    let order: Vec<i64> = todo.iter().map(|&i| i as i64).collect();
    type Time = chrono::DateTime<chrono::Utc>;
    let written = sqlx::query_scalar!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                                 $11::int8[], $12::int8[], $13::int8[])
                as x(id, hotel_id, email_address, role, role_name, status, user_id, expires_at, created_at,
                     updated_at, clerk_version, last_job_id, n)
        ),
        -- per invitation, the highest-ranked item: settled above pending, then newer
        newest as (
            select distinct on (id) * from input
            order by id, status <> 'pending' desc, clerk_version desc, n
        ),
        written as (
            insert into invitations (id, hotel_id, email_address, role, role_name, status, user_id, expires_at,
                                     created_at, updated_at, clerk_version, last_job_id)
            select id, hotel_id, email_address, role, role_name, status, user_id, expires_at, created_at,
                   updated_at, clerk_version, last_job_id
            from newest order by id
            on conflict (id) do update set
                hotel_id = excluded.hotel_id, email_address = excluded.email_address, role = excluded.role,
                role_name = excluded.role_name, status = excluded.status,
                user_id = coalesce(excluded.user_id, invitations.user_id),
                expires_at = coalesce(excluded.expires_at, invitations.expires_at),
                created_at = coalesce(excluded.created_at, invitations.created_at),
                updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
                last_job_id = excluded.last_job_id
            -- tombstones are final
            where invitations.deleted_at is null
              and (excluded.status <> 'pending', excluded.clerk_version)
                  > (invitations.status <> 'pending', invitations.clerk_version)
            returning id
        ),
        -- The written ids as one jsonb object looked up per item: CTE results have no statistics,
        -- so a join of two of them is planned as a nested loop, quadratic in the batch.
        -- (materialized: computed once, not per item)
        written_ids as materialized (select coalesce(jsonb_object_agg(id, true), '{}') as ids from written)
        select nw.n as "n!" from newest nw, written_ids w where w.ids ? nw.id
        "#,
        &ids as &[&str],
        &hotels as &[&str],
        &emails as &[&str],
        &roles as &[&str],
        &role_names as &[Option<&str>],
        &statuses as &[&str],
        &users as &[Option<&str>],
        &expires as &[Option<Time>],
        &created as &[Option<Time>],
        &updated,
        &versions,
        &jobs as &[Option<i64>],
        &order,
    )
    .fetch_all(&mut *conn)
    .await?;
    // What a payload lacks (a revocation has no `created_at`) is filled from any other version,
    // whatever the arrival order.
    sqlx::query!(
        r#"
        update invitations i set
            created_at = coalesce(i.created_at, x.created_at),
            expires_at = coalesce(i.expires_at, x.expires_at),
            user_id = coalesce(i.user_id, x.user_id)
        from (select id, min(created_at) as created_at, min(expires_at) as expires_at, min(user_id) as user_id
              from unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[])
                   as s(id, created_at, expires_at, user_id)
              group by id) x
        where i.id = x.id and i.deleted_at is null
          and ((i.created_at is null and x.created_at is not null)
               or (i.expires_at is null and x.expires_at is not null)
               or (i.user_id is null and x.user_id is not null))
        "#,
        &ids as &[&str],
        &created as &[Option<Time>],
        &expires as &[Option<Time>],
        &users as &[Option<&str>],
    )
    .execute(conn)
    .await?;
    Ok(written.into_iter().map(|n| n as usize).collect())
}

/// Tombstones the invitations among `ids` that a complete listing lacked and Clerk answered 404
/// for by id (an inferred delete): only live rows not written after `at` (the listing's start),
/// dated `at`; the row is kept with `deleted_at` set, and no later write revives it. Returns the
/// ids tombstoned.
pub async fn delete_inferred(conn: &mut PgConnection, ids: &[&str], at: i64) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar!(
        r#"
        update invitations set deleted_at = to_timestamp($2 / 1000.0), last_job_id = null
        where id in (select id from invitations where id = any($1) and deleted_at is null and clerk_version <= $2
                     order by id for no key update)
        returning id
        "#,
        ids as &[&str],
        at,
    )
    .fetch_all(conn)
    .await
}
