//! `orgsync tokens create|list|revoke`: the API tokens of the `/v1` API and the console
//! ([`crate::tokens`]). `create` prints the token once, on stdout; nothing else ever shows it.

use std::io::Write;

use clap::Subcommand;

use super::DatabaseArgs;
use crate::tokens::{self, Access, TokenName};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it once (only its SHA-256 is kept).
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// A name for the token (who or what uses it), unique among live tokens.
        name: String,
        /// The token may read but not change anything.
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (never their text).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Revoked tokens too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        name: String,
    },
}

/// Runs a `tokens` command: exit 0 done, 1 refused (bad or taken name, nothing to revoke).
pub async fn run(command: TokensCommand) -> anyhow::Result<i32> {
    let database = match &command {
        TokensCommand::Create { database, .. }
        | TokensCommand::List { database, .. }
        | TokensCommand::Revoke { database, .. } => database,
    };
    let pool = crate::ops::connect(&database.database_url, &database.schema)?;
    // Tokens may be the first thing made on a fresh machine, before `serve` ever ran.
    crate::db::prepare(&database.database_url, &database.schema, &pool).await?;
    let mut out = std::io::stdout().lock();
    match command {
        TokensCommand::Create {
            name, read_only, json, ..
        } => {
            let access = if read_only { Access::ReadOnly } else { Access::ReadWrite };
            let issued = match TokenName::parse(&name) {
                Ok(name) => tokens::create(&pool, &name, access).await,
                Err(e) => Err(e),
            };
            let issued = match issued {
                Ok(issued) => issued,
                Err(tokens::TokenError::Database(e)) => return Err(e.into()),
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(1);
                }
            };
            if json {
                let value = serde_json::json!({"name": issued.name, "access": issued.access, "token": issued.token});
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{}", issued.token)?;
                eprintln!(
                    "token {:?} created ({}); it is shown only this once: keep it in the app's secret store",
                    issued.name,
                    access_word(issued.access)
                );
            }
            Ok(0)
        }
        TokensCommand::List { all, json, .. } => {
            let list = tokens::list(&pool, all).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
                return Ok(0);
            }
            writeln!(
                out,
                "{:<24} {:<22} {:<10} {:<20} {:<20} revoked",
                "name", "token", "access", "created", "last used"
            )?;
            for t in list {
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                };
                writeln!(
                    out,
                    "{:<24} {:<22} {:<10} {:<20} {:<20} {}",
                    t.name,
                    format!("{}{}_…", tokens::PREFIX, t.key_id),
                    access_word(t.access),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    when(t.revoked_at),
                )?;
            }
            Ok(0)
        }
        TokensCommand::Revoke { name, .. } => {
            let revoked = match TokenName::parse(&name) {
                Ok(name) => tokens::revoke(&pool, &name).await?,
                Err(_) => false,
            };
            if revoked {
                eprintln!("token {name:?} revoked");
                Ok(0)
            } else {
                eprintln!("no live token is named {name:?}");
                Ok(1)
            }
        }
    }
}

fn access_word(access: Access) -> &'static str {
    match access {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
}
