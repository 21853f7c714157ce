//! Administering the instance's RBAC through orgsync: permissions, roles, a role's permissions
//! and role sets, each performed in Clerk and then applied from Clerk's answer through the rule
//! book (roles and permissions as their `role.*` / `permission.*` events would be; role sets with
//! [`crate::reconcile::role_sets`]) in one transaction, before the answer; then the change feed is
//! sequenced, so `member_permissions` and the feed already show the change.
//!
//! - **Every holder at once.** `member_permissions` reaches a member's permissions through their
//!   role's current permission set: writing the role Clerk answers (grant, revoke, edit) changes
//!   what every live member holding it holds, in one statement, however many they are.
//! - **The webhooks that follow change nothing.** The `role.updated` / `permission.*` Clerk sends
//!   later carry the very version written here, so the rule book treats them as duplicates.
//! - **Idempotent repeats.** A grant Clerk refuses as already assigned (409), or a revoke as not
//!   assigned (422), is read back from Clerk and answered as done. A create whose answer was lost
//!   is looked up by its key before it is sent again.
//! - **Members follow their role set.** Replacing a role set or a role in one moves members to
//!   other roles in Clerk (`organizationMembership.updated` for each, later): the affected
//!   hotels' organizations and memberships are re-listed from Clerk and written before the answer.
//!   (Clerk may run such a migration in the background: members it has not moved yet when listed
//!   arrive with their webhooks.) A role re-keyed takes its holders along
//!   ([`crate::reconcile::roles::carry_holders`]), as Clerk's memberships do.

use futures::FutureExt;
use tokio::time::Instant;

use super::rbac_input::*;
use super::rbac_view::{self, PermissionView, ReplacedView, RoleSetView, RoleView};
use super::{now_ms, readback, ManageError, Manager, Readback};
use crate::clerk::api::{
    ClerkWriteError, NewPermission, NewRole, NewRoleSet, PermissionChanges, RoleChanges, RoleSetChanges, RoleSetRoles,
};
use crate::clerk::{ClerkEvent, HotelId, PermissionId, Role, RoleId, RoleSet, RoleSetId};
use crate::reconcile::{self, role_sets, roles, Deletion, Item, Source};

/// Role set writes that go with the events of one commit.
#[derive(Debug, Default)]
struct RoleSetWrites {
    upserts: Vec<RoleSet>,
    deletes: Vec<Deletion<RoleSetId>>,
    /// Role keys Clerk changed (old, new): their holders follow.
    renamed: Vec<(String, String)>,
}

impl Manager {
    // -----------------------------------------------------------------------------------------
    // Permissions

    /// Creates a permission in Clerk and writes it.
    pub async fn create_permission(&self, input: &NewPermissionInput) -> Result<PermissionView, ManageError> {
        let deadline = self.deadline();
        let wire = NewPermission {
            name: input.name.as_str().to_owned(),
            key: input.key.as_str().to_owned(),
            description: input.description.as_ref().map(|d| d.as_str().to_owned()),
        };
        let created = match self.clerk.create_permission(&wire, deadline).await {
            Ok(p) => p,
            Err(ClerkWriteError::Unknown { reason }) => {
                tracing::warn!(key = %input.key, %reason, "the answer to a permission create was lost; looking it up by key");
                match self.clerk.permission_by_key(input.key.as_str(), deadline).await? {
                    Some(p) => p,
                    None => self.clerk.create_permission(&wire, deadline).await?,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let id = created.value.id.to_string();
        let events = [ClerkEvent::PermissionUpserted(created.value)];
        self.commit_permission("create_permission", &id, &events).await
    }

    /// Changes a permission in Clerk and writes Clerk's answer (every role embedding it shows
    /// the change: roles hold permissions by id).
    pub async fn update_permission(
        &self,
        id: &PermissionId,
        changes: &PermissionUpdate,
    ) -> Result<PermissionView, ManageError> {
        let wire = PermissionChanges {
            name: changes.name.as_ref().map(|n| n.as_str().to_owned()),
            key: changes.key.as_ref().map(|k| k.as_str().to_owned()),
            description: changes.description.as_ref().map(|d| d.as_str().to_owned()),
        };
        if wire.name.is_none() && wire.key.is_none() && wire.description.is_none() {
            return Err(ManageError::invalid("body", "names nothing to change"));
        }
        let answer = self.clerk.update_permission(id, &wire, self.deadline()).await?;
        let events = [ClerkEvent::PermissionUpserted(answer.value)];
        self.commit_permission("update_permission", id.as_str(), &events).await
    }

    /// Deletes a permission in Clerk; the tombstone (dated by Clerk's `Date`) drops it from every
    /// role's permission set, so no member holds it any more when this answers.
    pub async fn delete_permission(&self, id: &PermissionId) -> Result<PermissionView, ManageError> {
        let gone = self.clerk.delete_permission(id, self.deadline()).await?;
        let events = [ClerkEvent::PermissionDeleted {
            id: id.clone(),
            at: gone.date_ms_or(now_ms()),
        }];
        self.commit_permission("delete_permission", id.as_str(), &events).await
    }

    async fn commit_permission(
        &self,
        operation: &'static str,
        id: &str,
        events: &[ClerkEvent],
    ) -> Result<PermissionView, ManageError> {
        let key = id.to_owned();
        let read = readback(move |conn| {
            let key = key.clone();
            async move { rbac_view::permission(conn, &key).await }.boxed()
        });
        self.commit_rbac(operation, events, RoleSetWrites::default(), read)
            .await?
            .ok_or_else(|| self.mirror_pending(operation, "the permission has no row after the write".into()))
    }

    // -----------------------------------------------------------------------------------------
    // Roles

    /// Creates a role in Clerk (with the permissions given) and writes it; with
    /// `include_in_initial_role_set`, the initial role set Clerk added it to is re-read and
    /// written too.
    pub async fn create_role(&self, input: &NewRoleInput) -> Result<RoleView, ManageError> {
        let deadline = self.deadline();
        let wire = NewRole {
            name: input.name.as_str().to_owned(),
            key: input.key.as_str().to_owned(),
            description: input.description.as_ref().map(|d| d.as_str().to_owned()),
            permissions: input
                .permissions
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.as_str().to_owned()).collect()),
            include_in_initial_role_set: input.include_in_initial_role_set,
        };
        let created = match self.clerk.create_role(&wire, deadline).await {
            Ok(r) => r,
            Err(ClerkWriteError::Unknown { reason }) => {
                tracing::warn!(key = %input.key, %reason, "the answer to a role create was lost; looking it up by key");
                match self.clerk.role_by_key(input.key.as_str(), deadline).await? {
                    Some(r) => r,
                    None => self.clerk.create_role(&wire, deadline).await?,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let mut sets = RoleSetWrites::default();
        if input.include_in_initial_role_set == Some(true) {
            let initial = rbac_view::initial_role_sets(&mut *self.pool.acquire().await?).await?;
            sets.upserts = self.fetch_role_sets(&initial, deadline).await;
        }
        self.commit_role("create_role", created.value, sets).await
    }

    /// Changes a role in Clerk (name, key, description, its whole permission set) and writes
    /// Clerk's answer; a new key takes the role's holders along.
    pub async fn update_role(&self, id: &RoleId, changes: &RoleUpdate) -> Result<RoleView, ManageError> {
        let wire = RoleChanges {
            name: changes.name.as_ref().map(|n| n.as_str().to_owned()),
            key: changes.key.as_ref().map(|k| k.as_str().to_owned()),
            description: changes.description.as_ref().map(|d| d.as_str().to_owned()),
            permissions: changes
                .permissions
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.as_str().to_owned()).collect()),
        };
        if wire.name.is_none() && wire.key.is_none() && wire.description.is_none() && wire.permissions.is_none() {
            return Err(ManageError::invalid("body", "names nothing to change"));
        }
        let deadline = self.deadline();
        let old_key = rbac_view::role_key(&mut *self.pool.acquire().await?, id.as_str()).await?;
        let answer = self.clerk.update_role(id, &wire, deadline).await?;
        let mut sets = RoleSetWrites::default();
        if let Some(old) = old_key.filter(|k| *k != answer.value.key) {
            sets.renamed.push((old, answer.value.key.clone()));
            // Role sets list their roles by key: re-read those listing this one.
            let listing = rbac_view::role_sets_with_role(&mut *self.pool.acquire().await?, id.as_str()).await?;
            sets.upserts = self.fetch_role_sets(&listing, deadline).await;
        }
        self.commit_role("update_role", answer.value, sets).await
    }

    /// Deletes a role in Clerk (which refuses while members or invitations hold it) and
    /// tombstones it; the role sets that listed it are re-read and written.
    pub async fn delete_role(&self, id: &RoleId) -> Result<RoleView, ManageError> {
        let deadline = self.deadline();
        let gone = self.clerk.delete_role(id, deadline).await?;
        let listing = rbac_view::role_sets_with_role(&mut *self.pool.acquire().await?, id.as_str()).await?;
        let sets = RoleSetWrites {
            upserts: self.fetch_role_sets(&listing, deadline).await,
            ..RoleSetWrites::default()
        };
        let events = [ClerkEvent::RoleDeleted {
            id: id.clone(),
            at: gone.date_ms_or(now_ms()),
        }];
        self.commit_role_events("delete_role", id.as_str(), &events, sets).await
    }

    /// Grants (`grant`) or revokes a permission of a role in Clerk, then writes the role Clerk
    /// answers: when this returns, every live member holding the role holds (or no longer holds)
    /// the permission in `member_permissions`. Already so in Clerk (409 / 422): the role is read
    /// back from Clerk and written, and the answer is the same.
    pub async fn set_role_permission(
        &self,
        role: &RoleId,
        permission: &PermissionId,
        grant: bool,
    ) -> Result<RoleView, ManageError> {
        let deadline = self.deadline();
        let answer = match self.clerk.set_role_permission(role, permission, grant, deadline).await {
            Ok(r) => r,
            Err(e @ ClerkWriteError::Rejected { status, .. })
                if (grant && status == 409) || (!grant && status == 422) =>
            {
                match self.clerk.role_before(role, deadline).await? {
                    Some(r) if r.value.permissions.iter().any(|p| &p.id == permission) == grant => r,
                    _ => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let operation = if grant { "grant_permission" } else { "revoke_permission" };
        self.commit_role(operation, answer.value, RoleSetWrites::default())
            .await
    }

    async fn commit_role(
        &self,
        operation: &'static str,
        role: Role,
        sets: RoleSetWrites,
    ) -> Result<RoleView, ManageError> {
        let id = role.id.to_string();
        self.commit_role_events(operation, &id, &[ClerkEvent::RoleUpserted(role)], sets)
            .await
    }

    async fn commit_role_events(
        &self,
        operation: &'static str,
        id: &str,
        events: &[ClerkEvent],
        sets: RoleSetWrites,
    ) -> Result<RoleView, ManageError> {
        let key = id.to_owned();
        let read = readback(move |conn| {
            let key = key.clone();
            async move { rbac_view::role(conn, &key).await }.boxed()
        });
        self.commit_rbac(operation, events, sets, read)
            .await?
            .ok_or_else(|| self.mirror_pending(operation, "the role has no row after the write".into()))
    }

    // -----------------------------------------------------------------------------------------
    // Role sets

    /// Every role set the mirror holds (tombstones last).
    pub async fn list_role_sets(&self) -> Result<Vec<RoleSetView>, ManageError> {
        Ok(rbac_view::role_sets(&mut *self.pool.acquire().await?, None).await?)
    }

    /// The role set with this key or id, as the mirror holds it.
    pub async fn get_role_set(&self, key_or_id: &str) -> Result<RoleSetView, ManageError> {
        rbac_view::role_set(&mut *self.pool.acquire().await?, key_or_id)
            .await?
            .ok_or_else(|| ManageError::NotFound {
                what: "role set",
                id: key_or_id.to_owned(),
            })
    }

    /// Creates a role set in Clerk and writes it. A create whose answer was lost is looked up by
    /// its key (when the caller gave one) before it is sent again.
    pub async fn create_role_set(&self, input: &NewRoleSetInput) -> Result<RoleSetView, ManageError> {
        check_role_list("roles", &input.roles)?;
        let deadline = self.deadline();
        let wire = NewRoleSet {
            name: input.name.as_str().to_owned(),
            key: input.key.as_ref().map(|k| k.as_str().to_owned()),
            description: input.description.as_ref().map(|d| d.as_str().to_owned()),
            default_role_key: input.default_role_key.as_str().to_owned(),
            creator_role_key: input.creator_role_key.as_str().to_owned(),
            kind: input.kind.map(|k| k.as_str().to_owned()),
            roles: input.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        };
        let created = match self.clerk.create_role_set(&wire, deadline).await {
            Ok(s) => s,
            Err(ClerkWriteError::Unknown { reason }) if input.key.is_some() => {
                let key = input.key.as_ref().expect("checked").as_str();
                tracing::warn!(key, %reason, "the answer to a role set create was lost; looking it up by key");
                match self.clerk.role_set_before(key, deadline).await? {
                    Some(s) => s,
                    None => self.clerk.create_role_set(&wire, deadline).await?,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let mut sets = RoleSetWrites::default();
        if input.kind == Some(RoleSetType::Initial) {
            // The former initial role set became `custom`.
            let initial = rbac_view::initial_role_sets(&mut *self.pool.acquire().await?).await?;
            sets.upserts = self.fetch_role_sets(&initial, deadline).await;
        }
        sets.upserts.push(created.value);
        self.commit_role_set("create_role_set", sets, Vec::new()).await
    }

    /// Changes a role set in Clerk and writes Clerk's answer (and, when it became `initial`, the
    /// role set that stopped being so).
    pub async fn update_role_set(&self, key_or_id: &str, changes: &RoleSetUpdate) -> Result<RoleSetView, ManageError> {
        if changes.kind == Some(RoleSetType::Custom) {
            return Err(ManageError::invalid(
                "type",
                "only `initial` can be set (making another role set initial makes this one custom)",
            ));
        }
        let wire = RoleSetChanges {
            name: changes.name.as_ref().map(|n| n.as_str().to_owned()),
            key: changes.key.as_ref().map(|k| k.as_str().to_owned()),
            description: changes.description.as_ref().map(|d| d.as_str().to_owned()),
            kind: changes.kind.map(|k| k.as_str().to_owned()),
            default_role_key: changes.default_role_key.as_ref().map(|r| r.as_str().to_owned()),
            creator_role_key: changes.creator_role_key.as_ref().map(|r| r.as_str().to_owned()),
        };
        let nothing = wire.name.is_none()
            && wire.key.is_none()
            && wire.description.is_none()
            && wire.kind.is_none()
            && wire.default_role_key.is_none()
            && wire.creator_role_key.is_none();
        if nothing {
            return Err(ManageError::invalid("body", "names nothing to change"));
        }
        let deadline = self.deadline();
        let before = if wire.kind.is_some() {
            rbac_view::initial_role_sets(&mut *self.pool.acquire().await?).await?
        } else {
            Vec::new()
        };
        let answer = self.clerk.update_role_set(key_or_id, &wire, deadline).await?;
        let mut sets = RoleSetWrites::default();
        let others: Vec<String> = before.into_iter().filter(|k| *k != answer.value.key).collect();
        sets.upserts = self.fetch_role_sets(&others, deadline).await;
        sets.upserts.push(answer.value);
        self.commit_role_set("update_role_set", sets, Vec::new()).await
    }

    /// Adds roles to a role set in Clerk and writes Clerk's answer.
    pub async fn add_role_set_roles(
        &self,
        key_or_id: &str,
        addition: &RoleSetAddition,
    ) -> Result<RoleSetView, ManageError> {
        check_role_list("role_keys", &addition.role_keys)?;
        let wire = RoleSetRoles {
            role_keys: addition.role_keys.iter().map(|r| r.as_str().to_owned()).collect(),
            default_role_key: addition.default_role_key.as_ref().map(|r| r.as_str().to_owned()),
            creator_role_key: addition.creator_role_key.as_ref().map(|r| r.as_str().to_owned()),
        };
        let answer = self.clerk.add_role_set_roles(key_or_id, &wire, self.deadline()).await?;
        let sets = RoleSetWrites {
            upserts: vec![answer.value],
            ..RoleSetWrites::default()
        };
        self.commit_role_set("add_role_set_roles", sets, Vec::new()).await
    }

    /// Replaces a role set in Clerk: it is deleted, and its hotels move to `dest_role_set_key`
    /// (their members to the mapped roles). Then the replaced role set is tombstoned (dated by
    /// Clerk's `Date`), the destination re-read, and every hotel that used the replaced one
    /// re-listed from Clerk (its organization and memberships) and written, in one transaction.
    pub async fn replace_role_set(
        &self,
        key_or_id: &str,
        replacement: &RoleSetReplacement,
    ) -> Result<ReplacedView, ManageError> {
        let deadline = self.deadline();
        let source = self.get_role_set(key_or_id).await.ok();
        let gone = self
            .clerk
            .replace_role_set(
                key_or_id,
                replacement.dest_role_set_key.as_str(),
                &replacement.mappings(),
                deadline,
            )
            .await?;
        let at = gone.date_ms_or(now_ms());
        let mut sets = RoleSetWrites::default();
        let mut hotels = Vec::new();
        if let Some(source) = &source {
            if let Ok(id) = RoleSetId::parse(&source.id) {
                sets.deletes.push(Deletion { id, at });
            }
            hotels = rbac_view::hotels_using(&mut *self.pool.acquire().await?, &source.key, None).await?;
        }
        sets.upserts = self
            .fetch_role_sets(&[replacement.dest_role_set_key.as_str().to_owned()], deadline)
            .await;
        let events = self.relist_hotels("replace_role_set", &hotels, deadline).await?;
        let source_id = source.map(|s| s.id);
        let dest = replacement.dest_role_set_key.as_str().to_owned();
        let relisted = hotels.len();
        let read = readback(move |conn| {
            let (source_id, dest) = (source_id.clone(), dest.clone());
            async move {
                let replaced = match &source_id {
                    Some(id) => rbac_view::role_set(conn, id).await?,
                    None => None,
                };
                let destination = rbac_view::role_set(conn, &dest).await?;
                Ok(ReplacedView {
                    replaced,
                    destination,
                    hotels_relisted: relisted,
                })
            }
            .boxed()
        });
        self.commit_rbac("replace_role_set", &events, sets, read).await
    }

    /// Replaces a role in a role set in Clerk: `role_key` leaves it and its holders move to
    /// `to_role_key`. Then the role set Clerk answers is written with the re-listed memberships
    /// of every hotel using it where a member held that role.
    pub async fn replace_role_set_role(
        &self,
        key_or_id: &str,
        replacement: &RoleReplacement,
    ) -> Result<RoleSetView, ManageError> {
        let deadline = self.deadline();
        let answer = self
            .clerk
            .replace_role_set_role(
                key_or_id,
                replacement.role_key.as_str(),
                replacement.to_role_key.as_str(),
                deadline,
            )
            .await?;
        let hotels = rbac_view::hotels_using(
            &mut *self.pool.acquire().await?,
            &answer.value.key,
            Some(replacement.role_key.as_str()),
        )
        .await?;
        let events = self.relist_hotels("replace_role_set_role", &hotels, deadline).await?;
        let sets = RoleSetWrites {
            upserts: vec![answer.value],
            ..RoleSetWrites::default()
        };
        self.commit_role_set("replace_role_set_role", sets, events).await
    }

    /// Writes a role set Clerk has (best effort, logged): for a hotel moved to a role set the
    /// mirror may not hold yet.
    pub(crate) async fn mirror_role_set(&self, key: &str) {
        let sets = self.fetch_role_sets(&[key.to_owned()], self.deadline()).await;
        if sets.is_empty() {
            return;
        }
        let writes = RoleSetWrites {
            upserts: sets,
            ..RoleSetWrites::default()
        };
        let read = readback(|_| async { Ok(()) }.boxed());
        if let Err(e) = self.commit_rbac("mirror_role_set", &[], writes, read).await {
            tracing::warn!(role_set = key, error = %e, "writing a hotel's new role set failed; the resync brings it");
        }
    }

    async fn commit_role_set(
        &self,
        operation: &'static str,
        sets: RoleSetWrites,
        events: Vec<ClerkEvent>,
    ) -> Result<RoleSetView, ManageError> {
        let id = sets.upserts.last().map(|s| s.id.to_string()).unwrap_or_default();
        let read = readback(move |conn| {
            let id = id.clone();
            async move { rbac_view::role_set(conn, &id).await }.boxed()
        });
        self.commit_rbac(operation, &events, sets, read)
            .await?
            .ok_or_else(|| self.mirror_pending(operation, "the role set has no row after the write".into()))
    }

    /// The role sets `keys` (or ids) as Clerk has them now; one that cannot be read is left to
    /// the next resync (logged).
    async fn fetch_role_sets(&self, keys: &[String], deadline: Instant) -> Vec<RoleSet> {
        let mut out = Vec::new();
        for key in keys {
            match self.clerk.role_set_before(key, deadline).await {
                Ok(Some(s)) => out.push(s.value),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(role_set = %key, error = %e, "re-reading a role set failed; the resync brings it")
                }
            }
        }
        out
    }

    /// Each of `hotels` as Clerk has it now: its organization and all its memberships, as events.
    /// Clerk made the change already, so a failure is [`ManageError::MirrorPending`].
    async fn relist_hotels(
        &self,
        operation: &'static str,
        hotels: &[String],
        deadline: Instant,
    ) -> Result<Vec<ClerkEvent>, ManageError> {
        let mut events = Vec::new();
        for id in hotels {
            let Ok(hotel) = HotelId::parse(id) else { continue };
            let org = self.clerk.organization_before(&hotel, deadline).await;
            let members = self.clerk.memberships_before(&hotel, &[], deadline).await;
            match (org, members) {
                (Ok(org), Ok(members)) => {
                    events.extend(org.map(|o| ClerkEvent::OrganizationUpserted(o.value)));
                    events.extend(
                        members
                            .into_iter()
                            .flat_map(|m| m.value)
                            .filter(|m| m.organization.id == hotel)
                            .map(ClerkEvent::MembershipUpserted),
                    );
                }
                (Err(e), _) | (_, Err(e)) => {
                    return Err(self.mirror_pending(operation, format!("re-listing hotel {id} failed: {e}")))
                }
            }
        }
        Ok(events)
    }

    /// [`Manager::commit`] with role set writes: applies `events` through the rule book as
    /// [`Source::Api`], then the role set deletes and upserts and the holders of re-keyed roles,
    /// reads the answer back, commits (a deadlock is retried), and sequences the change feed.
    async fn commit_rbac<T>(
        &self,
        operation: &'static str,
        events: &[ClerkEvent],
        sets: RoleSetWrites,
        read: Readback<T>,
    ) -> Result<T, ManageError> {
        let mut attempt = 0u32;
        let answer = loop {
            match self.commit_rbac_once(events, &sets, &read).await {
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("40P01" | "40001")) && attempt < 5 =>
                {
                    attempt += 1;
                    tracing::debug!(operation, attempt, error = %e, "write path transaction aborted by Postgres; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))).await;
                }
                other => break other,
            }
        };
        let answer =
            answer.map_err(|e| self.mirror_pending(operation, format!("the database could not be written: {e}")))?;
        if let Err(e) = crate::changes::sequence_now(&self.pool).await {
            tracing::warn!(operation, error = %e, "sequencing the change feed after a write failed; the sequencer's next tick shows it");
        }
        Ok(answer)
    }

    async fn commit_rbac_once<T>(
        &self,
        events: &[ClerkEvent],
        sets: &RoleSetWrites,
        read: &Readback<T>,
    ) -> Result<T, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        reconcile::begin(&mut tx, Source::Api).await?;
        if !events.is_empty() {
            let items: Vec<Item<&ClerkEvent>> = events.iter().map(|e| Item { job: None, value: e }).collect();
            let outcomes = reconcile::apply_events(&mut tx, Source::Api, &items).await?;
            for outcome in outcomes.iter().filter(|o| !o.is_final()) {
                tracing::warn!(?outcome, "an answer of the write path could not be applied now");
            }
        }
        let deletes: Vec<Item<Deletion<RoleSetId>>> = sets
            .deletes
            .iter()
            .map(|d| Item {
                job: None,
                value: d.clone(),
            })
            .collect();
        role_sets::delete(&mut tx, &deletes).await?;
        let upserts: Vec<Item<&RoleSet>> = sets.upserts.iter().map(|s| Item { job: None, value: s }).collect();
        let written = role_sets::upsert(&mut tx, &upserts).await?;
        for id in &written.key_taken {
            tracing::warn!(role_set = %id, "a role set's key is held by another live role set in the mirror; the resync settles it");
        }
        for (old, new) in &sets.renamed {
            roles::carry_holders(&mut tx, old, new).await?;
        }
        let answer = read(&mut tx).await?;
        tx.commit().await?;
        Ok(answer)
    }
}
