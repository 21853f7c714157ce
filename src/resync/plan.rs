//! The difference: the rows as they are, Clerk's side as listed, the deletes Clerk confirms by id,
//! and the creates and updates that the rule book would make.

use std::collections::{HashMap, HashSet};

use futures::future::FutureExt;
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::PgPool;

use super::report::{Changes, ResyncReport, Skipped};
use crate::clerk::api::{ClerkApiError, ClerkClient, InvalidItem, MAX_FILTER_IDS, PAGE_LIMIT};
use crate::clerk::events::Millis;
use crate::clerk::{HotelId, Membership, Organization, User, UserId};

// ---------------------------------------------------------------------------------------------
// The rows, as the comparison needs them

#[derive(Debug, Clone, Copy)]
pub(crate) struct RowState {
    pub(crate) version: i64,
    pub(crate) deleted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct MembershipRow {
    pub(crate) clerk_membership_id: String,
    pub(crate) version: i64,
    pub(crate) deleted: bool,
}

pub(crate) type MembershipKey = (String, String);

/// Every row's id, version and liveness, loaded in three statements.
pub(crate) struct Snapshot {
    pub(crate) hotels: HashMap<String, RowState>,
    pub(crate) users: HashMap<String, RowState>,
    pub(crate) memberships: HashMap<MembershipKey, MembershipRow>,
}

impl Snapshot {
    pub(crate) async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let hotels = sqlx::query!(r#"select id, clerk_version, deleted_at is not null as "deleted!" from hotels"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    RowState {
                        version: r.clerk_version,
                        deleted: r.deleted,
                    },
                )
            })
            .collect();
        let users = sqlx::query!(r#"select id, clerk_version, deleted_at is not null as "deleted!" from users"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.id,
                    RowState {
                        version: r.clerk_version,
                        deleted: r.deleted,
                    },
                )
            })
            .collect();
        let memberships = sqlx::query!(
            r#"select hotel_id, user_id, clerk_membership_id, clerk_version, deleted_at is not null as "deleted!"
               from memberships"#
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            let row = MembershipRow {
                clerk_membership_id: r.clerk_membership_id,
                version: r.clerk_version,
                deleted: r.deleted,
            };
            ((r.hotel_id, r.user_id), row)
        })
        .collect();
        Ok(Self {
            hotels,
            users,
            memberships,
        })
    }

    pub(crate) fn live_hotels(&self) -> u64 {
        self.hotels.values().filter(|r| !r.deleted).count() as u64
    }
}

/// Clerk's side: the listings deduplicated (offset pages can repeat an item when others are
/// created meanwhile; the newest version wins), and what must not be deleted.
#[derive(Default)]
pub(crate) struct Clerk {
    pub(crate) orgs: HashMap<String, Organization>,
    pub(crate) users: HashMap<String, User>,
    pub(crate) memberships: HashMap<MembershipKey, Membership>,
    /// Ids of listed objects that did not parse: they exist, so they are never deleted.
    pub(crate) protected_hotels: HashSet<String>,
    pub(crate) protected_users: HashSet<String>,
    pub(crate) protected_memberships: HashSet<MembershipKey>,
    /// Hotels with a listed membership whose user is unreadable: none of their memberships is
    /// deleted.
    pub(crate) protected_membership_hotels: HashSet<String>,
    /// An unparsable object without a readable id: no deletes of that kind this run.
    pub(crate) no_hotel_deletes: bool,
    pub(crate) no_user_deletes: bool,
    pub(crate) no_membership_deletes: bool,
    pub(crate) invalid: u64,
}

impl Clerk {
    pub(crate) fn add_org(&mut self, org: Organization) {
        let id = org.id.as_str().to_owned();
        match self.orgs.get(&id) {
            Some(have) if have.updated_at >= org.updated_at => {}
            _ => {
                self.orgs.insert(id, org);
            }
        }
    }

    pub(crate) fn add_user(&mut self, user: User) {
        let id = user.id.as_str().to_owned();
        match self.users.get(&id) {
            Some(have) if have.updated_at >= user.updated_at => {}
            _ => {
                self.users.insert(id, user);
            }
        }
    }

    pub(crate) fn add_membership(&mut self, m: Membership) {
        let key = (
            m.organization.id.as_str().to_owned(),
            m.public_user_data.user_id.as_str().to_owned(),
        );
        match self.memberships.get(&key) {
            Some(have) if have.updated_at >= m.updated_at => {}
            _ => {
                self.memberships.insert(key, m);
            }
        }
    }

    pub(crate) fn invalid_org(&mut self, item: InvalidItem) {
        self.note_invalid("organization", &item);
        match item.id {
            Some(id) => {
                self.protected_hotels.insert(id);
            }
            None => self.no_hotel_deletes = true,
        }
    }

    pub(crate) fn invalid_user(&mut self, item: InvalidItem) {
        self.note_invalid("user", &item);
        match item.id {
            Some(id) => {
                self.protected_users.insert(id);
            }
            None => self.no_user_deletes = true,
        }
    }

    pub(crate) fn invalid_membership(&mut self, item: InvalidItem) {
        self.note_invalid("membership", &item);
        match (item.organization_id, item.user_id) {
            (Some(h), Some(u)) => {
                self.protected_memberships.insert((h, u));
            }
            (Some(h), None) => {
                self.protected_membership_hotels.insert(h);
            }
            _ => self.no_membership_deletes = true,
        }
    }

    pub(crate) fn note_invalid(&mut self, what: &str, item: &InvalidItem) {
        self.invalid += 1;
        tracing::warn!(kind = what, id = item.id.as_deref().unwrap_or("?"), reason = %item.reason,
                       "a Clerk object does not have the expected shape; it is neither written nor deleted");
    }
}

/// Rows to tombstone, confirmed absent from Clerk.
#[derive(Default)]
pub(crate) struct Deletes {
    pub(crate) hotels: Vec<String>,
    pub(crate) users: Vec<String>,
    /// (hotel, user, clerk membership id): only that very membership is ended.
    pub(crate) memberships: Vec<(String, String, String)>,
}

/// Finds the live rows the listings lack, keeps those written after the listing began, and asks
/// Clerk for the others by id: what it still has is kept (and joins the upserts, since the
/// listing skipped it); what it lacks is returned. Err when a confirmation request fails.
pub(crate) async fn confirm_deletes(
    client: &ClerkClient,
    snapshot: &Snapshot,
    clerk: &mut Clerk,
    started_ms: Millis,
    concurrency: usize,
    skipped: &mut Skipped,
) -> Result<Deletes, ClerkApiError> {
    let mut newer = 0u64;
    let mut candidates = |rows: &HashMap<String, RowState>, listed: &dyn Fn(&str) -> bool, off: bool| -> Vec<String> {
        if off {
            return Vec::new();
        }
        let mut out: Vec<String> = rows
            .iter()
            .filter(|(id, r)| !r.deleted && !listed(id))
            .filter(|(_, r)| {
                // Written after the listing began (by a webhook): not this run's to delete.
                let keep = r.version > started_ms;
                newer += keep as u64;
                !keep
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    };
    let hotel_candidates = candidates(
        &snapshot.hotels,
        &|id| clerk.orgs.contains_key(id) || clerk.protected_hotels.contains(id),
        clerk.no_hotel_deletes,
    );
    let user_candidates = candidates(
        &snapshot.users,
        &|id| clerk.users.contains_key(id) || clerk.protected_users.contains(id),
        clerk.no_user_deletes,
    );

    // Ask by id, 100 per request.
    let hotel_ids: Vec<HotelId> = hotel_candidates
        .iter()
        .filter_map(|id| HotelId::parse(id).ok())
        .collect();
    let user_ids: Vec<UserId> = user_candidates.iter().filter_map(|id| UserId::parse(id).ok()).collect();
    // Owned chunks and clients: futures that borrow into a stream trip the compiler's Send
    // inference once the whole run is spawned.
    let hotel_chunks: Vec<Vec<HotelId>> = hotel_ids.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let user_chunks: Vec<Vec<UserId>> = user_ids.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let (found_orgs, found_users) = tokio::try_join!(
        stream::iter(hotel_chunks)
            .map(|chunk| {
                let client = client.clone();
                async move { client.organizations_by_id(&chunk).await }.boxed()
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>(),
        stream::iter(user_chunks)
            .map(|chunk| {
                let client = client.clone();
                async move { client.users_by_id(&chunk).await }.boxed()
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>(),
    )?;
    for page in found_orgs {
        page.items.into_iter().for_each(|o| clerk.add_org(o));
        page.invalid.into_iter().for_each(|i| clerk.invalid_org(i));
    }
    for page in found_users {
        page.items.into_iter().for_each(|u| clerk.add_user(u));
        page.invalid.into_iter().for_each(|i| clerk.invalid_user(i));
    }
    // An id Postgres holds but Clerk could never have issued (not org_/user_ shaped) cannot be
    // asked about, so it is kept too.
    let gone_hotels: Vec<String> = hotel_ids
        .iter()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !clerk.orgs.contains_key(id) && !clerk.protected_hotels.contains(id))
        .collect();
    let gone_users: Vec<String> = user_ids
        .iter()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !clerk.users.contains_key(id) && !clerk.protected_users.contains(id))
        .collect();
    let mut still_there =
        (hotel_candidates.len() - gone_hotels.len()) as u64 + (user_candidates.len() - gone_users.len()) as u64;

    // Memberships the listing lacks, except those a hotel or user delete ends anyway.
    let gone_hotel_set: HashSet<&str> = gone_hotels.iter().map(String::as_str).collect();
    let gone_user_set: HashSet<&str> = gone_users.iter().map(String::as_str).collect();
    let mut by_hotel: HashMap<String, Vec<(UserId, String)>> = HashMap::new();
    if !clerk.no_membership_deletes {
        for ((h, u), row) in &snapshot.memberships {
            let key = (h.clone(), u.clone());
            if row.deleted
                || clerk.memberships.contains_key(&key)
                || clerk.protected_memberships.contains(&key)
                || clerk.protected_membership_hotels.contains(h)
                || gone_hotel_set.contains(h.as_str())
                || gone_user_set.contains(u.as_str())
                || snapshot.hotels.get(h).is_none_or(|r| r.deleted)
                || snapshot.users.get(u).is_none_or(|r| r.deleted)
            {
                continue;
            }
            if row.version > started_ms {
                newer += 1;
                continue;
            }
            if let (Ok(_), Ok(user)) = (HotelId::parse(h), UserId::parse(u)) {
                by_hotel
                    .entry(h.clone())
                    .or_default()
                    .push((user, row.clerk_membership_id.clone()));
            }
        }
    }
    let mut requests = Vec::new();
    for (hotel, members) in &by_hotel {
        let hotel_id = HotelId::parse(hotel).expect("checked above");
        for chunk in members.chunks(MAX_FILTER_IDS) {
            requests.push((hotel_id.clone(), chunk.to_vec()));
        }
    }
    let answers: Vec<_> = stream::iter(requests)
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
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let mut gone_memberships = Vec::new();
    for (hotel, members, page) in answers {
        let Some(page) = page else {
            // The organization itself vanished after it was listed: leave its memberships to
            // the hotel's own delete (next run or webhook).
            still_there += members.len() as u64;
            continue;
        };
        let mut present: HashSet<String> = HashSet::new();
        for m in page.items {
            present.insert(m.public_user_data.user_id.as_str().to_owned());
            clerk.add_membership(m);
        }
        for i in page.invalid {
            if let Some(u) = &i.user_id {
                present.insert(u.clone());
            }
            clerk.invalid_membership(i);
        }
        for (user, membership_id) in members {
            if present.contains(user.as_str()) || clerk.protected_membership_hotels.contains(hotel.as_str()) {
                still_there += 1;
            } else {
                gone_memberships.push((hotel.as_str().to_owned(), user.as_str().to_owned(), membership_id));
            }
        }
    }
    gone_memberships.sort();
    skipped.deletes_newer_than_listing += newer;
    skipped.deletes_not_confirmed += still_there;
    Ok(Deletes {
        hotels: gone_hotels,
        users: gone_users,
        memberships: gone_memberships,
    })
}

/// Members whose user is neither a row nor listed (created while the users were listed) are
/// asked for by id, so they arrive whole instead of as `public_user_data` stubs. A failure only
/// costs the stubs (version 0, outranked by any later user data), so it is logged, not fatal.
pub(crate) async fn fetch_missing_users(
    client: &ClerkClient,
    snapshot: &Snapshot,
    clerk: &mut Clerk,
    concurrency: usize,
) {
    let mut missing: Vec<UserId> = clerk
        .memberships
        .keys()
        .filter(|(_, u)| !snapshot.users.contains_key(u) && !clerk.users.contains_key(u))
        .filter_map(|(_, u)| UserId::parse(u).ok())
        .collect();
    if missing.is_empty() {
        return;
    }
    missing.sort();
    missing.dedup();
    let chunks: Vec<Vec<UserId>> = missing.chunks(MAX_FILTER_IDS).map(<[_]>::to_vec).collect();
    let pages: Result<Vec<_>, _> = stream::iter(chunks)
        .map(|chunk| {
            let client = client.clone();
            async move { client.users_by_id(&chunk).await }.boxed()
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await;
    match pages {
        Ok(pages) => {
            for page in pages {
                page.items.into_iter().for_each(|u| clerk.add_user(u));
                page.invalid.into_iter().for_each(|i| clerk.invalid_user(i));
            }
        }
        Err(e) => tracing::warn!(error = %e, users = missing.len(), "fetching unlisted members failed; they get stubs"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Create,
    Update,
}

/// The creates and updates, decided exactly as the per-event SQL decides them: a row is
/// written when it is missing, or live and older than Clerk's object (memberships: or a
/// tombstone of a *different*, older membership, i.e. the person was invited again).
#[derive(Default)]
pub(crate) struct Plan<'a> {
    pub(crate) hotels: Vec<(&'a Organization, Change)>,
    pub(crate) users: Vec<(&'a User, Change)>,
    /// Memberships whose user is neither a row nor listed: a version-0 stub from
    /// `public_user_data`, which any `user.*` event outranks.
    pub(crate) stubs: Vec<&'a Membership>,
    pub(crate) memberships: Vec<(&'a Membership, Change)>,
}

pub(crate) fn plan_upserts<'a>(snapshot: &Snapshot, clerk: &'a Clerk, skipped: &mut Skipped) -> Plan<'a> {
    let mut plan = Plan::default();
    for org in clerk.orgs.values() {
        match snapshot.hotels.get(org.id.as_str()) {
            None => plan.hotels.push((org, Change::Create)),
            Some(r) if !r.deleted && r.version < org.updated_at => plan.hotels.push((org, Change::Update)),
            Some(_) => {}
        }
    }
    for user in clerk.users.values() {
        match snapshot.users.get(user.id.as_str()) {
            None => plan.users.push((user, Change::Create)),
            Some(r) if !r.deleted && r.version < user.updated_at => plan.users.push((user, Change::Update)),
            Some(_) => {}
        }
    }
    let mut stubbed: HashSet<&str> = HashSet::new();
    for ((hotel, user), m) in &clerk.memberships {
        match snapshot.hotels.get(hotel) {
            Some(r) if r.deleted => {
                skipped.memberships_obsolete += 1;
                continue;
            }
            Some(_) => {}
            None if clerk.orgs.contains_key(hotel) => {}
            None => {
                skipped.memberships_without_hotel += 1;
                continue;
            }
        }
        match snapshot.users.get(user) {
            Some(r) if r.deleted => {
                skipped.memberships_obsolete += 1;
                continue;
            }
            Some(_) => {}
            None if clerk.users.contains_key(user) => {}
            None => {
                if stubbed.insert(user.as_str()) {
                    plan.stubs.push(m);
                }
            }
        }
        let row = snapshot.memberships.get(&(hotel.clone(), user.clone()));
        match row {
            None => plan.memberships.push((m, Change::Create)),
            Some(r) if r.version < m.updated_at && (!r.deleted || r.clerk_membership_id != m.id) => {
                // Reviving a removed membership (a new invitation) creates it, as far as the
                // application can tell.
                plan.memberships
                    .push((m, if r.deleted { Change::Create } else { Change::Update }))
            }
            Some(_) => {}
        }
    }
    plan
}

pub(crate) fn membership_id(m: &Membership) -> String {
    format!("{}/{}", m.organization.id, m.public_user_data.user_id)
}

impl Plan<'_> {
    /// Fills the report with the planned (not applied) creates and updates.
    pub(crate) fn describe(&self, report: &mut ResyncReport) {
        for (org, change) in &self.hotels {
            push_change(&mut report.hotels, *change, org.id.to_string());
        }
        for (user, change) in &self.users {
            push_change(&mut report.users, *change, user.id.to_string());
        }
        for m in &self.stubs {
            report.users.created.push(m.public_user_data.user_id.to_string());
        }
        for (m, change) in &self.memberships {
            push_change(&mut report.memberships, *change, membership_id(m));
        }
    }
}

pub(crate) fn push_change(changes: &mut Changes, change: Change, id: String) {
    match change {
        Change::Create => changes.created.push(id),
        Change::Update => changes.updated.push(id),
    }
}
