//! A snapshot outranks what is older. A listing that began at T (Clerk's clock, milliseconds)
//! says what Clerk held at T: every event older than T is reflected in it, or superseded. Once
//! the listing is applied, such an event (still queued, waiting for its hotel, or delivered late)
//! may not change what the listing covered, or it would resurrect what Clerk had removed.
//!
//! The marks: `snapshot_marks` holds T of the last complete whole-instance listing of each kind
//! (`hotels`, `users`, `memberships`); `hotels.members_listed_at` holds T of the last listing of
//! one hotel's memberships (the self-heal). The consumer treats a live upsert older than the
//! mark that covers it as obsolete; deletions are not affected (a delete is final anyway).
//!
//! T must not be later than the moment the listing actually began in Clerk, or an update made
//! just after that moment (and possibly missed by a page read earlier) would be dropped: the
//! resync takes it from Clerk's own clock (the `Date` of a response received before the
//! listing's first request) minus [`CLOCK_MARGIN_MS`], never from orgsync's clock.

use sqlx::PgConnection;

use crate::clerk::HotelId;

/// Subtracted from Clerk's `Date` header (whole seconds, truncated) to get T: covers the
/// difference between the clock that stamps responses and the one that stamps `updated_at`.
/// The cost of the margin is small: only a stale event dated within it can still apply.
pub const CLOCK_MARGIN_MS: i64 = 5_000;

/// What a whole-instance listing covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Hotels,
    Users,
    Memberships,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hotels => "hotels",
            Self::Users => "users",
            Self::Memberships => "memberships",
        }
    }
}

/// T of the last complete listing of `scope`, if any.
pub async fn mark(conn: &mut PgConnection, scope: Scope) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!("select listed_at from snapshot_marks where scope = $1", scope.as_str())
        .fetch_optional(conn)
        .await
}

/// Records that a complete listing of `scope` began at `listed_at` (never moves a mark back).
/// Call it before writing what the listing holds: jobs the writes wake must already see it.
pub async fn record(conn: &mut PgConnection, scope: Scope, listed_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        insert into snapshot_marks (scope, listed_at) values ($1, $2)
        on conflict (scope) do update set listed_at = greatest(snapshot_marks.listed_at, excluded.listed_at),
                                          updated_at = now()
        "#,
        scope.as_str(),
        listed_at
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that every membership of `hotel` was listed from `listed_at` on (when the hotel has
/// a row). Call it in the transaction that writes the hotel, before its memberships.
pub async fn record_hotel_members(conn: &mut PgConnection, hotel: &HotelId, listed_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update hotels set members_listed_at = greatest(members_listed_at, $2) where id = $1",
        hotel.as_str(),
        listed_at
    )
    .execute(conn)
    .await?;
    Ok(())
}
