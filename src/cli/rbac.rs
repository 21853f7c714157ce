//! The RBAC write path on the command line: `orgsync roles create|update|delete|grant|revoke`,
//! `orgsync permissions create|update|delete`, `orgsync role-sets
//! list|show|create|add-roles|replace|replace-role`, calling [`crate::manage::rbac`] directly
//! (list and show read the mirror only). Exit codes as the other write commands
//! ([`super::manage`]): 0 done, 1 refused or failed, 2 the database cannot be read.

use std::io::Write;

use clap::{Args, Subcommand};

use super::manage::{confirmed, with_manager, Target};
use super::DatabaseArgs;
use crate::clerk::{PermissionId, RoleId, RoleSetKey};
use crate::manage::input::RoleKey;
use crate::manage::rbac_input::{
    CustomRoleKey, Description, DisplayName, NewPermissionInput, NewRoleInput, NewRoleSetInput, PermissionKey,
    PermissionUpdate, RoleReplacement, RoleSetAddition, RoleSetReplacement, RoleSetType, RoleUpdate,
};
use crate::manage::rbac_view::{PermissionView, ReplacedView, RoleSetView, RoleView};

/// `orgsync roles …`, `orgsync permissions …`, `orgsync role-sets …`.
#[derive(Debug, Subcommand)]
pub enum RbacCommand {
    /// Create, change and delete organization roles, and grant or revoke their permissions, in
    /// Clerk; `member_permissions` shows the change for every holder before the command returns.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Create, change and delete organization permissions in Clerk.
    #[command(subcommand)]
    Permissions(PermissionsCommand),
    /// List, show, create, extend and replace role sets (which roles a hotel may hand out).
    #[command(subcommand, name = "role-sets")]
    RoleSets(RoleSetsCommand),
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create a role, e.g. `orgsync roles create org:front_desk --name "Front desk"`.
    Create {
        key: CustomRoleKey,
        #[arg(long)]
        name: DisplayName,
        #[arg(long)]
        description: Option<Description>,
        /// A permission id (perm_...) it grants; repeat for more.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Also add it to the initial role set.
        #[arg(long)]
        initial: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Change a role's name, key, description, or (with --permissions) its whole permission set.
    Update {
        role_id: String,
        #[arg(long)]
        name: Option<DisplayName>,
        #[arg(long)]
        key: Option<CustomRoleKey>,
        #[arg(long)]
        description: Option<Description>,
        /// The permission ids it grants from now on, comma-separated (replaces the set).
        #[arg(long, value_delimiter = ',')]
        permissions: Option<Vec<String>>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a role (Clerk refuses while members or invitations hold it). Asks you to type the
    /// id unless --yes.
    Delete {
        role_id: String,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Grant a permission to a role: every member holding it holds the permission at once.
    Grant {
        role_id: String,
        permission_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a permission from a role: no member holding it holds the permission any more.
    Revoke {
        role_id: String,
        permission_id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// Create a permission, e.g. `orgsync permissions create org:reservations:manage --name Manage`.
    Create {
        key: PermissionKey,
        #[arg(long)]
        name: DisplayName,
        #[arg(long)]
        description: Option<Description>,
        #[command(flatten)]
        target: Target,
    },
    /// Change a permission's name, key or description.
    Update {
        permission_id: String,
        #[arg(long)]
        name: Option<DisplayName>,
        #[arg(long)]
        key: Option<PermissionKey>,
        #[arg(long)]
        description: Option<Description>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a permission: it leaves every role. Asks you to type the id unless --yes.
    Delete {
        permission_id: String,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleSetsCommand {
    /// The role sets the mirror holds.
    List(ReadArgs),
    /// One role set (by key or id) as the mirror holds it.
    Show {
        key: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Create a role set, e.g. `orgsync role-sets create --name Front --key role_set:front
    /// --role org:admin --role org:desk --default-role org:desk --creator-role org:admin`.
    Create {
        #[arg(long)]
        name: DisplayName,
        #[arg(long)]
        key: Option<RoleSetKey>,
        #[arg(long)]
        description: Option<Description>,
        /// A role key it lists (1 to 10); repeat for more.
        #[arg(long = "role", required = true)]
        roles: Vec<RoleKey>,
        #[arg(long)]
        default_role: RoleKey,
        #[arg(long)]
        creator_role: RoleKey,
        #[arg(long = "type", value_enum)]
        kind: Option<RoleSetType>,
        #[command(flatten)]
        target: Target,
    },
    /// Add roles to a role set.
    AddRoles {
        key: String,
        #[arg(long = "role", required = true)]
        roles: Vec<RoleKey>,
        #[arg(long)]
        default_role: Option<RoleKey>,
        #[arg(long)]
        creator_role: Option<RoleKey>,
        #[command(flatten)]
        target: Target,
    },
    /// Replace a role set by another: it is deleted, its hotels move to DEST (members to the
    /// mapped roles), and their memberships are re-read from Clerk. Asks you to type the key
    /// unless --yes.
    Replace {
        key: String,
        dest: RoleSetKey,
        /// FROM=TO: members holding FROM get TO (a role DEST lacks); repeat for more.
        #[arg(long = "map", value_parser = parse_mapping)]
        mappings: Vec<(RoleKey, RoleKey)>,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Take a role out of a role set, moving its holders to another role of it.
    ReplaceRole {
        key: String,
        role: RoleKey,
        to_role: RoleKey,
        #[command(flatten)]
        target: Target,
    },
}

/// What the read-only commands need: the database and `--json`.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long)]
    pub json: bool,
}

fn parse_mapping(s: &str) -> Result<(RoleKey, RoleKey), String> {
    let (from, to) = s.split_once('=').ok_or("expected FROM=TO")?;
    Ok((from.parse()?, to.parse()?))
}

fn role(raw: &str) -> anyhow::Result<RoleId> {
    RoleId::parse(raw).map_err(|e| anyhow::anyhow!("ROLE_ID: {e}"))
}

fn permission(raw: &str) -> anyhow::Result<PermissionId> {
    PermissionId::parse(raw).map_err(|e| anyhow::anyhow!("PERMISSION_ID: {e}"))
}

fn permissions(raw: &[String]) -> anyhow::Result<Vec<PermissionId>> {
    raw.iter().map(|p| permission(p)).collect()
}

/// Runs an RBAC command; Ok(exit code).
pub async fn run(command: RbacCommand) -> anyhow::Result<i32> {
    match command {
        RbacCommand::Roles(c) => roles(c).await,
        RbacCommand::Permissions(c) => permissions_command(c).await,
        RbacCommand::RoleSets(c) => role_sets(c).await,
    }
}

async fn roles(command: RolesCommand) -> anyhow::Result<i32> {
    match command {
        RolesCommand::Create {
            key,
            name,
            description,
            permissions: ps,
            initial,
            target,
        } => {
            let input = NewRoleInput {
                name,
                key,
                description,
                permissions: (!ps.is_empty()).then(|| permissions(&ps)).transpose()?,
                include_in_initial_role_set: initial.then_some(true),
            };
            with_manager(&target, |m| async move { m.create_role(&input).await }, print_role).await
        }
        RolesCommand::Update {
            role_id,
            name,
            key,
            description,
            permissions: ps,
            target,
        } => {
            let id = role(&role_id)?;
            let changes = RoleUpdate {
                name,
                key,
                description,
                permissions: ps.map(|ps| permissions(&ps)).transpose()?,
            };
            with_manager(
                &target,
                |m| async move { m.update_role(&id, &changes).await },
                print_role,
            )
            .await
        }
        RolesCommand::Delete { role_id, yes, target } => {
            let id = role(&role_id)?;
            if !confirmed("role", id.as_str(), yes)? {
                return Ok(1);
            }
            with_manager(&target, |m| async move { m.delete_role(&id).await }, print_role).await
        }
        RolesCommand::Grant {
            role_id,
            permission_id,
            target,
        } => set_permission(&role_id, &permission_id, true, &target).await,
        RolesCommand::Revoke {
            role_id,
            permission_id,
            target,
        } => set_permission(&role_id, &permission_id, false, &target).await,
    }
}

async fn set_permission(role_id: &str, permission_id: &str, grant: bool, target: &Target) -> anyhow::Result<i32> {
    let (id, perm) = (role(role_id)?, permission(permission_id)?);
    with_manager(
        target,
        |m| async move { m.set_role_permission(&id, &perm, grant).await },
        print_role,
    )
    .await
}

async fn permissions_command(command: PermissionsCommand) -> anyhow::Result<i32> {
    match command {
        PermissionsCommand::Create {
            key,
            name,
            description,
            target,
        } => {
            let input = NewPermissionInput { name, key, description };
            with_manager(
                &target,
                |m| async move { m.create_permission(&input).await },
                print_permission,
            )
            .await
        }
        PermissionsCommand::Update {
            permission_id,
            name,
            key,
            description,
            target,
        } => {
            let id = permission(&permission_id)?;
            let changes = PermissionUpdate { name, key, description };
            with_manager(
                &target,
                |m| async move { m.update_permission(&id, &changes).await },
                print_permission,
            )
            .await
        }
        PermissionsCommand::Delete {
            permission_id,
            yes,
            target,
        } => {
            let id = permission(&permission_id)?;
            if !confirmed("permission", id.as_str(), yes)? {
                return Ok(1);
            }
            with_manager(
                &target,
                |m| async move { m.delete_permission(&id).await },
                print_permission,
            )
            .await
        }
    }
}

async fn role_sets(command: RoleSetsCommand) -> anyhow::Result<i32> {
    match command {
        RoleSetsCommand::List(read) => {
            read_mirror(&read, None, |out, sets| {
                sets.iter().try_for_each(|s| print_role_set(out, s))
            })
            .await
        }
        RoleSetsCommand::Show { key, read } => {
            read_mirror(&read, Some(&key), |out, sets| match sets.first() {
                Some(s) => print_role_set(out, s),
                None => writeln!(out, "no such role set"),
            })
            .await
        }
        RoleSetsCommand::Create {
            name,
            key,
            description,
            roles,
            default_role,
            creator_role,
            kind,
            target,
        } => {
            let input = NewRoleSetInput {
                name,
                key,
                description,
                default_role_key: default_role,
                creator_role_key: creator_role,
                kind,
                roles,
            };
            with_manager(
                &target,
                |m| async move { m.create_role_set(&input).await },
                print_role_set,
            )
            .await
        }
        RoleSetsCommand::AddRoles {
            key,
            roles,
            default_role,
            creator_role,
            target,
        } => {
            let addition = RoleSetAddition {
                role_keys: roles,
                default_role_key: default_role,
                creator_role_key: creator_role,
            };
            with_manager(
                &target,
                |m| async move { m.add_role_set_roles(&key, &addition).await },
                print_role_set,
            )
            .await
        }
        RoleSetsCommand::Replace {
            key,
            dest,
            mappings,
            yes,
            target,
        } => {
            if !confirmed("role set", &key, yes)? {
                return Ok(1);
            }
            let replacement = RoleSetReplacement {
                dest_role_set_key: dest,
                reassignment_mappings: mappings.into_iter().collect(),
            };
            with_manager(
                &target,
                |m| async move { m.replace_role_set(&key, &replacement).await },
                print_replaced,
            )
            .await
        }
        RoleSetsCommand::ReplaceRole {
            key,
            role,
            to_role,
            target,
        } => {
            let replacement = RoleReplacement {
                role_key: role,
                to_role_key: to_role,
            };
            with_manager(
                &target,
                |m| async move { m.replace_role_set_role(&key, &replacement).await },
                print_role_set,
            )
            .await
        }
    }
}

/// Reads role sets from the mirror (no Clerk needed): exit 0, or 1 when `key` names none, 2
/// when the database cannot be read.
async fn read_mirror(
    read: &ReadArgs,
    key: Option<&str>,
    print: impl Fn(&mut dyn Write, &Vec<RoleSetView>) -> std::io::Result<()>,
) -> anyhow::Result<i32> {
    let pool = crate::ops::connect(&read.database.database_url, &read.database.schema)?;
    let sets = match pool.acquire().await {
        Ok(mut conn) => crate::manage::rbac_view::role_sets(&mut conn, key).await,
        Err(e) => Err(e),
    };
    let sets = match sets {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read the database: {e}");
            return Ok(crate::ops::EXIT_UNREACHABLE);
        }
    };
    let found = key.is_none() || !sets.is_empty();
    let value = match key {
        Some(_) => serde_json::to_value(sets.first())?,
        None => serde_json::to_value(&sets)?,
    };
    let mut out = std::io::stdout().lock();
    if read.json {
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        print(&mut out, &sets)?;
    }
    Ok(if found { 0 } else { 1 })
}

fn print_permission(out: &mut dyn Write, p: &PermissionView) -> std::io::Result<()> {
    match p.deleted_at {
        Some(at) => writeln!(out, "permission {} ({}) deleted at {}", p.id, p.key, at.to_rfc3339()),
        None => writeln!(out, "permission {} {} ({})", p.id, p.key, p.name),
    }
}

fn print_role(out: &mut dyn Write, r: &RoleView) -> std::io::Result<()> {
    if let Some(at) = r.deleted_at {
        return writeln!(out, "role {} ({}) deleted at {}", r.id, r.key, at.to_rfc3339());
    }
    writeln!(
        out,
        "role {} {} ({}), held by {} members",
        r.id, r.key, r.name, r.members
    )?;
    for p in &r.permissions {
        writeln!(out, "  {p}")?;
    }
    Ok(())
}

fn print_role_set(out: &mut dyn Write, s: &RoleSetView) -> std::io::Result<()> {
    if let Some(at) = s.deleted_at {
        return writeln!(out, "role set {} ({}) deleted at {}", s.key, s.id, at.to_rfc3339());
    }
    writeln!(
        out,
        "role set {} ({}) {}, {}, used by {} hotels; default {}, creator {}",
        s.key,
        s.id,
        s.name,
        s.kind.as_deref().unwrap_or("-"),
        s.hotels,
        s.default_role_key.as_deref().unwrap_or("-"),
        s.creator_role_key.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "  roles: {}", s.roles.join(", "))
}

fn print_replaced(out: &mut dyn Write, r: &ReplacedView) -> std::io::Result<()> {
    if let Some(s) = &r.replaced {
        print_role_set(out, s)?;
    }
    if let Some(s) = &r.destination {
        print_role_set(out, s)?;
    }
    writeln!(out, "{} hotels' memberships re-read from Clerk", r.hotels_relisted)
}
