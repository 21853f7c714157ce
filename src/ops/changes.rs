//! `orgsync changes`: prints the change feed ([`crate::changes`]) in id order, and with
//! `follow` keeps printing changes as they commit, waking on `LISTEN orgsync_changes` and polling
//! as a fallback (a lost connection or notification only delays a change, never skips it: every
//! read is `id > cursor`, and the feed's ids become visible in order). Following runs a
//! sequencer of its own, so it does not depend on a running `orgsync serve`.

use std::io::Write;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::changes::{read_after, Change, SequencerSettings, NOTIFY_CHANNEL};

/// Changes read per query.
pub const PAGE: i64 = 1000;

/// What to print.
#[derive(Debug, Clone)]
pub struct ChangesQuery {
    /// Print changes with a greater id (0: from the oldest retained change).
    pub after: i64,
    /// Only changes of this entity (one of [`crate::changes::ENTITIES`]).
    pub entity: Option<String>,
    /// Keep printing new changes until cancelled.
    pub follow: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// How often `follow` looks for changes when no notification arrives.
    pub poll_interval: Duration,
    /// The sequencer `follow` runs alongside (see [`crate::changes::sequencer::run`]).
    pub feed: SequencerSettings,
}

/// Writes one change: a JSON line, or one line of text
/// (`id at entity op entity_id hotel=… user=… version=… source=… job=…`).
pub fn write_change(out: &mut impl Write, change: &Change, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, change)?;
        return writeln!(out);
    }
    write!(
        out,
        "{} {} {} {} {}",
        change.id,
        change.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        change.entity,
        change.op,
        change.entity_id
    )?;
    if let Some(h) = &change.hotel_id {
        write!(out, " hotel={h}")?;
    }
    if let Some(u) = &change.user_id {
        write!(out, " user={u}")?;
    }
    write!(out, " version={}", change.clerk_version)?;
    if let Some(s) = &change.source {
        write!(out, " source={s}")?;
    }
    if let Some(j) = change.job_id {
        write!(out, " job={j}")?;
    }
    writeln!(out)
}

/// Prints the changes after `query.after` to `out`, flushing after each page; with `follow`,
/// goes on until `cancel` fires. Ok(last id printed, or `after` when none); Err when the
/// database cannot be read (without `follow`; while following, read errors are retried at the
/// poll interval) or `out` is closed (e.g. the reading end of a pipe exited).
pub async fn print_changes(
    pool: &PgPool,
    query: &ChangesQuery,
    out: &mut impl Write,
    cancel: &CancellationToken,
) -> anyhow::Result<i64> {
    let mut cursor = query.after;
    let entity = query.entity.as_deref();
    // Listen before the first read, so that no commit falls between a read and the LISTEN.
    let mut listener = if query.follow { listen(pool).await } else { None };
    loop {
        let page = match read_after(pool, cursor, entity, PAGE).await {
            Ok(page) => page,
            Err(e) if query.follow => {
                tracing::warn!(error = %e, "reading changes failed; retrying");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for change in &page {
            write_change(out, change, query.json)?;
            cursor = change.id;
        }
        out.flush()?;
        if page.len() as i64 == PAGE {
            continue;
        }
        if !query.follow || cancel.is_cancelled() {
            return Ok(cursor);
        }
        if listener.is_none() {
            listener = listen(pool).await;
        }
        let woke = async {
            match listener.as_mut() {
                // Any notification (or a lost connection, reported as None) means: look again.
                Some(l) => l.try_recv().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(cursor),
            ok = woke => if !ok { listener = None },
            _ = tokio::time::sleep(query.poll_interval) => {}
        }
    }
}

/// A connection listening on [`NOTIFY_CHANNEL`]; None (polling only) when it cannot be had.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "LISTEN connection failed; polling");
            return None;
        }
    };
    match listener.listen(NOTIFY_CHANNEL).await {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::debug!(error = %e, "LISTEN failed; polling");
            None
        }
    }
}

/// `orgsync changes`: Ok(0) after printing (with `follow`, once interrupted by SIGINT/SIGTERM);
/// Err when the entity is unknown or the database cannot be read.
pub async fn command(pool: PgPool, query: ChangesQuery) -> anyhow::Result<i32> {
    if let Some(e) = &query.entity {
        if !crate::changes::ENTITIES.contains(&e.as_str()) {
            anyhow::bail!("unknown entity {e:?}; one of {}", crate::changes::ENTITIES.join(", "));
        }
    }
    let cancel = CancellationToken::new();
    let mut sequencer = None;
    if query.follow {
        crate::app::cancel_on_signals(cancel.clone());
        sequencer = Some(tokio::spawn(crate::changes::sequencer::run(
            pool.clone(),
            query.feed.clone(),
            cancel.clone(),
        )));
    }
    let mut out = std::io::stdout().lock();
    let printed = print_changes(&pool, &query, &mut out, &cancel).await;
    cancel.cancel();
    if let Some(s) = sequencer {
        let _ = s.await;
    }
    match printed {
        Ok(_) => Ok(0),
        // The reader of a pipe went away (`orgsync changes --follow | head`): a normal end.
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == Some(std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}
