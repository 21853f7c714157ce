//! Memberships, keyed by (hotel, user): a membership needs its hotel (missing → wait; deleted
//! → obsolete), brings a user stub when its user has no row, newer wins, the removal of a
//! membership is final for that Clerk membership id (a *different*, newer membership revives the
//! key: the person was invited again), and a snapshot of the hotel's memberships outranks
//! anything older than it.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::{snapshot, to_time, users, Item, MembershipWrite, Outcome, Source};

/// Writes memberships (live, or their removals) in a few statements, one outcome per item:
/// [`Outcome::WaitingForHotel`] when the hotel has no row, [`Outcome::Obsolete`] when the hotel
/// or user is a tombstone or (with [`Source::Webhook`]) a live item is older than the last
/// listing of its hotel's memberships, [`Outcome::UserBusy`] when the user has no row and another
/// worker holds it.
///
/// The hotels and users are locked `FOR KEY SHARE` (in id order) before any membership is
/// written, so a concurrent delete (which takes `FOR UPDATE`) either waits for this transaction
/// or is seen by it.
pub async fn upsert(
    conn: &mut PgConnection,
    source: Source,
    items: &[Item<MembershipWrite<'_>>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    Ok(upsert_reporting_stubs(conn, source, items).await?.outcomes)
}

/// What [`upsert_reporting_stubs`] did.
#[derive(Debug, Default)]
pub struct MembershipsApplied {
    /// One per item.
    pub outcomes: Vec<Outcome>,
    /// The users inserted as stubs.
    pub stubs: Vec<String>,
}

/// [`upsert`], also naming the user stubs it inserted.
pub async fn upsert_reporting_stubs(
    conn: &mut PgConnection,
    source: Source,
    items: &[Item<MembershipWrite<'_>>],
) -> Result<MembershipsApplied, sqlx::Error> {
    let mut out: Vec<Option<Outcome>> = vec![None; items.len()];

    // The hotels: present, live, and when their memberships were last listed.
    let mut hotel_ids: Vec<&str> = items
        .iter()
        .map(|i| i.value.membership.organization.id.as_str())
        .collect();
    hotel_ids.sort_unstable();
    hotel_ids.dedup();
    let hotels: HashMap<String, (bool, Option<i64>)> = sqlx::query!(
        r#"select id, deleted_at is not null as "deleted!", members_listed_at from hotels
           where id = any($1) order by id for key share"#,
        &hotel_ids as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.id, (r.deleted, r.members_listed_at)))
    .collect();
    let global_mark = if source.honours_snapshots() {
        snapshot::mark(conn, snapshot::Scope::Memberships).await?
    } else {
        None
    };
    for (slot, item) in out.iter_mut().zip(items) {
        let m = item.value.membership;
        *slot = match hotels.get(m.organization.id.as_str()) {
            None => Some(Outcome::WaitingForHotel(m.organization.id.clone())),
            Some((true, _)) => Some(Outcome::Obsolete),
            Some((false, hotel_mark)) => {
                // A snapshot of the hotel's memberships newer than this (live) item already
                // says whether the person is a member: older news changes nothing.
                let mark = if source.honours_snapshots() {
                    hotel_mark.max(&global_mark).unwrap_or(0)
                } else {
                    0
                };
                (item.value.removed_at.is_none() && m.updated_at < mark).then_some(Outcome::Obsolete)
            }
        };
    }

    // The users: stubs for those without a row, then lock them.
    let stubs: Vec<_> = items
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_none())
        .map(|(i, _)| {
            (
                i.job,
                &i.value.membership.public_user_data,
                i.value.membership.created_at,
            )
        })
        .collect();
    let stubbed = users::insert_stubs(conn, source, &stubs).await?;
    let mut user_ids: Vec<&str> = stubs.iter().map(|s| s.1.user_id.as_str()).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let users: HashMap<String, bool> = sqlx::query!(
        r#"select id, deleted_at is not null as "deleted!" from users where id = any($1) order by id for key share"#,
        &user_ids as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.id, r.deleted))
    .collect();
    for (slot, item) in out.iter_mut().zip(items) {
        if slot.is_none() {
            *slot = match users.get(item.value.membership.public_user_data.user_id.as_str()) {
                None => Some(Outcome::UserBusy(
                    item.value.membership.public_user_data.user_id.clone(),
                )),
                Some(true) => Some(Outcome::Obsolete),
                Some(false) => None,
            };
        }
    }

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
    Ok(MembershipsApplied {
        outcomes: out.into_iter().map(|o| o.unwrap_or(Outcome::Unchanged)).collect(),
        stubs: stubbed,
    })
}

/// The conditional insert of the items `todo` (whose parents are live and locked). Returns the
/// indexes of the items written.
async fn write(
    conn: &mut PgConnection,
    items: &[Item<MembershipWrite<'_>>],
    todo: &[usize],
) -> Result<HashSet<usize>, sqlx::Error> {
    let pick = |f: &dyn Fn(&Item<MembershipWrite<'_>>) -> String| -> Vec<String> {
        todo.iter().map(|&i| f(&items[i])).collect()
    };
    let hotels = pick(&|i| i.value.membership.organization.id.as_str().to_owned());
    let users = pick(&|i| i.value.membership.public_user_data.user_id.as_str().to_owned());
    let ids = pick(&|i| i.value.membership.id.clone());
    let roles = pick(&|i| i.value.membership.role.clone());
    let role_names: Vec<Option<&str>> = todo
        .iter()
        .map(|&i| items[i].value.membership.role_name.as_deref())
        .collect();
    let permissions: Vec<serde_json::Value> = todo
        .iter()
        .map(|&i| serde_json::json!(items[i].value.membership.permissions))
        .collect();
    let created: Vec<_> = todo
        .iter()
        .map(|&i| to_time(items[i].value.membership.created_at))
        .collect();
    let updated: Vec<_> = todo
        .iter()
        .map(|&i| to_time(items[i].value.membership.updated_at))
        .collect();
    let removed: Vec<_> = todo.iter().map(|&i| items[i].value.removed_at.map(to_time)).collect();
    // A removal is versioned by its time, when that is later than the payload's updated_at.
    let versions: Vec<i64> = todo
        .iter()
        .map(|&i| {
            let v = &items[i].value;
            v.removed_at
                .unwrap_or(v.membership.updated_at)
                .max(v.membership.updated_at)
        })
        .collect();
    let jobs: Vec<Option<i64>> = todo.iter().map(|&i| items[i].job).collect();
    let order: Vec<i64> = todo.iter().map(|&i| i as i64).collect();
    let written = sqlx::query_scalar!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                 $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::int8[], $10::int8[],
                                 $11::text[], $12::jsonb[])
                as x(hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, deleted_at,
                     clerk_version, last_job_id, n, role_name, permission_list)
        ),
        -- Per key, the newest Clerk membership is the one that counts; of its items, its removal
        -- (the earliest) wins over any live state, as the rule below does across batches.
        ranked as (
            select input.*, first_value(clerk_membership_id) over
                (partition by hotel_id, user_id order by clerk_version desc, n) as current_id
            from input
        ),
        newest as (
            select distinct on (hotel_id, user_id) * from ranked
            where clerk_membership_id = current_id
            order by hotel_id, user_id, deleted_at is null, deleted_at, clerk_version desc, n
        ),
        written as (
            insert into memberships (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at,
                                     deleted_at, clerk_version, last_job_id, role_name, permissions)
            select hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, deleted_at,
                   clerk_version, last_job_id, role_name,
                   array(select jsonb_array_elements_text(permission_list))
            from newest order by hotel_id, user_id
            on conflict (hotel_id, user_id) do update set
                clerk_membership_id = excluded.clerk_membership_id,
                role = excluded.role,
                role_name = excluded.role_name,
                permissions = excluded.permissions,
                created_at = excluded.created_at,
                updated_at = excluded.updated_at,
                -- The earliest known removal of the same membership is its removal time.
                deleted_at = case
                    when excluded.deleted_at is null then null
                    when memberships.clerk_membership_id = excluded.clerk_membership_id
                        then least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at)
                    else excluded.deleted_at end,
                clerk_version = greatest(memberships.clerk_version, excluded.clerk_version),
                last_job_id = excluded.last_job_id
            where
                -- a newer state of the same live membership, or of a different (newer) membership
                (memberships.clerk_version < excluded.clerk_version
                    and (memberships.deleted_at is null
                         or memberships.clerk_membership_id <> excluded.clerk_membership_id))
                -- or the removal of this very membership, whatever order it arrives in
                or (excluded.deleted_at is not null
                    and memberships.clerk_membership_id = excluded.clerk_membership_id
                    and memberships.deleted_at is distinct from
                        least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at))
            returning hotel_id, user_id
        ),
        -- The written keys as one jsonb object looked up per item: CTE results have no
        -- statistics, so a join of two of them is planned as a nested loop, quadratic in the
        -- batch (0.5 s for 2,000 items); a jsonb key lookup is a binary search.
        -- (materialized: computed once, not per item)
        written_keys as materialized (
            select coalesce(jsonb_object_agg(hotel_id || '/' || user_id, true), '{}') as keys from written
        )
        select nw.n as "n!" from newest nw, written_keys w where w.keys ? (nw.hotel_id || '/' || nw.user_id)
        "#,
        &hotels,
        &users,
        &ids,
        &roles,
        &created,
        &updated,
        &removed as &[Option<chrono::DateTime<chrono::Utc>>],
        &versions,
        &jobs as &[Option<i64>],
        &order,
        &role_names as &[Option<&str>],
        &permissions,
    )
    .fetch_all(conn)
    .await?;
    Ok(written.into_iter().map(|n| n as usize).collect())
}

/// Ends these very memberships (hotel, user, Clerk membership id), when still live and not
/// written after `at`: what a listing lacked and Clerk confirmed it no longer has. Returns
/// `hotel/user` for each one ended.
pub async fn end(
    conn: &mut PgConnection,
    keys: &[(String, String, String)],
    at: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let hotels: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let users: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let gone = sqlx::query!(
        r#"
        update memberships m set deleted_at = $4, clerk_version = greatest(m.clerk_version, $5), last_job_id = null
        from unnest($1::text[], $2::text[], $3::text[]) as k(hotel_id, user_id, clerk_membership_id)
        where m.hotel_id = k.hotel_id and m.user_id = k.user_id and m.clerk_membership_id = k.clerk_membership_id
          and m.deleted_at is null and m.clerk_version <= $5
        returning m.hotel_id, m.user_id
        "#,
        &hotels as &[&str],
        &users as &[&str],
        &ids as &[&str],
        to_time(at),
        at,
    )
    .fetch_all(conn)
    .await?;
    Ok(gone
        .into_iter()
        .map(|r| format!("{}/{}", r.hotel_id, r.user_id))
        .collect())
}
