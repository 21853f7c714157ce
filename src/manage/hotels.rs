//! Hotels (Clerk organizations): create (with the members Clerk gives it), read, update, delete.

use futures::FutureExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::input::{HotelName, Metadata, Slug};
use super::view::{self, HotelView};
use super::{now_ms, readback, ManageError, Manager};
use crate::clerk::api::{ClerkWriteError, Dated, MetadataChanges, NewOrganization, OrganizationChanges};
use crate::clerk::{ClerkEvent, HotelId, Organization, UserId};

/// `POST /v1/hotels`: a hotel to create, with the user who becomes its `org:admin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHotel {
    pub name: HotelName,
    /// Generated from the name when absent (see [`Slug::generate`]).
    #[serde(default)]
    pub slug: Option<Slug>,
    pub created_by: UserId,
    #[serde(default)]
    pub public_metadata: Option<Metadata>,
    #[serde(default)]
    pub private_metadata: Option<Metadata>,
    #[serde(default)]
    pub max_allowed_memberships: Option<u32>,
}

/// `PATCH /v1/hotels/{id}`: what to change (at least one field).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotelChanges {
    #[serde(default)]
    pub name: Option<HotelName>,
    #[serde(default)]
    pub slug: Option<Slug>,
    #[serde(default)]
    pub max_allowed_memberships: Option<u32>,
    /// Merged into the hotel's public metadata (Clerk's `PATCH …/metadata`).
    #[serde(default)]
    pub public_metadata: Option<Metadata>,
    /// Merged into the private metadata (kept in Clerk only; orgsync does not mirror it).
    #[serde(default)]
    pub private_metadata: Option<Metadata>,
    /// Moves the hotel to another role set (Clerk refuses when a member's role is not in it);
    /// the role set is written to the mirror too when it lacks it.
    #[serde(default)]
    pub role_set_key: Option<crate::clerk::RoleSetKey>,
}

/// How a create finds an earlier attempt of itself.
#[derive(Debug, Clone)]
pub struct CreatePlan {
    /// The slug the organization is created with: the caller's, or one generated once per
    /// logical request (kept with its `Idempotency-Key`, so a repeat uses the same).
    pub slug: Slug,
    /// Look the slug up before creating: an earlier attempt may have created it already.
    pub look_up_first: bool,
}

impl CreatePlan {
    /// The plan of a first attempt: the caller's slug, or a fresh one.
    pub fn first(hotel: &NewHotel) -> Self {
        Self {
            slug: hotel.slug.clone().unwrap_or_else(|| Slug::generate(&hotel.name)),
            look_up_first: false,
        }
    }
}

/// How many times a create is sent at most when its answers are lost.
const MAX_CREATE_SENDS: usize = 3;

/// After a create's answer was lost, a failure to find out (Clerk unavailable, rate limited,
/// out of time) must not read as "nothing was done": the organization may exist. It becomes
/// [`ClerkWriteError::Unknown`] (502 `clerk_outcome_unknown`), which names the slug to retry
/// with; a definite answer (slug taken by another organization, a refusal) stays as it is.
fn outcome_unknown(slug: &Slug, e: ManageError) -> ManageError {
    match e {
        ManageError::Clerk(
            ClerkWriteError::Unavailable { reason }
            | ClerkWriteError::Unknown { reason }
            | ClerkWriteError::Decode { reason },
        ) => ManageError::Clerk(ClerkWriteError::Unknown {
            reason: format!(
                "the organization may have been created with slug {slug} (its answer was lost and the \
                 look-up failed: {reason}); retry with the same Idempotency-Key or slug"
            ),
        }),
        ManageError::Clerk(ClerkWriteError::RateLimited { retry_after }) => {
            ManageError::Clerk(ClerkWriteError::Unknown {
                reason: format!(
                    "the organization may have been created with slug {slug} (its answer was lost and the \
                     look-up was rate limited for {}s); retry with the same Idempotency-Key or slug",
                    retry_after.as_secs()
                ),
            })
        }
        other => other,
    }
}

impl Manager {
    /// Creates the organization in Clerk, then writes it, its memberships (Clerk makes
    /// `created_by` an `org:admin`) and their users (fetched from Clerk when the mirror has no
    /// real row for them; a stub otherwise) in one transaction, and answers the hotel as the
    /// mirror now holds it. A lost answer is never followed by a blind second create: the slug
    /// is looked up first, and an organization holding it under the same name is this create's.
    pub async fn create_hotel(&self, hotel: &NewHotel, plan: &CreatePlan) -> Result<HotelView, ManageError> {
        let deadline = self.deadline();
        let wire = NewOrganization {
            name: hotel.name.as_str().to_owned(),
            slug: plan.slug.as_str().to_owned(),
            created_by: hotel.created_by.as_str().to_owned(),
            public_metadata: hotel.public_metadata.clone().map(Metadata::into_value),
            private_metadata: hotel.private_metadata.clone().map(Metadata::into_value),
            max_allowed_memberships: hotel.max_allowed_memberships,
        };
        let mut org = if plan.look_up_first {
            self.find_created(hotel, &plan.slug, deadline)
                .await
                .map_err(|e| outcome_unknown(&plan.slug, e))?
        } else {
            None
        };
        let mut lost = plan.look_up_first;
        let mut sends = 0;
        while org.is_none() {
            sends += 1;
            match self.clerk.create_organization(&wire, deadline).await {
                Ok(o) => org = Some(o),
                Err(ClerkWriteError::Unknown { reason }) if sends < MAX_CREATE_SENDS => {
                    tracing::warn!(slug = %plan.slug, %reason, "the answer to an organization create was lost; looking it up by slug");
                    lost = true;
                    org = self
                        .find_created(hotel, &plan.slug, deadline)
                        .await
                        .map_err(|e| outcome_unknown(&plan.slug, e))?;
                }
                // After a lost answer, "slug taken" is most likely this very create.
                Err(e @ ClerkWriteError::Rejected { .. }) if lost => {
                    match self
                        .find_created(hotel, &plan.slug, deadline)
                        .await
                        .map_err(|e| outcome_unknown(&plan.slug, e))?
                    {
                        Some(o) => org = Some(o),
                        None => return Err(e.into()),
                    }
                }
                Err(e) if lost => return Err(outcome_unknown(&plan.slug, e.into())),
                Err(e) => return Err(e.into()),
            }
        }
        let org = org.expect("the loop ends with an organization");
        let id = org.value.id.clone();

        let members = match self.clerk.memberships_before(&id, &[], deadline).await {
            Ok(Some(m)) => m.value,
            Ok(None) => Vec::new(),
            Err(e) => return Err(self.mirror_pending("create_hotel", format!("listing its memberships failed: {e}"))),
        };
        let mut events = vec![ClerkEvent::OrganizationUpserted(org.value)];
        let user_ids: Vec<UserId> = members.iter().map(|m| m.public_user_data.user_id.clone()).collect();
        let users = self.real_users(&user_ids, deadline).await;
        events.extend(users.map_err(|e| self.mirror_pending("create_hotel", format!("reading users failed: {e}")))?);
        events.extend(
            members
                .into_iter()
                .filter(|m| m.organization.id == id)
                .map(ClerkEvent::MembershipUpserted),
        );
        self.commit_hotel("create_hotel", &id, &events).await
    }

    /// The hotel as the mirror holds it (with its live members). Err(NotFound) when it has no
    /// row; a deleted hotel is answered with `deleted_at` set.
    pub async fn get_hotel(&self, id: &HotelId) -> Result<HotelView, ManageError> {
        let mut conn = self.pool.acquire().await?;
        view::hotel(&mut conn, id.as_str())
            .await?
            .ok_or_else(|| ManageError::NotFound {
                what: "hotel",
                id: id.to_string(),
            })
    }

    /// Changes the organization in Clerk (name, slug, membership cap; metadata merged), then
    /// writes Clerk's answer.
    pub async fn update_hotel(&self, id: &HotelId, changes: &HotelChanges) -> Result<HotelView, ManageError> {
        let wire = OrganizationChanges {
            name: changes.name.as_ref().map(|n| n.as_str().to_owned()),
            slug: changes.slug.as_ref().map(|s| s.as_str().to_owned()),
            max_allowed_memberships: changes.max_allowed_memberships,
            role_set_key: changes.role_set_key.as_ref().map(|k| k.as_str().to_owned()),
        };
        let metadata = MetadataChanges {
            public_metadata: changes.public_metadata.clone().map(Metadata::into_value),
            private_metadata: changes.private_metadata.clone().map(Metadata::into_value),
        };
        let has_metadata = metadata.public_metadata.is_some() || metadata.private_metadata.is_some();
        if wire.is_empty() && !has_metadata {
            return Err(ManageError::invalid("body", "names nothing to change"));
        }
        let deadline = self.deadline();
        let mut events = Vec::new();
        if !wire.is_empty() {
            let org = self.clerk.update_organization(id, &wire, deadline).await?;
            events.push(ClerkEvent::OrganizationUpserted(org.value));
        }
        if has_metadata {
            match self.clerk.update_organization_metadata(id, &metadata, deadline).await {
                Ok(org) => events.push(ClerkEvent::OrganizationUpserted(org.value)),
                // The first change did happen: the mirror shows it before the error is answered.
                Err(e) if !events.is_empty() => {
                    self.commit_hotel("update_hotel", id, &events).await?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let view = self.commit_hotel("update_hotel", id, &events).await?;
        if let Some(key) = &changes.role_set_key {
            let known = super::rbac_view::role_set(&mut *self.pool.acquire().await?, key.as_str()).await?;
            if known.is_none() {
                self.mirror_role_set(key.as_str()).await;
            }
        }
        Ok(view)
    }

    /// Deletes the organization in Clerk, then tombstones the hotel, ends its memberships and
    /// its invitations, at once, dated by Clerk's `Date` of the answer.
    pub async fn delete_hotel(&self, id: &HotelId) -> Result<HotelView, ManageError> {
        let deadline = self.deadline();
        let gone = self.clerk.delete_organization(id, deadline).await?;
        let at = gone.date_ms_or(now_ms());
        let events = [ClerkEvent::OrganizationDeleted { id: id.clone(), at }];
        self.commit_hotel("delete_hotel", id, &events).await
    }

    /// Applies `events` and answers the hotel `id` as the mirror then holds it.
    async fn commit_hotel(
        &self,
        operation: &'static str,
        id: &HotelId,
        events: &[ClerkEvent],
    ) -> Result<HotelView, ManageError> {
        let key = id.as_str().to_owned();
        let read = readback(move |conn| {
            let key = key.clone();
            async move { view::hotel(conn, &key).await }.boxed()
        });
        self.commit(operation, events, read)
            .await?
            .ok_or_else(|| self.mirror_pending(operation, "the hotel has no row after the write".into()))
    }

    /// The organization holding `slug` when it is this create's (same name); Err(SlugTaken)
    /// when another organization holds it.
    async fn find_created(
        &self,
        hotel: &NewHotel,
        slug: &Slug,
        deadline: Instant,
    ) -> Result<Option<Dated<Organization>>, ManageError> {
        match self.clerk.organization_by_slug(slug.as_str(), deadline).await? {
            Some(o) if o.value.name == hotel.name.as_str() => Ok(Some(o)),
            Some(_) => Err(ManageError::SlugTaken(slug.to_string())),
            None => Ok(None),
        }
    }

    /// `user.*` events for those of `ids` the mirror has no real row for, fetched from Clerk (one
    /// request); none when that fails (memberships bring stubs instead). Err only when the mirror
    /// cannot be read.
    pub(crate) async fn real_users(&self, ids: &[UserId], deadline: Instant) -> Result<Vec<ClerkEvent>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<&str> = ids.iter().map(UserId::as_str).collect();
        let known = view::known_users(&mut *self.pool.acquire().await?, &wanted).await?;
        let missing: Vec<UserId> = ids
            .iter()
            .filter(|u| !known.iter().any(|k| k == u.as_str()))
            .take(crate::clerk::api::MAX_FILTER_IDS)
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        match self.clerk.users_before(&missing, deadline).await {
            Ok(users) => Ok(users.into_iter().map(ClerkEvent::UserUpserted).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "fetching users for the write path failed; stubs stand in");
                Ok(Vec::new())
            }
        }
    }

    /// `hotel`'s organization as an event when the mirror has no row for it (fetched from Clerk;
    /// none when that fails), so that its memberships and invitations can be written now. Err
    /// only when the mirror cannot be read.
    pub(crate) async fn missing_hotel(
        &self,
        hotel: &HotelId,
        deadline: Instant,
    ) -> Result<Vec<ClerkEvent>, sqlx::Error> {
        if view::hotel_known(&mut *self.pool.acquire().await?, hotel.as_str()).await? {
            return Ok(Vec::new());
        }
        Ok(match self.clerk.organization_before(hotel, deadline).await {
            Ok(Some(org)) => vec![ClerkEvent::OrganizationUpserted(org.value)],
            Ok(None) | Err(_) => Vec::new(),
        })
    }

    /// Logs and counts a write Clerk made that the mirror could not take now.
    pub(crate) fn mirror_pending(&self, operation: &'static str, reason: String) -> ManageError {
        metrics::counter!("orgsync_api_mirror_pending_total", "operation" => operation).increment(1);
        tracing::error!(operation, %reason,
            "Clerk made the change but the mirror write failed; the webhook or the next resync converges it");
        ManageError::MirrorPending { operation, reason }
    }
}
