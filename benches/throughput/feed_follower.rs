//! A reader of the change feed for the end-to-end phase: the library's own
//! `orgsync changes --follow` loop ([`orgsync::ops::changes::print_changes`]: LISTEN, pages of
//! [`orgsync::changes::read_after`], a poll as fallback) in a task of the bench, writing to a
//! sink that counts the changes it is given. The phase's clock stops only once this reader has
//! read as many changes as are committed: the burst's last change is then visible to readers.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orgsync::ops::changes::{print_changes, ChangesQuery};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The follower's fallback poll when no notification arrives (`ORGSYNC_POLL_INTERVAL`'s role).
const POLL: Duration = Duration::from_millis(100);

/// A running feed follower.
pub struct FeedFollower {
    read: Arc<AtomicU64>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Counts the lines (one per change) written to it.
struct CountingSink(Arc<AtomicU64>);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.0.fetch_add(lines, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FeedFollower {
    /// Follows the feed of the database `pool` points at from its start (cursor 0).
    pub fn start(pool: &PgPool) -> Self {
        let read = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let (pool, sink_count, token) = (pool.clone(), read.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let query = ChangesQuery {
                after: 0,
                entity: None,
                follow: true,
                json: false,
                poll_interval: POLL,
            };
            let mut sink = CountingSink(sink_count);
            print_changes(&pool, &query, &mut sink, &token)
                .await
                .expect("the feed follower reads the feed");
        });
        Self { read, cancel, task }
    }

    /// Changes read so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Changes committed so far (the table itself, as the bench sees it, not through a reader).
    pub async fn committed(&self, pool: &PgPool) -> u64 {
        let n: i64 = sqlx::query_scalar("select count(*) from changes")
            .fetch_one(pool)
            .await
            .unwrap();
        n as u64
    }

    /// True when the follower has read every change committed so far.
    pub async fn has_read_all(&self, pool: &PgPool) -> bool {
        // Committed first: a change committing between the two reads cannot make this true early.
        let committed = self.committed(pool).await;
        self.read() >= committed
    }

    /// Stops the follower; returns how many changes it read.
    pub async fn stop(self) -> u64 {
        self.cancel.cancel();
        let read = self.read.clone();
        let _ = self.task.await;
        read.load(Ordering::Relaxed)
    }
}
