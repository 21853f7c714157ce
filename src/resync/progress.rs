//! Progress for `orgsync resync`: bars on a terminal, a few plain lines otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{ListingKind, Progress};

pub struct Bars {
    multi: MultiProgress,
    bars: HashMap<ListingKind, ProgressBar>,
    stage: ProgressBar,
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>13} [{bar:32}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> ");
        let bars = [
            ListingKind::Organizations,
            ListingKind::Memberships,
            ListingKind::Users,
            ListingKind::Roles,
            ListingKind::Permissions,
            ListingKind::Invitations,
            ListingKind::RoleSets,
        ]
        .into_iter()
        .map(|k| {
            let bar = multi.add(ProgressBar::new(0).with_style(style.clone()).with_prefix(k.name()));
            (k, bar)
        })
        .collect();
        let stage = multi.add(ProgressBar::new_spinner());
        stage.enable_steady_tick(Duration::from_millis(120));
        Self { multi, bars, stage }
    }
}

impl Progress for Bars {
    fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>) {
        let bar = &self.bars[&what];
        bar.set_length(total.unwrap_or(fetched).max(fetched));
        bar.set_position(fetched);
    }
    fn listing_done(&self, what: ListingKind) {
        self.bars[&what].finish();
    }
    fn stage(&self, stage: &str) {
        if stage.is_empty() {
            self.stage.finish_and_clear();
            let _ = self.multi.clear();
        } else {
            self.stage.set_message(stage.to_owned());
        }
    }
}

/// One line per listing every few seconds, and one per stage, on stderr.
#[derive(Default)]
pub struct Lines {
    last: Mutex<HashMap<ListingKind, Instant>>,
}

impl Progress for Lines {
    fn listed(&self, what: ListingKind, fetched: u64, total: Option<u64>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last
            .get(&what)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(5))
        {
            return;
        }
        last.insert(what, now);
        match total {
            Some(t) => eprintln!("listing {}: {fetched}/{t}", what.name()),
            None => eprintln!("listing {}: {fetched}", what.name()),
        }
    }
    fn listing_done(&self, what: ListingKind) {
        eprintln!("listing {}: done", what.name());
    }
    fn stage(&self, stage: &str) {
        if !stage.is_empty() && stage != "listing" {
            eprintln!("{stage}");
        }
    }
}
