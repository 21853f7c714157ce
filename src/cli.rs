//! The `orgsync` command line. Every flag has an environment fallback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{cancel_on_signals, Application, ServeConfig};
use crate::db::PoolSettings;
use crate::queue::ingest::IngestSettings;
use crate::queue::WorkerSettings;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "orgsync", version, about = "Keeps hotels, users and memberships in step with Clerk organizations")]
pub struct Cli {
    /// Log format; JSON by default when stderr is not a terminal.
    #[arg(long, env = "ORGSYNC_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver and the workers (and the scheduled resync).
    Serve(ServeArgs),
    /// Create the database if needed and apply the migrations, then exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/orgsync", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address of the webhook endpoint (and of the probes and metrics, unless --admin-listen).
    #[arg(long, env = "ORGSYNC_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Separate address for /healthz, /readyz and /metrics.
    #[arg(long, env = "ORGSYNC_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Svix signing secrets (whsec_...), separated by spaces or commas; any may verify a
    /// delivery. Unset: a secret is generated on first start and kept in the database.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "ORGSYNC_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Do not serve the webhook endpoint (a worker-only process).
    #[arg(long, env = "ORGSYNC_NO_RECEIVER")]
    pub no_receiver: bool,
    /// Do not run workers (a receiver-only process).
    #[arg(long, env = "ORGSYNC_NO_WORKER")]
    pub no_worker: bool,
    /// Most database connections this process opens.
    #[arg(long, env = "ORGSYNC_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker tasks in this process.
    #[arg(long, env = "ORGSYNC_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Jobs claimed per batch.
    #[arg(long, env = "ORGSYNC_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: i64,
    /// How long a silent worker keeps its claimed batch before Postgres releases it.
    #[arg(long, env = "ORGSYNC_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Backoff ceiling of the first retry (doubling per attempt, full jitter).
    #[arg(long, env = "ORGSYNC_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Largest retry delay.
    #[arg(long, env = "ORGSYNC_RETRY_CAP", default_value = "30m", value_parser = humantime::parse_duration)]
    pub retry_cap: Duration,
    /// Attempts before a retryable job is dead-lettered.
    #[arg(long, env = "ORGSYNC_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts: i32,
    /// How often idle workers look for due jobs without a notification.
    #[arg(long, env = "ORGSYNC_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How long done and skipped jobs are kept for audit and replay.
    #[arg(long, env = "ORGSYNC_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
}

impl WorkerArgs {
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.workers,
            batch_size: self.batch_size.max(1),
            lease: self.lease,
            retry_base: self.retry_base,
            retry_cap: self.retry_cap,
            max_attempts: self.max_attempts,
            poll_interval: self.poll_interval,
            retention: self.retention,
        }
    }
}

impl ServeArgs {
    pub fn config(&self) -> ServeConfig {
        ServeConfig {
            database_url: self.database.database_url.clone(),
            listen: self.listen,
            admin_listen: self.admin_listen,
            webhook_secrets: self.webhook_secret.clone(),
            max_body: self.max_body,
            receiver: !self.no_receiver,
            worker: !self.no_worker,
            pool: PoolSettings { max_connections: self.db_pool_size, ..PoolSettings::default() },
            ingest: IngestSettings::default(),
            worker_settings: self.worker.settings(),
        }
    }
}

/// Runs the parsed command. Ok(exit code) for commands that report through it.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let app = Application::build(args.config()).await?;
            let cancel = CancellationToken::new();
            cancel_on_signals(cancel.clone());
            app.run(cancel).await?;
            Ok(0)
        }
        Command::Migrate(args) => {
            let options = crate::db::connect_options(&args.database_url)?;
            let pool = crate::db::lazy_pool(options, &PoolSettings::default());
            crate::db::prepare(&args.database_url, &pool).await?;
            println!("migrations applied");
            Ok(0)
        }
    }
}
