//! The self-heal: a resync of one hotel that membership jobs wait for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::FutureExt;
use sqlx::PgPool;

use super::apply::retry_transient;
use crate::clerk::api::{ClerkApiError, ClerkClient, PAGE_LIMIT};
use crate::clerk::{HotelId, Membership};
use crate::reconcile::{
    self, hotels, memberships, role_sets, snapshot, DeleteKind, Deletion, Item, MembershipWrite, Outcome, Source,
};

/// A resync of one hotel: fetches hotels that membership jobs wait for, so a lost
/// `organization.created` heals in seconds instead of at the next resync.
///
/// The worker calls [`crate::queue::runner::Heal::heal`] after each batch with each missing
/// hotel and the attempts so far. From `after_attempts` on, the hotel is fetched from Clerk in
/// the background (the worker never waits on Clerk), *with all its memberships*, and both are
/// written through the rule book in one transaction that also records when they were listed
/// (Clerk's clock): the woken jobs then apply only what is newer than that snapshot, so the
/// removals of members whose webhooks were lost too are not undone. 404 → the hotel is
/// tombstoned as of now (the jobs then finish as obsolete). The hotel's role set (its
/// organization's `role_set_key`) is fetched too and written in the same transaction (Clerk
/// sends no webhook for role sets); a failure to read it only costs the role set, and is logged. A hotel is fetched at most once per `cooldown` (default 30 s) however many jobs
/// wait for it; a failed fetch is logged and retried after the cooldown.
#[derive(Clone)]
pub struct SelfHeal {
    inner: Arc<HealInner>,
}

struct HealInner {
    pool: PgPool,
    client: ClerkClient,
    after_attempts: i32,
    cooldown: Duration,
    recent: Mutex<HashMap<HotelId, Instant>>,
}

/// What one self-heal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healed {
    /// Clerk has the organization: the hotel was upserted (`true` if a row was written).
    Upserted(bool),
    /// Clerk has no such organization: the hotel was tombstoned (`true` if a row was written).
    Tombstoned(bool),
}

/// Why a self-heal did nothing.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error(transparent)]
    Clerk(#[from] ClerkApiError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Clerk answered for {asked} with organization {got}")]
    Mismatch { asked: String, got: String },
}

impl SelfHeal {
    pub fn new(pool: PgPool, client: ClerkClient, after_attempts: i32) -> Self {
        Self {
            inner: Arc::new(HealInner {
                pool,
                client,
                after_attempts: after_attempts.max(1),
                cooldown: Duration::from_secs(30),
                recent: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same, fetching one hotel at most once per `cooldown`.
    pub fn with_cooldown(self, cooldown: Duration) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(HealInner {
                pool: inner.pool.clone(),
                client: inner.client.clone(),
                after_attempts: inner.after_attempts,
                cooldown,
                recent: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Fetches `hotel` from Clerk now and applies the answer (no attempt threshold, no
    /// cooldown). Ok says what was written; Err when Clerk or the database failed.
    pub async fn heal_now(&self, hotel: &HotelId) -> Result<Healed, HealError> {
        self.inner.heal_now(hotel).await
    }

    /// True when `hotel` may be fetched now; records the fetch.
    fn claim(&self, hotel: &HotelId) -> bool {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if recent.len() > 10_000 {
            let cooldown = self.inner.cooldown;
            recent.retain(|_, at| now.duration_since(*at) < cooldown);
        }
        match recent.get(hotel) {
            Some(at) if now.duration_since(*at) < self.inner.cooldown => false,
            _ => {
                recent.insert(hotel.clone(), now);
                true
            }
        }
    }
}

impl HealInner {
    async fn heal_now(&self, hotel: &HotelId) -> Result<Healed, HealError> {
        // T before anything is listed (see crate::reconcile::snapshot).
        let clock = self.client.clock().await?;
        match self.client.get_organization(hotel).await? {
            Some(org) if &org.id == hotel => {
                let members = self.list_members(hotel).await;
                let listed_at = match (&members, clock) {
                    (Ok(_), Some(date)) => Some(date.timestamp_millis() - snapshot::CLOCK_MARGIN_MS),
                    _ => None,
                };
                let members = members.unwrap_or_else(|e| {
                    tracing::warn!(hotel = %hotel, error = %e, "listing the hotel's memberships failed; healing the hotel alone");
                    Vec::new()
                });
                let items: Vec<Item<MembershipWrite<'_>>> = members
                    .iter()
                    .filter(|m| &m.organization.id == hotel)
                    .map(|m| Item {
                        job: None,
                        value: MembershipWrite {
                            membership: m,
                            removed_at: None,
                        },
                    })
                    .collect();
                let role_set = match org.role_set_key.as_deref() {
                    Some(key) => self.client.get_role_set(key).await.unwrap_or_else(|e| {
                        tracing::warn!(hotel = %hotel, error = %e, "fetching the hotel's role set failed; healing without it");
                        None
                    }),
                    None => None,
                };
                let role_set_item: Vec<Item<&crate::clerk::RoleSet>> = role_set
                    .iter()
                    .filter(|s| org.role_set_key.as_deref() == Some(s.key.as_str()))
                    .map(|s| Item { job: None, value: s })
                    .collect();
                let org_item = [Item { job: None, value: &org }];
                let written = retry_transient(|| {
                    async {
                        let mut tx = self.pool.begin().await?;
                        reconcile::begin(&mut tx, Source::SelfHeal).await?;
                        let outcome = hotels::upsert(&mut tx, Source::SelfHeal, &org_item).await?;
                        if let Some(t) = listed_at {
                            snapshot::record_hotel_members(&mut tx, hotel, t).await?;
                        }
                        if !items.is_empty() {
                            memberships::upsert(&mut tx, Source::SelfHeal, &items).await?;
                        }
                        role_sets::upsert(&mut tx, &role_set_item).await?;
                        tx.commit().await?;
                        Ok(outcome.first() == Some(&Outcome::Written))
                    }
                    .boxed()
                })
                .await?;
                Ok(Healed::Upserted(written))
            }
            // GET /organizations/{id} also matches slugs: an org whose slug is this id is not it.
            Some(org) => Err(HealError::Mismatch {
                asked: hotel.to_string(),
                got: org.id.to_string(),
            }),
            None => {
                let items = [Item {
                    job: None,
                    value: Deletion {
                        id: hotel.clone(),
                        at: Utc::now().timestamp_millis(),
                    },
                }];
                let gone = retry_transient(|| {
                    async {
                        let mut tx = self.pool.begin().await?;
                        reconcile::begin(&mut tx, Source::SelfHeal).await?;
                        let gone = hotels::delete(&mut tx, &items, DeleteKind::Reported).await?;
                        tx.commit().await?;
                        Ok(!gone.ids.is_empty())
                    }
                    .boxed()
                })
                .await?;
                Ok(Healed::Tombstoned(gone))
            }
        }
    }

    /// Every membership of `hotel`, page by page.
    async fn list_members(&self, hotel: &HotelId) -> Result<Vec<Membership>, ClerkApiError> {
        let mut out = Vec::new();
        let mut offset = 0u32;
        loop {
            let Some(page) = self
                .client
                .list_organization_memberships(hotel, &[], offset, PAGE_LIMIT)
                .await?
            else {
                return Ok(out);
            };
            let len = page.len;
            out.extend(page.items);
            if len < PAGE_LIMIT as usize {
                return Ok(out);
            }
            offset += len as u32;
        }
    }
}

impl crate::queue::runner::Heal for SelfHeal {
    fn heal(&self, hotel: HotelId, attempts: i32) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if attempts < self.inner.after_attempts || !self.claim(&hotel) {
                return;
            }
            let inner = self.inner.clone();
            // In the background: the worker goes on with its next batch while Clerk answers.
            tokio::spawn(async move {
                match inner.heal_now(&hotel).await {
                    Ok(outcome) => {
                        metrics::counter!("orgsync_self_heal_total", "outcome" => match outcome {
                            Healed::Upserted(_) => "upserted",
                            Healed::Tombstoned(_) => "tombstoned",
                        })
                        .increment(1);
                        tracing::info!(hotel = %hotel, ?outcome, "self-heal fetched a missing hotel from Clerk");
                    }
                    Err(e) => {
                        metrics::counter!("orgsync_self_heal_total", "outcome" => "failed").increment(1);
                        tracing::warn!(hotel = %hotel, error = %e, "self-heal of a missing hotel failed");
                    }
                }
            });
        })
    }
}
