//! The listings: every page of an endpoint, fetched a few at a time under the client's budget.

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use crate::clerk::api::{ClerkApiError, ClerkClient, InvalidItem, Page, PAGE_LIMIT};
use crate::clerk::User;

/// Which listing a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListingKind {
    Organizations,
    Memberships,
    Users,
}

impl ListingKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Organizations => "organizations",
            Self::Memberships => "memberships",
            Self::Users => "users",
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

/// What a listing returned: its items, what did not parse, and the error that ended it early.
pub(crate) struct Listing<T> {
    pub(crate) items: Vec<T>,
    pub(crate) invalid: Vec<InvalidItem>,
    pub(crate) listed: u64,
    pub(crate) error: Option<ClerkApiError>,
}

impl<T> Listing<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: Vec::new(),
            invalid: Vec::new(),
            listed: 0,
            error: None,
        }
    }

    pub(crate) fn absorb(&mut self, page: Page<T>) {
        self.listed += page.len as u64;
        self.items.extend(page.items);
        self.invalid.extend(page.invalid);
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
    fetch: F,
) -> Listing<T>
where
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
    out.absorb(first);
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
                    out.absorb(p);
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
                out.absorb(p);
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
) -> Listing<User> {
    let mut out = Listing::new();
    let mut after: Option<String> = None;
    loop {
        match client.list_users(after.as_deref(), PAGE_LIMIT).await {
            Ok(page) => {
                let short = (page.len as u64) < PAGE_LIMIT as u64;
                let last = page.last_id.clone();
                out.absorb(page);
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
