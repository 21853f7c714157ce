//! A reader of the change feed for the end-to-end phase, as an application runs one (the
//! LISTEN recipe of docs/changes.md): `LISTEN orgsync_changes` before the first read, then pages
//! of the documented reader SQL (`select … from changes where id > $cursor order by id`), woken
//! by a notification or a fallback poll. It calls nothing of the library: a change reaches it
//! only once the sequencer of the running `orgsync serve` has ticked, as for any plain-SQL
//! reader. The phase's clock stops only once this reader has read every change committed (the
//! numbered ones and those still pending): the burst's last change is then visible to readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The reader's fallback poll when no notification arrives.
const POLL: Duration = Duration::from_millis(100);

/// Changes read per query.
const PAGE: i64 = 1000;

/// A running feed reader.
pub struct FeedFollower {
    read: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FeedFollower {
    /// Follows the feed of the database `pool` points at from its start (cursor 0). Panics (in
    /// its task, seen at [`Self::stop`]) when an id is not the one after its predecessor: the
    /// feed of a fresh database is numbered 1, 2, 3, … with no gap.
    pub async fn start(pool: &PgPool) -> Self {
        let read = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let mut listener = PgListener::connect_with(pool).await.unwrap();
        listener.listen("orgsync_changes").await.unwrap();
        let (pool, count, token) = (pool.clone(), read.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut cursor = 0i64;
            loop {
                type Row = (i64, String, String, String, i64);
                let page: Vec<Row> = sqlx::query_as(
                    "select id, entity, entity_id, op, clerk_version from changes
                     where id > $1 order by id limit $2",
                )
                .bind(cursor)
                .bind(PAGE)
                .fetch_all(&pool)
                .await
                .unwrap();
                for (id, ..) in &page {
                    assert_eq!(*id, cursor + 1, "the feed skipped from id {cursor} to {id}");
                    cursor = *id;
                }
                count.fetch_add(page.len() as u64, Ordering::Relaxed);
                if page.len() as i64 == PAGE {
                    continue;
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = listener.try_recv() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Self { read, cancel, task }
    }

    /// Changes read so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Changes committed so far, readable or not yet numbered (the bench looking at the tables
    /// themselves, not a reader).
    pub async fn committed(&self, pool: &PgPool) -> u64 {
        let n: i64 =
            sqlx::query_scalar("select (select count(*) from changes) + (select count(*) from pending_changes)")
                .fetch_one(pool)
                .await
                .unwrap();
        n as u64
    }

    /// True when the reader has read every change committed so far.
    pub async fn has_read_all(&self, pool: &PgPool) -> bool {
        assert!(
            !self.task.is_finished(),
            "the feed reader stopped (see its panic above)"
        );
        // Committed first: a change committing between the two reads cannot make this true early.
        let committed = self.committed(pool).await;
        self.read() >= committed
    }

    /// Stops the reader; returns how many changes it read. Panics when the reader did (a gap).
    pub async fn stop(self) -> u64 {
        self.cancel.cancel();
        let read = self.read.clone();
        if let Err(e) = self.task.await {
            std::panic::resume_unwind(e.into_panic());
        }
        read.load(Ordering::Relaxed)
    }
}
