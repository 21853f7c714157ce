//! `orgsync resync`: one run with progress on stderr and the report on stdout.

use std::sync::Arc;

use super::{render_text, resync, Progress, ResyncError, ResyncOptions, ResyncReport};
use crate::clerk::api::ClerkClient;

/// What `orgsync resync` needs (the command line fills it).
pub struct CommandConfig {
    pub database_url: String,
    /// The schema orgsync's tables live in.
    pub schema: crate::db::Schema,
    pub client: ClerkClient,
    /// Print the difference and write nothing.
    pub dry_run: bool,
    /// List the ids of what changes.
    pub verbose: bool,
    /// Print the result as JSON.
    pub json: bool,
    pub allow_mass_delete: bool,
    pub mass_delete_threshold: f64,
}

/// `orgsync resync`: Ok(0) converged (or dry run done), Ok(1) incomplete (a listing failed:
/// what was listed was applied, nothing deleted), Ok(2) refused as a mass delete. Err for
/// configuration, database and lock problems.
pub async fn command(args: CommandConfig) -> anyhow::Result<i32> {
    use anyhow::Context;
    if !(0.0..=1.0).contains(&args.mass_delete_threshold) {
        anyhow::bail!("--mass-delete-threshold must be between 0 and 1 (a share: 0.10 is 10%)");
    }
    let client = args.client;
    let options =
        crate::db::connect_options(&args.database_url, &args.schema).context("DATABASE_URL is not a Postgres URL")?;
    let pool = crate::db::lazy_pool(options, &crate::db::PoolSettings::default());
    crate::db::prepare(&args.database_url, &args.schema, &pool)
        .await
        .context("preparing the database (is Postgres reachable at DATABASE_URL?)")?;

    use std::io::IsTerminal;
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() {
        Arc::new(super::progress::Bars::new())
    } else {
        Arc::new(super::progress::Lines::default())
    };
    let options = ResyncOptions {
        dry_run: args.dry_run,
        allow_mass_delete: args.allow_mass_delete,
        mass_delete_threshold: args.mass_delete_threshold,
        progress: Some(progress.clone()),
        ..ResyncOptions::default()
    };
    let result = resync(&pool, &client, &options).await;
    progress.stage("");
    let print = |report: &ResyncReport| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.to_json(args.verbose)).expect("JSON")
            );
        } else {
            print!("{}", render_text(report, args.verbose));
        }
    };
    match result {
        Ok(report) => {
            print(&report);
            Ok(0)
        }
        Err(e @ ResyncError::MassDelete { .. }) => {
            print(e.report().expect("has a report"));
            eprintln!("orgsync: {e}");
            Ok(2)
        }
        Err(e @ ResyncError::Incomplete { .. }) => {
            print(e.report().expect("has a report"));
            eprintln!("orgsync: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
