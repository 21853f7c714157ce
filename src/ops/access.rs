//! `orgsync access USER_ID HOTEL_ID [PERMISSION]`: the operator's answer to "why can't Jane see
//! bookings?". It reads the same view the app checks access with (`member_permissions`), and
//! next to it the facts that explain the answer: the membership, the hotel, the user's status,
//! the role and where the permissions came from, and whether the hotel's role set lists the role
//! (Clerk refuses a role its organization's role set does not list).
//!
//! Exit codes ([`Access::exit_code`]): with a permission, 0 when the user holds it in that hotel
//! and 1 when not; without one, 0 when the user is a member holding access (live membership of
//! a live hotel, user neither deleted, banned nor locked) and 1 when not. 2 when the database
//! cannot be read ([`super::EXIT_UNREACHABLE`]).

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Where a member's permissions come from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    /// The current permission set of the live role whose key the membership holds.
    Role { role_id: String, name: String },
    /// No live role has the membership's key (not known yet): the permissions Clerk sent on the
    /// membership stand in.
    MembershipPermissions,
}

/// The hotel's role set and whether it lists the member's role.
#[derive(Debug, Clone, Serialize)]
pub struct RoleSetFacts {
    /// The hotel's `role_set_key`.
    pub key: String,
    /// The role set's name; None when no live role set with that key is mirrored.
    pub name: Option<String>,
    /// Whether it lists the member's role (None when it is not mirrored: unknown).
    pub lists_role: Option<bool>,
}

/// The membership and what explains its access.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipFacts {
    pub role: String,
    pub role_name: Option<String>,
    pub since: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub hotel_name: String,
    pub hotel_deleted_at: Option<DateTime<Utc>>,
    pub user_email: Option<String>,
    pub user_deleted_at: Option<DateTime<Utc>>,
    pub banned: bool,
    pub locked: bool,
    pub source: GrantSource,
    /// None when the hotel names no role set.
    pub role_set: Option<RoleSetFacts>,
}

/// The answer for one user in one hotel.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    pub user_id: String,
    pub hotel_id: String,
    /// None: the user never was a member of the hotel (or one of them is unknown).
    pub membership: Option<MembershipFacts>,
    /// The permission keys held, from `member_permissions`: exactly what the app's check sees.
    pub grants: Vec<String>,
    /// The permission asked about, if any.
    pub permission: Option<String>,
    /// Whether the permission asked about is held (None when none was asked about).
    pub held: Option<bool>,
    /// Why access is refused, when it is: each reason a person can act on.
    pub reasons: Vec<String>,
    /// What is wrong without refusing access: a role the hotel's role set does not list.
    pub notes: Vec<String>,
}

impl Access {
    /// 0 when held (or, without a permission, when the user has access as a member), else 1.
    pub fn exit_code(&self) -> i32 {
        let granted = match self.held {
            Some(held) => held,
            None => self.reasons.is_empty() && self.membership.is_some(),
        };
        if granted {
            0
        } else {
            1
        }
    }
}

/// Reads what `user_id` may do in `hotel_id` (and whether it holds `permission`). Err only when
/// the database cannot be read.
pub async fn check_access(
    pool: &PgPool,
    user_id: &str,
    hotel_id: &str,
    permission: Option<&str>,
) -> Result<Access, sqlx::Error> {
    let facts = sqlx::query!(
        r#"
        select m.role, m.role_name, m.created_at, m.deleted_at as removed_at,
               h.name as hotel_name, h.deleted_at as hotel_deleted_at,
               u.email, u.deleted_at as user_deleted_at, u.banned, u.locked,
               r.id as "role_id?", r.name as "role_display?",
               h.role_set_key, rs.name as "role_set_name?",
               (select exists (select 1 from role_set_roles x where x.role_set_id = rs.id and x.role_key = m.role))
                   as "role_in_role_set?"
        from memberships m
        join hotels h on h.id = m.hotel_id
        join users u on u.id = m.user_id
        left join roles r on r.key = m.role and r.deleted_at is null
        left join role_sets rs on rs.key = h.role_set_key and rs.deleted_at is null
        where m.hotel_id = $1 and m.user_id = $2
        "#,
        hotel_id,
        user_id
    )
    .fetch_optional(pool)
    .await?;
    let grants = sqlx::query_scalar!(
        r#"select distinct permission as "permission!" from member_permissions
           where hotel_id = $1 and user_id = $2 order by 1"#,
        hotel_id,
        user_id
    )
    .fetch_all(pool)
    .await?;

    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let membership = match facts {
        None => {
            let known = sqlx::query!(
                r#"select exists (select 1 from hotels where id = $1) as "hotel!",
                          exists (select 1 from users where id = $2) as "user!""#,
                hotel_id,
                user_id
            )
            .fetch_one(pool)
            .await?;
            if !known.hotel {
                reasons.push(format!("hotel {hotel_id} is not in the mirror"));
            }
            if !known.user {
                reasons.push(format!("user {user_id} is not in the mirror"));
            }
            reasons.push("no membership of this user in this hotel".to_owned());
            None
        }
        Some(f) => {
            if let Some(at) = f.removed_at {
                reasons.push(format!("the membership was removed at {}", at.to_rfc3339()));
            }
            if let Some(at) = f.hotel_deleted_at {
                reasons.push(format!("the hotel was deleted at {}", at.to_rfc3339()));
            }
            if let Some(at) = f.user_deleted_at {
                reasons.push(format!("the user was deleted at {}", at.to_rfc3339()));
            }
            if f.banned {
                reasons.push("the user is banned".to_owned());
            }
            if f.locked {
                reasons.push("the user is locked".to_owned());
            }
            let source = match (f.role_id, f.role_display) {
                (Some(role_id), Some(name)) => GrantSource::Role { role_id, name },
                _ => GrantSource::MembershipPermissions,
            };
            let role_set = f.role_set_key.map(|key| {
                let lists_role = f.role_set_name.as_ref().and(f.role_in_role_set);
                match lists_role {
                    Some(false) => notes.push(format!(
                        "role {} is not in the hotel's role set {key}: Clerk would refuse it for this hotel",
                        f.role
                    )),
                    None => notes.push(format!(
                        "the hotel's role set {key} is not mirrored yet: whether it lists role {} is unknown",
                        f.role
                    )),
                    Some(true) => {}
                }
                RoleSetFacts {
                    key,
                    name: f.role_set_name,
                    lists_role,
                }
            });
            Some(MembershipFacts {
                role: f.role,
                role_name: f.role_name,
                since: f.created_at,
                removed_at: f.removed_at,
                hotel_name: f.hotel_name,
                hotel_deleted_at: f.hotel_deleted_at,
                user_email: f.email,
                user_deleted_at: f.user_deleted_at,
                banned: f.banned,
                locked: f.locked,
                source,
                role_set,
            })
        }
    };

    let held = permission.map(|p| grants.iter().any(|g| g == p));
    if let (Some(p), Some(false), Some(m)) = (permission, held, &membership) {
        if reasons.is_empty() {
            let deleted = sqlx::query_scalar!(
                r#"select bool_and(deleted_at is not null) as "all_deleted" from permissions where key = $1"#,
                p
            )
            .fetch_one(pool)
            .await?;
            match (deleted, &m.source) {
                (Some(true), _) => reasons.push(format!("permission {p} was deleted in Clerk")),
                (_, GrantSource::Role { .. }) => reasons.push(format!("role {} does not grant {p}", m.role)),
                (_, GrantSource::MembershipPermissions) => reasons.push(format!(
                    "role {} is not known yet and the membership's own permissions lack {p}",
                    m.role
                )),
            }
        }
    }
    Ok(Access {
        user_id: user_id.to_owned(),
        hotel_id: hotel_id.to_owned(),
        membership,
        grants,
        permission: permission.map(str::to_owned),
        held,
        reasons,
        notes,
    })
}

/// The human-readable answer.
pub fn write_access(out: &mut impl Write, a: &Access) -> std::io::Result<()> {
    match &a.membership {
        None => writeln!(out, "user {} in hotel {}: no membership", a.user_id, a.hotel_id)?,
        Some(m) => {
            let state = match m.removed_at {
                Some(at) => format!("removed {}", at.to_rfc3339()),
                None => format!("member since {}", m.since.to_rfc3339()),
            };
            writeln!(
                out,
                "user {} ({}) in hotel {} ({}): {state}",
                a.user_id,
                m.user_email.as_deref().unwrap_or("no email"),
                a.hotel_id,
                m.hotel_name
            )?;
            let display = m.role_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            writeln!(out, "role:        {}{display}", m.role)?;
            let source = match &m.source {
                GrantSource::Role { role_id, name } => format!("role {role_id} ({name}), its current permission set"),
                GrantSource::MembershipPermissions => {
                    "the membership's own permissions (no live role has this key yet)".to_owned()
                }
            };
            writeln!(out, "granted by:  {source}")?;
            if let Some(set) = &m.role_set {
                let name = set.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                let listed = match set.lists_role {
                    Some(true) => "lists this role",
                    Some(false) => "does NOT list this role",
                    None => "not mirrored",
                };
                writeln!(out, "role set:    {}{name}, {listed}", set.key)?;
            }
        }
    }
    if a.grants.is_empty() {
        writeln!(out, "permissions: none")?;
    } else {
        writeln!(out, "permissions:")?;
        for g in &a.grants {
            writeln!(out, "  {g}")?;
        }
    }
    if let (Some(p), Some(held)) = (&a.permission, a.held) {
        writeln!(out, "{p}: {}", if held { "held" } else { "not held" })?;
    }
    for r in &a.reasons {
        writeln!(out, "because {r}")?;
    }
    for n in &a.notes {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}
