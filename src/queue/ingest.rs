//! Group-commit enqueue. Each delivery waits for a durable commit before its 2xx, but
//! concurrent deliveries share one transaction and so one disk flush: a batcher task collects
//! whatever is queued while the previous commit was in flight, inserts it with one statement,
//! commits, and answers every waiter.

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
    /// The raw JSON body, stored as `jsonb`.
    pub payload: String,
    /// Stored as `skipped` (an event type orgsync does not reconcile).
    pub skipped: bool,
}

/// What became of a delivery once committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New,
    Duplicate,
}

/// The delivery was not committed; the receiver answers 503 and Svix retries.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
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
        match insert_batch(&pool, &batch).await {
            Ok(mut inserted) => {
                metrics::histogram!("orgsync_ingest_batch_size").record(batch.len() as f64);
                for p in batch.drain(..) {
                    // The first delivery of a new id created its job; later copies of the same
                    // id in this batch are duplicates.
                    let outcome = if inserted.remove(&p.job.event_id) {
                        Enqueued::New
                    } else {
                        Enqueued::Duplicate
                    };
                    let _ = p.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, deliveries = batch.len(), "enqueue failed; answering 503");
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(IngestError::Database(e.to_string())));
                }
            }
        }
    }
}

/// Inserts a batch with one statement, committed on its own (the `jobs_notify` trigger wakes the
/// workers in the same commit). Returns the event ids that were new (the others were already
/// stored, or repeated within the batch).
async fn insert_batch(pool: &PgPool, batch: &[Pending]) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    let mut skipped = Vec::with_capacity(batch.len());
    for p in batch {
        ids.push(p.job.event_id.as_str());
        types.push(p.job.event_type.as_str());
        payloads.push(p.job.payload.as_str());
        skipped.push(p.job.skipped);
    }
    let inserted = sqlx::query_scalar!(
        r#"
        insert into jobs (event_id, event_type, payload, state, done_at)
        select e, t, p::jsonb,
               case when s then 'skipped' else 'available' end,
               case when s then now() end
        from unnest($1::text[], $2::text[], $3::text[], $4::bool[]) as x(e, t, p, s)
        on conflict (event_id) do nothing
        returning event_id
        "#,
        &ids as &[&str],
        &types as &[&str],
        &payloads as &[&str],
        &skipped,
    )
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().collect())
}
