//! The one place that decides what a Clerk object or event does to the rows. The consumer,
//! the resync and the self-heal all call these functions, so the guarantees live here:
//!
//! - **Newer wins.** Every row keeps `clerk_version` (the object's `updated_at`, or the event
//!   time for a delete); a write with an older or equal version changes nothing, so
//!   duplicates and out-of-order deliveries are harmless.
//! - **Tombstones are final.** Clerk never reuses organization or user ids, so a deleted hotel or
//!   user is never revived and its memberships end with it. A deleted membership is revived only
//!   by a *different*, newer Clerk membership (the person was invited again).
//! - **Parents first.** A membership needs its hotel row: missing → [`ApplyError::MissingHotel`]
//!   (retry later); tombstoned → the membership is obsolete.
//!
//! Concurrency: each write is one conditional `INSERT ... ON CONFLICT ... WHERE` whose condition
//! Postgres re-checks against the latest row after waiting for a concurrent writer. A membership
//! holds `FOR KEY SHARE` on its hotel and user rows, and a delete takes `FOR UPDATE` on the row it
//! tombstones (the one lock that conflicts with `KEY SHARE`), so a concurrent delete cannot slip
//! its cascade past a membership being written. Updates of a hotel or user take only `NO KEY
//! UPDATE`, which does not conflict with `KEY SHARE`: memberships and renames never wait for each
//! other, which keeps workers from stalling (and deadlocking) on busy hotels.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::clerk::events::{Millis, PublicUserData};
use crate::clerk::{ClerkEvent, HotelId, Membership, Organization, User, UserId};

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A row was inserted or changed.
    Written,
    /// Nothing changed: the stored version is newer or equal, or the row is a tombstone.
    Unchanged,
    /// The membership's hotel or user is deleted, so the membership no longer matters.
    Obsolete,
}

/// Why an event could not be applied now. Both kinds are retryable: the same event may apply
/// later.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("hotel {0} does not exist yet")]
    MissingHotel(HotelId),
    /// The user has no row yet and another worker holds that user's events right now (most
    /// likely creating it): writing a stub now could deadlock with it, and waiting a moment
    /// makes the stub unnecessary.
    #[error("user {0} is being written by another worker")]
    UserBusy(UserId),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ApplyError {
    /// The hotel id this failure waits for, if any.
    pub fn waiting_for(&self) -> Option<&HotelId> {
        match self {
            Self::MissingHotel(id) => Some(id),
            Self::UserBusy(_) | Self::Database(_) => None,
        }
    }
}

/// Applies one event inside the caller's transaction. `job` is the job the event came in
/// (written to every row it changes as `last_job_id`; `None` for the resync and the self-heal).
/// Ok says what it did; Err is retryable and leaves the caller to roll back its savepoint.
pub async fn apply(conn: &mut PgConnection, event: &ClerkEvent, job: Option<i64>) -> Result<Applied, ApplyError> {
    match event {
        ClerkEvent::OrganizationUpserted(org) => Ok(upsert_hotel(conn, org, job).await?),
        ClerkEvent::OrganizationDeleted { id, at } => Ok(delete_hotel(conn, id, *at, job).await?),
        ClerkEvent::UserUpserted(user) => Ok(upsert_user(conn, user, job).await?),
        ClerkEvent::UserDeleted { id, at } => Ok(delete_user(conn, id, *at, job).await?),
        ClerkEvent::MembershipUpserted(m) => upsert_membership(conn, m, None, job).await,
        ClerkEvent::MembershipDeleted { membership, at } => upsert_membership(conn, membership, Some(*at), job).await,
    }
}

/// Converts Clerk milliseconds to a timestamp (clamped to the representable range).
pub fn to_time(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn written(rows: u64) -> Applied {
    if rows > 0 {
        Applied::Written
    } else {
        Applied::Unchanged
    }
}

/// Inserts or updates a hotel when `org` is newer than the row and the row is not a tombstone.
pub async fn upsert_hotel(
    conn: &mut PgConnection,
    org: &Organization,
    job: Option<i64>,
) -> Result<Applied, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        insert into hotels (id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version, last_job_id)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        on conflict (id) do update set
            name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
            public_metadata = excluded.public_metadata, created_at = excluded.created_at,
            updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
            last_job_id = excluded.last_job_id
        where hotels.deleted_at is null and hotels.clerk_version < excluded.clerk_version
        "#,
        org.id.as_str(),
        org.name,
        org.slug,
        org.image_url,
        org.public_metadata,
        to_time(org.created_at),
        to_time(org.updated_at),
        org.updated_at,
        job,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if rows > 0 {
        wake_jobs_waiting_for(conn, &org.id).await?;
    }
    Ok(written(rows))
}

/// Tombstones a hotel (inserting the tombstone if the hotel was never seen, so a late
/// `organization.created` cannot create it) and ends its live memberships.
pub async fn delete_hotel(
    conn: &mut PgConnection,
    id: &HotelId,
    at: Millis,
    job: Option<i64>,
) -> Result<Applied, sqlx::Error> {
    // Wait for memberships being written under this hotel (they hold KEY SHARE), and make new ones
    // wait for this delete: then the cascade below sees every membership committed before it.
    sqlx::query!("select 1 as locked from hotels where id = $1 for update", id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let rows = sqlx::query!(
        r#"
        insert into hotels (id, name, created_at, updated_at, deleted_at, clerk_version, last_job_id)
        values ($1, '', $2, $2, $2, $3, $4)
        on conflict (id) do update set
            deleted_at = excluded.deleted_at,
            clerk_version = greatest(hotels.clerk_version, excluded.clerk_version),
            last_job_id = excluded.last_job_id
        where hotels.deleted_at is null
        "#,
        id.as_str(),
        to_time(at),
        at,
        job,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if rows > 0 {
        sqlx::query!(
            "update memberships set deleted_at = $2, last_job_id = $3 where hotel_id = $1 and deleted_at is null",
            id.as_str(),
            to_time(at),
            job
        )
        .execute(&mut *conn)
        .await?;
        // Memberships waiting for this hotel are now obsolete: let them finish promptly.
        wake_jobs_waiting_for(conn, id).await?;
    }
    Ok(written(rows))
}

/// Inserts or updates a user when `user` is newer than the row (a stub has version 0) and the
/// row is not a tombstone.
pub async fn upsert_user(conn: &mut PgConnection, user: &User, job: Option<i64>) -> Result<Applied, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version, last_job_id)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        on conflict (id) do update set
            email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
            image_url = excluded.image_url, created_at = excluded.created_at,
            updated_at = excluded.updated_at, clerk_version = excluded.clerk_version,
            last_job_id = excluded.last_job_id
        where users.deleted_at is null and users.clerk_version < excluded.clerk_version
        "#,
        user.id.as_str(),
        user.primary_email(),
        user.first_name,
        user.last_name,
        user.image_url,
        to_time(user.created_at),
        to_time(user.updated_at),
        user.updated_at,
        job,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written(rows))
}

/// Tombstones a user (inserting the tombstone if never seen) and ends their live memberships.
pub async fn delete_user(
    conn: &mut PgConnection,
    id: &UserId,
    at: Millis,
    job: Option<i64>,
) -> Result<Applied, sqlx::Error> {
    // As for hotels: serialise with memberships being written for this user.
    sqlx::query!("select 1 as locked from users where id = $1 for update", id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let rows = sqlx::query!(
        r#"
        insert into users (id, created_at, updated_at, deleted_at, clerk_version, last_job_id)
        values ($1, $2, $2, $2, $3, $4)
        on conflict (id) do update set
            deleted_at = excluded.deleted_at,
            clerk_version = greatest(users.clerk_version, excluded.clerk_version),
            last_job_id = excluded.last_job_id
        where users.deleted_at is null
        "#,
        id.as_str(),
        to_time(at),
        at,
        job,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if rows > 0 {
        sqlx::query!(
            "update memberships set deleted_at = $2, last_job_id = $3 where user_id = $1 and deleted_at is null",
            id.as_str(),
            to_time(at),
            job
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(written(rows))
}

/// Upserts a membership (`deleted_at = None`) or writes its tombstone (`Some(event time)`).
///
/// Err(MissingHotel) when the hotel has no row yet. Ok(Obsolete) when the hotel or user is a
/// tombstone. A user with no row gets a stub from `public_user_data` first.
pub async fn upsert_membership(
    conn: &mut PgConnection,
    m: &Membership,
    deleted_at: Option<Millis>,
    job: Option<i64>,
) -> Result<Applied, ApplyError> {
    let hotel = &m.organization.id;
    let hotel_deleted = sqlx::query_scalar!(
        r#"select deleted_at is not null as "deleted!" from hotels where id = $1 for key share"#,
        hotel.as_str()
    )
    .fetch_optional(&mut *conn)
    .await?;
    match hotel_deleted {
        None => return Err(ApplyError::MissingHotel(hotel.clone())),
        Some(true) => return Ok(Applied::Obsolete),
        Some(false) => {}
    }
    match ensure_user(conn, &m.public_user_data, m.created_at, job).await? {
        UserState::Live => {}
        UserState::Deleted => return Ok(Applied::Obsolete),
        UserState::Busy => return Err(ApplyError::UserBusy(m.public_user_data.user_id.clone())),
    }

    let version = deleted_at.unwrap_or(m.updated_at).max(m.updated_at);
    let rows = sqlx::query!(
        r#"
        insert into memberships
            (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, deleted_at, clerk_version, last_job_id)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        on conflict (hotel_id, user_id) do update set
            last_job_id = excluded.last_job_id,
            clerk_membership_id = excluded.clerk_membership_id,
            role = excluded.role,
            created_at = excluded.created_at,
            updated_at = excluded.updated_at,
            -- The earliest known removal of the same membership is its removal time.
            deleted_at = case
                when excluded.deleted_at is null then null
                when memberships.clerk_membership_id = excluded.clerk_membership_id
                    then least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at)
                else excluded.deleted_at end,
            clerk_version = greatest(memberships.clerk_version, excluded.clerk_version)
        where
            -- a newer state of the same live membership, or of a different (newer) membership
            (memberships.clerk_version < excluded.clerk_version
                and (memberships.deleted_at is null
                     or memberships.clerk_membership_id <> excluded.clerk_membership_id))
            -- or the removal of this very membership, whatever order it arrives in
            or (excluded.deleted_at is not null
                and memberships.clerk_membership_id = excluded.clerk_membership_id
                and memberships.deleted_at is distinct from
                    least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at))
        "#,
        hotel.as_str(),
        m.public_user_data.user_id.as_str(),
        m.id,
        m.role,
        to_time(m.created_at),
        to_time(m.updated_at),
        deleted_at.map(to_time),
        version,
        job,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written(rows))
}

#[derive(Debug, PartialEq, Eq)]
enum UserState {
    Live,
    Deleted,
    /// No row, and another worker holds the user's events.
    Busy,
}

/// The advisory-lock class (first key) of the per-entity locks: a worker holds the lock of a
/// hotel or user (second key: `hashtext(id)`) while it has that entity's jobs in hand.
pub const ENTITY_LOCK_CLASS: i32 = 0x6f72_6773; // "orgs"

/// Makes sure a user row exists for a membership, creating a version-0 stub from
/// `public_user_data` (which any `user.*` event outranks), and holds `KEY SHARE` on it against a
/// concurrent delete until the caller commits.
async fn ensure_user(
    conn: &mut PgConnection,
    data: &PublicUserData,
    at: Millis,
    job: Option<i64>,
) -> Result<UserState, sqlx::Error> {
    let state = |deleted: bool| if deleted { UserState::Deleted } else { UserState::Live };
    let user = data.user_id.as_str();
    let deleted = sqlx::query_scalar!(
        r#"select deleted_at is not null as "deleted!" from users where id = $1 for key share"#,
        user
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(deleted) = deleted {
        return Ok(state(deleted));
    }
    // Insert the stub only while holding the user's entity lock: a worker applying that user's
    // own events could otherwise be inserting the same row, each waiting for the other.
    let free = sqlx::query_scalar!(
        r#"select pg_try_advisory_xact_lock($1, hashtext($2)) as "free!""#,
        ENTITY_LOCK_CLASS,
        user
    )
    .fetch_one(&mut *conn)
    .await?;
    if !free {
        return Ok(UserState::Busy);
    }
    sqlx::query!(
        r#"
        insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version, last_job_id)
        values ($1, $2, $3, $4, $5, $6, $6, 0, $7)
        on conflict (id) do nothing
        "#,
        user,
        data.identifier,
        data.first_name,
        data.last_name,
        data.image_url,
        to_time(at),
        job,
    )
    .execute(&mut *conn)
    .await?;
    let deleted = sqlx::query_scalar!(
        r#"select deleted_at is not null as "deleted!" from users where id = $1 for key share"#,
        user
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(state(deleted))
}

/// Makes the membership jobs waiting for `hotel` due now. Jobs another worker holds are
/// skipped: they are running already.
async fn wake_jobs_waiting_for(conn: &mut PgConnection, hotel: &HotelId) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        update jobs set run_at = now()
        where id in (select id from jobs
                     where state = 'available' and waiting_for = $1 and run_at > now()
                     for update skip locked)
        "#,
        hotel.as_str()
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
