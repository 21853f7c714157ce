//! The difference, computed by Postgres: the staged objects against the rows, decided as the
//! rule book decides (a row is written when it is missing, or live and older than Clerk's
//! object; memberships: or a tombstone of a *different*, older membership, i.e. the person was
//! invited again). The plan tables hold only what changes, with the staged object, keyed for
//! the apply's keyset chunks (each chunk is one index range of one table: no join per chunk).

use sqlx::PgConnection;

use super::confirm::{GONE_HOTELS, GONE_MEMBERSHIPS, GONE_USERS};
use super::report::{Ids, ResyncReport};
use super::staging::{HOTELS, MEMBERSHIPS, USERS};

pub(crate) const PLAN_HOTELS: &str = "resync_plan_hotels";
pub(crate) const PLAN_USERS: &str = "resync_plan_users";
/// `kind`: `create`, `update`, `obsolete` (hotel or user is a tombstone) or `without_hotel`
/// (the hotel is neither a row nor listed); `stub`: the user is neither a row nor listed.
pub(crate) const PLAN_MEMBERSHIPS: &str = "resync_plan_memberships";

/// Creates and fills the plan tables; counts the memberships left alone into the report.
pub(crate) async fn plan(conn: &mut PgConnection, report: &mut ResyncReport) -> Result<(), sqlx::Error> {
    for (plan, staged, rows) in [(PLAN_HOTELS, HOTELS.name, "hotels"), (PLAN_USERS, USERS.name, "users")] {
        sqlx::query(&format!(
            "create temp table {plan} (id text primary key, created bool not null, body text not null)"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "insert into {plan} select s.id, t.id is null, s.body from {staged} s left join {rows} t on t.id = s.id \
             where s.body is not null and (t.id is null or (t.deleted_at is null and t.clerk_version < s.version))"
        ))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(&format!(
        "create temp table {PLAN_MEMBERSHIPS} (hotel_id text, user_id text, kind text not null, stub bool not null, \
         body text, primary key (hotel_id, user_id))"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        r#"
        insert into {PLAN_MEMBERSHIPS}
        select s.hotel_id, s.user_id, k.kind, u.id is null and su.id is null,
               case when k.kind in ('create', 'update') then s.body end
        from {members} s
        left join hotels h on h.id = s.hotel_id
        left join users u on u.id = s.user_id
        left join memberships m on m.hotel_id = s.hotel_id and m.user_id = s.user_id
        left join {hotels} sh on sh.id = s.hotel_id and sh.body is not null
        left join {users} su on su.id = s.user_id and su.body is not null
        cross join lateral (select case
            when h.deleted_at is not null then 'obsolete'
            when h.id is null and sh.id is null then 'without_hotel'
            when u.deleted_at is not null then 'obsolete'
            when m.hotel_id is null then 'create'
            when m.clerk_version >= s.version then null
            when m.deleted_at is null then 'update'
            when m.clerk_membership_id <> s.clerk_id then 'create'
            end as kind) k
        where s.body is not null and s.user_id <> '' and k.kind is not null
        "#,
        members = MEMBERSHIPS.name,
        hotels = HOTELS.name,
        users = USERS.name,
    ))
    .execute(&mut *conn)
    .await?;
    for t in [PLAN_HOTELS, PLAN_USERS, PLAN_MEMBERSHIPS] {
        sqlx::query(&format!("analyze {t}")).execute(&mut *conn).await?;
    }
    let (without_hotel, obsolete): (i64, i64) = sqlx::query_as(&format!(
        "select count(*) filter (where kind = 'without_hotel'), count(*) filter (where kind = 'obsolete') \
         from {PLAN_MEMBERSHIPS}"
    ))
    .fetch_one(&mut *conn)
    .await?;
    report.skipped.memberships_without_hotel += without_hotel as u64;
    report.skipped.memberships_obsolete += obsolete as u64;
    Ok(())
}

/// The hotels a run would delete, and the live ones.
pub(crate) async fn hotel_deletes(conn: &mut PgConnection) -> Result<(u64, u64), sqlx::Error> {
    let (gone, live): (i64, i64) = sqlx::query_as(&format!(
        "select (select count(*) from {GONE_HOTELS}), (select count(*) from hotels where deleted_at is null)"
    ))
    .fetch_one(conn)
    .await?;
    Ok((gone as u64, live as u64))
}

/// Fills the report with the planned (not applied) changes: exact counts, and the first
/// [`Ids::SAMPLE`] ids of each.
pub(crate) async fn describe(conn: &mut PgConnection, report: &mut ResyncReport) -> Result<(), sqlx::Error> {
    let changed = |from: &str, key: &str, filter: &str| format!("select {key} from {from} where {filter}");
    let membership_key = "hotel_id || '/' || user_id";
    let r = &mut *report;
    fill(conn, &changed(PLAN_HOTELS, "id", "created"), &mut r.hotels.created).await?;
    fill(conn, &changed(PLAN_HOTELS, "id", "not created"), &mut r.hotels.updated).await?;
    fill(conn, &changed(GONE_HOTELS, "id", "true"), &mut r.hotels.deleted).await?;
    fill(conn, &changed(PLAN_USERS, "id", "created"), &mut r.users.created).await?;
    // The stubs follow the listed users.
    let stubs = changed(
        PLAN_MEMBERSHIPS,
        "distinct user_id",
        "stub and kind in ('create', 'update')",
    );
    fill(conn, &stubs, &mut r.users.created).await?;
    fill(conn, &changed(PLAN_USERS, "id", "not created"), &mut r.users.updated).await?;
    fill(conn, &changed(GONE_USERS, "id", "true"), &mut r.users.deleted).await?;
    let created = changed(PLAN_MEMBERSHIPS, membership_key, "kind = 'create'");
    fill(conn, &created, &mut r.memberships.created).await?;
    let updated = changed(PLAN_MEMBERSHIPS, membership_key, "kind = 'update'");
    fill(conn, &updated, &mut r.memberships.updated).await?;
    fill(
        conn,
        &changed(GONE_MEMBERSHIPS, membership_key, "true"),
        &mut r.memberships.deleted,
    )
    .await?;
    let ended: i64 = sqlx::query_scalar(&format!(
        "select count(*) from memberships m where m.deleted_at is null \
         and (exists (select 1 from {GONE_HOTELS} g where g.id = m.hotel_id) \
              or exists (select 1 from {GONE_USERS} g where g.id = m.user_id))"
    ))
    .fetch_one(conn)
    .await?;
    report.memberships_ended_by_deletes = ended as u64;
    Ok(())
}

/// Adds the ids `select` returns to `ids`: all counted, the smallest kept.
pub(super) async fn fill(conn: &mut PgConnection, select: &str, ids: &mut Ids) -> Result<(), sqlx::Error> {
    let count: i64 = sqlx::query_scalar(&format!("select count(*) from ({select}) x"))
        .fetch_one(&mut *conn)
        .await?;
    let sample: Vec<String> = sqlx::query_scalar(&format!("{select} order by 1 limit {}", Ids::SAMPLE))
        .fetch_all(&mut *conn)
        .await?;
    let named = sample.len() as u64;
    sample.into_iter().for_each(|id| ids.push(id));
    ids.add_count(count as u64 - named);
    Ok(())
}
