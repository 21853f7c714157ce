//! The request budget that keeps one process under Clerk's rate limit.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::RATE_WINDOW;

/// A sliding-window request budget: at most `limit` requests start in any `RATE_WINDOW`.
/// (A token bucket would allow a full burst on top of a full window's refill: twice the limit in
/// some 10-second spans, which is what Clerk counts.)
pub(super) struct Budget {
    pub(super) limit: usize,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    starts: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            state: Mutex::new(BudgetState {
                starts: VecDeque::with_capacity(limit.min(4096)),
                paused_until: None,
            }),
        }
    }

    /// Waits until a request may start, and counts it.
    pub(super) async fn acquire(&self) {
        while let Some(t) = self.try_take() {
            tokio::time::sleep_until(t).await;
        }
    }

    /// As [`Budget::acquire`], but gives up rather than wait past `deadline`: Err(when a slot
    /// would free up) when the window (or a 429 pause) keeps every slot busy beyond it. Nothing is
    /// counted then. The API's writes use it; they share the budget with the resync.
    pub(super) async fn acquire_before(&self, deadline: Instant) -> Result<(), Instant> {
        while let Some(t) = self.try_take() {
            if t > deadline {
                return Err(t);
            }
            tokio::time::sleep_until(t).await;
        }
        Ok(())
    }

    /// Counts a request starting now and returns None, or returns when to ask again.
    fn try_take(&self) -> Option<Instant> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(until) = s.paused_until.filter(|u| *u > now) {
            return Some(until);
        }
        while s.starts.front().is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW) {
            s.starts.pop_front();
        }
        if s.starts.len() < self.limit {
            s.starts.push_back(now);
            None
        } else {
            s.starts.front().map(|t| *t + RATE_WINDOW)
        }
    }

    /// Holds every request for `d` (after a 429).
    pub(super) fn pause_for(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + d;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
    }
}
