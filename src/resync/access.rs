//! Roles, permissions and invitations in the resync: the same rails as the other kinds. Their
//! listings stage like the others ([`super::staging`]); here are their delete confirmations
//! (each candidate asked for by id: Clerk has no id filter on these lists), their plan (decided
//! as the rule book decides), its description (dry run, refusal) and its apply, through
//! [`crate::reconcile`]: permissions, then the confirmed deletes of permissions and roles (a
//! deleted role frees its key for a listed one), then roles, then invitations and their
//! confirmed deletes.

use futures::future::FutureExt;
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::{PgConnection, PgPool};

use super::apply::{gone_chunk, in_tx, plan_chunk, push_change, retry_transient};
use super::confirm::{candidates, round};
use super::plan::fill;
use super::report::{Changes, ResyncReport, Skipped};
use super::staging::{decode, encode, invitation_version, Stage, Staged, HOTELS, INVITATIONS, PERMISSIONS, ROLES};
use crate::clerk::api::{ClerkApiError, ClerkClient, Page};
use crate::clerk::events::Millis;
use crate::clerk::{ClerkEvent, HotelId, Invitation, InvitationId, PermissionId, RoleId};
use crate::reconcile::{self, invitations, permissions, roles, Item, Outcome, Source};

pub(crate) const GONE_ROLES: &str = "resync_gone_roles";
pub(crate) const GONE_PERMISSIONS: &str = "resync_gone_permissions";
pub(crate) const GONE_INVITATIONS: &str = "resync_gone_invitations";
const PLAN_ROLES: &str = "resync_plan_roles";
const PLAN_PERMISSIONS: &str = "resync_plan_permissions";
const PLAN_INVITATIONS: &str = "resync_plan_invitations";

/// Creates the (empty) tables of candidates and confirmed deletes.
pub(crate) async fn create_tables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for what in ["roles", "permissions", "invitations"] {
        for t in ["candidates", "gone"] {
            sqlx::query(&format!("create temp table resync_{t}_{what} (id text primary key)"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Fills the `gone` tables with the live roles, permissions and invitations a complete listing
/// lacked, not written after the listing began, and that Clerk answers 404 for by id; what Clerk
/// still has joins the staged objects. Counts what is kept into `skipped`. Ok(Some) when a
/// request failed (the run must then delete nothing).
pub(crate) async fn confirm_deletes(
    stage: &mut Stage,
    client: &ClerkClient,
    started_ms: Millis,
    concurrency: usize,
    skipped: &mut Skipped,
) -> Result<Option<ClerkApiError>, sqlx::Error> {
    if !stage.keyless(PERMISSIONS) {
        skipped.deletes_newer_than_listing +=
            candidates(stage.conn(), "permissions", "permission", PERMISSIONS.name, started_ms).await?;
        let c = client.clone();
        let fetch = move |id: String, _: String| {
            let c = c.clone();
            async move {
                match PermissionId::parse(&id) {
                    Ok(pid) => c.get_permission(&pid).await.map(Found::from),
                    Err(_) => Ok(Found::Unaskable),
                }
            }
            .boxed()
        };
        if let Some(e) = confirm_kind(stage, "permissions", "''", concurrency, skipped, fetch).await? {
            return Ok(Some(e));
        }
    }
    if !stage.keyless(ROLES) {
        skipped.deletes_newer_than_listing += candidates(stage.conn(), "roles", "role", ROLES.name, started_ms).await?;
        let c = client.clone();
        let fetch = move |id: String, _: String| {
            let c = c.clone();
            async move {
                match RoleId::parse(&id) {
                    Ok(rid) => c.get_role(&rid).await.map(Found::from),
                    Err(_) => Ok(Found::Unaskable),
                }
            }
            .boxed()
        };
        if let Some(e) = confirm_kind(stage, "roles", "''", concurrency, skipped, fetch).await? {
            return Ok(Some(e));
        }
    }
    if !stage.keyless(INVITATIONS) {
        skipped.deletes_newer_than_listing +=
            candidates(stage.conn(), "invitations", "invitation", INVITATIONS.name, started_ms).await?;
        let c = client.clone();
        let fetch = move |id: String, hotel: String| {
            let c = c.clone();
            async move {
                match (HotelId::parse(&hotel), InvitationId::parse(&id)) {
                    (Ok(h), Ok(i)) => c.get_invitation(&h, &i).await.map(Found::from),
                    _ => Ok(Found::Unaskable),
                }
            }
            .boxed()
        };
        let hotel = "(select hotel_id from invitations i where i.id = c.id)";
        if let Some(e) = confirm_kind(stage, "invitations", hotel, concurrency, skipped, fetch).await? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// What Clerk answered for one id.
pub(super) enum Found<T> {
    Present(T),
    Gone,
    /// An id Clerk could never have issued: kept.
    Unaskable,
}

impl<T> From<Option<T>> for Found<T> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Found::Gone, Found::Present)
    }
}

/// Asks Clerk for each candidate of `what` by id, a round at a time (`parent`: the SQL giving
/// the id's parent, passed to `fetch` with it).
pub(super) async fn confirm_kind<T, F>(
    stage: &mut Stage,
    what: &str,
    parent: &str,
    concurrency: usize,
    skipped: &mut Skipped,
    fetch: F,
) -> Result<Option<ClerkApiError>, sqlx::Error>
where
    T: Staged + Send + 'static,
    F: Fn(String, String) -> futures::future::BoxFuture<'static, Result<Found<T>, ClerkApiError>>,
{
    let mut after = String::new();
    loop {
        let ids: Vec<(String, String)> = sqlx::query_as(&format!(
            "select c.id, {parent} from resync_candidates_{what} c where c.id > $1 order by c.id limit $2"
        ))
        .bind(&after)
        .bind(round(concurrency))
        .fetch_all(stage.conn())
        .await?;
        let Some(last) = ids.last() else { return Ok(None) };
        after = last.0.clone();
        let answers: Vec<(String, Found<T>)> = match stream::iter(ids)
            .map(|(id, p)| {
                let answer = fetch(id.clone(), p);
                async move { answer.await.map(|a| (id, a)) }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await
        {
            Ok(a) => a,
            Err(e) => return Ok(Some(e)),
        };
        let mut gone: Vec<String> = Vec::new();
        let mut present: Vec<T> = Vec::new();
        for (id, answer) in answers {
            match answer {
                Found::Present(obj) => present.push(obj),
                Found::Gone => gone.push(id),
                Found::Unaskable => skipped.deletes_not_confirmed += 1,
            }
        }
        skipped.deletes_not_confirmed += present.len() as u64;
        let len = present.len();
        let page = Page {
            items: present,
            invalid: Vec::new(),
            total_count: None,
            len,
            last_id: None,
        };
        stage.merge(&encode(&page)).await?;
        sqlx::query(&format!(
            "insert into resync_gone_{what} select unnest($1::text[]) on conflict do nothing"
        ))
        .bind(&gone)
        .execute(stage.conn())
        .await?;
    }
}

/// Empties the tables of confirmed deletes (an incomplete run deletes nothing).
pub(crate) async fn forget_deletes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for gone in [GONE_ROLES, GONE_PERMISSIONS, GONE_INVITATIONS] {
        sqlx::query(&format!("truncate {gone}")).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Creates and fills the plan tables: a staged role or permission is written when its row is
/// missing, or live and older; an invitation when its row is missing, or live and outranked
/// (settled above pending, then newer), and its hotel is live or listed.
pub(crate) async fn plan(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for (plan, staged, rows) in [
        (PLAN_ROLES, ROLES.name, "roles"),
        (PLAN_PERMISSIONS, PERMISSIONS.name, "permissions"),
    ] {
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
        "create temp table {PLAN_INVITATIONS} (id text primary key, created bool not null, body text not null)"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        r#"
        insert into {PLAN_INVITATIONS}
        select s.id, t.id is null, s.body
        from {staged} s
        cross join lateral (select s.body::jsonb ->> 'organization_id' as hotel_id,
                                   s.body::jsonb ->> 'status' <> 'pending' as settled) b
        left join invitations t on t.id = s.id
        left join hotels h on h.id = b.hotel_id
        where s.body is not null
          and (h.deleted_at is null and (h.id is not null
               or exists (select 1 from {hotels} sh where sh.id = b.hotel_id and sh.body is not null)))
          and (t.id is null
               or (t.deleted_at is null and (b.settled, s.version) > (t.status <> 'pending', t.clerk_version)))
        "#,
        staged = INVITATIONS.name,
        hotels = HOTELS.name,
    ))
    .execute(&mut *conn)
    .await?;
    for t in [PLAN_ROLES, PLAN_PERMISSIONS, PLAN_INVITATIONS] {
        sqlx::query(&format!("analyze {t}")).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Fills the report with the planned (not applied) changes of the three kinds.
pub(crate) async fn describe(conn: &mut PgConnection, report: &mut ResyncReport) -> Result<(), sqlx::Error> {
    for (plan, gone, changes) in [
        (PLAN_ROLES, GONE_ROLES, &mut report.roles),
        (PLAN_PERMISSIONS, GONE_PERMISSIONS, &mut report.permissions),
        (PLAN_INVITATIONS, GONE_INVITATIONS, &mut report.invitations),
    ] {
        fill(
            conn,
            &format!("select id from {plan} where created"),
            &mut changes.created,
        )
        .await?;
        fill(
            conn,
            &format!("select id from {plan} where not created"),
            &mut changes.updated,
        )
        .await?;
        fill(conn, &format!("select id from {gone}"), &mut changes.deleted).await?;
    }
    Ok(())
}

/// Writes a plan of roles or permissions in chunks, each a batch of events through
/// [`reconcile::apply_events`] (which takes the locks in the global order).
async fn write_events(
    pool: &PgPool,
    stage: &mut PgConnection,
    plan: &str,
    chunk: i64,
    changes: &mut Changes,
    event: fn(&str) -> Result<ClerkEvent, sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut after = String::new();
    loop {
        let rows = plan_chunk(stage, plan, &after, chunk).await?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = last.0.clone();
        let events: Vec<ClerkEvent> = rows.iter().map(|(_, _, body)| event(body)).collect::<Result<_, _>>()?;
        let items: Vec<Item<&ClerkEvent>> = events.iter().map(|e| Item { job: None, value: e }).collect();
        let outcomes = in_tx!(pool, |tx| reconcile::apply_events(tx, Source::Resync, &items))?;
        for ((id, created, _), outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Written => push_change(changes, *created, id.clone()),
                Outcome::RoleKeyTaken(_) => {
                    tracing::info!(role = %id, "a listed role's key is held by another live role; the next run settles it")
                }
                _ => {}
            }
        }
    }
}

/// An inferred delete of the rule book: (transaction, ids, listing start) → the ids tombstoned.
pub(super) type InferredDelete = for<'c> fn(
    &'c mut PgConnection,
    &'c [&'c str],
    i64,
) -> futures::future::BoxFuture<'c, Result<Vec<String>, sqlx::Error>>;

/// Writes confirmed deletes of `gone` in chunks with `delete` (an inferred delete of the rule
/// book), dated `started_ms`.
pub(super) async fn write_deletes(
    pool: &PgPool,
    stage: &mut PgConnection,
    gone: &str,
    chunk: i64,
    started_ms: Millis,
    changes: &mut Changes,
    delete: InferredDelete,
) -> Result<(), sqlx::Error> {
    let mut after = String::new();
    loop {
        let ids = gone_chunk(stage, gone, &after, chunk).await?;
        let Some(last) = ids.last() else { return Ok(()) };
        after = last.clone();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut done = in_tx!(pool, |tx| delete(tx, &refs, started_ms))?;
        done.sort();
        done.into_iter().for_each(|id| changes.deleted.push(id));
    }
}

/// Writes the plan and the confirmed deletes of the three kinds (after the hotels: an
/// invitation needs its hotel).
pub(crate) async fn apply(
    pool: &PgPool,
    stage: &mut PgConnection,
    started_ms: Millis,
    chunk: i64,
    report: &mut ResyncReport,
) -> Result<(), sqlx::Error> {
    write_events(pool, stage, PLAN_PERMISSIONS, chunk, &mut report.permissions, |b| {
        Ok(ClerkEvent::PermissionUpserted(decode(b)?))
    })
    .await?;
    write_deletes(
        pool,
        stage,
        GONE_PERMISSIONS,
        chunk,
        started_ms,
        &mut report.permissions,
        |c, ids, at| permissions::delete_inferred(c, ids, at).boxed(),
    )
    .await?;
    write_deletes(
        pool,
        stage,
        GONE_ROLES,
        chunk,
        started_ms,
        &mut report.roles,
        |c, ids, at| roles::delete_inferred(c, ids, at).boxed(),
    )
    .await?;
    write_events(pool, stage, PLAN_ROLES, chunk, &mut report.roles, |b| {
        Ok(ClerkEvent::RoleUpserted(decode(b)?))
    })
    .await?;

    let mut after = String::new();
    loop {
        let rows = plan_chunk(stage, PLAN_INVITATIONS, &after, chunk).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let listed: Vec<Invitation> = rows.iter().map(|(_, _, b)| decode(b)).collect::<Result<_, _>>()?;
        let items: Vec<Item<invitations::InvitationWrite<'_>>> = listed
            .iter()
            .map(|i| Item {
                job: None,
                value: invitations::InvitationWrite {
                    invitation: i,
                    version: invitation_version(i),
                },
            })
            .collect();
        let outcomes = in_tx!(pool, |tx| invitations::upsert(tx, &items))?;
        for ((id, created, _), outcome) in rows.iter().zip(outcomes) {
            if outcome == Outcome::Written {
                push_change(&mut report.invitations, *created, id.clone());
            }
        }
    }
    write_deletes(
        pool,
        stage,
        GONE_INVITATIONS,
        chunk,
        started_ms,
        &mut report.invitations,
        |c, ids, at| invitations::delete_inferred(c, ids, at).boxed(),
    )
    .await
}
