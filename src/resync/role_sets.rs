//! Role sets in the resync, on the same rails as every kind: staged like the others
//! ([`super::staging::ROLE_SETS`]), deletes only after complete listings and only for what Clerk
//! answers 404 for by id (`GET /v1/role_sets/{id}`; rows written after the listing began are
//! kept), nothing written by a refused or dry run (the plan is described instead), and the
//! writes through the rule book ([`crate::reconcile::role_sets`]): confirmed deletes first (a
//! deleted role set frees its key for a listed one), then the plan. Role sets have no webhooks,
//! so the resync (with the self-heal and the write path) is how they arrive.
//!
//! The report also counts the members whose role their hotel's role set does not list.

use futures::future::FutureExt;
use sqlx::{PgConnection, PgPool};

use super::access::{confirm_kind, write_deletes, Found};
use super::apply::{in_tx, plan_chunk, push_change, retry_transient};
use super::confirm::candidates;
use super::plan::fill;
use super::report::{ResyncReport, Skipped};
use super::staging::{decode, Stage, ROLE_SETS};
use crate::clerk::api::{ClerkApiError, ClerkClient};
use crate::clerk::events::Millis;
use crate::clerk::{RoleSet, RoleSetId};
use crate::reconcile::{self, role_sets, Item, Outcome, Source};

const GONE: &str = "resync_gone_role_sets";
const PLAN: &str = "resync_plan_role_sets";

/// Creates the (empty) tables of candidates and confirmed deletes.
pub(crate) async fn create_tables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for t in ["candidates", "gone"] {
        sqlx::query(&format!("create temp table resync_{t}_role_sets (id text primary key)"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Fills the `gone` table with the live role sets a complete listing lacked, not written after
/// the listing began, that Clerk answers 404 for by id; what Clerk still has joins the staged
/// role sets. Ok(Some) when a request failed (the run must then delete nothing).
pub(crate) async fn confirm_deletes(
    stage: &mut Stage,
    client: &ClerkClient,
    started_ms: Millis,
    concurrency: usize,
    skipped: &mut Skipped,
) -> Result<Option<ClerkApiError>, sqlx::Error> {
    if stage.keyless(ROLE_SETS) {
        return Ok(None);
    }
    skipped.deletes_newer_than_listing +=
        candidates(stage.conn(), "role_sets", "role_set", ROLE_SETS.name, started_ms).await?;
    let c = client.clone();
    let fetch = move |id: String, _: String| {
        let c = c.clone();
        async move {
            match RoleSetId::parse(&id) {
                // Asked by id: Clerk's path takes a key or an id, and an id is never re-keyed.
                Ok(rid) => c.get_role_set(rid.as_str()).await.map(|found| match found {
                    // The same path also matches keys: an answer that is another role set says
                    // nothing about this one (kept: tombstones are final).
                    Some(set) if set.id != rid => Found::Unaskable,
                    other => Found::from(other),
                }),
                Err(_) => Ok(Found::Unaskable),
            }
        }
        .boxed()
    };
    confirm_kind(stage, "role_sets", "''", concurrency, skipped, fetch).await
}

/// Empties the table of confirmed deletes (an incomplete run deletes nothing).
pub(crate) async fn forget_deletes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("truncate {GONE}")).execute(conn).await?;
    Ok(())
}

/// Creates and fills the plan table: a staged role set is written when its row is missing, or
/// live and older.
pub(crate) async fn plan(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "create temp table {PLAN} (id text primary key, created bool not null, body text not null)"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "insert into {PLAN} select s.id, t.id is null, s.body from {staged} s left join role_sets t on t.id = s.id \
         where s.body is not null and (t.id is null or (t.deleted_at is null and t.clerk_version < s.version))",
        staged = ROLE_SETS.name
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fills the report with the planned (not applied) changes, and the members outside their
/// hotel's role set as the rows stand.
pub(crate) async fn describe(conn: &mut PgConnection, report: &mut ResyncReport) -> Result<(), sqlx::Error> {
    let changes = &mut report.role_sets;
    fill(conn, &format!("select id from {PLAN} where created"), &mut changes.created).await?;
    fill(conn, &format!("select id from {PLAN} where not created"), &mut changes.updated).await?;
    fill(conn, &format!("select id from {GONE}"), &mut changes.deleted).await?;
    report.members_outside_role_set = members_outside_role_set(conn).await?;
    Ok(())
}

/// Writes the confirmed deletes, then the plan (in chunks, one transaction each), then counts
/// the members outside their hotel's role set.
pub(crate) async fn apply(
    pool: &PgPool,
    stage: &mut PgConnection,
    started_ms: Millis,
    chunk: i64,
    report: &mut ResyncReport,
) -> Result<(), sqlx::Error> {
    write_deletes(
        pool,
        stage,
        GONE,
        chunk,
        started_ms,
        &mut report.role_sets,
        |c, ids, at| role_sets::delete_inferred(c, ids, at).boxed(),
    )
    .await?;
    let mut after = String::new();
    loop {
        let rows = plan_chunk(stage, PLAN, &after, chunk).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let listed: Vec<RoleSet> = rows.iter().map(|(_, _, b)| decode(b)).collect::<Result<_, _>>()?;
        let items: Vec<Item<&RoleSet>> = listed.iter().map(|s| Item { job: None, value: s }).collect();
        let written = in_tx!(pool, |tx| role_sets::upsert(tx, &items))?;
        for ((id, created, _), outcome) in rows.iter().zip(&written.outcomes) {
            if *outcome == Outcome::Written {
                push_change(&mut report.role_sets, *created, id.clone());
            }
        }
        for id in &written.key_taken {
            tracing::info!(role_set = %id, "a listed role set's key is held by another live role set; the next run settles it");
        }
        report.skipped.role_sets_key_taken += written.key_taken.len() as u64;
    }
    let mut conn = pool.acquire().await?;
    report.members_outside_role_set = members_outside_role_set(&mut conn).await?;
    Ok(())
}

/// How many live members of live hotels hold a role their hotel's (live, mirrored) role set does
/// not list: memberships Clerk keeps, but whose role it would refuse to give now.
pub(crate) async fn members_outside_role_set(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let n = sqlx::query_scalar!(
        r#"
        select count(*) as "n!" from memberships m
        join hotels h on h.id = m.hotel_id and h.deleted_at is null
        join role_sets rs on rs.key = h.role_set_key and rs.deleted_at is null
        where m.deleted_at is null
          and not exists (select 1 from role_set_roles x where x.role_set_id = rs.id and x.role_key = m.role)
        "#
    )
    .fetch_one(conn)
    .await?;
    Ok(n as u64)
}
