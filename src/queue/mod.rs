//! The durable job table: the receiver's group-commit enqueue, and the consumer that drains it.

pub mod ingest;
pub mod runner;

pub use ingest::{Enqueued, Ingest, IngestError, NewJob};
pub use runner::{Runner, WorkerSettings};

/// The channel the enqueue side notifies and the workers listen on.
pub const NOTIFY_CHANNEL: &str = "orgsync_jobs";

/// The states a job moves through. `available` jobs are claimable once `run_at` has passed.
pub const STATES: [&str; 4] = ["available", "done", "dead", "skipped"];
