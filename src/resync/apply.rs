//! Writing the difference, through the rule book ([`crate::reconcile`]) in chunks of
//! `chunk_size` read from the staging area, one transaction each: parents first (hotels,
//! users), then memberships (which bring their user stubs), then the deletes, dated when the
//! listing began. The report counts what the rule book actually wrote.

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::{PgConnection, PgPool};

use super::confirm::{GONE_HOTELS, GONE_MEMBERSHIPS, GONE_USERS};
use super::plan::{PLAN_HOTELS, PLAN_MEMBERSHIPS, PLAN_USERS};
use super::report::{Changes, ResyncReport};
use super::staging::decode;
use super::ResyncOptions;
use crate::clerk::events::Millis;
use crate::clerk::{HotelId, Membership, Organization, User, UserId};
use crate::reconcile::{
    self, hotels, memberships, snapshot, users, DeleteKind, Deletion, Item, MembershipWrite, Outcome, Source,
};

/// Runs `f` (one transaction) again when Postgres aborted it for a deadlock or a serialization
/// failure: a chunk can cross a worker's batch that locks the same rows in another order, and
/// Postgres then aborts one of the two. Other errors return at once.
pub(crate) async fn retry_transient<'a, T, F>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> BoxFuture<'a, Result<T, sqlx::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("40P01" | "40001")) && attempt < 5 => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "resync chunk aborted by Postgres; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// Records the snapshot marks of a complete run (before any write: the jobs its writes wake
/// must already find them). `listed_at` is T by Clerk's clock; None when Clerk's clock could not
/// be read (then no mark is recorded, and the run is no snapshot).
pub(crate) async fn record_marks(pool: &PgPool, listed_at: Option<Millis>) -> Result<(), sqlx::Error> {
    let Some(t) = listed_at else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    for scope in [
        snapshot::Scope::Hotels,
        snapshot::Scope::Users,
        snapshot::Scope::Memberships,
    ] {
        snapshot::record(&mut tx, scope, t).await?;
    }
    tx.commit().await
}

/// Runs `$body` (with `$tx` bound to the connection) in a transaction of the resync, the source
/// named for the change feed, retried when Postgres aborts it for a deadlock.
macro_rules! in_tx {
    ($pool:expr, |$tx:ident| $body:expr) => {
        retry_transient(|| {
            async {
                let mut tx = $pool.begin().await?;
                reconcile::begin(&mut tx, Source::Resync).await?;
                let $tx: &mut sqlx::PgConnection = &mut tx;
                let out = $body.await?;
                tx.commit().await?;
                Ok(out)
            }
            .boxed()
        })
        .await
    };
}
pub(super) use in_tx;

/// Writes the plan and the confirmed deletes, reading the staging area in keyset chunks of
/// `chunk_size` (on `stage`) and writing each chunk in a transaction of its own (on `pool`).
pub(crate) async fn apply(
    pool: &PgPool,
    stage: &mut PgConnection,
    started_ms: Millis,
    options: &ResyncOptions,
    report: &mut ResyncReport,
) -> Result<(), sqlx::Error> {
    let progress = options.progress.as_deref();
    let stage_name = |s: &str| {
        if let Some(p) = progress {
            p.stage(s)
        }
    };
    let chunk = options.chunk_size.max(1) as i64;

    stage_name("writing hotels");
    let mut after = String::new();
    loop {
        let rows = plan_chunk(stage, PLAN_HOTELS, &after, chunk).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let orgs: Vec<(Organization, bool)> = rows
            .iter()
            .map(|(_, created, body)| Ok((decode(body)?, *created)))
            .collect::<Result<_, sqlx::Error>>()?;
        let items: Vec<Item<&Organization>> = orgs.iter().map(|(o, _)| Item { job: None, value: o }).collect();
        let outcomes = in_tx!(pool, |tx| hotels::upsert(tx, Source::Resync, &items))?;
        for ((org, created), outcome) in orgs.iter().zip(outcomes) {
            if outcome == Outcome::Written {
                push_change(&mut report.hotels, *created, org.id.to_string());
            }
        }
    }

    stage_name("writing users");
    let mut after = String::new();
    loop {
        let rows = plan_chunk(stage, PLAN_USERS, &after, chunk).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let listed: Vec<(User, bool)> = rows
            .iter()
            .map(|(_, created, body)| Ok((decode(body)?, *created)))
            .collect::<Result<_, sqlx::Error>>()?;
        let items: Vec<Item<&User>> = listed.iter().map(|(u, _)| Item { job: None, value: u }).collect();
        let outcomes = in_tx!(pool, |tx| users::upsert(tx, Source::Resync, &items))?;
        for ((user, created), outcome) in listed.iter().zip(outcomes) {
            if outcome == Outcome::Written {
                push_change(&mut report.users, *created, user.id.to_string());
            }
        }
    }

    stage_name("writing memberships");
    let (mut after_hotel, mut after_user) = (String::new(), String::new());
    loop {
        let rows: Vec<(String, String, bool, String)> = sqlx::query_as(&format!(
            "select hotel_id, user_id, kind = 'create', body from {PLAN_MEMBERSHIPS} \
             where kind in ('create', 'update') and (hotel_id, user_id) > ($1, $2) \
             order by hotel_id, user_id limit $3"
        ))
        .bind(&after_hotel)
        .bind(&after_user)
        .bind(chunk)
        .fetch_all(&mut *stage)
        .await?;
        let Some(last) = rows.last() else { break };
        (after_hotel, after_user) = (last.0.clone(), last.1.clone());
        let members: Vec<(Membership, bool)> = rows
            .iter()
            .map(|(_, _, created, body)| Ok((decode(body)?, *created)))
            .collect::<Result<_, sqlx::Error>>()?;
        let items: Vec<Item<MembershipWrite<'_>>> = members
            .iter()
            .map(|(m, _)| Item {
                job: None,
                value: MembershipWrite {
                    membership: m,
                    removed_at: None,
                },
            })
            .collect();
        let applied = in_tx!(pool, |tx| memberships::upsert_reporting_stubs(
            tx,
            Source::Resync,
            &items
        ))?;
        let mut stubs = applied.stubs;
        stubs.sort();
        stubs.into_iter().for_each(|id| report.users.created.push(id));
        for ((m, created), outcome) in members.iter().zip(applied.outcomes) {
            match outcome {
                Outcome::Written => {
                    let id = format!("{}/{}", m.organization.id, m.public_user_data.user_id);
                    push_change(&mut report.memberships, *created, id);
                }
                Outcome::Obsolete => report.skipped.memberships_obsolete += 1,
                Outcome::WaitingForHotel(_) => report.skipped.memberships_without_hotel += 1,
                Outcome::Unchanged | Outcome::UserBusy(_) | Outcome::RoleKeyTaken(_) => {}
            }
        }
    }

    // Deletes, dated when the listing began; rows written since are kept.
    stage_name("writing deletes");
    let mut after = String::new();
    loop {
        let ids = gone_chunk(stage, GONE_HOTELS, &after, chunk).await?;
        let Some(last) = ids.last() else { break };
        after = last.clone();
        let items: Vec<Item<Deletion<HotelId>>> = ids
            .iter()
            .filter_map(|id| HotelId::parse(id).ok())
            .map(|id| Item {
                job: None,
                value: Deletion { id, at: started_ms },
            })
            .collect();
        let mut gone = in_tx!(pool, |tx| hotels::delete(tx, &items, DeleteKind::Inferred))?;
        gone.ids.sort();
        gone.ids.into_iter().for_each(|id| report.hotels.deleted.push(id));
        report.memberships_ended_by_deletes += gone.memberships_ended;
    }
    let mut after = String::new();
    loop {
        let ids = gone_chunk(stage, GONE_USERS, &after, chunk).await?;
        let Some(last) = ids.last() else { break };
        after = last.clone();
        let items: Vec<Item<Deletion<UserId>>> = ids
            .iter()
            .filter_map(|id| UserId::parse(id).ok())
            .map(|id| Item {
                job: None,
                value: Deletion { id, at: started_ms },
            })
            .collect();
        let mut gone = in_tx!(pool, |tx| users::delete(tx, &items, DeleteKind::Inferred))?;
        gone.ids.sort();
        gone.ids.into_iter().for_each(|id| report.users.deleted.push(id));
        report.memberships_ended_by_deletes += gone.memberships_ended;
    }
    let (mut after_hotel, mut after_user) = (String::new(), String::new());
    loop {
        let keys: Vec<(String, String, String)> = sqlx::query_as(&format!(
            "select hotel_id, user_id, clerk_membership_id from {GONE_MEMBERSHIPS} \
             where (hotel_id, user_id) > ($1, $2) order by hotel_id, user_id limit $3"
        ))
        .bind(&after_hotel)
        .bind(&after_user)
        .bind(chunk)
        .fetch_all(&mut *stage)
        .await?;
        let Some(last) = keys.last() else { break };
        (after_hotel, after_user) = (last.0.clone(), last.1.clone());
        let mut gone = in_tx!(pool, |tx| memberships::end(tx, &keys, started_ms))?;
        gone.sort();
        gone.into_iter().for_each(|id| report.memberships.deleted.push(id));
    }
    Ok(())
}

/// The next chunk of a plan keyed by `id` (hotels, users, roles, permissions, invitations):
/// (id, created, staged object), after `after`.
pub(super) async fn plan_chunk(
    stage: &mut PgConnection,
    plan: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, bool, String)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select id, created, body from {plan} where id > $1 order by id limit $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(stage)
    .await
}

/// The next chunk of confirmed deletes of a kind keyed by `id`, after `after`.
pub(super) async fn gone_chunk(
    stage: &mut PgConnection,
    gone: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!("select id from {gone} where id > $1 order by id limit $2"))
        .bind(after)
        .bind(limit)
        .fetch_all(stage)
        .await
}

pub(super) fn push_change(changes: &mut Changes, created: bool, id: String) {
    if created {
        changes.created.push(id)
    } else {
        changes.updated.push(id)
    }
}
