//! Roles: newer wins, a tombstone is final, a role's permission set (`role_permissions`) is
//! replaced as a whole when a newer version of the role wins, and a role key is held by at most
//! one live role.
//!
//! **A key held by another live role.** Clerk keeps role keys unique, so when a role arrives
//! with a key that a different live row holds, that row's news (its deletion, or its move to
//! another key) has not arrived yet. The arriving version then waits: its outcome is
//! [`Outcome::RoleKeyTaken`] (retryable, like a membership waiting for its hotel) and it applies
//! once the holder has let the key go. Nothing is guessed (a holder is never tombstoned on an
//! arrival's word: it may have been re-keyed, not deleted) and the batch is never aborted by the
//! unique index. Limitation: two roles that swapped keys, delivered without the intermediate
//! versions, wait for each other until their jobs die; a resync settles them.
//!
//! Locking (see [`super::apply_events`] for the order across kinds): the keys a batch writes are
//! locked first (advisory locks, in key order, so two writers of one key serialise and the
//! holder check below is exact), then permissions (in [`super::permissions::write`]), then roles
//! ([`lock`], in id order), then the permission sets of the roles held.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::{to_time, Deletion, Item, Outcome};
use crate::clerk::{Role, RoleId};

/// The advisory-lock class (first key) of role keys (second key: `hashtext(key)`).
const ROLE_KEY_LOCK_CLASS: i32 = 0x6f72_6b79; // "orky"

/// Takes the advisory locks of role `keys` (held to the end of the transaction), in key order.
pub async fn lock_keys(conn: &mut PgConnection, mut keys: Vec<&str>) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sqlx::query!(
        r#"
        select count(pg_advisory_xact_lock($2, hashtext(k))) as "locked!"
        from (select k from unnest($1::text[]) as k order by k) keys
        "#,
        &keys as &[&str],
        ROLE_KEY_LOCK_CLASS,
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Locks (`FOR NO KEY UPDATE`, in id order) the existing roles among `ids` and those whose
/// permission set holds one of `permissions`: a transaction changes a role's permission set only
/// while it holds that role's row.
pub async fn lock(conn: &mut PgConnection, ids: &[&str], permissions: &[&str]) -> Result<(), sqlx::Error> {
    if ids.is_empty() && permissions.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"
        select id from roles
        where id = any($1)
           or id in (select role_id from role_permissions where permission_id = any($2))
        order by id
        for no key update
        "#,
        ids as &[&str],
        permissions as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// Tombstones roles (Clerk said so: final whatever the row's version; a role never seen gets its
/// tombstone, so a late version cannot bring it) and empties their permission sets. The earliest
/// deletion dates the tombstone. One outcome per item: the first item of a tombstoned id wrote it.
pub async fn delete(conn: &mut PgConnection, items: &[Item<Deletion<RoleId>>]) -> Result<Vec<Outcome>, sqlx::Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let ats: Vec<i64> = items.iter().map(|i| i.value.at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let gone = sqlx::query_scalar!(
        r#"
        with input as (
            select distinct on (id) id, at, job from unnest($1::text[], $2::int8[], $3::int8[]) as x(id, at, job)
            order by id, at
        )
        insert into roles (id, key, name, created_at, updated_at, deleted_at, clerk_version, last_job_id)
        select id, '', '', to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), at, job
        from input order by id
        on conflict (id) do update set
            deleted_at = excluded.deleted_at,
            clerk_version = greatest(roles.clerk_version, excluded.clerk_version),
            last_job_id = excluded.last_job_id
        where roles.deleted_at is null
        returning id
        "#,
        &ids as &[&str],
        &ats,
        &jobs as &[Option<i64>],
    )
    .fetch_all(&mut *conn)
    .await?;
    if !gone.is_empty() {
        sqlx::query!("delete from role_permissions where role_id = any($1)", &gone)
            .execute(&mut *conn)
            .await?;
    }
    let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
    let mut credited = HashSet::new();
    Ok(items
        .iter()
        .map(|i| {
            let id = i.value.id.as_str();
            if gone.contains(id) && credited.insert(id) {
                Outcome::Written
            } else {
                Outcome::Unchanged
            }
        })
        .collect())
}

/// Inserts or updates roles: per id, the newest item of the batch is written when the row is
/// missing, or live and older, and its key is free ([`Outcome::RoleKeyTaken`] otherwise: see the
/// module documentation). A written role's permission set becomes the live permissions its
/// payload embeds. Callers have locked the keys ([`lock_keys`]), written the embedded permissions
/// and locked the roles ([`lock`]). One outcome per item.
pub async fn upsert(conn: &mut PgConnection, items: &[Item<&Role>]) -> Result<Vec<Outcome>, sqlx::Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.value.key.as_str()).collect();
    let names: Vec<&str> = items.iter().map(|i| i.value.name.as_str()).collect();
    let descriptions: Vec<Option<&str>> = items.iter().map(|i| i.value.description.as_deref()).collect();
    let created: Vec<_> = items.iter().map(|i| to_time(i.value.created_at)).collect();
    let updated: Vec<_> = items.iter().map(|i| to_time(i.value.updated_at)).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.value.updated_at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let rows = sqlx::query!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                 $6::timestamptz[], $7::int8[], $8::int8[])
                with ordinality as x(id, key, name, description, created_at, updated_at, clerk_version,
                                     last_job_id, n)
        ),
        newest as (
            select distinct on (id) * from input order by id, clerk_version desc, n
        ),
        -- the versions that would win their row
        candidates as (
            select nw.* from newest nw left join roles r on r.id = nw.id
            where r.id is null or (r.deleted_at is null and r.clerk_version < nw.clerk_version)
        ),
        -- a key another live role holds, or another candidate (newer, or equal and smaller id) claims
        blocked as (
            select c.n from candidates c
            where exists (select 1 from roles o where o.key = c.key and o.deleted_at is null and o.id <> c.id)
               or exists (select 1 from candidates d
                          where d.key = c.key and d.id <> c.id
                            and (d.clerk_version > c.clerk_version
                                 or (d.clerk_version = c.clerk_version and d.id < c.id)))
        ),
        written as (
            insert into roles (id, key, name, description, created_at, updated_at, clerk_version, last_job_id)
            select id, key, name, description, created_at, updated_at, clerk_version, last_job_id
            from candidates where n not in (select n from blocked) order by id
            on conflict (id) do update set
                key = excluded.key, name = excluded.name, description = excluded.description,
                created_at = excluded.created_at, updated_at = excluded.updated_at,
                clerk_version = excluded.clerk_version, last_job_id = excluded.last_job_id
            -- newer wins; tombstones are final
            where roles.deleted_at is null and roles.clerk_version < excluded.clerk_version
            returning id
        ),
        -- The written ids as one jsonb object looked up per item: CTE results have no statistics,
        -- so a join of two of them is planned as a nested loop, quadratic in the batch.
        -- (materialized: computed once, not per item).
        written_ids as materialized (select coalesce(jsonb_object_agg(id, true), '{}') as ids from written),
        won as materialized (
            select coalesce(jsonb_object_agg(nw.id, nw.n), '{}') as n_of
            from newest nw, written_ids w
            where w.ids ? nw.id
        ),
        newest_n as materialized (select coalesce(jsonb_object_agg(id, n), '{}') as n_of from newest)
        select x.n as "n!",
               case when (won.n_of ->> x.id)::int8 = x.n then 'written'
                    when (newest_n.n_of ->> x.id)::int8 = x.n and x.n in (select n from blocked) then 'blocked'
                    else 'unchanged' end as "outcome!"
        from input x cross join won cross join newest_n
        order by x.n
        "#,
        &ids as &[&str],
        &keys as &[&str],
        &names as &[&str],
        &descriptions as &[Option<&str>],
        &created,
        &updated,
        &versions,
        &jobs as &[Option<i64>],
    )
    .fetch_all(&mut *conn)
    .await?;

    // The permission sets of the roles written: exactly the live permissions their payloads embed.
    let winners: Vec<&Role> = rows
        .iter()
        .filter(|r| r.outcome == "written")
        .map(|r| items[r.n as usize - 1].value)
        .collect();
    if !winners.is_empty() {
        let written_ids: Vec<&str> = winners.iter().map(|r| r.id.as_str()).collect();
        let mut set: HashMap<&str, Vec<&str>> = HashMap::new();
        for role in &winners {
            set.entry(role.id.as_str())
                .or_default()
                .extend(role.permissions.iter().map(|p| p.id.as_str()));
        }
        let (role_ids, permission_ids): (Vec<&str>, Vec<&str>) = set
            .iter()
            .flat_map(|(role, perms)| perms.iter().map(move |p| (*role, *p)))
            .unzip();
        sqlx::query!(
            r#"
            delete from role_permissions rp
            where rp.role_id = any($1)
              and not exists (select 1 from unnest($2::text[], $3::text[]) as s(role_id, permission_id)
                              where s.role_id = rp.role_id and s.permission_id = rp.permission_id)
            "#,
            &written_ids as &[&str],
            &role_ids as &[&str],
            &permission_ids as &[&str],
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query!(
            r#"
            insert into role_permissions (role_id, permission_id)
            select distinct s.role_id, s.permission_id
            from unnest($1::text[], $2::text[]) as s(role_id, permission_id)
            join permissions p on p.id = s.permission_id and p.deleted_at is null
            order by 1, 2
            on conflict do nothing
            "#,
            &role_ids as &[&str],
            &permission_ids as &[&str],
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(rows
        .iter()
        .map(|r| match r.outcome.as_str() {
            "written" => Outcome::Written,
            "blocked" => Outcome::RoleKeyTaken(items[r.n as usize - 1].value.key.clone()),
            _ => Outcome::Unchanged,
        })
        .collect())
}

/// Tombstones the roles among `ids` that a complete listing lacked and Clerk answered 404 for by
/// id (an inferred delete): only live rows not written after `at` (the listing's start), dated
/// `at`, and empties their permission sets. The rows are locked in id order (the roles step of
/// the lock order in [`super::apply_events`]). Returns the ids tombstoned.
pub async fn delete_inferred(conn: &mut PgConnection, ids: &[&str], at: i64) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    lock(conn, ids, &[]).await?;
    let gone = sqlx::query_scalar!(
        r#"
        update roles set deleted_at = to_timestamp($2 / 1000.0), clerk_version = greatest(clerk_version, $2),
                         last_job_id = null
        where id = any($1) and deleted_at is null and clerk_version <= $2
        returning id
        "#,
        ids as &[&str],
        at,
    )
    .fetch_all(&mut *conn)
    .await?;
    if !gone.is_empty() {
        sqlx::query!("delete from role_permissions where role_id = any($1)", &gone)
            .execute(&mut *conn)
            .await?;
    }
    Ok(gone)
}

/// A role re-keyed in Clerk takes its holders along: Clerk's memberships and pending invitations
/// name their role by key, and Clerk answers them with the new key from then on (without a newer
/// `updated_at`, so no later listing or webhook could carry it). Called by the write path after it
/// wrote the role's new version (the roles step of the lock order is behind it; the memberships
/// and invitations are locked here, so a deadlock with a webhook batch is possible and retried by
/// the caller). Versions are left as they are: a membership event newer than the row still wins.
/// Returns the memberships changed.
pub async fn carry_holders(conn: &mut PgConnection, old_key: &str, new_key: &str) -> Result<u64, sqlx::Error> {
    if old_key == new_key {
        return Ok(0);
    }
    let moved = sqlx::query!(
        "update memberships set role = $2 where role = $1 and deleted_at is null",
        old_key,
        new_key
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query!(
        "update invitations set role = $2 where role = $1 and deleted_at is null and status = 'pending'",
        old_key,
        new_key
    )
    .execute(&mut *conn)
    .await?;
    Ok(moved)
}
