//! Memberships: add a member, change their role, remove them, list a hotel's members.

use futures::FutureExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::input::RoleKey;
use super::view::{self, MemberView};
use super::{now_ms, readback, ManageError, Manager};
use crate::clerk::api::{ClerkWriteError, Dated, MembershipAnswer};
use crate::clerk::events::{OrganizationRef, PublicUserData};
use crate::clerk::{ClerkEvent, HotelId, Membership, UserId};

/// `POST /v1/hotels/{id}/members`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub user_id: UserId,
    pub role: RoleKey,
}

/// `PATCH /v1/hotels/{id}/members/{user_id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: RoleKey,
}

/// How many times a membership create is sent at most when its answers are lost.
const MAX_CREATE_SENDS: usize = 3;

impl Manager {
    /// Adds `user` to `hotel` with `role` in Clerk, then writes the membership (and the user,
    /// fetched when the mirror has no real row for them; the hotel from the answer when the
    /// mirror has none). A lost answer is followed by a look-up of the user's membership, never
    /// by a blind second create.
    pub async fn add_member(&self, hotel: &HotelId, user: &UserId, role: &RoleKey) -> Result<MemberView, ManageError> {
        let deadline = self.deadline();
        // Read before Clerk is asked: a mirror that cannot be read fails the request unsent.
        let users = self.real_users(std::slice::from_ref(user), deadline).await?;
        let mut answer: Option<Dated<MembershipAnswer>> = None;
        let mut lost = false;
        let mut sends = 0;
        while answer.is_none() {
            sends += 1;
            match self.clerk.create_membership(hotel, user, role.as_str(), deadline).await {
                Ok(a) => answer = Some(a),
                Err(ClerkWriteError::Unknown { reason }) if sends < MAX_CREATE_SENDS => {
                    tracing::warn!(hotel = %hotel, user = %user, %reason, "the answer to a membership create was lost; looking it up");
                    lost = true;
                    answer = self.find_membership(hotel, user, deadline).await?;
                }
                // After a lost answer, "already a member" is most likely this very create.
                Err(e @ ClerkWriteError::Rejected { .. }) if lost => {
                    match self.find_membership(hotel, user, deadline).await? {
                        Some(a) => answer = Some(a),
                        None => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let answer = answer.expect("the loop ends with an answer").value;
        let mut events = hotel_of(&answer);
        events.extend(users);
        events.push(ClerkEvent::MembershipUpserted(answer.membership));
        self.commit_member("add_member", hotel, user, &events).await
    }

    /// Changes `user`'s role in `hotel` in Clerk, then writes the membership Clerk answers.
    pub async fn set_member_role(
        &self,
        hotel: &HotelId,
        user: &UserId,
        role: &RoleKey,
    ) -> Result<MemberView, ManageError> {
        let deadline = self.deadline();
        let answer = self
            .clerk
            .update_membership(hotel, user, role.as_str(), deadline)
            .await?
            .value;
        let mut events = hotel_of(&answer);
        events.push(ClerkEvent::MembershipUpserted(answer.membership));
        self.commit_member("set_member_role", hotel, user, &events).await
    }

    /// Removes `user` from `hotel` in Clerk, then ends the membership in the mirror (dated by
    /// Clerk's `Date` of the answer, or the membership's own `updated_at` when later), so the
    /// change feed has its `deleted` row before this answers.
    pub async fn remove_member(&self, hotel: &HotelId, user: &UserId) -> Result<MemberView, ManageError> {
        let deadline = self.deadline();
        let gone = self.clerk.delete_membership(hotel, user, deadline).await?;
        let at = gone.date_ms_or(now_ms());
        let events = match gone.value {
            Some(answer) => {
                let at = at.max(answer.membership.updated_at);
                let mut events = hotel_of(&answer);
                events.push(ClerkEvent::MembershipDeleted {
                    membership: answer.membership,
                    at,
                });
                events
            }
            // A repeated request found it gone: end the membership the mirror knows.
            None => {
                let known = match self.pool.acquire().await {
                    Ok(mut conn) => known_membership(&mut conn, hotel, user).await,
                    Err(e) => Err(e),
                };
                let known = known
                    .map_err(|e| self.mirror_pending("remove_member", format!("reading the membership failed: {e}")))?;
                known
                    .into_iter()
                    .map(|membership| ClerkEvent::MembershipDeleted {
                        at: at.max(membership.updated_at),
                        membership,
                    })
                    .collect()
            }
        };
        self.commit_member("remove_member", hotel, user, &events).await
    }

    /// The members of `hotel` as the mirror holds them (with `removed`, ended ones too).
    /// Err(NotFound) when the mirror has no row for the hotel.
    pub async fn list_members(&self, hotel: &HotelId, removed: bool) -> Result<Vec<MemberView>, ManageError> {
        let mut conn = self.pool.acquire().await?;
        if !view::hotel_known(&mut conn, hotel.as_str()).await? {
            return Err(ManageError::NotFound {
                what: "hotel",
                id: hotel.to_string(),
            });
        }
        Ok(view::members(&mut conn, hotel.as_str(), removed).await?)
    }

    /// The membership of `user` in `hotel` as Clerk lists it, if any.
    async fn find_membership(
        &self,
        hotel: &HotelId,
        user: &UserId,
        deadline: Instant,
    ) -> Result<Option<Dated<MembershipAnswer>>, ManageError> {
        let listed = self
            .clerk
            .memberships_before(hotel, std::slice::from_ref(user), deadline)
            .await?;
        Ok(listed.and_then(|l| {
            let date = l.date;
            l.value
                .into_iter()
                .find(|m| &m.public_user_data.user_id == user)
                .map(|membership| Dated {
                    value: MembershipAnswer {
                        membership,
                        organization: None,
                    },
                    date,
                })
        }))
    }

    /// Applies `events` and answers `user`'s membership of `hotel` as the mirror then holds it.
    async fn commit_member(
        &self,
        operation: &'static str,
        hotel: &HotelId,
        user: &UserId,
        events: &[ClerkEvent],
    ) -> Result<MemberView, ManageError> {
        let (h, u) = (hotel.as_str().to_owned(), user.as_str().to_owned());
        let read = readback(move |conn| {
            let (h, u) = (h.clone(), u.clone());
            async move { view::member(conn, &h, &u).await }.boxed()
        });
        self.commit(operation, events, read)
            .await?
            .ok_or_else(|| self.mirror_pending(operation, "the hotel of the membership is not in the mirror".into()))
    }
}

/// The organization a membership answer embeds, as an event (newer-wins makes it harmless when
/// the mirror is ahead; it brings the hotel when the mirror has none yet).
fn hotel_of(answer: &MembershipAnswer) -> Vec<ClerkEvent> {
    answer
        .organization
        .iter()
        .filter(|o| o.id == answer.membership.organization.id)
        .cloned()
        .map(ClerkEvent::OrganizationUpserted)
        .collect()
}

/// The mirror's live membership of `user` in `hotel`, as the Clerk object it was written from.
async fn known_membership(
    conn: &mut sqlx::PgConnection,
    hotel: &HotelId,
    user: &UserId,
) -> Result<Option<Membership>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select clerk_membership_id, role, role_name, permissions, created_at, updated_at
           from memberships where hotel_id = $1 and user_id = $2 and deleted_at is null"#,
        hotel.as_str(),
        user.as_str()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Membership {
        id: r.clerk_membership_id,
        role: r.role,
        role_name: r.role_name,
        permissions: r.permissions,
        organization: OrganizationRef { id: hotel.clone() },
        public_user_data: PublicUserData {
            user_id: user.clone(),
            first_name: None,
            last_name: None,
            image_url: None,
            identifier: None,
        },
        created_at: r.created_at.timestamp_millis(),
        updated_at: r.updated_at.timestamp_millis(),
    }))
}
