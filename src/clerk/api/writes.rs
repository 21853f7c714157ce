//! The Backend API's writes, for the write path (`crate::manage`): organizations, memberships
//! and invitations, each answering the parsed object with Clerk's `Date` header (its clock at the
//! answer, whole seconds, truncated), and the few reads the write path needs, all bounded by a
//! deadline.
//!
//! Contract of every call here (unlike the resync's reads in `mod.rs`, which wait as long as
//! their retry policy allows):
//! - it never runs past `deadline`: a request slot that would free up later (the process-wide
//!   budget, shared with the resync) or a `Retry-After` reaching past it ends the call with
//!   [`ClerkWriteError::RateLimited`] carrying how long to wait, which the API answers as 503
//!   with `Retry-After`;
//! - a 429 is always retried (Clerk did nothing), after `Retry-After`, and pauses every request
//!   of the process meanwhile;
//! - [`Repeat::Safe`] calls (reads, updates, deletes, which mean the same when repeated) retry 5xx
//!   answers, timeouts and connection failures with backoff until the deadline;
//! - [`Repeat::Never`] calls (creates: Clerk has no idempotency keys) are sent again only when
//!   the request certainly never reached Clerk (the connection could not be opened) or Clerk
//!   refused it with a 429; a timeout, a connection cut after sending or a 5xx ends the call with
//!   [`ClerkWriteError::Unknown`], and the caller looks the object up before creating again;
//! - Clerk's 4xx come back as [`ClerkWriteError::Rejected`] / [`ClerkWriteError::NotFound`] with
//!   Clerk's status and error code; 401/403 as [`ClerkWriteError::Auth`].
//!
//! Nothing here logs or returns the key or a body; `orgsync_clerk_writes_total{operation,
//! outcome}` counts every write by its final outcome.

use std::time::Duration;

use backon::BackoffBuilder;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::response::{decode, error_code, error_message, is_clerk_error, parse_retry_after, transport_reason};
use super::{ClerkClient, PAGE_LIMIT};
use crate::clerk::events::{Membership, Organization, User};
use crate::clerk::{HotelId, Invitation, InvitationId, UserId};

/// An answer and Clerk's clock when it was given.
#[derive(Debug, Clone)]
pub struct Dated<T> {
    pub value: T,
    /// The answer's `Date` header (None when missing or unreadable).
    pub date: Option<DateTime<Utc>>,
}

impl<T> Dated<T> {
    /// Clerk's clock at the answer in milliseconds, or `fallback` without a readable `Date`.
    pub fn date_ms_or(&self, fallback: i64) -> i64 {
        self.date.map_or(fallback, |d| d.timestamp_millis())
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Dated<U> {
        Dated {
            value: f(self.value),
            date: self.date,
        }
    }
}

/// Why a write (or one of the write path's reads) failed.
#[derive(Debug, thiserror::Error)]
pub enum ClerkWriteError {
    /// A 4xx other than 401/403/404/429: Clerk refused the request (slug taken, validation).
    #[error("Clerk refused the request ({status}): {message}")]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// 404 in Clerk's error shape: no such object.
    #[error("Clerk has no such object: {message}")]
    NotFound { code: Option<String>, message: String },
    /// 401/403: the secret key is wrong, revoked or not allowed to do this.
    #[error("Clerk refused CLERK_SECRET_KEY ({status}): {message}")]
    Auth { status: u16, message: String },
    /// No request slot (or Clerk's `Retry-After`) before the deadline: try again after
    /// `retry_after`. Nothing was done.
    #[error("Clerk's rate limit leaves no request before the deadline (retry in {}s)", retry_after.as_secs_f64().ceil())]
    RateLimited { retry_after: Duration },
    /// Clerk could not be reached or kept failing until the deadline; for a create, only when the
    /// request certainly did not reach it. Nothing was done (a safe request may have been, which
    /// repeating it undoes nothing).
    #[error("Clerk is unavailable: {reason}")]
    Unavailable { reason: String },
    /// A create whose answer was lost (timeout, connection cut after sending, 5xx): it may or may
    /// not have taken effect.
    #[error("Clerk's answer was lost ({reason}); the request may have taken effect")]
    Unknown { reason: String },
    /// A 2xx whose body is not the object promised.
    #[error("Clerk's answer is not the expected JSON: {reason}")]
    Decode { reason: String },
}

impl ClerkWriteError {
    /// The `outcome` label of `orgsync_clerk_writes_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::NotFound { .. } => "not_found",
            Self::Auth { .. } => "auth",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Unknown { .. } => "unknown",
            Self::Decode { .. } => "decode",
        }
    }
}

/// Whether a request may be sent again after an answer that says nothing of its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Repeat {
    /// Reads, updates and deletes: repeating them changes nothing more.
    Safe,
    /// Creates: a second one would make a second object.
    Never,
}

/// One request of the write path.
pub(super) struct Call<'a> {
    pub method: Method,
    /// Low-cardinality name for metrics and errors, e.g. `create_organization`.
    pub label: &'static str,
    /// Starts with `/v1/`.
    pub path: String,
    pub query: &'a [(&'a str, String)],
    pub body: Option<Bytes>,
    pub repeat: Repeat,
    /// Counted in `orgsync_clerk_writes_total` (reads are not).
    pub write: bool,
}

/// `POST /v1/organizations`.
#[derive(Debug, Clone, Serialize)]
pub struct NewOrganization {
    pub name: String,
    /// Always sent: the write path finds a create whose answer was lost by it.
    pub slug: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_allowed_memberships: Option<u32>,
}

/// `PATCH /v1/organizations/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrganizationChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_allowed_memberships: Option<u32>,
}

impl OrganizationChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.slug.is_none() && self.max_allowed_memberships.is_none()
    }
}

/// `PATCH /v1/organizations/{id}/metadata`: merged into the stored metadata.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_metadata: Option<serde_json::Value>,
}

/// One invitation of `POST /v1/organizations/{id}/invitations` (or of the bulk form).
#[derive(Debug, Clone, Serialize)]
pub struct NewInvitation {
    pub email_address: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inviter_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_metadata: Option<serde_json::Value>,
}

/// A membership as the Backend API answers it: the membership, and the organization it embeds
/// (whole, unlike most webhooks' needs; None when it does not parse as one).
#[derive(Debug, Clone)]
pub struct MembershipAnswer {
    pub membership: Membership,
    pub organization: Option<Organization>,
}

impl ClerkClient {
    /// `POST /v1/organizations`. Never re-sent after a lost answer ([`ClerkWriteError::Unknown`]):
    /// look it up with [`Self::organization_by_slug`] first.
    pub async fn create_organization(
        &self,
        org: &NewOrganization,
        deadline: Instant,
    ) -> Result<Dated<Organization>, ClerkWriteError> {
        self.send_json(
            Call {
                method: Method::POST,
                label: "create_organization",
                path: "/v1/organizations".into(),
                query: &[],
                body: Some(to_body(org)),
                repeat: Repeat::Never,
                write: true,
            },
            deadline,
        )
        .await
    }

    /// `GET /v1/organizations/{slug}`: the organization holding `slug`, if any (that endpoint
    /// also matches ids; an answer with another slug is None).
    pub async fn organization_by_slug(
        &self,
        slug: &str,
        deadline: Instant,
    ) -> Result<Option<Dated<Organization>>, ClerkWriteError> {
        let got: Option<Dated<Organization>> = found(
            self.send_json(
                Call {
                    method: Method::GET,
                    label: "organization",
                    path: format!("/v1/organizations/{}", path_segment(slug)),
                    query: &[],
                    body: None,
                    repeat: Repeat::Safe,
                    write: false,
                },
                deadline,
            )
            .await,
        )?;
        Ok(got.filter(|o| o.value.slug.as_deref() == Some(slug)))
    }

    /// `GET /v1/organizations/{id}`, bounded by `deadline`: None for Clerk's 404, or when the
    /// organization answering is not `id` (the endpoint also matches slugs).
    pub async fn organization_before(
        &self,
        id: &HotelId,
        deadline: Instant,
    ) -> Result<Option<Dated<Organization>>, ClerkWriteError> {
        let got: Option<Dated<Organization>> = found(
            self.send_json(
                Call {
                    method: Method::GET,
                    label: "organization",
                    path: format!("/v1/organizations/{}", id.as_str()),
                    query: &[],
                    body: None,
                    repeat: Repeat::Safe,
                    write: false,
                },
                deadline,
            )
            .await,
        )?;
        Ok(got.filter(|o| &o.value.id == id))
    }

    /// `PATCH /v1/organizations/{id}`.
    pub async fn update_organization(
        &self,
        id: &HotelId,
        changes: &OrganizationChanges,
        deadline: Instant,
    ) -> Result<Dated<Organization>, ClerkWriteError> {
        self.send_json(
            Call {
                method: Method::PATCH,
                label: "update_organization",
                path: format!("/v1/organizations/{}", id.as_str()),
                query: &[],
                body: Some(to_body(changes)),
                repeat: Repeat::Safe,
                write: true,
            },
            deadline,
        )
        .await
    }

    /// `PATCH /v1/organizations/{id}/metadata` (merged into what Clerk holds).
    pub async fn update_organization_metadata(
        &self,
        id: &HotelId,
        changes: &MetadataChanges,
        deadline: Instant,
    ) -> Result<Dated<Organization>, ClerkWriteError> {
        self.send_json(
            Call {
                method: Method::PATCH,
                label: "update_organization_metadata",
                path: format!("/v1/organizations/{}/metadata", id.as_str()),
                query: &[],
                body: Some(to_body(changes)),
                repeat: Repeat::Safe,
                write: true,
            },
            deadline,
        )
        .await
    }

    /// `DELETE /v1/organizations/{id}`. `value` is false when a repeated request found it gone
    /// already (Clerk's 404 after an attempt whose answer was lost): deleted either way.
    pub async fn delete_organization(&self, id: &HotelId, deadline: Instant) -> Result<Dated<bool>, ClerkWriteError> {
        let call = Call {
            method: Method::DELETE,
            label: "delete_organization",
            path: format!("/v1/organizations/{}", id.as_str()),
            query: &[],
            body: None,
            repeat: Repeat::Safe,
            write: true,
        };
        let (answer, attempts) = self.send(call, deadline).await;
        match answer {
            Ok((_, date)) => Ok(Dated { value: true, date }),
            Err(ClerkWriteError::NotFound { .. }) if attempts > 1 => Ok(Dated {
                value: false,
                date: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// Every membership of `organization` (only those of `users` when given, at most 100), all
    /// pages; None when Clerk has no such organization. The `Date` is the first page's.
    pub async fn memberships_before(
        &self,
        organization: &HotelId,
        users: &[UserId],
        deadline: Instant,
    ) -> Result<Option<Dated<Vec<Membership>>>, ClerkWriteError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Membership>,
        }
        let mut out = Vec::new();
        let mut date = None;
        let mut offset = 0usize;
        loop {
            let mut query = vec![
                ("order_by", "created_at".to_owned()),
                ("limit", PAGE_LIMIT.to_string()),
                ("offset", offset.to_string()),
            ];
            query.extend(users.iter().map(|u| ("user_id", u.as_str().to_owned())));
            let page: Option<Dated<List>> = found(
                self.send_json(
                    Call {
                        method: Method::GET,
                        label: "organization_memberships_of",
                        path: format!("/v1/organizations/{}/memberships", organization.as_str()),
                        query: &query,
                        body: None,
                        repeat: Repeat::Safe,
                        write: false,
                    },
                    deadline,
                )
                .await,
            )?;
            let Some(page) = page else {
                return Ok(None);
            };
            date = date.or(page.date);
            let len = page.value.data.len();
            out.extend(page.value.data);
            if len < PAGE_LIMIT as usize {
                return Ok(Some(Dated { value: out, date }));
            }
            offset += len;
        }
    }

    /// `GET /v1/users?user_id=…`: those of `ids` (at most 100) that exist.
    pub async fn users_before(&self, ids: &[UserId], deadline: Instant) -> Result<Vec<User>, ClerkWriteError> {
        let mut query = vec![("limit", PAGE_LIMIT.to_string())];
        query.extend(ids.iter().map(|u| ("user_id", u.as_str().to_owned())));
        let users: Dated<Vec<User>> = self
            .send_json(
                Call {
                    method: Method::GET,
                    label: "users",
                    path: "/v1/users".into(),
                    query: &query,
                    body: None,
                    repeat: Repeat::Safe,
                    write: false,
                },
                deadline,
            )
            .await?;
        Ok(users.value)
    }

    /// `POST /v1/organizations/{id}/memberships`. Never re-sent after a lost answer: look it up
    /// with [`Self::memberships_before`] first.
    pub async fn create_membership(
        &self,
        organization: &HotelId,
        user: &UserId,
        role: &str,
        deadline: Instant,
    ) -> Result<Dated<MembershipAnswer>, ClerkWriteError> {
        let body = serde_json::json!({ "user_id": user.as_str(), "role": role });
        self.membership_call(
            Call {
                method: Method::POST,
                label: "create_membership",
                path: format!("/v1/organizations/{}/memberships", organization.as_str()),
                query: &[],
                body: Some(to_body(&body)),
                repeat: Repeat::Never,
                write: true,
            },
            deadline,
        )
        .await
        .map(|(a, _)| a)
        .map_err(|(e, _)| e)
    }

    /// `PATCH /v1/organizations/{id}/memberships/{user_id}` with a new role.
    pub async fn update_membership(
        &self,
        organization: &HotelId,
        user: &UserId,
        role: &str,
        deadline: Instant,
    ) -> Result<Dated<MembershipAnswer>, ClerkWriteError> {
        let body = serde_json::json!({ "role": role });
        self.membership_call(
            Call {
                method: Method::PATCH,
                label: "update_membership",
                path: format!(
                    "/v1/organizations/{}/memberships/{}",
                    organization.as_str(),
                    user.as_str()
                ),
                query: &[],
                body: Some(to_body(&body)),
                repeat: Repeat::Safe,
                write: true,
            },
            deadline,
        )
        .await
        .map(|(a, _)| a)
        .map_err(|(e, _)| e)
    }

    /// `DELETE /v1/organizations/{id}/memberships/{user_id}`: the membership as it was. `value`
    /// is None when a repeated request found it gone already (Clerk's 404 after an attempt whose
    /// answer was lost): removed either way, and the caller ends the membership it knows.
    pub async fn delete_membership(
        &self,
        organization: &HotelId,
        user: &UserId,
        deadline: Instant,
    ) -> Result<Dated<Option<MembershipAnswer>>, ClerkWriteError> {
        let answer = self
            .membership_call(
                Call {
                    method: Method::DELETE,
                    label: "delete_membership",
                    path: format!(
                        "/v1/organizations/{}/memberships/{}",
                        organization.as_str(),
                        user.as_str()
                    ),
                    query: &[],
                    body: None,
                    repeat: Repeat::Safe,
                    write: true,
                },
                deadline,
            )
            .await;
        match answer {
            Ok((a, _)) => Ok(a.map(Some)),
            Err((ClerkWriteError::NotFound { .. }, attempts)) if attempts > 1 => Ok(Dated {
                value: None,
                date: None,
            }),
            Err((e, _)) => Err(e),
        }
    }

    /// `POST /v1/organizations/{id}/invitations`. Never re-sent after a lost answer.
    pub async fn create_invitation(
        &self,
        organization: &HotelId,
        invitation: &NewInvitation,
        deadline: Instant,
    ) -> Result<Dated<Invitation>, ClerkWriteError> {
        self.send_json(
            Call {
                method: Method::POST,
                label: "create_invitation",
                path: format!("/v1/organizations/{}/invitations", organization.as_str()),
                query: &[],
                body: Some(to_body(invitation)),
                repeat: Repeat::Never,
                write: true,
            },
            deadline,
        )
        .await
    }

    /// `POST /v1/organizations/{id}/invitations/bulk` (Clerk takes 1 to 10). Never re-sent after a
    /// lost answer.
    pub async fn create_invitations(
        &self,
        organization: &HotelId,
        invitations: &[NewInvitation],
        deadline: Instant,
    ) -> Result<Dated<Vec<Invitation>>, ClerkWriteError> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Invitation>,
        }
        let list: Dated<List> = self
            .send_json(
                Call {
                    method: Method::POST,
                    label: "create_invitations",
                    path: format!("/v1/organizations/{}/invitations/bulk", organization.as_str()),
                    query: &[],
                    body: Some(to_body(&invitations)),
                    repeat: Repeat::Never,
                    write: true,
                },
                deadline,
            )
            .await?;
        Ok(list.map(|l| l.data))
    }

    /// `POST /v1/organizations/{id}/invitations/{invitation_id}/revoke`. Not re-sent after a lost
    /// answer (a second revoke is refused): read it back with [`Self::invitation_before`].
    pub async fn revoke_invitation(
        &self,
        organization: &HotelId,
        invitation: &InvitationId,
        requesting_user: Option<&UserId>,
        deadline: Instant,
    ) -> Result<Dated<Invitation>, ClerkWriteError> {
        let body = match requesting_user {
            Some(u) => serde_json::json!({ "requesting_user_id": u.as_str() }),
            None => serde_json::json!({}),
        };
        self.send_json(
            Call {
                method: Method::POST,
                label: "revoke_invitation",
                path: format!(
                    "/v1/organizations/{}/invitations/{}/revoke",
                    organization.as_str(),
                    invitation.as_str()
                ),
                query: &[],
                body: Some(to_body(&body)),
                repeat: Repeat::Never,
                write: true,
            },
            deadline,
        )
        .await
    }

    /// `GET /v1/organizations/{id}/invitations/{invitation_id}`, bounded by `deadline`.
    pub async fn invitation_before(
        &self,
        organization: &HotelId,
        invitation: &InvitationId,
        deadline: Instant,
    ) -> Result<Option<Dated<Invitation>>, ClerkWriteError> {
        found(
            self.send_json(
                Call {
                    method: Method::GET,
                    label: "organization_invitation",
                    path: format!(
                        "/v1/organizations/{}/invitations/{}",
                        organization.as_str(),
                        invitation.as_str()
                    ),
                    query: &[],
                    body: None,
                    repeat: Repeat::Safe,
                    write: false,
                },
                deadline,
            )
            .await,
        )
    }

    /// A call answering a membership (with its embedded organization); Err carries the attempts.
    async fn membership_call(
        &self,
        call: Call<'_>,
        deadline: Instant,
    ) -> Result<(Dated<MembershipAnswer>, usize), (ClerkWriteError, usize)> {
        #[derive(Deserialize)]
        struct Embedded {
            organization: Organization,
        }
        let label = call.label;
        let (answer, attempts) = self.send(call, deadline).await;
        let (body, date) = answer.map_err(|e| (e, attempts))?;
        let membership = decode::<Membership>(&body, label).map_err(|e| (decode_error(e), attempts))?;
        let organization = serde_json::from_slice::<Embedded>(&body).ok().map(|e| e.organization);
        let value = MembershipAnswer {
            membership,
            organization,
        };
        Ok((Dated { value, date }, attempts))
    }

    /// [`Self::send`], decoding the answer as `T`.
    pub(super) async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        deadline: Instant,
    ) -> Result<Dated<T>, ClerkWriteError> {
        let label = call.label;
        let (body, date) = self.send(call, deadline).await.0?;
        let value = decode::<T>(&body, label).map_err(decode_error)?;
        Ok(Dated { value, date })
    }

    /// Sends `call` under the budget, the deadline and the repeat rules of the module
    /// documentation. Returns the 2xx body and its `Date`, and how many attempts were sent.
    pub(super) async fn send(
        &self,
        call: Call<'_>,
        deadline: Instant,
    ) -> (Result<(Bytes, Option<DateTime<Utc>>), ClerkWriteError>, usize) {
        let mut attempts = 0usize;
        let answer = self.send_attempts(&call, deadline, &mut attempts).await;
        if call.write {
            let outcome = match &answer {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            metrics::counter!("orgsync_clerk_writes_total", "operation" => call.label, "outcome" => outcome)
                .increment(1);
        }
        (answer, attempts)
    }

    async fn send_attempts(
        &self,
        call: &Call<'_>,
        deadline: Instant,
        attempts: &mut usize,
    ) -> Result<(Bytes, Option<DateTime<Utc>>), ClerkWriteError> {
        let inner = &*self.inner;
        let url = format!("{}{}", inner.base_url, call.path);
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(inner.retry.min_delay)
            .with_max_delay(inner.retry.max_delay)
            .with_max_times(usize::MAX)
            .with_jitter()
            .build();
        loop {
            if let Err(free_at) = inner.budget.acquire_before(deadline).await {
                return Err(ClerkWriteError::RateLimited {
                    retry_after: free_at.saturating_duration_since(Instant::now()),
                });
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return Err(out_of_time(call.repeat, *attempts));
            };
            *attempts += 1;
            let started = std::time::Instant::now();
            let mut request = inner
                .http
                .request(call.method.clone(), &url)
                .header(reqwest::header::AUTHORIZATION, inner.auth.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(left)
                .query(call.query);
            if let Some(body) = &call.body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let answer = match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    resp.bytes().await.map(|body| (status, headers, body))
                }
                Err(e) => Err(e),
            };
            let status_label = match &answer {
                Ok((status, _, _)) => status.as_str().to_owned(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "error".to_owned(),
            };
            metrics::counter!("orgsync_clerk_requests_total", "endpoint" => call.label, "status" => status_label)
                .increment(1);
            metrics::histogram!("orgsync_clerk_request_duration_seconds", "endpoint" => call.label)
                .record(started.elapsed().as_secs_f64());

            // Done, failed for good, or wait `delay` and send again.
            let (delay, failure) = match answer {
                Ok((status, headers, body)) if status.is_success() => return Ok((body, date_of(&headers))),
                Ok((status, headers, _)) if status.as_u16() == 429 => {
                    // Clerk did nothing: any call may be sent again once the window reopens.
                    let wait = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(parse_retry_after)
                        .unwrap_or(inner.retry.min_delay);
                    inner.budget.pause_for(wait.min(inner.retry.max_delay));
                    if Instant::now() + wait > deadline {
                        return Err(ClerkWriteError::RateLimited { retry_after: wait });
                    }
                    (wait, None)
                }
                Ok((status, _, body)) if status.is_server_error() => {
                    let reason = format!("Clerk answered {}: {}", status.as_u16(), error_message(&body));
                    match call.repeat {
                        Repeat::Never => return Err(ClerkWriteError::Unknown { reason }),
                        Repeat::Safe => (
                            backoff.next().unwrap_or(inner.retry.max_delay),
                            Some(ClerkWriteError::Unavailable { reason }),
                        ),
                    }
                }
                Ok((status, _, body)) => return Err(refusal(status.as_u16(), &body)),
                Err(e) => {
                    let reason = transport_reason(&e);
                    // A connection that could not be opened carried nothing: safe to send again.
                    if e.is_connect() || call.repeat == Repeat::Safe {
                        (
                            backoff.next().unwrap_or(inner.retry.max_delay),
                            Some(ClerkWriteError::Unavailable { reason }),
                        )
                    } else {
                        return Err(ClerkWriteError::Unknown { reason });
                    }
                }
            };
            if Instant::now() + delay >= deadline {
                return Err(failure.unwrap_or_else(|| out_of_time(call.repeat, *attempts)));
            }
            tracing::debug!(operation = call.label, attempt = *attempts, retry_in_ms = delay.as_millis() as u64,
                            error = ?failure.as_ref().map(ToString::to_string), "Clerk request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The deadline passed between attempts.
fn out_of_time(_repeat: Repeat, attempts: usize) -> ClerkWriteError {
    ClerkWriteError::Unavailable {
        reason: format!("no answer before the deadline ({attempts} attempts)"),
    }
}

/// A 4xx other than 429.
fn refusal(status: u16, body: &[u8]) -> ClerkWriteError {
    let message = error_message(body);
    let code = error_code(body);
    match status {
        401 | 403 => ClerkWriteError::Auth { status, message },
        // Only Clerk's own error shape means "no such object" (not a proxy's 404).
        404 if is_clerk_error(body) => ClerkWriteError::NotFound { code, message },
        _ => ClerkWriteError::Rejected { status, code, message },
    }
}

fn decode_error(e: super::ClerkApiError) -> ClerkWriteError {
    ClerkWriteError::Decode { reason: e.to_string() }
}

/// Ok(None) for Clerk's 404.
fn found<T>(answer: Result<T, ClerkWriteError>) -> Result<Option<T>, ClerkWriteError> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(ClerkWriteError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_body(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("request bodies serialize"))
}

/// A slug (lowercase letters, digits, `-`) needs no escaping; anything else is refused by the
/// callers' parsing, and percent-encoded here should it ever get through.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `Date` header, Clerk's clock (whole seconds).
fn date_of(headers: &reqwest::header::HeaderMap) -> Option<DateTime<Utc>> {
    headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_clerk_status_and_code() {
        let body =
            br#"{"errors":[{"message":"taken","long_message":"That slug is taken","code":"form_identifier_exists"}]}"#;
        match refusal(422, body) {
            ClerkWriteError::Rejected { status, code, .. } => {
                assert_eq!(status, 422);
                assert_eq!(code.as_deref(), Some("form_identifier_exists"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(refusal(404, body), ClerkWriteError::NotFound { .. }));
        assert!(matches!(
            refusal(404, b"<html>"),
            ClerkWriteError::Rejected { status: 404, .. }
        ));
        assert!(matches!(refusal(403, body), ClerkWriteError::Auth { .. }));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("hotel-alpine-2"), "hotel-alpine-2");
        assert_eq!(path_segment("a/b"), "a%2Fb");
    }
}
