//! Permissions: newer wins, a tombstone is final, and a deleted permission drops out of every
//! role's permission set. A permission is written from its own events and from the copies
//! embedded in role payloads alike (same rule: the newest version wins).

use std::collections::HashSet;

use sqlx::PgConnection;

use super::{to_time, Deletion, Item, Outcome};
use crate::clerk::{Permission, PermissionId};

/// A permission to write: a version of it, or its deletion (dated by the event).
#[derive(Debug, Clone, Copy)]
pub enum PermissionWrite<'a> {
    Live(&'a Permission),
    Deleted(&'a Deletion<PermissionId>),
}

impl PermissionWrite<'_> {
    fn id(&self) -> &str {
        match self {
            Self::Live(p) => p.id.as_str(),
            Self::Deleted(d) => d.id.as_str(),
        }
    }
}

/// Writes permissions (versions and deletions) in one statement, which locks their rows in id
/// order: per id, a deletion of the batch wins over any version (tombstones are final; the
/// earliest deletion dates it); otherwise the newest version is written when the row is missing,
/// or live and older. A deletion of a permission never seen inserts its tombstone, so a late
/// version cannot bring it back. One outcome per item.
///
/// Callers then drop the deleted permissions from the role sets with [`drop_from_roles`], after
/// locking those roles (see [`super::roles::lock`]).
pub async fn write(conn: &mut PgConnection, items: &[Item<PermissionWrite<'_>>]) -> Result<Vec<Outcome>, sqlx::Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    fn live<'a>(i: &Item<PermissionWrite<'a>>) -> Option<&'a Permission> {
        match i.value {
            PermissionWrite::Live(p) => Some(p),
            PermissionWrite::Deleted(_) => None,
        }
    }
    let ids: Vec<&str> = items.iter().map(|i| i.value.id()).collect();
    let keys: Vec<&str> = items.iter().map(|i| live(i).map_or("", |p| p.key.as_str())).collect();
    let names: Vec<&str> = items.iter().map(|i| live(i).map_or("", |p| p.name.as_str())).collect();
    let descriptions: Vec<Option<&str>> = items
        .iter()
        .map(|i| live(i).and_then(|p| p.description.as_deref()))
        .collect();
    let kinds: Vec<Option<&str>> = items.iter().map(|i| live(i).and_then(|p| p.kind.as_deref())).collect();
    let created: Vec<_> = items
        .iter()
        .map(|i| match i.value {
            PermissionWrite::Live(p) => to_time(p.created_at),
            PermissionWrite::Deleted(d) => to_time(d.at),
        })
        .collect();
    let updated: Vec<_> = items
        .iter()
        .map(|i| match i.value {
            PermissionWrite::Live(p) => to_time(p.updated_at),
            PermissionWrite::Deleted(d) => to_time(d.at),
        })
        .collect();
    let deleted: Vec<Option<_>> = items
        .iter()
        .map(|i| match i.value {
            PermissionWrite::Live(_) => None,
            PermissionWrite::Deleted(d) => Some(to_time(d.at)),
        })
        .collect();
    let versions: Vec<i64> = items
        .iter()
        .map(|i| match i.value {
            PermissionWrite::Live(p) => p.updated_at,
            PermissionWrite::Deleted(d) => d.at,
        })
        .collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let written = sqlx::query_scalar!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int8[], $10::int8[])
                with ordinality as x(id, key, name, description, type, created_at, updated_at, deleted_at,
                                     clerk_version, last_job_id, n)
        ),
        -- per permission: its earliest deletion, else its newest version
        newest as (
            select distinct on (id) * from input
            order by id, deleted_at is null, deleted_at, clerk_version desc, n
        ),
        written as (
            insert into permissions (id, key, name, description, type, created_at, updated_at, deleted_at,
                                     clerk_version, last_job_id)
            select id, key, name, description, type, created_at, updated_at, deleted_at, clerk_version, last_job_id
            from newest order by id
            on conflict (id) do update set
                key = case when excluded.deleted_at is null then excluded.key else permissions.key end,
                name = case when excluded.deleted_at is null then excluded.name else permissions.name end,
                description = case when excluded.deleted_at is null then excluded.description
                                   else permissions.description end,
                type = case when excluded.deleted_at is null then excluded.type else permissions.type end,
                created_at = case when excluded.deleted_at is null then excluded.created_at
                                  else permissions.created_at end,
                updated_at = case when excluded.deleted_at is null then excluded.updated_at
                                  else permissions.updated_at end,
                deleted_at = excluded.deleted_at,
                clerk_version = greatest(permissions.clerk_version, excluded.clerk_version),
                last_job_id = excluded.last_job_id
            -- tombstones are final; a deletion ends a live row whatever its version; else newer wins
            where permissions.deleted_at is null
              and (excluded.deleted_at is not null or permissions.clerk_version < excluded.clerk_version)
            returning id
        ),
        -- The written ids as one jsonb object looked up per item: CTE results have no statistics,
        -- so a join of two of them is planned as a nested loop, quadratic in the batch.
        -- (materialized: computed once, not per item)
        written_ids as materialized (select coalesce(jsonb_object_agg(id, true), '{}') as ids from written)
        select nw.n as "n!" from newest nw, written_ids w where w.ids ? nw.id
        "#,
        &ids as &[&str],
        &keys as &[&str],
        &names as &[&str],
        &descriptions as &[Option<&str>],
        &kinds as &[Option<&str>],
        &created,
        &updated,
        &deleted as &[Option<chrono::DateTime<chrono::Utc>>],
        &versions,
        &jobs as &[Option<i64>],
    )
    .fetch_all(conn)
    .await?;
    let written: HashSet<usize> = written.into_iter().map(|n| n as usize - 1).collect();
    Ok((0..items.len())
        .map(|i| {
            if written.contains(&i) {
                Outcome::Written
            } else {
                Outcome::Unchanged
            }
        })
        .collect())
}

/// Removes the permissions `ids` from every role's permission set. Call it after tombstoning
/// them with [`write`] (whose row locks keep a concurrent role write from adding them back) and
/// after locking the roles concerned.
pub async fn drop_from_roles(conn: &mut PgConnection, ids: &[&str]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query!(
        "delete from role_permissions where permission_id = any($1)",
        ids as &[&str]
    )
    .execute(conn)
    .await?
    .rows_affected())
}

/// Tombstones the permissions among `ids` that a complete listing lacked and Clerk answered 404
/// for by id (an inferred delete): only live rows not written after `at` (the listing's start),
/// dated `at`; then drops them from every role's permission set (locking those roles first, as
/// [`super::apply_events`] orders locks: permissions, then roles). Returns the ids tombstoned.
pub async fn delete_inferred(conn: &mut PgConnection, ids: &[&str], at: i64) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let gone = sqlx::query_scalar!(
        r#"
        update permissions set deleted_at = to_timestamp($2 / 1000.0), clerk_version = greatest(clerk_version, $2),
                               last_job_id = null
        where id in (select id from permissions where id = any($1) and deleted_at is null and clerk_version <= $2
                     order by id for no key update)
        returning id
        "#,
        ids as &[&str],
        at,
    )
    .fetch_all(&mut *conn)
    .await?;
    let dropped: Vec<&str> = gone.iter().map(String::as_str).collect();
    super::roles::lock(conn, &[], &dropped).await?;
    drop_from_roles(conn, &dropped).await?;
    Ok(gone)
}
