//! The write path on the command line (`orgsync hotels|invite|members`), calling
//! [`crate::manage`] directly, and the `/v1` API's flags of `orgsync serve`.
//!
//! Exit codes: 0 done (the mirror already shows it), 1 refused or failed (the reason on stderr;
//! with `--json`, the API's error body on stdout), 2 the database cannot be read (nothing was
//! sent to Clerk).

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{ClerkArgs, DatabaseArgs};
use crate::api::{ApiError, ApiSettings};
use crate::clerk::{HotelId, UserId};
use crate::manage::hotels::{CreatePlan, NewHotel};
use crate::manage::input::{EmailAddress, HotelName, RoleKey, Slug};
use crate::manage::invitations::NewInvite;
use crate::manage::view::{HotelView, InvitationView, MemberView};
use crate::manage::{ManageError, Manager, WriteOptions};

/// The `/v1` API's flags of `orgsync serve`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address of the /v1 JSON API (served only with CLERK_SECRET_KEY), or `off`. Beyond
    /// loopback it needs at least one API token (`orgsync tokens create`).
    #[arg(long, env = "ORGSYNC_API_LISTEN", default_value = crate::api::DEFAULT_LISTEN, value_parser = parse_listen)]
    pub api_listen: Listen,
    /// Largest /v1 request body, in bytes.
    #[arg(long, env = "ORGSYNC_API_MAX_BODY", default_value_t = 256 * 1024)]
    pub api_max_body: usize,
    /// Longest time one /v1 request may spend on Clerk (rate-limit waits and retries included);
    /// beyond it the answer is 503 with Retry-After. Keep it below ORGSYNC_REQUEST_TIMEOUT.
    #[arg(long, env = "ORGSYNC_API_CLERK_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_clerk_deadline: Duration,
}

impl ApiArgs {
    pub fn settings(&self) -> ApiSettings {
        ApiSettings {
            max_body: self.api_max_body,
            clerk_deadline: self.api_clerk_deadline,
        }
    }
}

/// An address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s {
        "off" | "" => Ok(Listen(None)),
        _ => s.parse().map(|a| Listen(Some(a))).map_err(|e| format!("{e}")),
    }
}

/// `orgsync hotels …`, `orgsync invite`, `orgsync members …`.
#[derive(Debug, Subcommand)]
pub enum ManageCommand {
    /// Create or delete hotels (Clerk organizations) through Clerk; the rows are written before
    /// the command returns.
    #[command(subcommand)]
    Hotels(HotelsCommand),
    /// Invite someone to a hotel (Clerk emails the invitation).
    Invite(InviteArgs),
    /// Add a member to a hotel, change their role, or remove them.
    #[command(subcommand)]
    Members(MembersCommand),
}

/// Where the command writes: the database and Clerk.
#[derive(Debug, Clone, Args)]
pub struct Target {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub clerk: ClerkArgs,
    /// Print the result (or the error) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HotelsCommand {
    /// Create a hotel with its first admin.
    Create {
        /// The hotel's name.
        name: HotelName,
        /// The user (user_...) who becomes its org:admin.
        #[arg(long)]
        admin: String,
        /// The organization's slug (generated from the name when absent).
        #[arg(long)]
        slug: Option<Slug>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a hotel: its memberships and invitations end with it. Asks you to type the id
    /// unless --yes.
    Delete {
        /// The hotel id (org_...).
        id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Clone, Args)]
pub struct InviteArgs {
    /// The hotel id (org_...).
    pub hotel_id: String,
    /// The invitee's email address.
    pub email: EmailAddress,
    /// Their role once they accept, e.g. org:member.
    #[arg(long)]
    pub role: RoleKey,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a user to a hotel with a role.
    Add {
        hotel_id: String,
        user_id: String,
        #[arg(long)]
        role: RoleKey,
        #[command(flatten)]
        target: Target,
    },
    /// Change a member's role.
    SetRole {
        hotel_id: String,
        user_id: String,
        #[arg(long)]
        role: RoleKey,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member from a hotel. Asks you to type the user id unless --yes.
    Remove {
        hotel_id: String,
        user_id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a write-path command; Ok(exit code).
pub async fn run(command: ManageCommand) -> anyhow::Result<i32> {
    match command {
        ManageCommand::Hotels(HotelsCommand::Create {
            name,
            admin,
            slug,
            target,
        }) => {
            let created_by = parse_id(UserId::parse(&admin), "--admin")?;
            let hotel = NewHotel {
                name,
                slug,
                created_by,
                public_metadata: None,
                private_metadata: None,
                max_allowed_memberships: None,
            };
            let plan = CreatePlan::first(&hotel);
            with_manager(
                &target,
                |m| async move { m.create_hotel(&hotel, &plan).await },
                print_hotel,
            )
            .await
        }
        ManageCommand::Hotels(HotelsCommand::Delete { id, yes, target }) => {
            let id = parse_id(HotelId::parse(&id), "ID")?;
            if !confirmed("hotel", id.as_str(), yes)? {
                return Ok(1);
            }
            with_manager(&target, |m| async move { m.delete_hotel(&id).await }, print_hotel).await
        }
        ManageCommand::Invite(args) => {
            let hotel = parse_id(HotelId::parse(&args.hotel_id), "HOTEL_ID")?;
            let invite = NewInvite::new(args.email, args.role);
            with_manager(
                &args.target,
                |m| async move { m.invite(&hotel, &invite).await },
                print_invitation,
            )
            .await
        }
        ManageCommand::Members(MembersCommand::Add {
            hotel_id,
            user_id,
            role,
            target,
        }) => {
            let (hotel, user) = member_ids(&hotel_id, &user_id)?;
            with_manager(
                &target,
                |m| async move { m.add_member(&hotel, &user, &role).await },
                print_member,
            )
            .await
        }
        ManageCommand::Members(MembersCommand::SetRole {
            hotel_id,
            user_id,
            role,
            target,
        }) => {
            let (hotel, user) = member_ids(&hotel_id, &user_id)?;
            with_manager(
                &target,
                |m| async move { m.set_member_role(&hotel, &user, &role).await },
                print_member,
            )
            .await
        }
        ManageCommand::Members(MembersCommand::Remove {
            hotel_id,
            user_id,
            yes,
            target,
        }) => {
            let (hotel, user) = member_ids(&hotel_id, &user_id)?;
            if !confirmed("the membership of user", user.as_str(), yes)? {
                return Ok(1);
            }
            with_manager(
                &target,
                |m| async move { m.remove_member(&hotel, &user).await },
                print_member,
            )
            .await
        }
    }
}

fn parse_id<T>(parsed: Result<T, crate::clerk::IdError>, what: &str) -> anyhow::Result<T> {
    parsed.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn member_ids(hotel: &str, user: &str) -> anyhow::Result<(HotelId, UserId)> {
    Ok((
        parse_id(HotelId::parse(hotel), "HOTEL_ID")?,
        parse_id(UserId::parse(user), "USER_ID")?,
    ))
}

/// True with `--yes`, or when the person types `id` at the prompt; Err when there is no
/// terminal to ask on.
fn confirmed(what: &str, id: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("refusing to delete {what} {id} without --yes: there is no terminal to confirm on");
    }
    eprint!("This deletes {what} {id} in Clerk, and it cannot be undone. Type the id to confirm: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() == id {
        Ok(true)
    } else {
        eprintln!("not confirmed; nothing was changed");
        Ok(false)
    }
}

/// Connects, checks the database is migrated (before anything is sent to Clerk), runs `op` and
/// prints its result with `print` (or as JSON).
async fn with_manager<T, F, Fut>(
    target: &Target,
    op: F,
    print: fn(&mut dyn Write, &T) -> std::io::Result<()>,
) -> anyhow::Result<i32>
where
    T: Serialize,
    F: FnOnce(Manager) -> Fut,
    Fut: std::future::Future<Output = Result<T, ManageError>>,
{
    let client = crate::clerk::api::ClerkClient::from_config(&target.clerk.config())?;
    let pool = crate::ops::connect(&target.database.database_url, &target.database.schema)?;
    match crate::db::is_ready(&pool).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("the database is not migrated: run `orgsync migrate` first; nothing was sent to Clerk");
            return Ok(crate::ops::EXIT_UNREACHABLE);
        }
        Err(e) => {
            eprintln!("cannot read the database: {e}; nothing was sent to Clerk");
            return Ok(crate::ops::EXIT_UNREACHABLE);
        }
    }
    let manager = Manager::new(pool, client, WriteOptions::default());
    let mut out = std::io::stdout().lock();
    match op(manager).await {
        Ok(value) => {
            if target.json {
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            } else {
                print(&mut out, &value)?;
            }
            Ok(0)
        }
        Err(e) => {
            let e = ApiError::from(e);
            if target.json {
                serde_json::to_writer_pretty(&mut out, &e.body())?;
                writeln!(out)?;
            }
            eprintln!("orgsync: {} ({})", e, e.code());
            Ok(if matches!(e, ApiError::Manage(ManageError::Database(_))) {
                crate::ops::EXIT_UNREACHABLE
            } else {
                1
            })
        }
    }
}

fn print_hotel(out: &mut dyn Write, h: &HotelView) -> std::io::Result<()> {
    match h.deleted_at {
        Some(at) => writeln!(out, "hotel {} ({}) deleted at {}", h.id, h.name, at.to_rfc3339())?,
        None => writeln!(
            out,
            "hotel {} ({}), slug {}",
            h.id,
            h.name,
            h.slug.as_deref().unwrap_or("-")
        )?,
    }
    for m in &h.members {
        print_member(out, m)?;
    }
    Ok(())
}

fn print_member(out: &mut dyn Write, m: &MemberView) -> std::io::Result<()> {
    let state = match m.removed_at {
        Some(at) => format!("removed {}", at.to_rfc3339()),
        None => "member".to_owned(),
    };
    writeln!(
        out,
        "  {} ({}) in {}: {} {state}",
        m.user_id,
        m.email.as_deref().unwrap_or("no email"),
        m.hotel_id,
        m.role
    )
}

fn print_invitation(out: &mut dyn Write, i: &InvitationView) -> std::io::Result<()> {
    writeln!(
        out,
        "invitation {} to {} for {} as {}: {}",
        i.id, i.hotel_id, i.email_address, i.role, i.status
    )
}
