//! The change feed in the browser: `/console/changes` shows the latest changes (of one entity
//! when chosen) and follows new ones live over server-sent events
//! (`/console/changes/stream`), read with [`crate::changes::read_after`] like `orgsync changes
//! --follow`: every read is `id > cursor`, so a lost notification or a dropped stream only
//! delays a change, never skips it (the browser reconnects with `Last-Event-ID`).
//!
//! One `LISTEN` connection per process ([`Wakeups`], held while the console is on) wakes every
//! open stream; streams also look every [`POLL`] without a notification, and end at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::{html, Markup};
use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::Operator;
use super::layout::{self, Section};
use super::{ConsoleError, ConsoleResult, ConsoleState};
use crate::changes::{read_after, Change, ENTITIES, NOTIFY_CHANNEL};

/// Changes on the page when it opens.
pub const SHOWN: i64 = 100;
/// How often a stream looks for changes without a notification.
pub const POLL: Duration = Duration::from_secs(2);
/// Changes read per query by a stream.
const BATCH: i64 = 200;

/// A counter bumped at every feed notification; streams wait for it to move.
#[derive(Clone)]
pub struct Wakeups {
    rx: watch::Receiver<u64>,
}

impl Wakeups {
    /// Starts the process's one listener on the feed's channel. It reconnects after a lost
    /// connection (streams poll meanwhile) and ends when `cancel` fires.
    pub fn start(pool: PgPool, cancel: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while !cancel.is_cancelled() {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "console: LISTEN connection failed; streams poll");
                        tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(POLL) => continue }
                    }
                };
                if listener.listen(NOTIFY_CHANNEL).await.is_err() {
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(POLL) => continue }
                }
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        got = listener.try_recv() => {
                            tx.send_modify(|n| *n += 1);
                            // The connection was lost (None) or failed: connect again.
                            if !matches!(got, Ok(Some(_))) { break; }
                        }
                    }
                }
            }
        });
        Self { rx }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangesParams {
    #[serde(default)]
    pub entity: String,
    /// Show changes older than this id (paging back).
    #[serde(default)]
    pub before: Option<i64>,
    /// Where a stream starts (`Last-Event-ID` wins when the browser reconnects).
    #[serde(default)]
    pub after: Option<i64>,
}

fn entity_of(p: &ChangesParams) -> ConsoleResult<Option<String>> {
    let e = p.entity.trim();
    if e.is_empty() {
        return Ok(None);
    }
    if !ENTITIES.contains(&e) {
        return Err(ConsoleError::BadRequest(format!(
            "unknown entity {e:?}; one of {}",
            ENTITIES.join(", ")
        )));
    }
    Ok(Some(e.to_owned()))
}

/// The newest `SHOWN` changes (of `entity`) with an id below `before`, newest first: a backward
/// scan of the feed's primary key.
async fn latest(pool: &PgPool, entity: Option<&str>, before: Option<i64>) -> Result<Vec<Change>, sqlx::Error> {
    sqlx::query_as!(
        Change,
        r#"
        select id, at, entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id
        from changes
        where id < $1 and ($2::text is null or entity = $2)
        order by id desc
        limit $3
        "#,
        before.unwrap_or(i64::MAX),
        entity,
        SHOWN,
    )
    .fetch_all(pool)
    .await
}

/// `GET /console/changes`.
pub async fn page(
    State(state): State<ConsoleState>,
    operator: Operator,
    Query(p): Query<ChangesParams>,
) -> ConsoleResult<Markup> {
    let entity = entity_of(&p)?;
    // Every change committed before this request is readable (as `read_after` makes sure).
    crate::changes::sequence_now(&state.pool).await?;
    let changes = latest(&state.pool, entity.as_deref(), p.before).await?;
    // Follow from the newest change there is (not the newest shown, when paging back).
    let follow_from = match p.before {
        None => changes.first().map_or(0, |c| c.id),
        Some(_) => crate::changes::last_id(&state.pool).await?,
    };
    let entity_q = entity.as_deref().map(layout::query_value).unwrap_or_default();
    let stream = format!("/console/changes/stream?after={follow_from}&entity={entity_q}");
    Ok(layout::page(
        "Changes",
        Section::Changes,
        &operator,
        html! {
            h1 { "Changes" }
            p.note { "Every effective change to a hotel, user, membership, role, permission or invitation, in commit order "
                "(as " code { "orgsync changes --follow" } "). New changes appear at the top as they commit. "
                span #stream-state { "connecting…" } }
            form.filters method="get" action="/console/changes" {
                label { "entity"
                    select name="entity" {
                        option value="" selected[entity.is_none()] { "all" }
                        @for e in ENTITIES { option value=(e) selected[entity.as_deref() == Some(*e)] { (e) } }
                    }
                }
                button type="submit" { "Show" }
            }
            table #changes data-stream-url=(stream) {
                thead { tr { th { "id" } th { "at" } th { "entity" } th { "op" } th { "entity id" } th { "hotel" } th { "user" } th { "source" } th { "job" } } }
                tbody {
                    @for c in &changes { (row(c)) }
                }
            }
            @if changes.is_empty() { p #no-changes.note { "No changes yet." } }
            div.pager {
                @if p.before.is_some() { a href=(format!("/console/changes?entity={entity_q}")) { "← newest" } }
                @if changes.len() as i64 == SHOWN {
                    @if let Some(last) = changes.last() {
                        a #older href=(format!("/console/changes?entity={entity_q}&before={}", last.id)) { "older →" }
                    }
                }
            }
        },
    ))
}

fn row(c: &Change) -> Markup {
    html! {
        tr data-change-id=(c.id) {
            td { (c.id) }
            td { (c.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) }
            td { (c.entity) }
            td { (c.op) }
            td.mono { (c.entity_id) }
            td.mono { (c.hotel_id.as_deref().unwrap_or("")) }
            td.mono { (c.user_id.as_deref().unwrap_or("")) }
            td { (c.source.as_deref().unwrap_or("")) }
            td { @if let Some(j) = c.job_id { a href=(format!("/console/jobs/{j}")) { (j) } } }
        }
    }
}

/// `GET /console/changes/stream?after=ID&entity=E`: server-sent events, one `change` event per
/// change (its id as the event id, its JSON as `orgsync changes --json` prints it), from
/// `Last-Event-ID` or `after` on, until the browser goes away or the process shuts down.
pub async fn stream(
    State(state): State<ConsoleState>,
    _operator: Operator,
    headers: HeaderMap,
    Query(p): Query<ChangesParams>,
) -> ConsoleResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let entity = entity_of(&p)?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let cursor = match resumed.or(p.after) {
        Some(c) => c,
        None => crate::changes::last_id(&state.pool).await?,
    };
    let mut wake = state.feed.rx.clone();
    let cancel = state.cancel.clone();
    let pool = state.pool.clone();
    let events = async_stream(move |tx| async move {
        let mut cursor = cursor;
        loop {
            match read_after(&pool, cursor, entity.as_deref(), BATCH).await {
                Ok(page) => {
                    for change in &page {
                        cursor = change.id;
                        let data = serde_json::to_string(change).unwrap_or_default();
                        let event = Event::default().event("change").id(change.id.to_string()).data(data);
                        if tx.send(Ok(event)).await.is_err() {
                            return; // the browser went away
                        }
                    }
                    if page.len() as i64 == BATCH {
                        continue;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "console: reading changes failed; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                woke = wake.changed() => if woke.is_err() {
                    // No listener any more (shutting down): poll.
                    tokio::time::sleep(POLL).await;
                },
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A stream fed by `produce` through a small channel (so a slow browser applies backpressure).
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
