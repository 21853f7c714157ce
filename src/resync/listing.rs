//! The listings: every page of an endpoint, fetched a few at a time under the client's budget,
//! and handed to the staging area as it arrives (no listing is held in memory).

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::staging::{encode, EncodedPage, Staged};
use crate::clerk::api::{ClerkApiError, ClerkClient, Page, PAGE_LIMIT};
use crate::clerk::User;

/// Which listing a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListingKind {
    Organizations,
    Memberships,
    Users,
    Roles,
    Permissions,
    Invitations,
    RoleSets,
}

impl ListingKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Organizations => "organizations",
            Self::Memberships => "memberships",
            Self::Users => "users",
            Self::Roles => "roles",
            Self::Permissions => "permissions",
            Self::Invitations => "invitations",
            Self::RoleSets => "role_sets",
        }
    }
}

/// Receives progress while a resync runs (a progress bar, log lines).
pub trait Progress: Send + Sync {
    /// `fetched` objects of `what` listed so far, of `total` when Clerk announced it.
    fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>);
    /// A listing ended (completely or not).
    fn listing_done(&self, what: ListingKind);
    /// A new stage began.
    fn stage(&self, stage: &str);
}

/// Where listed pages go: encoded for their staged table, then sent (with back-pressure: the
/// channel is bounded) to the task that copies them into the staging area.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: mpsc::Sender<EncodedPage>,
}

impl Sink {
    /// A sink and the receiving end, holding at most `pages` encoded pages in between.
    pub(crate) fn new(pages: usize) -> (Self, mpsc::Receiver<EncodedPage>) {
        let (tx, rx) = mpsc::channel(pages.max(1));
        (Self { tx }, rx)
    }

    /// Stages a page. When the receiving end is gone (its database write failed, and that error
    /// ends the run), the page is dropped.
    pub(crate) async fn send<T: Staged>(&self, page: &Page<T>) {
        let _ = self.tx.send(encode(page)).await;
    }
}

/// What a listing did: how many objects it held, and the error that ended it early.
pub(crate) struct Listing {
    pub(crate) listed: u64,
    pub(crate) error: Option<ClerkApiError>,
}

impl Listing {
    pub(crate) fn new() -> Self {
        Self { listed: 0, error: None }
    }

    async fn absorb<T: Staged>(&mut self, page: Page<T>, sink: &Sink) {
        self.listed += page.len as u64;
        sink.send(&page).await;
    }

    pub(crate) fn fail(&mut self, e: ClerkApiError) {
        // The first failure is the cause; later ones are usually the same.
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// Lists an offset-paginated endpoint: the first page announces `total_count`, the remaining
/// pages are fetched `concurrency` at a time, then the list is followed past the announced total
/// while it grew meanwhile. Every page is fetched even after a failure (its creates and updates
/// are still worth applying); the listing is complete only if none failed.
pub(crate) async fn list_by_offset<'a, T, F>(
    kind: ListingKind,
    concurrency: usize,
    progress: Option<&dyn Progress>,
    sink: &Sink,
    fetch: F,
) -> Listing
where
    T: Staged,
    F: Fn(u32) -> BoxFuture<'a, Result<Page<T>, ClerkApiError>>,
{
    let page_size = PAGE_LIMIT as u64;
    let mut out = Listing::new();
    let first = match fetch(0).await {
        Ok(p) => p,
        Err(e) => {
            out.fail(e);
            return out;
        }
    };
    let announced = first.total_count.map(|t| t.max(0) as u64);
    let mut total = announced.unwrap_or(first.len as u64);
    let mut more = first.len as u64 >= page_size;
    out.absorb(first, sink).await;
    report(progress, kind, out.listed, announced.map(|_| total));
    let mut next = page_size;
    if more && announced.is_some() {
        let offsets: Vec<u64> = (page_size..total).step_by(PAGE_LIMIT as usize).collect();
        next = offsets.last().map_or(page_size, |o| o + page_size);
        let mut pages = stream::iter(offsets)
            .map(|o| fetch(o as u32))
            .buffer_unordered(concurrency.max(1));
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => {
                    total = total.max(p.total_count.unwrap_or(0).max(0) as u64);
                    out.absorb(p, sink).await;
                    report(progress, kind, out.listed, Some(total));
                }
                Err(e) => out.fail(e),
            }
        }
        more = next < total;
    }
    // Items created while the pages were fetched land after the announced end (the listing is
    // oldest first); without a total, walk until a short page.
    while more && out.error.is_none() && next <= u32::MAX as u64 {
        match fetch(next as u32).await {
            Ok(p) => {
                total = total.max(p.total_count.unwrap_or(0).max(0) as u64);
                more = p.len as u64 >= page_size && (announced.is_none() || next + page_size < total);
                out.absorb(p, sink).await;
                report(progress, kind, out.listed, announced.map(|_| total));
                next += page_size;
            }
            Err(e) => out.fail(e),
        }
    }
    if let Some(p) = progress {
        p.listing_done(kind);
    }
    out
}

pub(crate) fn report(progress: Option<&dyn Progress>, kind: ListingKind, fetched: u64, total: Option<u64>) {
    if let Some(p) = progress {
        p.listed(kind, fetched, total);
    }
}

/// Lists users with Clerk's cursor, oldest first, until a short page.
/// `total` (from `GET /v1/users/count`) is only for the progress bar: `/v1/users` has none.
pub(crate) async fn list_all_users(
    client: &ClerkClient,
    total: Option<u64>,
    progress: Option<&dyn Progress>,
    sink: &Sink,
) -> Listing {
    let mut out = Listing::new();
    let mut after: Option<String> = None;
    loop {
        match client.list_users(after.as_deref(), PAGE_LIMIT).await {
            Ok(page) => {
                let short = (page.len as u64) < PAGE_LIMIT as u64;
                let last = page.last_id.clone();
                out.absorb::<User>(page, sink).await;
                report(
                    progress,
                    ListingKind::Users,
                    out.listed,
                    total.map(|t| t.max(out.listed)),
                );
                if short {
                    break;
                }
                match last {
                    Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
                    // A cursor that does not move would loop forever (or its item has no id).
                    _ => {
                        out.fail(ClerkApiError::Decode {
                            endpoint: "GET /v1/users".into(),
                            reason: "the listing did not advance past its starting_after cursor".into(),
                        });
                        break;
                    }
                }
            }
            Err(e) => {
                out.fail(e);
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.listing_done(ListingKind::Users);
    }
    out
}
