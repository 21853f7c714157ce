//! Group-commit enqueue. Each delivery waits for a durable commit before its 2xx, but
//! concurrent deliveries share one transaction and so one disk flush: a batcher task collects
//! whatever is queued while the previous commit was in flight, inserts it with one statement,
//! commits, and answers every waiter.
//!
//! One delivery's content never decides another's answer. The receiver's envelope check lets
//! through only what the `jobs` row can hold (see `clerk::envelope`), and [`Ingest::enqueue`]
//! refuses the rest itself (a NUL byte, which no `text` value holds). Should a batch statement
//! still fail because of its data (SQLSTATE class 22 data exception, 23 integrity, 54 program
//! limit) rather than the database, its deliveries are inserted again one by one: the others
//! are stored as usual and only the offending one gets [`IngestError::Unstorable`] (a 422).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

/// One verified delivery to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The `svix-id`: a second delivery with the same id is a duplicate.
    pub event_id: String,
    pub event_type: String,
    /// The raw JSON body, stored as sent (`json`).
    pub payload: String,
    /// The hotel or user the event is about ([`crate::clerk::Envelope::entity_key`]).
    pub entity_key: Option<String>,
    /// Stored as `skipped` (an event type orgsync does not reconcile).
    pub skipped: bool,
}

/// What became of a delivery once committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New,
    Duplicate,
}

/// The delivery was not committed. The receiver answers 503 (Svix retries) for all but
/// [`IngestError::Unstorable`], which is about the delivery itself.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database refused this delivery's content (its message is Postgres's, which names the
    /// problem without quoting the value). Retrying the same bytes cannot help: a 422.
    #[error("the database cannot store this delivery: {0}")]
    Unstorable(String),
    #[error("database unavailable: {0}")]
    Database(String),
    #[error("timed out waiting for the commit")]
    Timeout,
    #[error("the service is shutting down")]
    ShuttingDown,
}

struct Pending {
    job: NewJob,
    done: oneshot::Sender<Result<Enqueued, IngestError>>,
}

/// The handle the HTTP handlers enqueue through. Dropping every clone lets the batchers drain
/// what is queued and stop.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Pending>,
    timeout: Duration,
}

/// Batching knobs.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Concurrent batchers (each commits one batch at a time).
    pub batchers: usize,
    /// Most deliveries in one transaction.
    pub max_batch: usize,
    /// How long a delivery may wait for its commit before the receiver answers 503.
    pub timeout: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batchers: 1,
            max_batch: 512,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Ingest {
    /// Starts the batchers; returns the handle and their join handles (they end once every
    /// `Ingest` clone is dropped and the queue is drained).
    pub fn start(pool: PgPool, settings: IngestSettings) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<Pending>(settings.max_batch * 8);
        let rx = Arc::new(Mutex::new(rx));
        let tasks = (0..settings.batchers.max(1))
            .map(|_| tokio::spawn(batcher(pool.clone(), rx.clone(), settings.max_batch)))
            .collect();
        (
            Self {
                tx,
                timeout: settings.timeout,
            },
            tasks,
        )
    }

    /// Ok once the job is committed (new or duplicate); Err when it was not (the caller must
    /// not acknowledge the delivery).
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, IngestError> {
        check_storable(&job)?;
        let (done, rx) = oneshot::channel();
        let send = self.tx.send(Pending { job, done });
        let wait = async {
            send.await.map_err(|_| IngestError::ShuttingDown)?;
            rx.await.map_err(|_| IngestError::ShuttingDown)?
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| IngestError::Timeout)?
    }
}

async fn batcher(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max_batch).await == 0 {
                return; // every sender is gone and the queue is empty
            }
        }
        // Callers that gave up (timeout) need no insert: Svix will deliver again.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("orgsync_ingest_batch_size").record(batch.len() as f64);
        match insert_batch(&pool, &batch).await {
            Ok(inserted) => answer(batch.drain(..), inserted),
            Err(e) if is_data_error(&e) && batch.len() > 1 => {
                tracing::warn!(error = %e, deliveries = batch.len(), "batch refused for its data; storing its deliveries one by one");
                for p in batch.drain(..) {
                    insert_alone(&pool, p).await;
                }
            }
            Err(e) => {
                let refused = is_data_error(&e);
                tracing::warn!(error = %e, deliveries = batch.len(), refused, "enqueue failed");
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(ingest_error(&e)));
                }
            }
        }
    }
}

/// Answers each delivery of a committed batch: the first delivery of a new id created its job;
/// the others (already stored, or repeated within the batch) are duplicates.
fn answer(batch: impl Iterator<Item = Pending>, mut inserted: std::collections::HashSet<String>) {
    for p in batch {
        let outcome = if inserted.remove(&p.job.event_id) {
            Enqueued::New
        } else {
            Enqueued::Duplicate
        };
        let _ = p.done.send(Ok(outcome));
    }
}

/// Inserts one delivery of a batch that failed for its data, and answers it.
async fn insert_alone(pool: &PgPool, p: Pending) {
    let one = [p];
    match insert_batch(pool, &one).await {
        Ok(inserted) => answer(one.into_iter(), inserted),
        Err(e) => {
            let [p] = one;
            tracing::warn!(error = %e, refused = is_data_error(&e), "delivery not stored");
            let _ = p.done.send(Err(ingest_error(&e)));
        }
    }
}

/// The answer for a failed insert: the delivery's own fault, or the database's.
fn ingest_error(e: &sqlx::Error) -> IngestError {
    match e {
        sqlx::Error::Database(db) if is_data_error(e) => IngestError::Unstorable(db.message().to_owned()),
        _ => IngestError::Database(e.to_string()),
    }
}

/// True when Postgres refused the statement because of the values in it (SQLSTATE classes 22
/// data exception, 23 integrity constraint, 54 program limit such as JSON nesting), as opposed
/// to a connection, resource or server failure.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23") || code.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Refuses what no row can hold, before it can fail a batch: a NUL byte in any text (a valid
/// JSON body never has one; a `\u0000` escape is fine).
fn check_storable(job: &NewJob) -> Result<(), IngestError> {
    let texts = [
        job.event_id.as_bytes(),
        job.event_type.as_bytes(),
        job.payload.as_bytes(),
        job.entity_key.as_deref().unwrap_or_default().as_bytes(),
    ];
    if texts.iter().any(|t| t.contains(&0)) {
        return Err(IngestError::Unstorable("a NUL byte in the delivery".into()));
    }
    Ok(())
}

/// Inserts a batch with one statement, committed on its own (the `jobs_notify` trigger wakes the
/// workers in the same commit). Returns the event ids that were new (the others were already
/// stored, or repeated within the batch).
async fn insert_batch(pool: &PgPool, batch: &[Pending]) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    let mut skipped = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    for p in batch {
        keys.push(p.job.entity_key.as_deref());
        ids.push(p.job.event_id.as_str());
        types.push(p.job.event_type.as_str());
        payloads.push(p.job.payload.as_str());
        skipped.push(p.job.skipped);
    }
    let inserted = sqlx::query_scalar!(
        r#"
        insert into jobs (event_id, event_type, payload, state, done_at, entity_key)
        select e, t, p::json,
               case when s then 'skipped' else 'available' end,
               case when s then now() end,
               k
        from unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[]) as x(e, t, p, s, k)
        on conflict (event_id) do nothing
        returning event_id
        "#,
        &ids as &[&str],
        &types as &[&str],
        &payloads as &[&str],
        &skipped,
        &keys as &[Option<&str>],
    )
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().collect())
}
