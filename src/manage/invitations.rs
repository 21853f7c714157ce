//! Invitations: invite one person or up to ten at once, revoke an invitation.

use futures::FutureExt;
use serde::Deserialize;

use super::input::{EmailAddress, ExpiresInDays, Metadata, RedirectUrl, RoleKey, MAX_BULK_INVITATIONS};
use super::view::{self, InvitationView};
use super::{now_ms, readback, ManageError, Manager};
use crate::clerk::api::{ClerkWriteError, Dated, NewInvitation};
use crate::clerk::{ClerkEvent, HotelId, Invitation, InvitationId, UserId};

/// `POST /v1/hotels/{id}/invitations` (and each item of the bulk form).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    pub email_address: EmailAddress,
    pub role: RoleKey,
    /// An admin of the hotel, named as the inviter.
    #[serde(default)]
    pub inviter_user_id: Option<UserId>,
    #[serde(default)]
    pub redirect_url: Option<RedirectUrl>,
    #[serde(default)]
    pub expires_in_days: Option<ExpiresInDays>,
    /// Whether Clerk emails the invitation (its default: yes).
    #[serde(default)]
    pub notify: Option<bool>,
    #[serde(default)]
    pub public_metadata: Option<Metadata>,
    #[serde(default)]
    pub private_metadata: Option<Metadata>,
}

impl NewInvite {
    /// An invitation with only the two fields it needs.
    pub fn new(email_address: EmailAddress, role: RoleKey) -> Self {
        Self {
            email_address,
            role,
            inviter_user_id: None,
            redirect_url: None,
            expires_in_days: None,
            notify: None,
            public_metadata: None,
            private_metadata: None,
        }
    }

    fn wire(&self) -> NewInvitation {
        NewInvitation {
            email_address: self.email_address.as_str().to_owned(),
            role: self.role.as_str().to_owned(),
            inviter_user_id: self.inviter_user_id.as_ref().map(|u| u.as_str().to_owned()),
            redirect_url: self.redirect_url.as_ref().map(|u| u.as_str().to_owned()),
            expires_in_days: self.expires_in_days.map(ExpiresInDays::get),
            notify: self.notify,
            public_metadata: self.public_metadata.clone().map(Metadata::into_value),
            private_metadata: self.private_metadata.clone().map(Metadata::into_value),
        }
    }
}

/// `POST /v1/hotels/{id}/invitations/{invitation_id}/revoke`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// An admin of the hotel, named as the one revoking.
    #[serde(default)]
    pub requesting_user_id: Option<UserId>,
}

impl Manager {
    /// Invites one person to `hotel` in Clerk, then writes the invitation (and the hotel, fetched
    /// from Clerk, when the mirror has none). A create whose answer was lost is not sent again:
    /// it fails with Clerk's "outcome unknown" (look at the hotel's invitations before retrying).
    pub async fn invite(&self, hotel: &HotelId, invite: &NewInvite) -> Result<InvitationView, ManageError> {
        let deadline = self.deadline();
        let mut events = self.missing_hotel(hotel, deadline).await?;
        let made = self.clerk.create_invitation(hotel, &invite.wire(), deadline).await?;
        events.push(written(made.value, made.date));
        let mut views = self.commit_invitations("invite", &events).await?;
        views
            .pop()
            .ok_or_else(|| self.mirror_pending("invite", "the invitation has no row after the write".into()))
    }

    /// Invites 1 to 10 people to `hotel` in one Clerk request, then writes the invitations.
    pub async fn invite_many(
        &self,
        hotel: &HotelId,
        invites: &[NewInvite],
    ) -> Result<Vec<InvitationView>, ManageError> {
        if invites.is_empty() || invites.len() > MAX_BULK_INVITATIONS {
            return Err(ManageError::invalid(
                "invitations",
                format!("must hold 1 to {MAX_BULK_INVITATIONS} invitations (Clerk's limit per request)"),
            ));
        }
        let deadline = self.deadline();
        let mut events = self.missing_hotel(hotel, deadline).await?;
        let wire: Vec<NewInvitation> = invites.iter().map(NewInvite::wire).collect();
        let made = self.clerk.create_invitations(hotel, &wire, deadline).await?;
        let date = made.date;
        events.extend(made.value.into_iter().map(|i| written(i, date)));
        self.commit_invitations("invite_many", &events).await
    }

    /// Revokes a pending invitation in Clerk, then writes it. A revoke whose answer was lost is
    /// read back instead of sent again (Clerk refuses to revoke twice).
    pub async fn revoke_invitation(
        &self,
        hotel: &HotelId,
        invitation: &InvitationId,
        revocation: &Revocation,
    ) -> Result<InvitationView, ManageError> {
        let deadline = self.deadline();
        let mut events = self.missing_hotel(hotel, deadline).await?;
        let revoked = match self
            .clerk
            .revoke_invitation(hotel, invitation, revocation.requesting_user_id.as_ref(), deadline)
            .await
        {
            Ok(r) => r,
            Err(ClerkWriteError::Unknown { reason }) => {
                tracing::warn!(invitation = %invitation, %reason, "the answer to a revoke was lost; reading the invitation back");
                match self.clerk.invitation_before(hotel, invitation, deadline).await? {
                    Some(i) if i.value.status == "revoked" => i,
                    _ => return Err(ClerkWriteError::Unknown { reason }.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        events.push(written(revoked.value, revoked.date));
        let mut views = self.commit_invitations("revoke_invitation", &events).await?;
        views
            .pop()
            .ok_or_else(|| self.mirror_pending("revoke_invitation", "the invitation has no row after the write".into()))
    }

    async fn commit_invitations(
        &self,
        operation: &'static str,
        events: &[ClerkEvent],
    ) -> Result<Vec<InvitationView>, ManageError> {
        let ids: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                ClerkEvent::InvitationWritten { invitation, .. } => Some(invitation.id.as_str().to_owned()),
                _ => None,
            })
            .collect();
        let read = readback(move |conn| {
            let ids = ids.clone();
            async move { view::invitations(conn, &ids).await }.boxed()
        });
        self.commit(operation, events, read).await
    }
}

/// An invitation answer as the rule book takes it: versioned by its `updated_at`, else by the
/// answer's `Date`.
fn written(invitation: Invitation, date: Option<chrono::DateTime<chrono::Utc>>) -> ClerkEvent {
    let version = invitation
        .updated_at
        .unwrap_or_else(|| Dated { value: (), date }.date_ms_or(now_ms()));
    ClerkEvent::InvitationWritten { invitation, version }
}
