//! The rule book: the one place that decides what Clerk objects and events do to the rows. The
//! consumer (a claimed batch of events), the resync (listed pages) and the self-heal (one hotel)
//! all write through these functions, and no other module inserts, updates or tombstones
//! `hotels`, `users`, `memberships`, `roles`, `permissions`, `role_permissions`,
//! `invitations`, `role_sets` or `role_set_roles`. The guarantees, one file per kind:
//!
//! - **Newer wins** ([`hotels`], [`users`], [`memberships`]). Every row keeps `clerk_version`
//!   (the object's `updated_at`, or the event time for a delete); a write with an older or equal
//!   version changes nothing, so duplicates and out-of-order deliveries are harmless. Within one
//!   batch the newest item per key is chosen inside the statement.
//! - **Tombstones are final.** Clerk never reuses organization or user ids, so a deleted hotel or
//!   user is never revived and its memberships end with it (the delete cascades). A deleted
//!   membership is revived only by a *different*, newer Clerk membership (invited again).
//! - **Parents first.** A membership needs its hotel row: missing → [`Outcome::WaitingForHotel`]
//!   (retry; applying the hotel wakes the job); deleted → [`Outcome::Obsolete`]. A user with no
//!   row gets a stub from `public_user_data` (version 0, outranked by any `user.*` data).
//! - **Roles and permissions** ([`roles`], [`permissions`]): newer wins, tombstones final; a role's
//!   permission set is replaced as a whole when a newer version of the role wins; a permission
//!   embedded in a role payload is written like its own event; a deleted permission drops out of
//!   every set; a role whose key another live role holds waits ([`Outcome::RoleKeyTaken`]).
//! - **Role sets** ([`role_sets`]): newer wins, tombstones final, a role set's roles replaced as
//!   a whole by a newer version; a role set whose key another live one holds is not written. No
//!   webhook carries them: listings and the write path do.
//! - **Invitations** ([`invitations`]) wait for their hotel like memberships, are obsolete once
//!   it is deleted (and tombstoned with it), and a settled status is never set back to `pending`.
//! - **A snapshot outranks what is older** ([`snapshot`]). After a resync (or a self-heal of one
//!   hotel) that listed at T, an event older than T about what that listing covered is obsolete.
//!
//! Every write runs in the caller's transaction; [`begin`] names its source for the change feed
//! (`orgsync.source`) and every row records the job behind it (`last_job_id`, null for the resync
//! and the self-heal).
//!
//! Concurrency: each write is one conditional `INSERT ... ON CONFLICT ... WHERE` whose condition
//! Postgres re-checks against the latest row after waiting for a concurrent writer. Memberships
//! hold `FOR KEY SHARE` on their hotels and users (taken in id order, in one statement per
//! table), and deletes take `FOR UPDATE` on what they tombstone (the one lock that conflicts with
//! `KEY SHARE`), so a concurrent delete cannot slip its cascade past a membership being written.
//! [`apply_events`] takes a batch's user locks in one ordered pass before it writes anything.
//! Across kinds, locks are taken in one global order: users (for deletes), hotels, users,
//! role keys (advisory), permissions, roles, role permission sets, role set keys (advisory),
//! role sets, their roles; every writer of those tables must follow it.

pub mod hotels;
pub mod invitations;
pub mod memberships;
pub mod permissions;
pub mod role_sets;
pub mod roles;
pub mod snapshot;
pub mod users;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::clerk::events::Millis;
use crate::clerk::{ClerkEvent, HotelId, Membership, Organization, PermissionId, Role, RoleId, User, UserId};
use invitations::InvitationWrite;
use permissions::PermissionWrite;

/// Who is writing: recorded for the change feed (`orgsync.source`) and deciding two rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The consumer applying webhook jobs: subject to the snapshot marks.
    Webhook,
    /// A whole resync: it *is* the snapshot, so the marks do not apply to it.
    Resync,
    /// The self-heal: a resync of one hotel.
    SelfHeal,
    /// The write path (`crate::manage`) applying Clerk's answer to a write it just made.
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Resync => "resync",
            Self::SelfHeal => "self_heal",
            Self::Api => "api",
        }
    }

    /// Events are checked against the snapshot marks; listings are the snapshots. An API answer
    /// is not checked either: it is Clerk's state at the moment it answered, later than the start
    /// of any listing already recorded, so no mark can make it stale news (newer-wins still
    /// applies to it, so a newer webhook already applied keeps its row).
    fn honours_snapshots(self) -> bool {
        self == Self::Webhook
    }

    /// The consumer holds per-entity advisory locks: it writes a user stub only when it can take
    /// that user's lock without waiting (another worker may be inserting the same user). The
    /// resync, the self-heal and the write path wait for it instead: they hold no entity locks,
    /// so the wait ends when that worker commits (a deadlock is retried by their callers).
    fn stubs_need_free_lock(self) -> bool {
        self == Self::Webhook
    }
}

/// Starts a write of `source` in the caller's transaction: every transaction that writes
/// mirrored rows calls this first.
pub async fn begin(conn: &mut PgConnection, source: Source) -> Result<(), sqlx::Error> {
    sqlx::query!("select set_config('orgsync.source', $1, true) as set", source.as_str())
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// What applying one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A row was inserted or changed.
    Written,
    /// Nothing changed: the stored version is newer or equal, the row is a tombstone, or another
    /// item of the batch for the same key won.
    Unchanged,
    /// Nothing changed and nothing will: a parent is deleted, or a snapshot newer than the item
    /// already established the state.
    Obsolete,
    /// A membership whose hotel has no row yet: retry; applying the hotel wakes the job.
    WaitingForHotel(HotelId),
    /// A membership whose user has no row, while another worker holds that user's events (most
    /// likely creating it): retry in a moment.
    UserBusy(UserId),
    /// A role whose key (this one) another live role still holds: retry once that role's
    /// deletion or re-keying has arrived.
    RoleKeyTaken(String),
}

impl Outcome {
    /// True when the item is finished (whatever it changed).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Written | Self::Unchanged | Self::Obsolete)
    }

    fn from_code(code: &str) -> Self {
        match code {
            "written" => Self::Written,
            "obsolete" => Self::Obsolete,
            _ => Self::Unchanged,
        }
    }
}

/// What applying an event did (the single-event view of [`Outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Written,
    Unchanged,
    Obsolete,
}

/// Why an event could not be applied now. The same event may apply later.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("hotel {0} does not exist yet")]
    MissingHotel(HotelId),
    #[error("user {0} is being written by another worker")]
    UserBusy(UserId),
    #[error("role key {0} is still held by another live role")]
    RoleKeyTaken(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ApplyError {
    /// The hotel id this failure waits for, if any.
    pub fn waiting_for(&self) -> Option<&HotelId> {
        match self {
            Self::MissingHotel(id) => Some(id),
            Self::UserBusy(_) | Self::RoleKeyTaken(_) | Self::Database(_) => None,
        }
    }
}

/// One object (or deletion) to apply, with the job it came from (`None` for the resync and the
/// self-heal).
#[derive(Debug, Clone, Copy)]
pub struct Item<T> {
    pub job: Option<i64>,
    pub value: T,
}

/// A deletion of a hotel or user, dated by Clerk's clock.
#[derive(Debug, Clone)]
pub struct Deletion<Id> {
    pub id: Id,
    pub at: Millis,
}

/// How a deletion is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteKind {
    /// Clerk said so (a webhook, or a 404 by id): final, whatever the row's version; a tombstone
    /// is inserted if the row was never seen, so a late create cannot bring it.
    Reported,
    /// A listing lacked it and Clerk confirmed by id: only rows not written after `at` (the
    /// listing's start) are tombstoned, and only existing rows.
    Inferred,
}

/// A membership to write: live (`removed_at: None`) or its removal (`Some(event time)`).
#[derive(Debug, Clone, Copy)]
pub struct MembershipWrite<'a> {
    pub membership: &'a Membership,
    pub removed_at: Option<Millis>,
}

/// Applies a batch of events of any kinds in the caller's transaction (after [`begin`]) and
/// returns one outcome per event, in order. Deletes first (tombstones are final: nothing of the
/// batch is written only to be tombstoned, and a tombstone keeps its own version), then parents
/// before children: hotels, users, memberships, invitations; then permissions, roles and their
/// permission sets (see `AccessModel::apply`). Err is a database error: the
/// transaction is then aborted and the caller rolls back.
pub async fn apply_events(
    conn: &mut PgConnection,
    source: Source,
    events: &[Item<&ClerkEvent>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut out = vec![Outcome::Unchanged; events.len()];
    let mut orgs: Vec<(usize, Item<&Organization>)> = Vec::new();
    let mut users_up: Vec<(usize, Item<&User>)> = Vec::new();
    let mut members: Vec<(usize, Item<MembershipWrite<'_>>)> = Vec::new();
    let mut hotel_dels: Vec<(usize, Item<Deletion<HotelId>>)> = Vec::new();
    let mut user_dels: Vec<(usize, Item<Deletion<UserId>>)> = Vec::new();
    let mut access = AccessModel::default();
    for (i, e) in events.iter().enumerate() {
        let job = e.job;
        match e.value {
            ClerkEvent::OrganizationUpserted(o) => orgs.push((i, Item { job, value: o })),
            ClerkEvent::UserUpserted(u) => users_up.push((i, Item { job, value: u })),
            ClerkEvent::MembershipUpserted(m) => members.push((
                i,
                Item {
                    job,
                    value: MembershipWrite {
                        membership: m,
                        removed_at: None,
                    },
                },
            )),
            ClerkEvent::MembershipDeleted { membership, at } => members.push((
                i,
                Item {
                    job,
                    value: MembershipWrite {
                        membership,
                        removed_at: Some(*at),
                    },
                },
            )),
            ClerkEvent::OrganizationDeleted { id, at } => hotel_dels.push((
                i,
                Item {
                    job,
                    value: Deletion {
                        id: id.clone(),
                        at: *at,
                    },
                },
            )),
            ClerkEvent::UserDeleted { id, at } => user_dels.push((
                i,
                Item {
                    job,
                    value: Deletion {
                        id: id.clone(),
                        at: *at,
                    },
                },
            )),
            ClerkEvent::RoleUpserted(r) => access.roles.push((i, Item { job, value: r })),
            ClerkEvent::RoleDeleted { id, at } => access.role_dels.push((
                i,
                Item {
                    job,
                    value: Deletion {
                        id: id.clone(),
                        at: *at,
                    },
                },
            )),
            ClerkEvent::PermissionUpserted(p) => access.permissions.push((i, Item { job, value: p })),
            ClerkEvent::PermissionDeleted { id, at } => access.permission_dels.push((
                i,
                Item {
                    job,
                    value: Deletion {
                        id: id.clone(),
                        at: *at,
                    },
                },
            )),
            ClerkEvent::InvitationWritten { invitation, version } => access.invitations.push((
                i,
                Item {
                    job,
                    value: InvitationWrite {
                        invitation,
                        version: *version,
                    },
                },
            )),
        }
    }

    if !user_dels.is_empty() {
        // A user delete takes FOR UPDATE, which waits for every membership writer holding KEY
        // SHARE on that user. Taking all of this batch's user locks in one ordered pass, before
        // any write, keeps two batches from waiting for each other in opposite orders.
        let mut ids: Vec<&str> = users_up.iter().map(|(_, u)| u.value.id.as_str()).collect();
        ids.extend(user_dels.iter().map(|(_, d)| d.value.id.as_str()));
        ids.extend(
            members
                .iter()
                .map(|(_, m)| m.value.membership.public_user_data.user_id.as_str()),
        );
        users::lock_for_delete(conn, ids).await?;
    }

    let scatter = |out: &mut Vec<Outcome>, at: Vec<usize>, got: Vec<Outcome>| {
        for (i, o) in at.into_iter().zip(got) {
            out[i] = o;
        }
    };
    if !user_dels.is_empty() {
        let (at, items): (Vec<_>, Vec<_>) = user_dels.into_iter().unzip();
        let got = users::delete(conn, &items, DeleteKind::Reported).await?;
        scatter(&mut out, at, got.outcomes);
    }
    if !hotel_dels.is_empty() {
        let (at, items): (Vec<_>, Vec<_>) = hotel_dels.into_iter().unzip();
        let got = hotels::delete(conn, &items, DeleteKind::Reported).await?;
        scatter(&mut out, at, got.outcomes);
    }
    if !orgs.is_empty() {
        let (at, items): (Vec<_>, Vec<_>) = orgs.into_iter().unzip();
        let got = hotels::upsert(conn, source, &items).await?;
        scatter(&mut out, at, got);
    }
    if !users_up.is_empty() {
        let (at, items): (Vec<_>, Vec<_>) = users_up.into_iter().unzip();
        let got = users::upsert(conn, source, &items).await?;
        scatter(&mut out, at, got);
    }
    if !members.is_empty() && !access.invitations.is_empty() {
        // Memberships and invitations both lock hotels FOR KEY SHARE: take them in one ordered
        // pass, so a concurrent hotel delete cannot slip between the two.
        let mut ids: Vec<&str> = members
            .iter()
            .map(|(_, m)| m.value.membership.organization.id.as_str())
            .collect();
        ids.extend(
            access
                .invitations
                .iter()
                .map(|(_, i)| i.value.invitation.organization_id.as_str()),
        );
        hotels::lock_for_children(conn, ids).await?;
    }
    if !members.is_empty() {
        let (at, items): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        let got = memberships::upsert(conn, source, &items).await?;
        scatter(&mut out, at, got);
    }
    access.apply(conn, &mut out).await?;
    Ok(out)
}

/// The roles, permissions and invitations of a batch, with their indexes in it.
#[derive(Default)]
struct AccessModel<'a> {
    roles: Vec<(usize, Item<&'a Role>)>,
    role_dels: Vec<(usize, Item<Deletion<RoleId>>)>,
    permissions: Vec<(usize, Item<&'a crate::clerk::Permission>)>,
    permission_dels: Vec<(usize, Item<Deletion<PermissionId>>)>,
    invitations: Vec<(usize, Item<InvitationWrite<'a>>)>,
}

impl AccessModel<'_> {
    /// Applies them after the hotels, users and memberships, in the lock order of the module
    /// documentation: invitations (hotels), role keys, permissions (their own events, deletions
    /// and the copies embedded in roles, in one statement), roles, permission sets.
    async fn apply(self, conn: &mut PgConnection, out: &mut [Outcome]) -> Result<(), sqlx::Error> {
        let scatter = |out: &mut [Outcome], at: &[usize], got: Vec<Outcome>| {
            for (i, o) in at.iter().zip(got) {
                out[*i] = o;
            }
        };
        if !self.invitations.is_empty() {
            let (at, items): (Vec<_>, Vec<_>) = self.invitations.into_iter().unzip();
            let got = invitations::upsert(conn, &items).await?;
            scatter(out, &at, got);
        }
        if self.roles.is_empty()
            && self.role_dels.is_empty()
            && self.permissions.is_empty()
            && self.permission_dels.is_empty()
        {
            return Ok(());
        }
        roles::lock_keys(conn, self.roles.iter().map(|(_, r)| r.value.key.as_str()).collect()).await?;

        let mut perm_at: Vec<usize> = Vec::new();
        let mut perm_items: Vec<Item<PermissionWrite<'_>>> = Vec::new();
        for (i, p) in &self.permissions {
            perm_at.push(*i);
            perm_items.push(Item {
                job: p.job,
                value: PermissionWrite::Live(p.value),
            });
        }
        for (i, d) in &self.permission_dels {
            perm_at.push(*i);
            perm_items.push(Item {
                job: d.job,
                value: PermissionWrite::Deleted(&d.value),
            });
        }
        let own = perm_items.len();
        for (_, r) in &self.roles {
            perm_items.extend(r.value.permissions.iter().map(|p| Item {
                job: r.job,
                value: PermissionWrite::Live(p),
            }));
        }
        let got = permissions::write(conn, &perm_items).await?;
        scatter(out, &perm_at, got.into_iter().take(own).collect());

        let dropped: Vec<&str> = self.permission_dels.iter().map(|(_, d)| d.value.id.as_str()).collect();
        let mut role_ids: Vec<&str> = self.roles.iter().map(|(_, r)| r.value.id.as_str()).collect();
        role_ids.extend(self.role_dels.iter().map(|(_, d)| d.value.id.as_str()));
        role_ids.sort_unstable();
        role_ids.dedup();
        roles::lock(conn, &role_ids, &dropped).await?;
        permissions::drop_from_roles(conn, &dropped).await?;
        if !self.role_dels.is_empty() {
            let (at, items): (Vec<_>, Vec<_>) = self.role_dels.into_iter().unzip();
            let got = roles::delete(conn, &items).await?;
            scatter(out, &at, got);
        }
        if !self.roles.is_empty() {
            let (at, items): (Vec<_>, Vec<_>) = self.roles.into_iter().unzip();
            let got = roles::upsert(conn, &items).await?;
            scatter(out, &at, got);
        }
        Ok(())
    }
}

/// Applies one event as the consumer would (a batch of one, source `webhook`, no job id) inside
/// the caller's transaction. Ok says what it did; Err is retryable.
pub async fn apply(conn: &mut PgConnection, event: &ClerkEvent) -> Result<Applied, ApplyError> {
    begin(conn, Source::Webhook).await?;
    let outcome = apply_events(
        conn,
        Source::Webhook,
        &[Item {
            job: None,
            value: event,
        }],
    )
    .await?
    .pop()
    .expect("one outcome per event");
    match outcome {
        Outcome::Written => Ok(Applied::Written),
        Outcome::Unchanged => Ok(Applied::Unchanged),
        Outcome::Obsolete => Ok(Applied::Obsolete),
        Outcome::WaitingForHotel(h) => Err(ApplyError::MissingHotel(h)),
        Outcome::UserBusy(u) => Err(ApplyError::UserBusy(u)),
        Outcome::RoleKeyTaken(k) => Err(ApplyError::RoleKeyTaken(k)),
    }
}

/// [`apply`] of an `organization.created`/`updated`.
pub async fn upsert_hotel(conn: &mut PgConnection, org: &Organization) -> Result<Applied, ApplyError> {
    apply(conn, &ClerkEvent::OrganizationUpserted(org.clone())).await
}

/// [`apply`] of an `organization.deleted` at `at`.
pub async fn delete_hotel(conn: &mut PgConnection, id: &HotelId, at: Millis) -> Result<Applied, ApplyError> {
    apply(conn, &ClerkEvent::OrganizationDeleted { id: id.clone(), at }).await
}

/// Converts Clerk milliseconds to a timestamp (clamped to the representable range).
pub fn to_time(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The advisory-lock class (first key) of the per-entity locks: a worker holds the lock of a
/// hotel or user (second key: `hashtext(id)`) while it has that entity's jobs in hand.
pub const ENTITY_LOCK_CLASS: i32 = 0x6f72_6773; // "orgs"

/// Makes the membership jobs waiting for any of `hotels` due now. Jobs another worker holds are
/// skipped: they are running already.
async fn wake_jobs_waiting_for(conn: &mut PgConnection, hotels: &[String]) -> Result<(), sqlx::Error> {
    if hotels.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"
        update jobs set run_at = now()
        where id in (select id from jobs
                     where state = 'available' and waiting_for = any($1) and run_at > now()
                     for update skip locked)
        "#,
        hotels
    )
    .execute(conn)
    .await?;
    Ok(())
}
