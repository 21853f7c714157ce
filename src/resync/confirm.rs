//! The deletes, in the staging area: the live rows a complete listing lacks, not written after
//! the listing began, asked for by id in bounded batches. What Clerk still has joins the staged
//! objects (the listing skipped it: it is upserted); what it lacks lands in the `gone` tables.
//! And the members whose user is neither a row nor listed, fetched by id so they arrive whole.

use std::collections::HashSet;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::PgConnection;

use super::report::Skipped;
use super::staging::{encode, Stage, Staged, HOTELS, MEMBERSHIPS, USERS};
use crate::clerk::api::{ClerkApiError, ClerkClient, Page, MAX_FILTER_IDS, PAGE_LIMIT};
use crate::clerk::events::Millis;
use crate::clerk::{HotelId, Membership, Organization, User, UserId};

/// The tables of confirmed deletes.
pub(crate) const GONE_HOTELS: &str = "resync_gone_hotels";
pub(crate) const GONE_USERS: &str = "resync_gone_users";
pub(crate) const GONE_MEMBERSHIPS: &str = "resync_gone_memberships";

/// Creates the (empty) tables of candidates and confirmed deletes.
pub(crate) async fn create_tables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for ddl in [
        "create temp table resync_candidates_hotels (id text primary key)",
        "create temp table resync_candidates_users (id text primary key)",
        "create temp table resync_candidates_memberships \
         (hotel_id text, user_id text, clerk_membership_id text, primary key (hotel_id, user_id))",
        "create temp table resync_gone_hotels (id text primary key)",
        "create temp table resync_gone_users (id text primary key)",
        "create temp table resync_gone_memberships \
         (hotel_id text, user_id text, clerk_membership_id text, primary key (hotel_id, user_id))",
        "create temp table resync_missing_users (id text primary key)",
        "create temp table resync_written_since (entity text, key text, primary key (entity, key))",
    ] {
        sqlx::query(ddl).execute(&mut *conn).await?;
    }
    Ok(())
}

/// How many ids one round of confirmation asks for (a few requests in flight).
pub(super) fn round(concurrency: usize) -> i64 {
    (MAX_FILTER_IDS * concurrency.max(1)) as i64
}

/// Fills the `gone` tables with what Clerk confirms it no longer has; counts in `skipped` what
/// is kept. A row is written after the listing began when its `clerk_version` is newer than
/// `started_ms`, or when the change feed has a change of it after `feed_cursor` (the feed's
/// last id before the listing began: this covers the rows a version cannot date, such as user
/// stubs). Ok(Some) when a confirmation request failed (then some deletes may be missing, and
/// the run must delete nothing).
pub(crate) async fn confirm_deletes(
    stage: &mut Stage,
    client: &ClerkClient,
    started_ms: Millis,
    feed_cursor: i64,
    concurrency: usize,
    skipped: &mut Skipped,
) -> Result<Option<ClerkApiError>, sqlx::Error> {
    sqlx::query(
        "insert into resync_written_since \
         select distinct entity, case entity when 'membership' then hotel_id || '/' || user_id else entity_id end \
         from changes where id > $1",
    )
    .bind(feed_cursor)
    .execute(stage.conn())
    .await?;
    let mut still_there = 0u64;
    if !stage.keyless(HOTELS) {
        skipped.deletes_newer_than_listing +=
            candidates(stage.conn(), "hotels", "hotel", HOTELS.name, started_ms).await?;
        let c = client.clone();
        match confirm_entities(
            stage,
            "hotels",
            GONE_HOTELS,
            concurrency,
            HotelId::parse,
            move |ids| {
                let c = c.clone();
                async move { c.organizations_by_id(&ids).await }.boxed()
            },
            |o: &Organization| o.id.as_str().to_owned(),
        )
        .await?
        {
            Ok(kept) => still_there += kept,
            Err(e) => return Ok(Some(e)),
        }
    }
    if !stage.keyless(USERS) {
        skipped.deletes_newer_than_listing += candidates(stage.conn(), "users", "user", USERS.name, started_ms).await?;
        let c = client.clone();
        match confirm_entities(
            stage,
            "users",
            GONE_USERS,
            concurrency,
            UserId::parse,
            move |ids| {
                let c = c.clone();
                async move { c.users_by_id(&ids).await }.boxed()
            },
            |u: &User| u.id.as_str().to_owned(),
        )
        .await?
        {
            Ok(kept) => still_there += kept,
            Err(e) => return Ok(Some(e)),
        }
    }
    if !stage.keyless(MEMBERSHIPS) {
        skipped.deletes_newer_than_listing += membership_candidates(stage.conn(), started_ms).await?;
        match confirm_memberships(stage, client, concurrency).await? {
            Ok(kept) => still_there += kept,
            Err(e) => return Ok(Some(e)),
        }
    }
    skipped.deletes_not_confirmed += still_there;
    Ok(None)
}

/// Fills `resync_candidates_{what}` with the live rows of `what` the listing lacks and that
/// were not written after it began; returns how many such rows were written after.
pub(super) async fn candidates(
    conn: &mut PgConnection,
    what: &str,
    entity: &str,
    staged: &str,
    started_ms: Millis,
) -> Result<u64, sqlx::Error> {
    let absent = format!("t.deleted_at is null and not exists (select 1 from {staged} s where s.id = t.id)");
    let older = format!(
        "(t.clerk_version <= $1 \
          and not exists (select 1 from resync_written_since w where w.entity = '{entity}' and w.key = t.id))"
    );
    sqlx::query(&format!(
        "insert into resync_candidates_{what} select t.id from {what} t where {absent} and {older}"
    ))
    .bind(started_ms)
    .execute(&mut *conn)
    .await?;
    let newer: i64 = sqlx::query_scalar(&format!("select count(*) from {what} t where {absent} and not {older}"))
        .bind(started_ms)
        .fetch_one(&mut *conn)
        .await?;
    Ok(newer as u64)
}

/// Asks Clerk for the candidates of `what`, a round at a time; returns (Ok) how many it still
/// has (or that cannot be asked about: an id Clerk could never have issued is kept).
async fn confirm_entities<Id, T, P, F, K>(
    stage: &mut Stage,
    what: &str,
    gone: &str,
    concurrency: usize,
    parse: P,
    fetch: F,
    key: K,
) -> Result<Result<u64, ClerkApiError>, sqlx::Error>
where
    Id: Clone + Send + 'static,
    T: Staged,
    P: Fn(&str) -> Result<Id, crate::clerk::ids::IdError>,
    F: Fn(Vec<Id>) -> BoxFuture<'static, Result<Page<T>, ClerkApiError>>,
    K: Fn(&T) -> String,
{
    let mut kept = 0u64;
    let mut after = String::new();
    loop {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "select id from resync_candidates_{what} where id > $1 order by id limit $2"
        ))
        .bind(&after)
        .bind(round(concurrency))
        .fetch_all(stage.conn())
        .await?;
        let Some(last) = ids.last() else { break };
        after = last.clone();
        let asked: Vec<(String, Id)> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), parse(id).ok()?)))
            .collect();
        kept += (ids.len() - asked.len()) as u64;
        let chunks: Vec<Vec<Id>> = asked
            .chunks(MAX_FILTER_IDS)
            .map(|c| c.iter().map(|(_, id)| id.clone()).collect())
            .collect();
        let pages: Vec<Page<T>> = match stream::iter(chunks)
            .map(&fetch)
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await
        {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let mut present: HashSet<String> = HashSet::new();
        for page in &pages {
            present.extend(page.items.iter().map(&key));
            present.extend(page.invalid.iter().filter_map(|i| i.id.clone()));
            stage.merge(&encode(page)).await?;
        }
        let gone_ids: Vec<&str> = asked
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !present.contains(*id))
            .collect();
        kept += (asked.len() - gone_ids.len()) as u64;
        sqlx::query(&format!(
            "insert into {gone} select unnest($1::text[]) on conflict do nothing"
        ))
        .bind(&gone_ids)
        .execute(stage.conn())
        .await?;
    }
    Ok(Ok(kept))
}

/// Fills `resync_candidates_memberships` with the live memberships the listing lacks, of live
/// hotels and users that are not themselves deleted by this run, whose hotel listed no
/// unreadable member, and not written after the listing began (counted and returned).
async fn membership_candidates(conn: &mut PgConnection, started_ms: Millis) -> Result<u64, sqlx::Error> {
    let absent = format!(
        "m.deleted_at is null \
         and exists (select 1 from hotels h where h.id = m.hotel_id and h.deleted_at is null) \
         and exists (select 1 from users u where u.id = m.user_id and u.deleted_at is null) \
         and not exists (select 1 from {stage} s where s.hotel_id = m.hotel_id and s.user_id in (m.user_id, '')) \
         and not exists (select 1 from {GONE_HOTELS} g where g.id = m.hotel_id) \
         and not exists (select 1 from {GONE_USERS} g where g.id = m.user_id)",
        stage = MEMBERSHIPS.name
    );
    let older = "(m.clerk_version <= $1 and not exists (select 1 from resync_written_since w \
                 where w.entity = 'membership' and w.key = m.hotel_id || '/' || m.user_id))";
    sqlx::query(&format!(
        "insert into resync_candidates_memberships select m.hotel_id, m.user_id, m.clerk_membership_id \
         from memberships m where {absent} and {older}"
    ))
    .bind(started_ms)
    .execute(&mut *conn)
    .await?;
    let newer: i64 = sqlx::query_scalar(&format!(
        "select count(*) from memberships m where {absent} and not {older}"
    ))
    .bind(started_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(newer as u64)
}

/// Asks each candidate's organization for those of its members, up to 100 per request, a round
/// at a time; returns (Ok) how many Clerk still has.
async fn confirm_memberships(
    stage: &mut Stage,
    client: &ClerkClient,
    concurrency: usize,
) -> Result<Result<u64, ClerkApiError>, sqlx::Error> {
    let mut kept = 0u64;
    let (mut after_hotel, mut after_user) = (String::new(), String::new());
    loop {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select hotel_id, user_id, clerk_membership_id from resync_candidates_memberships \
             where (hotel_id, user_id) > ($1, $2) order by hotel_id, user_id limit $3",
        )
        .bind(&after_hotel)
        .bind(&after_user)
        .bind(round(concurrency))
        .fetch_all(stage.conn())
        .await?;
        let Some(last) = rows.last() else { break };
        (after_hotel, after_user) = (last.0.clone(), last.1.clone());
        // One request per hotel and up to 100 of its members.
        let mut requests: Vec<(HotelId, Vec<(UserId, String)>)> = Vec::new();
        for (h, u, id) in rows {
            let (Ok(hotel), Ok(user)) = (HotelId::parse(&h), UserId::parse(&u)) else {
                kept += 1;
                continue;
            };
            match requests.last_mut() {
                Some((rh, members)) if *rh == hotel && members.len() < MAX_FILTER_IDS => members.push((user, id)),
                _ => requests.push((hotel, vec![(user, id)])),
            }
        }
        let answers: Vec<_> = match stream::iter(requests)
            .map(|(hotel, members)| {
                let client = client.clone();
                async move {
                    let users: Vec<UserId> = members.iter().map(|(u, _)| u.clone()).collect();
                    let page = client
                        .list_organization_memberships(&hotel, &users, 0, PAGE_LIMIT)
                        .await?;
                    Ok::<_, ClerkApiError>((hotel, members, page))
                }
                .boxed()
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await
        {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let mut gone: (Vec<String>, Vec<String>, Vec<String>) = Default::default();
        for (hotel, members, page) in answers {
            let Some(page) = page else {
                // The organization itself vanished after it was listed: leave its memberships to
                // the hotel's own delete (next run or webhook).
                kept += members.len() as u64;
                continue;
            };
            stage.merge(&encode::<Membership>(&page)).await?;
            // A member Clerk returns unreadable, without a user id, protects them all.
            let protected = page.invalid.iter().any(|i| i.user_id.is_none());
            let present: HashSet<&str> = page
                .items
                .iter()
                .map(|m| m.public_user_data.user_id.as_str())
                .chain(page.invalid.iter().filter_map(|i| i.user_id.as_deref()))
                .collect();
            for (user, membership_id) in members {
                if protected || present.contains(user.as_str()) {
                    kept += 1;
                } else {
                    gone.0.push(hotel.as_str().to_owned());
                    gone.1.push(user.as_str().to_owned());
                    gone.2.push(membership_id);
                }
            }
        }
        sqlx::query(&format!(
            "insert into {GONE_MEMBERSHIPS} select * from unnest($1::text[], $2::text[], $3::text[]) \
             on conflict do nothing"
        ))
        .bind(&gone.0)
        .bind(&gone.1)
        .bind(&gone.2)
        .execute(stage.conn())
        .await?;
    }
    Ok(Ok(kept))
}

/// Members whose user is neither a row nor listed (created while the users were listed) are
/// asked for by id, so they arrive whole instead of as `public_user_data` stubs. A failure only
/// costs the stubs (version 0, outranked by any later user data), so it is logged, not fatal.
pub(crate) async fn fetch_missing_users(
    stage: &mut Stage,
    client: &ClerkClient,
    concurrency: usize,
) -> Result<(), sqlx::Error> {
    let missing = sqlx::query(&format!(
        "insert into resync_missing_users select distinct s.user_id from {members} s \
         where s.body is not null and s.user_id <> '' \
           and not exists (select 1 from users u where u.id = s.user_id) \
           and not exists (select 1 from {users} su where su.id = s.user_id and su.body is not null)",
        members = MEMBERSHIPS.name,
        users = USERS.name
    ))
    .execute(stage.conn())
    .await?
    .rows_affected();
    let mut after = String::new();
    loop {
        let ids: Vec<String> =
            sqlx::query_scalar("select id from resync_missing_users where id > $1 order by id limit $2")
                .bind(&after)
                .bind(round(concurrency))
                .fetch_all(stage.conn())
                .await?;
        let Some(last) = ids.last() else { return Ok(()) };
        after = last.clone();
        let ids: Vec<UserId> = ids.iter().filter_map(|id| UserId::parse(id).ok()).collect();
        let chunks: Vec<Vec<UserId>> = ids.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
        let pages: Result<Vec<_>, _> = stream::iter(chunks)
            .map(|chunk| {
                let client = client.clone();
                async move { client.users_by_id(&chunk).await }.boxed()
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await;
        match pages {
            Ok(pages) => {
                for page in pages {
                    stage.merge(&encode::<User>(&page)).await?;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, users = missing, "fetching unlisted members failed; they get stubs");
                return Ok(());
            }
        }
    }
}
