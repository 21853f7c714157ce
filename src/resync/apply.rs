//! Writing the difference, through the rule book ([`crate::reconcile`]) in chunks of
//! `chunk_size`, one transaction each: parents first (hotels, users), then memberships (which
//! bring their user stubs), then the deletes, dated when the listing began.

use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::PgPool;

use super::plan::{push_change, Change, Deletes, Plan, Snapshot};
use super::report::ResyncReport;
use super::ResyncOptions;
use crate::clerk::events::Millis;
use crate::clerk::{HotelId, Organization, User, UserId};
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

pub(crate) async fn apply(
    pool: &PgPool,
    snapshot_rows: &Snapshot,
    plan: &Plan<'_>,
    deletes: &Deletes,
    started_ms: Millis,
    options: &ResyncOptions,
    report: &mut ResyncReport,
) -> Result<(), sqlx::Error> {
    let progress = options.progress.as_deref();
    let stage = |s: &str| {
        if let Some(p) = progress {
            p.stage(s)
        }
    };
    let chunk = options.chunk_size.max(1);

    let mut orgs: Vec<&Organization> = plan.hotels.iter().map(|(o, _)| *o).collect();
    orgs.sort_by(|a, b| a.id.cmp(&b.id));
    if !orgs.is_empty() {
        stage("writing hotels");
    }
    for rows in orgs.chunks(chunk) {
        let items: Vec<Item<&Organization>> = rows.iter().map(|o| Item { job: None, value: *o }).collect();
        let outcomes = in_tx!(pool, |tx| hotels::upsert(tx, Source::Resync, &items))?;
        for (org, outcome) in rows.iter().zip(outcomes) {
            if outcome == Outcome::Written {
                let id = org.id.as_str();
                let change = if snapshot_rows.hotels.contains_key(id) {
                    Change::Update
                } else {
                    Change::Create
                };
                push_change(&mut report.hotels, change, id.to_owned());
            }
        }
    }

    let mut listed_users: Vec<&User> = plan.users.iter().map(|(u, _)| *u).collect();
    listed_users.sort_by(|a, b| a.id.cmp(&b.id));
    if !listed_users.is_empty() {
        stage("writing users");
    }
    for rows in listed_users.chunks(chunk) {
        let items: Vec<Item<&User>> = rows.iter().map(|u| Item { job: None, value: *u }).collect();
        let outcomes = in_tx!(pool, |tx| users::upsert(tx, Source::Resync, &items))?;
        for (user, outcome) in rows.iter().zip(outcomes) {
            if outcome == Outcome::Written {
                let id = user.id.as_str();
                let change = if snapshot_rows.users.contains_key(id) {
                    Change::Update
                } else {
                    Change::Create
                };
                push_change(&mut report.users, change, id.to_owned());
            }
        }
    }

    let mut members: Vec<_> = plan.memberships.iter().map(|(m, _)| *m).collect();
    members.sort_by(|a, b| {
        (&a.organization.id, &a.public_user_data.user_id).cmp(&(&b.organization.id, &b.public_user_data.user_id))
    });
    if !members.is_empty() {
        stage("writing memberships");
    }
    for rows in members.chunks(chunk) {
        let items: Vec<Item<MembershipWrite<'_>>> = rows
            .iter()
            .map(|m| Item {
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
        report.users.created.extend(applied.stubs);
        for (m, outcome) in rows.iter().zip(applied.outcomes) {
            let (h, u) = (m.organization.id.as_str(), m.public_user_data.user_id.as_str());
            match outcome {
                Outcome::Written => {
                    let created = snapshot_rows
                        .memberships
                        .get(&(h.to_owned(), u.to_owned()))
                        .is_none_or(|r| r.deleted);
                    let change = if created { Change::Create } else { Change::Update };
                    push_change(&mut report.memberships, change, format!("{h}/{u}"));
                }
                Outcome::Obsolete => report.skipped.memberships_obsolete += 1,
                Outcome::WaitingForHotel(_) => report.skipped.memberships_without_hotel += 1,
                Outcome::Unchanged | Outcome::UserBusy(_) | Outcome::RoleKeyTaken(_) => {}
            }
        }
    }

    // Deletes, dated when the listing began; rows written since are kept.
    if !(deletes.hotels.is_empty() && deletes.users.is_empty() && deletes.memberships.is_empty()) {
        stage("writing deletes");
    }
    for ids in deletes.hotels.chunks(chunk) {
        let items: Vec<Item<Deletion<HotelId>>> = ids
            .iter()
            .filter_map(|id| HotelId::parse(id).ok())
            .map(|id| Item {
                job: None,
                value: Deletion { id, at: started_ms },
            })
            .collect();
        let gone = in_tx!(pool, |tx| hotels::delete(tx, &items, DeleteKind::Inferred))?;
        report.hotels.deleted.extend(gone.ids);
        report.memberships_ended_by_deletes += gone.memberships_ended;
    }
    for ids in deletes.users.chunks(chunk) {
        let items: Vec<Item<Deletion<UserId>>> = ids
            .iter()
            .filter_map(|id| UserId::parse(id).ok())
            .map(|id| Item {
                job: None,
                value: Deletion { id, at: started_ms },
            })
            .collect();
        let gone = in_tx!(pool, |tx| users::delete(tx, &items, DeleteKind::Inferred))?;
        report.users.deleted.extend(gone.ids);
        report.memberships_ended_by_deletes += gone.memberships_ended;
    }
    for keys in deletes.memberships.chunks(chunk) {
        let gone = in_tx!(pool, |tx| memberships::end(tx, keys, started_ms))?;
        report.memberships.deleted.extend(gone);
    }
    Ok(())
}
