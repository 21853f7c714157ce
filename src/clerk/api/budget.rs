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
        loop {
            let wait_until = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until),
                    _ => {
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
                }
            };
            match wait_until {
                None => return,
                Some(t) => tokio::time::sleep_until(t).await,
            }
        }
    }

    /// Holds every request for `d` (after a 429).
    pub(super) fn pause_for(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + d;
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
    }
}
