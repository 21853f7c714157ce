//! The `orgsync` command line. Every flag has an environment fallback. The library never
//! imports this module: the flags fill the plain config structs of the modules that use them.

pub mod commands;
pub mod console;
pub mod manage;
pub mod rbac;
pub mod tokens;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{cancel_on_signals, Application, ServeConfig};
use crate::clerk::api::ClerkConfig;
use crate::db::PoolSettings;
use crate::http::server::HttpLimits;
use crate::ops::jobs::JobFilter;
use crate::queue::ingest::IngestSettings;
use crate::queue::WorkerSettings;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "orgsync",
    version,
    about = "Keeps hotels, users and memberships in step with Clerk organizations"
)]
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
    Serve(Box<ServeArgs>),
    /// Create the database if needed and apply the migrations, then exit.
    Migrate(DatabaseArgs),
    /// Pull every organization, membership and user from the Clerk Backend API and converge
    /// the rows to it.
    Resync(ResyncArgs),
    /// Summarise the job queue and the last resync; exits non-zero when a person is needed.
    Status(StatusArgs),
    /// Inspect jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Make chosen jobs (e.g. dead ones) run again with a fresh attempt budget.
    Replay(ReplayArgs),
    /// Sign a fixture event with the webhook secret and post it to a running receiver.
    Send(SendArgs),
    /// Print the change feed in id order (created/updated/deleted hotels, users, memberships,
    /// roles, permissions, invitations);
    /// with --follow, keep printing changes as they commit until interrupted.
    Changes(ChangesArgs),
    /// What a user may do in a hotel, and why: the membership, its role, the permissions it
    /// grants and where they come from. With a permission: exit 0 when held, 1 when not; 2 when
    /// the database cannot be read.
    Access(AccessArgs),
    /// Create, list and revoke the API tokens of the `/v1` API and the console.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    #[command(flatten)]
    Manage(manage::ManageCommand),
    #[command(flatten)]
    Rbac(rbac::RbacCommand),
    /// Exit 0 when a running orgsync answers /healthz (for container health checks).
    Healthcheck {
        /// The health endpoint to probe.
        #[arg(
            long,
            env = "ORGSYNC_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ClerkArgs {
    /// Clerk Backend API base URL.
    #[arg(long, env = "CLERK_API_URL", default_value = "https://api.clerk.com")]
    pub clerk_api_url: String,
    /// Clerk secret key (sk_live_... or sk_test_...). Without it, resync and self-heal are off.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub clerk_secret_key: Option<String>,
    /// Most Clerk API requests per 10 seconds. Default: 1000 for sk_live_ keys, 100 otherwise
    /// (Clerk's production and development limits).
    #[arg(long, env = "CLERK_RATE_LIMIT")]
    pub clerk_rate_limit: Option<u32>,
    /// Timeout of one Clerk API request.
    #[arg(long, env = "CLERK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub clerk_timeout: Duration,
}

impl ClerkArgs {
    pub fn config(&self) -> ClerkConfig {
        ClerkConfig {
            api_url: self.clerk_api_url.clone(),
            secret_key: self.clerk_secret_key.clone(),
            rate_limit: self.clerk_rate_limit,
            timeout: self.clerk_timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub clerk: ClerkArgs,
    /// Print the difference and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// List the ids of what changes.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Apply deletes even when they exceed --mass-delete-threshold.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Largest share of live hotels a resync may delete without --allow-mass-delete.
    #[arg(long, env = "ORGSYNC_MASS_DELETE_THRESHOLD", default_value_t = 0.10)]
    pub mass_delete_threshold: f64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long)]
    pub json: bool,
    /// A due job older than this needs a person.
    #[arg(long, env = "ORGSYNC_MAX_PENDING_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_pending_age: Duration,
}

/// Job selectors shared by `jobs list` and `replay`; they combine (AND).
#[derive(Debug, Clone, Default, Args)]
pub struct JobFilterArgs {
    /// Only jobs in this state (available, done, dead, skipped).
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs of this event type, e.g. organizationMembership.created.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only jobs received at or after this time (RFC 3339, or a duration ago such as 2h).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs received before this time (RFC 3339, or a duration ago such as 30m).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs about this hotel or user (an org_... or user_... id).
    #[arg(long)]
    pub entity_id: Option<String>,
    /// At most this many jobs (oldest first).
    #[arg(long)]
    pub limit: Option<i64>,
}

impl JobFilterArgs {
    pub fn filter(&self) -> JobFilter {
        JobFilter {
            state: self.state.clone(),
            event_type: self.event_type.clone(),
            since: self.since,
            until: self.until,
            entity_id: self.entity_id.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, oldest first.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        filter: JobFilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one job: payload, attempts, every recorded error, timestamps.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A job id (repeatable).
    #[arg(long = "job")]
    pub jobs: Vec<i64>,
    /// The svix-id of the delivery.
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub filter: JobFilterArgs,
    /// List what would be replayed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// A fixture file, or the event type of a built-in fixture (e.g. organization.created).
    pub fixture: Option<String>,
    /// The event type of a built-in fixture (same as giving it as FIXTURE).
    #[arg(long = "type", conflicts_with = "fixture")]
    pub event_type: Option<String>,
    /// The receiver's webhook URL.
    #[arg(
        long,
        env = "ORGSYNC_SEND_URL",
        default_value = "http://127.0.0.1:8080/webhooks/clerk"
    )]
    pub url: String,
    /// Secret to sign with; defaults to the first of CLERK_WEBHOOK_SECRET, else the secret the
    /// service generated and stored in DATABASE_URL.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// The svix-id to send (default: a fresh random one).
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ChangesArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print only changes with a greater id (the last id a consumer handled).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Only changes of this entity.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::changes::ENTITIES.iter().copied()))]
    pub entity: Option<String>,
    /// Keep printing changes as they commit (LISTEN, polling as a fallback) until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// How often --follow looks for changes when no notification arrives.
    #[arg(long, env = "ORGSYNC_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often --follow's own sequencer makes committed changes readable (it ticks only
    /// when no `orgsync serve` got there first).
    #[arg(long, env = "ORGSYNC_FEED_TICK", default_value = "20ms", value_parser = parse_positive_duration)]
    pub feed_tick: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The Clerk user id (user_...).
    pub user_id: String,
    /// The hotel id, i.e. the Clerk organization id (org_...).
    pub hotel_id: String,
    /// A permission key to check, e.g. org:bookings:read.
    pub permission: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Parses RFC 3339, or a duration (`2h`, `30m`) meaning that long ago.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| format!("{s:?} is neither RFC 3339 nor a duration like 2h"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - ago)
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orgsync",
        hide_env_values = true
    )]
    pub database_url: String,
    /// The Postgres schema orgsync keeps all its tables, functions and migration bookkeeping in
    /// (created if missing); two instances can share a database in two schemas.
    #[arg(long, env = "ORGSYNC_SCHEMA", default_value = crate::db::DEFAULT_SCHEMA)]
    pub schema: crate::db::Schema,
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
    #[command(flatten)]
    pub http: HttpArgs,
    /// Do not serve the webhook endpoint (a worker-only process).
    #[arg(long, env = "ORGSYNC_NO_RECEIVER")]
    pub no_receiver: bool,
    /// Do not run workers (a receiver-only process).
    #[arg(long, env = "ORGSYNC_NO_WORKER")]
    pub no_worker: bool,
    /// Concurrent enqueue batchers, each committing one batch of deliveries at a time. One is
    /// fastest on small machines: its batches are larger, and concurrent inserts into the job
    /// table's ever-increasing indexes contend for the same pages.
    #[arg(long, env = "ORGSYNC_INGEST_BATCHERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingest_batchers: u16,
    /// Most database connections this process opens.
    #[arg(long, env = "ORGSYNC_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub clerk: ClerkArgs,
    /// How often to run the full resync (e.g. 24h), or `off`. Needs CLERK_SECRET_KEY.
    #[arg(long, env = "ORGSYNC_RESYNC_INTERVAL", default_value = "24h", value_parser = parse_interval)]
    pub resync_interval: Interval,
    /// After this many attempts, a membership job whose hotel is missing makes the worker fetch
    /// that organization from Clerk (needs CLERK_SECRET_KEY).
    #[arg(long, env = "ORGSYNC_SELF_HEAL_AFTER", default_value_t = 3)]
    pub self_heal_after: i32,
    /// Largest share of live hotels the scheduled resync may delete; beyond it the run is
    /// refused (and reported by `orgsync status`) until an operator runs
    /// `orgsync resync --allow-mass-delete`.
    #[arg(long, env = "ORGSYNC_MASS_DELETE_THRESHOLD", default_value_t = 0.10)]
    pub mass_delete_threshold: f64,
    #[command(flatten)]
    pub console: console::ConsoleArgs,
    #[command(flatten)]
    pub api: manage::ApiArgs,
    /// How often the change feed's sequencer makes committed changes readable.
    #[arg(long, env = "ORGSYNC_FEED_TICK", default_value = "20ms", value_parser = parse_positive_duration)]
    pub feed_tick: Duration,
}

/// Deadlines and the connection cap of the HTTP listeners (see [`HttpLimits`]).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Longest wait for a complete request head, from when a connection opens or its previous
    /// response was sent; also the idle timeout of kept-alive connections. The connection is
    /// closed beyond it.
    #[arg(long, env = "ORGSYNC_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,
    /// Longest time from the end of a request head to its answer, reading the body included;
    /// 408 and the connection closed beyond it.
    #[arg(long, env = "ORGSYNC_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
    /// Most connections open at once on the main listener. Beyond it a newcomer takes the place
    /// of the connection waiting longest without a complete request (counted by
    /// orgsync_http_connections_evicted_total); requests being handled are never cut off. Lowered
    /// at start to what the open-files limit allows (the soft limit is first raised to the hard
    /// one).
    #[arg(long, env = "ORGSYNC_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

impl HttpArgs {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections as usize,
        }
    }
}

/// A humantime duration (`10s`, `1m`) that is not zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A schedule period that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

/// `off` (or `0`) disables; anything else is a duration such as `24h`.
fn parse_interval(s: &str) -> Result<Interval, String> {
    match s {
        "off" | "0" | "" => Ok(Interval(None)),
        _ => humantime::parse_duration(s)
            .map(|d| Interval(Some(d)))
            .map_err(|e| e.to_string()),
    }
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
            schema: self.database.schema.clone(),
            listen: self.listen,
            admin_listen: self.admin_listen,
            webhook_secrets: self.webhook_secret.clone(),
            max_body: self.max_body,
            http: self.http.limits(),
            receiver: !self.no_receiver,
            worker: !self.no_worker,
            pool: PoolSettings {
                max_connections: self.db_pool_size,
                ..PoolSettings::default()
            },
            ingest: IngestSettings {
                batchers: usize::from(self.ingest_batchers),
                ..IngestSettings::default()
            },
            worker_settings: self.worker.settings(),
            clerk: self.clerk.clerk_secret_key.is_some().then(|| self.clerk.config()),
            resync_interval: self.resync_interval.0,
            self_heal_after: self.self_heal_after,
            mass_delete_threshold: self.mass_delete_threshold,
            console: self.console.config(),
            api_listen: self.api.api_listen.0,
            api: self.api.settings(),
            feed: crate::changes::SequencerSettings { tick: self.feed_tick },
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
            let options = crate::db::connect_options(&args.database_url, &args.schema)?;
            let pool = crate::db::lazy_pool(options, &PoolSettings::default());
            crate::db::prepare_and_upgrade(&args.database_url, &args.schema, &pool).await?;
            println!("migrations applied (schema {})", args.schema);
            Ok(0)
        }
        Command::Resync(args) => {
            let client = crate::clerk::api::ClerkClient::from_config(&args.clerk.config())?;
            crate::resync::command(crate::resync::CommandConfig {
                database_url: args.database.database_url,
                schema: args.database.schema,
                client,
                dry_run: args.dry_run,
                verbose: args.verbose,
                json: args.json,
                allow_mass_delete: args.allow_mass_delete,
                mass_delete_threshold: args.mass_delete_threshold,
            })
            .await
        }
        Command::Status(args) => commands::status(args).await,
        Command::Jobs(JobsCommand::List { database, filter, json }) => {
            commands::jobs_list(database, filter, json).await
        }
        Command::Jobs(JobsCommand::Show { database, id, json }) => commands::jobs_show(database, id, json).await,
        Command::Replay(args) => commands::replay(args).await,
        Command::Send(args) => commands::send(args).await,
        Command::Changes(args) => {
            let query = crate::ops::changes::ChangesQuery {
                after: args.after,
                entity: args.entity,
                follow: args.follow,
                json: args.json,
                poll_interval: args.poll_interval,
                feed: crate::changes::SequencerSettings { tick: args.feed_tick },
            };
            let pool = crate::ops::connect(&args.database.database_url, &args.database.schema)?;
            crate::ops::changes::command(pool, query).await
        }
        Command::Access(args) => commands::access(args).await,
        Command::Tokens(command) => tokens::run(command).await,
        Command::Manage(command) => manage::run(command).await,
        Command::Rbac(command) => rbac::run(command).await,
        Command::Healthcheck { url } => {
            let ok = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            Ok(if ok { 0 } else { 1 })
        }
    }
}
