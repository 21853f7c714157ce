//! Role sets: newer wins, a tombstone is final, a role set's roles (`role_set_roles`) are
//! replaced as a whole when a newer version of it wins, and a role set key is held by at most one
//! live role set. No webhook carries role sets: they come from listings (the resync, the
//! self-heal of a hotel) and from the answers of orgsync's own writes.
//!
//! **A key held by another live role set.** Clerk keeps keys unique, so a listed role set whose
//! key another live row holds means that row was re-keyed or deleted meanwhile. Within one call,
//! the items whose key is free are written first, then the blocked ones again (a chain of
//! renames settles in one call); what stays blocked (two role sets that swapped keys, or a holder
//! not in the call) is not written and is named in [`Upserted::key_taken`]: the holder's own
//! news (a listing, its confirmed deletion) frees the key, and a later call writes it. A holder
//! is never tombstoned on an arrival's word.
//!
//! Locking (after everything else in the global order of [`super`]): the keys of a call are
//! locked first (advisory locks, in key order, so two writers of one key serialise and the
//! holder check is exact), then the rows (by the conditional insert, or `FOR UPDATE` in id order
//! for deletes), then their roles. Role sets are few (Clerk caps them per instance), so the
//! statements join their inputs directly.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::{to_time, Deletion, Item, Outcome};
use crate::clerk::{RoleSet, RoleSetId};

/// The advisory-lock class (first key) of role set keys (second key: `hashtext(key)`).
const ROLE_SET_KEY_LOCK_CLASS: i32 = 0x6f72_7273; // "orrs"

/// What [`upsert`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// One per item.
    pub outcomes: Vec<Outcome>,
    /// The ids of the role sets not written because another live role set holds their key.
    pub key_taken: Vec<String>,
}

/// Inserts or updates role sets: per id, the newest item is written when the row is missing, or
/// live and older, and its key is free (see the module documentation). A written role set's roles
/// become exactly those its payload lists. One outcome per item.
pub async fn upsert(conn: &mut PgConnection, items: &[Item<&RoleSet>]) -> Result<Upserted, sqlx::Error> {
    if items.is_empty() {
        return Ok(Upserted::default());
    }
    lock_keys(conn, items.iter().map(|i| i.value.key.as_str()).collect()).await?;
    let mut outcomes = vec![Outcome::Unchanged; items.len()];
    // The items still to try: each pass writes those whose key is free now.
    let mut pending: Vec<usize> = (0..items.len()).collect();
    let key_taken = loop {
        let batch: Vec<&Item<&RoleSet>> = pending.iter().map(|&i| &items[i]).collect();
        let pass = write_pass(conn, &batch).await?;
        let mut blocked = Vec::new();
        let mut progressed = false;
        for (at, code) in pending.iter().zip(pass) {
            match code {
                PassOutcome::Written => {
                    outcomes[*at] = Outcome::Written;
                    progressed = true;
                }
                PassOutcome::Unchanged => {}
                PassOutcome::Blocked => blocked.push(*at),
            }
        }
        if blocked.is_empty() || !progressed {
            break blocked;
        }
        pending = blocked;
    };
    let mut taken: Vec<String> = key_taken.iter().map(|&i| items[i].value.id.to_string()).collect();
    taken.sort();
    taken.dedup();
    Ok(Upserted {
        outcomes,
        key_taken: taken,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassOutcome {
    Written,
    Unchanged,
    Blocked,
}

/// One conditional write of `items` and, for those written, their roles.
async fn write_pass(conn: &mut PgConnection, items: &[&Item<&RoleSet>]) -> Result<Vec<PassOutcome>, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.value.key.as_str()).collect();
    let names: Vec<&str> = items.iter().map(|i| i.value.name.as_str()).collect();
    let descriptions: Vec<Option<&str>> = items.iter().map(|i| i.value.description.as_deref()).collect();
    let kinds: Vec<Option<&str>> = items.iter().map(|i| i.value.kind.as_deref()).collect();
    let defaults: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.value.default_role.as_ref().map(|r| r.key.as_str()))
        .collect();
    let creators: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.value.creator_role.as_ref().map(|r| r.key.as_str()))
        .collect();
    let created: Vec<_> = items.iter().map(|i| to_time(i.value.created_at)).collect();
    let updated: Vec<_> = items.iter().map(|i| to_time(i.value.updated_at)).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.value.updated_at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let rows = sqlx::query!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::timestamptz[], $9::timestamptz[], $10::int8[], $11::int8[])
                with ordinality as x(id, key, name, description, type, default_role_key, creator_role_key,
                                     created_at, updated_at, clerk_version, last_job_id, n)
        ),
        newest as (
            select distinct on (id) * from input order by id, clerk_version desc, n
        ),
        -- the versions that would win their row
        candidates as (
            select nw.* from newest nw left join role_sets r on r.id = nw.id
            where r.id is null or (r.deleted_at is null and r.clerk_version < nw.clerk_version)
        ),
        -- a key another live role set holds, or another candidate (newer, or equal and smaller id) claims
        blocked as (
            select c.n from candidates c
            where exists (select 1 from role_sets o where o.key = c.key and o.deleted_at is null and o.id <> c.id)
               or exists (select 1 from candidates d
                          where d.key = c.key and d.id <> c.id
                            and (d.clerk_version > c.clerk_version
                                 or (d.clerk_version = c.clerk_version and d.id < c.id)))
        ),
        written as (
            insert into role_sets (id, key, name, description, type, default_role_key, creator_role_key,
                                   created_at, updated_at, clerk_version, last_job_id)
            select id, key, name, description, type, default_role_key, creator_role_key,
                   created_at, updated_at, clerk_version, last_job_id
            from candidates where n not in (select n from blocked) order by id
            on conflict (id) do update set
                key = excluded.key, name = excluded.name, description = excluded.description,
                type = excluded.type, default_role_key = excluded.default_role_key,
                creator_role_key = excluded.creator_role_key, created_at = excluded.created_at,
                updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
                last_job_id = excluded.last_job_id
            -- newer wins; tombstones are final
            where role_sets.deleted_at is null and role_sets.clerk_version < excluded.clerk_version
            returning id
        )
        select x.n as "n!",
               case when x.n = (select nw.n from newest nw where nw.id = x.id)
                         and x.id in (select id from written) then 'written'
                    when x.n in (select n from blocked) then 'blocked'
                    else 'unchanged' end as "outcome!"
        from input x
        order by x.n
        "#,
        &ids as &[&str],
        &keys as &[&str],
        &names as &[&str],
        &descriptions as &[Option<&str>],
        &kinds as &[Option<&str>],
        &defaults as &[Option<&str>],
        &creators as &[Option<&str>],
        &created,
        &updated,
        &versions,
        &jobs as &[Option<i64>],
    )
    .fetch_all(&mut *conn)
    .await?;
    let outcomes: Vec<PassOutcome> = rows
        .iter()
        .map(|r| match r.outcome.as_str() {
            "written" => PassOutcome::Written,
            "blocked" => PassOutcome::Blocked,
            _ => PassOutcome::Unchanged,
        })
        .collect();

    // The roles of the role sets written: exactly those their payloads list.
    let winners: Vec<&RoleSet> = items
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == PassOutcome::Written)
        .map(|(i, _)| i.value)
        .collect();
    if !winners.is_empty() {
        let written_ids: Vec<&str> = winners.iter().map(|s| s.id.as_str()).collect();
        let mut set_ids: Vec<&str> = Vec::new();
        let mut role_keys: Vec<&str> = Vec::new();
        let mut role_ids: Vec<&str> = Vec::new();
        for set in &winners {
            for role in &set.roles {
                set_ids.push(set.id.as_str());
                role_keys.push(role.key.as_str());
                role_ids.push(role.id.as_str());
            }
        }
        sqlx::query!(
            r#"
            delete from role_set_roles x
            where x.role_set_id = any($1)
              and not exists (select 1 from unnest($2::text[], $3::text[], $4::text[]) as s(set_id, role_key, role_id)
                              where s.set_id = x.role_set_id and s.role_key = x.role_key and s.role_id = x.role_id)
            "#,
            &written_ids as &[&str],
            &set_ids as &[&str],
            &role_keys as &[&str],
            &role_ids as &[&str],
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query!(
            r#"
            insert into role_set_roles (role_set_id, role_key, role_id)
            select distinct on (s.set_id, s.role_key) s.set_id, s.role_key, s.role_id
            from unnest($1::text[], $2::text[], $3::text[]) as s(set_id, role_key, role_id)
            order by s.set_id, s.role_key
            on conflict (role_set_id, role_key) do update set role_id = excluded.role_id
            where role_set_roles.role_id <> excluded.role_id
            "#,
            &set_ids as &[&str],
            &role_keys as &[&str],
            &role_ids as &[&str],
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcomes)
}

/// Takes the advisory locks of role set `keys` (held to the end of the transaction), in key
/// order.
async fn lock_keys(conn: &mut PgConnection, mut keys: Vec<&str>) -> Result<(), sqlx::Error> {
    keys.sort_unstable();
    keys.dedup();
    sqlx::query!(
        r#"
        select count(pg_advisory_xact_lock($2, hashtext(k))) as "locked!"
        from (select k from unnest($1::text[]) as k order by k) keys
        "#,
        &keys as &[&str],
        ROLE_SET_KEY_LOCK_CLASS,
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Tombstones role sets Clerk said are gone (the answer to a replacement, or a 404 by id):
/// final whatever the row's version; a role set never seen gets its tombstone, so a late listing
/// cannot bring it. The earliest deletion dates it; its roles are emptied. One outcome per item:
/// the first item of a tombstoned id wrote it.
pub async fn delete(conn: &mut PgConnection, items: &[Item<Deletion<RoleSetId>>]) -> Result<Vec<Outcome>, sqlx::Error> {
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
        insert into role_sets (id, key, name, created_at, updated_at, deleted_at, clerk_version, last_job_id)
        select id, '', '', to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), at, job
        from input order by id
        on conflict (id) do update set
            deleted_at = excluded.deleted_at,
            clerk_version = greatest(role_sets.clerk_version, excluded.clerk_version),
            last_job_id = excluded.last_job_id
        where role_sets.deleted_at is null
        returning id
        "#,
        &ids as &[&str],
        &ats,
        &jobs as &[Option<i64>],
    )
    .fetch_all(&mut *conn)
    .await?;
    drop_roles(conn, &gone).await?;
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

/// Tombstones the role sets among `ids` that a complete listing lacked and Clerk answered 404
/// for by id (an inferred delete): only live rows not written after `at` (the listing's start),
/// dated `at`, rows locked in id order; their roles are emptied. Returns the ids tombstoned.
pub async fn delete_inferred(conn: &mut PgConnection, ids: &[&str], at: i64) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let gone = sqlx::query_scalar!(
        r#"
        update role_sets set deleted_at = to_timestamp($2 / 1000.0), clerk_version = greatest(clerk_version, $2),
                             last_job_id = null
        where id in (select id from role_sets where id = any($1) and deleted_at is null and clerk_version <= $2
                     order by id for update)
        returning id
        "#,
        ids as &[&str],
        at,
    )
    .fetch_all(&mut *conn)
    .await?;
    drop_roles(conn, &gone).await?;
    Ok(gone)
}

async fn drop_roles(conn: &mut PgConnection, role_sets: &[String]) -> Result<(), sqlx::Error> {
    if !role_sets.is_empty() {
        sqlx::query!("delete from role_set_roles where role_set_id = any($1)", role_sets)
            .execute(conn)
            .await?;
    }
    Ok(())
}
