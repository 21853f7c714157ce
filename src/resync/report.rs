//! What a run did, for `resync_runs`, the command's output and the metrics.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::clerk::api::ClerkApiError;

/// Ids of one kind of change: the exact count, and the first [`Ids::SAMPLE`] ids recorded (a
/// run records them in key order, so the sample is the smallest ids), so a report's memory stays
/// bounded however much changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    count: u64,
    sample: Vec<String>,
}

impl Ids {
    /// How many ids a report keeps per kind of change.
    pub const SAMPLE: usize = 1000;

    /// Records one id (counted always, kept while the sample has room).
    pub fn push(&mut self, id: String) {
        self.count += 1;
        if self.sample.len() < Self::SAMPLE {
            self.sample.push(id);
        }
    }

    /// Counts `n` more ids without naming them.
    pub(crate) fn add_count(&mut self, n: u64) {
        self.count += n;
    }

    /// How many ids (exact, including those beyond the sample).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ids kept: all of them when [`Self::is_complete`], else the first [`Self::SAMPLE`].
    pub fn ids(&self) -> &[String] {
        &self.sample
    }

    /// True when [`Self::ids`] names every id counted.
    pub fn is_complete(&self) -> bool {
        self.sample.len() as u64 == self.count
    }
}

/// The rows of one table a run created, updated and deleted (or, in a dry run, would have).
/// Membership ids read `org_.../user_...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Ids,
    pub updated: Ids,
    pub deleted: Ids,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }

    fn to_json(&self, with_ids: bool) -> serde_json::Value {
        let mut v = json!({
            "created": self.created.len(), "updated": self.updated.len(), "deleted": self.deleted.len(),
        });
        if with_ids {
            let sorted = |ids: &Ids| {
                let mut ids = ids.ids().to_vec();
                ids.sort();
                ids
            };
            v["ids"] = json!({
                "created": sorted(&self.created), "updated": sorted(&self.updated), "deleted": sorted(&self.deleted),
            });
            // Each list holds at most Ids::SAMPLE ids; the counts above are exact.
            v["ids_complete"] =
                json!(self.created.is_complete() && self.updated.is_complete() && self.deleted.is_complete());
        }
        v
    }
}

/// What the listings held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListedCounts {
    pub organizations: u64,
    pub memberships: u64,
    pub users: u64,
    pub roles: u64,
    pub permissions: u64,
    pub invitations: u64,
    pub role_sets: u64,
}

/// What a run left alone, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Listed memberships whose organization is neither a row nor listed (created during the
    /// listing): the webhook, the self-heal or the next resync brings them.
    pub memberships_without_hotel: u64,
    /// Listed memberships whose hotel or user is a tombstone here.
    pub memberships_obsolete: u64,
    /// Listed objects without the shape orgsync needs: neither written nor deleted.
    pub invalid_items: u64,
    /// Rows missing from a listing that Clerk still has when asked by id: kept (and upserted).
    pub deletes_not_confirmed: u64,
    /// Rows missing from a listing but written after the listing began: kept.
    pub deletes_newer_than_listing: u64,
    /// Listed role sets whose key another live role set holds (a rename not yet settled): not
    /// written; the next run, once the holder's news is in, writes them.
    pub role_sets_key_taken: u64,
}

/// A run that would delete more than its share of hotels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassDelete {
    pub hotels_to_delete: u64,
    pub live_hotels: u64,
    pub threshold: f64,
}

/// How a run ended, as recorded in `resync_runs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refused => "refused",
        }
    }
}

/// What one run did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct ResyncReport {
    /// The `resync_runs` row.
    pub run_id: i64,
    pub dry_run: bool,
    /// When the listing began: deletes are dated then, and rows newer than it are not deleted.
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    /// Every listing (and every delete confirmation) completed, so deletes were considered.
    pub complete: bool,
    pub listed: ListedCounts,
    pub hotels: Changes,
    pub users: Changes,
    pub memberships: Changes,
    pub roles: Changes,
    pub permissions: Changes,
    /// Deleted: tombstoned (Clerk no longer has them); those of deleted hotels are not counted.
    pub invitations: Changes,
    pub role_sets: Changes,
    /// Live members of live hotels whose role their hotel's role set does not list (Clerk keeps
    /// them, but would refuse that role now), counted from the rows after the run's writes (a dry
    /// or refused run: as the rows stand).
    pub members_outside_role_set: u64,
    /// Live memberships ended because their hotel or user was deleted (not in `memberships`).
    pub memberships_ended_by_deletes: u64,
    pub skipped: Skipped,
    /// Set when the deletes exceeded the threshold (refused unless allowed).
    pub mass_delete: Option<MassDelete>,
    /// Why the run did not succeed.
    pub error: Option<String>,
}

impl ResyncReport {
    pub(crate) fn new(run_id: i64, dry_run: bool, started_at: DateTime<Utc>) -> Self {
        Self {
            run_id,
            dry_run,
            started_at,
            finished_at: started_at,
            outcome: Outcome::Succeeded,
            complete: false,
            listed: ListedCounts::default(),
            hotels: Changes::default(),
            users: Changes::default(),
            memberships: Changes::default(),
            roles: Changes::default(),
            permissions: Changes::default(),
            invitations: Changes::default(),
            role_sets: Changes::default(),
            members_outside_role_set: 0,
            memberships_ended_by_deletes: 0,
            skipped: Skipped::default(),
            mass_delete: None,
            error: None,
        }
    }

    /// True when the run changed (or would change) no row.
    pub fn is_unchanged(&self) -> bool {
        self.tables().iter().all(|(_, c)| c.is_empty())
    }

    /// Each mirrored table's changes, named as the table.
    pub fn tables(&self) -> [(&'static str, &Changes); 7] {
        [
            ("hotels", &self.hotels),
            ("users", &self.users),
            ("memberships", &self.memberships),
            ("roles", &self.roles),
            ("permissions", &self.permissions),
            ("invitations", &self.invitations),
            ("role_sets", &self.role_sets),
        ]
    }

    /// The report as JSON; with `with_ids`, each table lists the ids it changed. Without ids it is
    /// what `resync_runs.counts` holds.
    pub fn to_json(&self, with_ids: bool) -> serde_json::Value {
        let s = &self.skipped;
        json!({
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "outcome": self.outcome.as_str(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "complete": self.complete,
            "listed": {
                "organizations": self.listed.organizations,
                "memberships": self.listed.memberships,
                "users": self.listed.users,
                "roles": self.listed.roles,
                "permissions": self.listed.permissions,
                "invitations": self.listed.invitations,
                "role_sets": self.listed.role_sets,
            },
            "hotels": self.hotels.to_json(with_ids),
            "users": self.users.to_json(with_ids),
            "memberships": self.memberships.to_json(with_ids),
            "roles": self.roles.to_json(with_ids),
            "permissions": self.permissions.to_json(with_ids),
            "invitations": self.invitations.to_json(with_ids),
            "role_sets": self.role_sets.to_json(with_ids),
            "members_outside_role_set": self.members_outside_role_set,
            "memberships_ended_by_deletes": self.memberships_ended_by_deletes,
            "skipped": {
                "memberships_without_hotel": s.memberships_without_hotel,
                "memberships_obsolete": s.memberships_obsolete,
                "invalid_items": s.invalid_items,
                "deletes_not_confirmed": s.deletes_not_confirmed,
                "deletes_newer_than_listing": s.deletes_newer_than_listing,
                "role_sets_key_taken": s.role_sets_key_taken,
            },
            "mass_delete": self.mass_delete.map(|m| json!({
                "hotels_to_delete": m.hotels_to_delete, "live_hotels": m.live_hotels, "threshold": m.threshold,
            })),
            "error": self.error,
        })
    }
}

/// Why a resync did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// Another resync (in this or another process) holds the resync lock.
    #[error("another resync is running (it holds the resync advisory lock); try again when it has finished")]
    Busy,
    /// The deletes exceed the threshold: nothing was written; the run is recorded as refused.
    #[error("{}", mass_delete_message(.report))]
    MassDelete { report: Box<ResyncReport> },
    /// A listing or a delete confirmation failed: what was listed was applied (unless dry),
    /// nothing was deleted; the run is recorded as failed.
    #[error("resync incomplete, no row deleted: {source}")]
    Incomplete {
        source: ClerkApiError,
        report: Box<ResyncReport>,
    },
    /// The run was cancelled (shutdown); committed chunks stay, the rest rolled back.
    #[error("resync cancelled")]
    Cancelled,
    /// A database statement failed; chunks committed before it stay (each is atomic and
    /// newer-wins, so the next run converges).
    #[error("database error during resync: {0}")]
    Database(#[from] sqlx::Error),
}

impl ResyncError {
    /// The run's report, for the errors that have one.
    pub fn report(&self) -> Option<&ResyncReport> {
        match self {
            Self::MassDelete { report } | Self::Incomplete { report, .. } => Some(report),
            _ => None,
        }
    }
}

pub(crate) fn mass_delete_message(report: &ResyncReport) -> String {
    match report.mass_delete {
        Some(m) => format!(
            "refusing to delete {} of {} live hotels (more than {:.0}%): nothing was written. Check that \
             CLERK_SECRET_KEY is the right instance's key; if Clerk really lost them, run `orgsync resync \
             --allow-mass-delete`",
            m.hotels_to_delete,
            m.live_hotels,
            m.threshold * 100.0
        ),
        None => "refusing a mass delete".to_owned(),
    }
}

/// The report for people.
pub fn render_text(report: &ResyncReport, verbose: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let took = (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0;
    let head = match (report.dry_run, report.outcome) {
        (true, _) => "dry run (nothing written); a real run would make these changes",
        (false, Outcome::Succeeded) => "resync succeeded",
        (false, Outcome::Failed) => "resync incomplete (nothing deleted)",
        (false, Outcome::Refused) => "resync refused (nothing written); it would make these changes",
    };
    let _ = writeln!(out, "{head} [run {}, {took:.1}s]", report.run_id);
    let l = &report.listed;
    let _ = writeln!(
        out,
        "listed: {} organizations, {} memberships, {} users, {} roles, {} permissions, {} invitations, {} role sets",
        l.organizations, l.memberships, l.users, l.roles, l.permissions, l.invitations, l.role_sets
    );
    let _ = writeln!(out, "{:<12} {:>9} {:>9} {:>9}", "", "created", "updated", "deleted");
    for (name, c) in report.tables() {
        let _ = writeln!(
            out,
            "{name:<12} {:>9} {:>9} {:>9}",
            c.created.len(),
            c.updated.len(),
            c.deleted.len()
        );
    }
    if report.members_outside_role_set > 0 {
        let _ = writeln!(
            out,
            "{} members hold a role their hotel's role set does not list (Clerk would refuse it now; `orgsync access` explains)",
            report.members_outside_role_set
        );
    }
    if report.skipped.role_sets_key_taken > 0 {
        let _ = writeln!(
            out,
            "{} listed role sets not written: another live role set holds their key (the next run settles it)",
            report.skipped.role_sets_key_taken
        );
    }
    if report.memberships_ended_by_deletes > 0 {
        let _ = writeln!(
            out,
            "{} more memberships end with their deleted hotel or user",
            report.memberships_ended_by_deletes
        );
    }
    let s = &report.skipped;
    if s.deletes_not_confirmed + s.deletes_newer_than_listing > 0 {
        let _ = writeln!(
            out,
            "kept: {} rows missing from a listing that Clerk still has, {} written after the listing began",
            s.deletes_not_confirmed, s.deletes_newer_than_listing
        );
    }
    if s.memberships_without_hotel + s.memberships_obsolete + s.invalid_items > 0 {
        let _ = writeln!(
            out,
            "skipped: {} memberships of unlisted organizations, {} of deleted hotels or users, {} objects of an unexpected shape",
            s.memberships_without_hotel, s.memberships_obsolete, s.invalid_items
        );
    }
    if !report.complete {
        let _ = writeln!(out, "deletes were not considered: a listing did not complete");
    }
    if let Some(m) = report.mass_delete {
        let _ = writeln!(
            out,
            "mass delete: {} of {} live hotels (threshold {:.0}%){}",
            m.hotels_to_delete,
            m.live_hotels,
            m.threshold * 100.0,
            if report.dry_run {
                "; a real run would refuse without --allow-mass-delete"
            } else {
                ""
            }
        );
    }
    if verbose {
        for (table, c) in report.tables() {
            let name = table.trim_end_matches('s');
            for (sign, ids) in [("+", &c.created), ("~", &c.updated), ("-", &c.deleted)] {
                let mut sample = ids.ids().to_vec();
                sample.sort();
                for id in &sample {
                    let _ = writeln!(out, "  {sign} {name} {id}");
                }
                if !ids.is_complete() {
                    let _ = writeln!(out, "  {sign} {name} … and {} more", ids.len() - sample.len());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_count_everything_and_keep_a_bounded_sample() {
        let mut ids = Ids::default();
        for n in 0..Ids::SAMPLE + 500 {
            ids.push(format!("org_{n:08}"));
        }
        assert_eq!(ids.len(), Ids::SAMPLE + 500);
        assert_eq!(ids.ids().len(), Ids::SAMPLE);
        assert!(!ids.is_complete());
        let changes = Changes {
            created: ids,
            ..Changes::default()
        };
        let json = changes.to_json(true);
        assert_eq!(json["created"], Ids::SAMPLE + 500);
        assert_eq!(json["ids"]["created"].as_array().unwrap().len(), Ids::SAMPLE);
        assert_eq!(json["ids_complete"], false);
    }
}
