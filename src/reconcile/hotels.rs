//! Hotels (Clerk organizations): newer wins, a tombstone is final, a delete ends the hotel's
//! memberships (and tombstones its invitations), and writing a hotel wakes the membership and
//! invitation jobs waiting for it. A hotel's `role_set_key` is the organization payload's, written
//! with the rest of the row.

use sqlx::PgConnection;

use super::{to_time, wake_jobs_waiting_for, DeleteKind, Deletion, Item, Outcome, Source};
use crate::clerk::{HotelId, Organization};

/// Inserts or updates hotels: per id, the newest item of the batch is written when the row is
/// missing, or live and older. With [`Source::Webhook`], an item older than the last complete
/// organizations listing (the `hotels` snapshot mark) is obsolete. One outcome per item.
pub async fn upsert(
    conn: &mut PgConnection,
    source: Source,
    items: &[Item<&Organization>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let names: Vec<&str> = items.iter().map(|i| i.value.name.as_str()).collect();
    let slugs: Vec<Option<&str>> = items.iter().map(|i| i.value.slug.as_deref()).collect();
    let images: Vec<Option<&str>> = items.iter().map(|i| i.value.image_url.as_deref()).collect();
    let metadata: Vec<serde_json::Value> = items.iter().map(|i| i.value.public_metadata.clone()).collect();
    let role_sets: Vec<Option<&str>> = items.iter().map(|i| i.value.role_set_key.as_deref()).collect();
    let created: Vec<_> = items.iter().map(|i| to_time(i.value.created_at)).collect();
    let updated: Vec<_> = items.iter().map(|i| to_time(i.value.updated_at)).collect();
    let versions: Vec<i64> = items.iter().map(|i| i.value.updated_at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    let rows = sqlx::query!(
        r#"
        with input as (
            select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                                 $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::int8[], $11::text[])
                with ordinality as x(id, name, slug, image_url, public_metadata, created_at, updated_at,
                                     clerk_version, last_job_id, role_set_key, n)
        ),
        mark as (
            select coalesce(max(listed_at), 0) as listed_at from snapshot_marks
            where scope = 'hotels' and $10::bool
        ),
        -- the newest item per hotel, unless a snapshot newer than it already settled the hotel
        newest as (
            select distinct on (id) input.* from input, mark
            where input.clerk_version >= mark.listed_at
            order by id, clerk_version desc, n
        ),
        written as (
            insert into hotels (id, name, slug, image_url, public_metadata, created_at, updated_at,
                                clerk_version, last_job_id, role_set_key)
            select id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version, last_job_id,
                   role_set_key
            from newest order by id
            on conflict (id) do update set
                name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
                public_metadata = excluded.public_metadata, created_at = excluded.created_at,
                updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
                last_job_id = excluded.last_job_id, role_set_key = excluded.role_set_key
            -- newer wins; tombstones are final
            where hotels.deleted_at is null and hotels.clerk_version < excluded.clerk_version
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
        select x.n as "n!", x.id as "id!",
               case when (won.n_of ->> x.id)::int8 = x.n then 'written'
                    when x.clerk_version < mark.listed_at then 'obsolete'
                    else 'unchanged' end as "outcome!"
        from input x cross join mark cross join won
        order by x.n
        "#,
        &ids as &[&str],
        &names as &[&str],
        &slugs as &[Option<&str>],
        &images as &[Option<&str>],
        &metadata,
        &created,
        &updated,
        &versions,
        &jobs as &[Option<i64>],
        source.honours_snapshots(),
        &role_sets as &[Option<&str>],
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut written: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome == "written")
        .map(|r| r.id.clone())
        .collect();
    written.dedup();
    wake_jobs_waiting_for(conn, &written).await?;
    Ok(rows.iter().map(|r| Outcome::from_code(&r.outcome)).collect())
}

/// Locks the existing hotels among `ids` `FOR KEY SHARE`, in id order: what writers of a
/// hotel's children (memberships, invitations) hold, so a concurrent delete waits for them.
pub(super) async fn lock_for_children(conn: &mut PgConnection, mut ids: Vec<&str>) -> Result<(), sqlx::Error> {
    ids.sort_unstable();
    ids.dedup();
    sqlx::query!(
        "select id from hotels where id = any($1) order by id for key share",
        &ids as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// What a batch of deletes did.
#[derive(Debug, Default)]
pub struct Deleted {
    /// One per item.
    pub outcomes: Vec<Outcome>,
    /// The ids tombstoned.
    pub ids: Vec<String>,
    /// Live memberships ended with them.
    pub memberships_ended: u64,
}

/// Tombstones hotels, ends their live memberships (dated and versioned by each deletion) and
/// tombstones their invitations.
/// [`DeleteKind::Reported`] tombstones whatever the row's version and inserts a tombstone for a
/// hotel never seen; [`DeleteKind::Inferred`] only live rows not written after `at`. Deletions
/// wake the jobs waiting for the hotel (they finish as obsolete).
pub async fn delete(
    conn: &mut PgConnection,
    items: &[Item<Deletion<HotelId>>],
    kind: DeleteKind,
) -> Result<Deleted, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.value.id.as_str()).collect();
    let ats: Vec<i64> = items.iter().map(|i| i.value.at).collect();
    let jobs: Vec<Option<i64>> = items.iter().map(|i| i.job).collect();
    // FOR UPDATE waits for memberships being written under these hotels (they hold KEY SHARE)
    // and makes new ones wait for this delete: the cascade below then sees all of them. It is a
    // statement of its own so that the cascade's snapshot is taken after the wait.
    sqlx::query!(
        "select id from hotels where id = any($1) order by id for update",
        &ids as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    // The earliest deletion of a hotel dates its tombstone.
    let gone = sqlx::query!(
        r#"
        with input as (
            select distinct on (id) id, at, job from unnest($1::text[], $2::int8[], $3::int8[]) as x(id, at, job)
            order by id, at
        ),
        inserted as (
            insert into hotels (id, name, created_at, updated_at, deleted_at, clerk_version, last_job_id)
            select id, '', to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), to_timestamp(at / 1000.0), at, job
            from input where $4::bool
            order by id
            on conflict (id) do update set
                deleted_at = excluded.deleted_at,
                clerk_version = greatest(hotels.clerk_version, excluded.clerk_version),
                last_job_id = excluded.last_job_id
            where hotels.deleted_at is null
            returning id, clerk_version
        ),
        updated as (
            update hotels h set deleted_at = to_timestamp(i.at / 1000.0),
                                clerk_version = greatest(h.clerk_version, i.at), last_job_id = i.job
            from input i
            where not $4::bool and h.id = i.id and h.deleted_at is null and h.clerk_version <= i.at
            returning h.id
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
            where m.hotel_id = g.id and m.deleted_at is null
            "#,
            &gone_ids,
            &gone_at,
            &gone_job as &[Option<i64>],
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
        // Invitations end with their hotel: tombstoned, dated by the deletion (final).
        sqlx::query!(
            r#"
            update invitations i set deleted_at = to_timestamp(g.at / 1000.0), last_job_id = g.job
            from unnest($1::text[], $2::int8[], $3::int8[]) as g(id, at, job)
            where i.hotel_id = g.id and i.deleted_at is null
            "#,
            &gone_ids,
            &gone_at,
            &gone_job as &[Option<i64>],
        )
        .execute(&mut *conn)
        .await?;
        // Memberships waiting for these hotels are obsolete now: let them finish promptly.
        wake_jobs_waiting_for(conn, &gone_ids).await?;
    }
    // Per item: the first item of a tombstoned id wrote it.
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
