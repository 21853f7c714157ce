//! Users: newer wins (a stub from a membership's `public_user_data` has version 0, so any user
//! data outranks it), a tombstone is final, and a delete ends the user's memberships.

use sqlx::PgConnection;

use super::hotels::Deleted;
use super::{to_time, DeleteKind, Deletion, Item, Outcome, Source, ENTITY_LOCK_CLASS};
use crate::clerk::events::PublicUserData;
use crate::clerk::{User, UserId};

/// Inserts or updates users: per id, the newest item of the batch is written when the row is
/// missing, or live and older. With [`Source::Webhook`], an item older than the last complete
/// users listing (the `users` snapshot mark) is obsolete. One outcome per item.
pub async fn upsert(
    conn: &mut PgConnection,
    source: Source,
    items: &[Item<&User>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let emails: Vec<Option<&str>> = items.iter().map(|i| i.value.primary_email()).collect();
    let first: Vec<Option<&str>> = items.iter().map(|i| i.value.first_name.as_deref()).collect();
    let last: Vec<Option<&str>> = items.iter().map(|i| i.value.last_name.as_deref()).collect();
    let images: Vec<Option<&str>> = items.iter().map(|i| i.value.image_url.as_deref()).collect();
    let created: Vec<_> = items.iter().map(|i| to_time(i.value.created_at)).collect();
    let updated: Vec<_> = items.iter().map(|i| to_time(i.value.updated_at)).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.value.updated_at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let banned: Vec<bool> = items.iter().map(|i| i.value.banned).collect();
    let locked: Vec<bool> = items.iter().map(|i| i.value.locked).collect();
    let usernames: Vec<Option<&str>> = items.iter().map(|i| i.value.username.as_deref()).collect();
    let external: Vec<Option<&str>> = items.iter().map(|i| i.value.external_id.as_deref()).collect();
    let metadata: Vec<serde_json::Value> = items.iter().map(|i| i.value.public_metadata.clone()).collect();
    let rows = sqlx::query!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::int8[],
                                 $11::bool[], $12::bool[], $13::text[], $14::text[], $15::jsonb[])
                with ordinality as x(id, email, first_name, last_name, image_url, created_at, updated_at,
                                     clerk_version, last_job_id, banned, locked, username, external_id,
                                     public_metadata, n)
        ),
        mark as (
            select coalesce(max(listed_at), 0) as listed_at from snapshot_marks
            where scope = 'users' and $10::bool
        ),
        newest as (
            select distinct on (id) input.* from input, mark
            where input.clerk_version >= mark.listed_at
            order by id, clerk_version desc, n
        ),
        written as (
            insert into users (id, email, first_name, last_name, image_url, created_at, updated_at,
                               clerk_version, last_job_id, banned, locked, username, external_id, public_metadata)
            select id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version, last_job_id,
                   banned, locked, username, external_id, public_metadata
            from newest order by id
            on conflict (id) do update set
                email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
                image_url = excluded.image_url, created_at = excluded.created_at,
                updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
                last_job_id = excluded.last_job_id, banned = excluded.banned, locked = excluded.locked,
                username = excluded.username, external_id = excluded.external_id,
                public_metadata = excluded.public_metadata
            -- newer wins (a stub is version 0); tombstones are final
            where users.deleted_at is null and users.clerk_version < excluded.clerk_version
            returning id
        ),
        -- Which item of each id was written, as one jsonb object looked up per item: CTE results
        -- have no statistics, so a join of two of them is planned as a nested loop, quadratic in
        -- the batch (0.5 s for 2,000 items); a jsonb key lookup is a binary search.
        -- (materialized: computed once, not per item).
        written_ids as materialized (select coalesce(jsonb_object_agg(id, true), '{}') as ids from written),
        won as materialized (
            select coalesce(jsonb_object_agg(nw.id, nw.n), '{}') as n_of
            from newest nw, written_ids w
            where w.ids ? nw.id
        )
        select x.n as "n!",
               case when (won.n_of ->> x.id)::int8 = x.n then 'written'
                    when x.clerk_version < mark.listed_at then 'obsolete'
                    else 'unchanged' end as "outcome!"
        from input x cross join mark cross join won
        order by x.n
        "#,
        &ids as &[&str],
        &emails as &[Option<&str>],
        &first as &[Option<&str>],
        &last as &[Option<&str>],
        &images as &[Option<&str>],
        &created,
        &updated,
        &versions,
        &jobs as &[Option<i64>],
        source.honours_snapshots(),
        &banned,
        &locked,
        &usernames as &[Option<&str>],
        &external as &[Option<&str>],
        &metadata,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(|r| Outcome::from_code(&r.outcome)).collect())
}

/// Takes `FOR UPDATE` on the users among `ids` that have rows, in id order (see
/// [`super::apply_events`]).
pub(super) async fn lock_for_delete(conn: &mut PgConnection, mut ids: Vec<&str>) -> Result<(), sqlx::Error> {
    ids.sort_unstable();
    ids.dedup();
    sqlx::query!(
        "select id from users where id = any($1) order by id for update",
        &ids as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// Tombstones users and ends their live memberships, as [`super::hotels::delete`] does for
/// hotels (same kinds, same dating).
pub async fn delete(
    conn: &mut PgConnection,
    items: &[Item<Deletion<UserId>>],
    kind: DeleteKind,
) -> Result<Deleted, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let ats: Vec<i64> = items.iter().map(|i| i.value.at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    // Serialise with memberships being written for these users (see hotels::delete).
    sqlx::query!(
        "select id from users where id = any($1) order by id for update",
        &ids as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let gone = sqlx::query!(
        r#"
        with input as (
            select distinct on (id) id, at, job from unnest($1::text[], $2::int8[], $3::int8[]) as x(id, at, job)
            order by id, at
        ),
        inserted as (
            insert into users (id, created_at, updated_at, deleted_at, clerk_version, last_job_id)
            select id, to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), at, job
            from input where $4::bool
            order by id
            on conflict (id) do update set
                deleted_at = excluded.deleted_at,
                clerk_version = greatest(users.clerk_version, excluded.clerk_version),
                last_job_id = excluded.last_job_id
            where users.deleted_at is null
            returning id
        ),
        updated as (
            update users u set deleted_at = to_timestamp(i.at / 1000.0),
                               clerk_version = greatest(u.clerk_version, i.at), last_job_id = i.job
            from input i
            where not $4::bool and u.id = i.id and u.deleted_at is null and u.clerk_version <= i.at
            returning u.id
        )
        select i.id as "id!", i.at as "at!", i.job from input i
        where i.id in (select id from inserted union all select id from updated)
        "#,
        &ids as &[&str],
        &ats,
        &jobs as &[Option<i64>],
        kind == DeleteKind::Reported,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Deleted::default();
    let gone_ids: Vec<String> = gone.iter().map(|g| g.id.clone()).collect();
    if !gone.is_empty() {
        let gone_at: Vec<i64> = gone.iter().map(|g| g.at).collect();
        let gone_job: Vec<Option<i64>> = gone.iter().map(|g| g.job).collect();
        out.memberships_ended = sqlx::query!(
            r#"
            update memberships m set deleted_at = to_timestamp(g.at / 1000.0), last_job_id = g.job
            from unnest($1::text[], $2::int8[], $3::int8[]) as g(id, at, job)
            where m.user_id = g.id and m.deleted_at is null
            "#,
            &gone_ids,
            &gone_at,
            &gone_job as &[Option<i64>],
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    let gone_set: std::collections::HashSet<&str> = gone_ids.iter().map(String::as_str).collect();
    let mut credited = std::collections::HashSet::new();
    out.outcomes = items
        .iter()
        .map(|i| {
            let id = i.value.id.as_str();
            if gone_set.contains(id) && credited.insert(id) {
                Outcome::Written
            } else {
                Outcome::Unchanged
            }
        })
        .collect();
    drop(gone_set);
    out.ids = gone_ids;
    Ok(out)
}

/// Inserts a version-0 stub from `public_user_data` for each user that has no row (never over
/// an existing row). With [`Source::Webhook`] a stub is written only while its user's entity
/// lock is free (a worker holding it may be inserting that very user: waiting could deadlock);
/// the others insert regardless. Returns the ids inserted.
pub(super) async fn insert_stubs(
    conn: &mut PgConnection,
    source: Source,
    stubs: &[(Option<i64>, &PublicUserData, i64)],
) -> Result<Vec<String>, sqlx::Error> {
    if stubs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = stubs.iter().map(|s| s.1.user_id.as_str()).collect();
    let emails: Vec<Option<&str>> = stubs.iter().map(|s| s.1.identifier.as_deref()).collect();
    let first: Vec<Option<&str>> = stubs.iter().map(|s| s.1.first_name.as_deref()).collect();
    let last: Vec<Option<&str>> = stubs.iter().map(|s| s.1.last_name.as_deref()).collect();
    let images: Vec<Option<&str>> = stubs.iter().map(|s| s.1.image_url.as_deref()).collect();
    let at: Vec<_> = stubs.iter().map(|s| to_time(s.2)).collect();
    let jobs: Vec<Option<i64>> = stubs.iter().map(|s| s.0).collect();
    sqlx::query_scalar!(
        r#"
        insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version, last_job_id)
        select s.id, s.email, s.first_name, s.last_name, s.image_url, s.at, s.at, 0, s.job
        from (select distinct on (id) *
              from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::int8[])
                   as s(id, email, first_name, last_name, image_url, at, job)
              where not exists (select 1 from users u where u.id = s.id)
              order by id) s
        where not $8::bool or pg_try_advisory_xact_lock($9, hashtext(s.id))
        order by s.id
        on conflict (id) do nothing
        returning id
        "#,
        &ids as &[&str],
        &emails as &[Option<&str>],
        &first as &[Option<&str>],
        &last as &[Option<&str>],
        &images as &[Option<&str>],
        &at,
        &jobs as &[Option<i64>],
        source.stubs_need_free_lock(),
        ENTITY_LOCK_CLASS,
    )
    .fetch_all(conn)
    .await
}
