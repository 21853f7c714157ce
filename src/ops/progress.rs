//! Progress of long operations (a replay of many jobs, a resync): a bar when a person watches
//! a terminal, plain lines when the output goes to a file, a pipe or a log collector (where a
//! bar's carriage returns would be noise).
//!
//! Progress is written to stderr, never stdout: stdout carries the command's result (JSON with
//! `--json`), which must stay parseable while the progress shows.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress reporter. Cheap to create; reports nothing until [`Progress::inc`].
pub struct Progress {
    inner: Inner,
}

enum Inner {
    Bar(ProgressBar),
    Lines(Lines),
    Hidden,
}

struct Lines {
    label: String,
    total: Option<u64>,
    done: u64,
    out: Box<dyn Write + Send>,
    /// Least time between two lines, so a fast loop does not print thousands of them.
    every: Duration,
    last: Option<Instant>,
    printed_done: Option<u64>,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal, otherwise lines on stderr at most once per
    /// second. `total` is the amount of work when known (a spinner-like count otherwise).
    pub fn stderr(label: &str, total: Option<u64>) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(label, total, ProgressDrawTarget::stderr())
        } else {
            Self::lines(label, total, Box::new(std::io::stderr()), Duration::from_secs(1))
        }
    }

    /// An indicatif bar drawing to `target`.
    pub fn bar(label: &str, total: Option<u64>, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(total, target);
        let template = if total.is_some() {
            "{prefix}: [{bar:40}] {pos}/{len} ({eta} left)"
        } else {
            "{prefix}: {spinner} {pos} ({per_sec})"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Self { inner: Inner::Bar(bar) }
    }

    /// Plain lines such as `replay: 500/2000` to `out`, at most one per `every` (and always a
    /// last one from [`Progress::finish`]).
    pub fn lines(label: &str, total: Option<u64>, out: Box<dyn Write + Send>, every: Duration) -> Self {
        Self {
            inner: Inner::Lines(Lines {
                label: label.to_owned(),
                total,
                done: 0,
                out,
                every,
                last: None,
                printed_done: None,
            }),
        }
    }

    /// Reports nothing.
    pub fn hidden() -> Self {
        Self { inner: Inner::Hidden }
    }

    /// Records `n` more units of work done.
    pub fn inc(&mut self, n: u64) {
        match &mut self.inner {
            Inner::Bar(bar) => bar.inc(n),
            Inner::Lines(lines) => {
                lines.done += n;
                if lines.last.is_none_or(|t| t.elapsed() >= lines.every) {
                    lines.print();
                }
            }
            Inner::Hidden => {}
        }
    }

    /// Ends the report: the bar stays on screen at its final position, the lines end with the
    /// final count (unless it was just printed).
    pub fn finish(&mut self) {
        match &mut self.inner {
            Inner::Bar(bar) => bar.finish(),
            Inner::Lines(lines) => {
                if lines.printed_done != Some(lines.done) {
                    lines.print();
                }
            }
            Inner::Hidden => {}
        }
    }
}

impl Lines {
    fn print(&mut self) {
        let line = match self.total {
            Some(total) => format!("{}: {}/{}", self.label, self.done, total),
            None => format!("{}: {}", self.label, self.done),
        };
        // Progress is a courtesy: a closed stderr must not fail the operation.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.last = Some(Instant::now());
        self.printed_done = Some(self.done);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_report_each_step_and_the_end_once() {
        let out = Shared::default();
        let mut p = Progress::lines("replay", Some(5), Box::new(out.clone()), Duration::ZERO);
        p.inc(2);
        p.inc(3);
        p.finish();
        assert_eq!(out.text(), "replay: 2/5\nreplay: 5/5\n");
    }

    #[test]
    fn lines_are_throttled_but_the_final_count_is_always_printed() {
        let out = Shared::default();
        let mut p = Progress::lines("resync", None, Box::new(out.clone()), Duration::from_secs(3600));
        for _ in 0..1000 {
            p.inc(1);
        }
        p.finish();
        assert_eq!(out.text(), "resync: 1\nresync: 1000\n");
    }

    #[test]
    fn a_hidden_bar_prints_nothing_and_counts() {
        let mut p = Progress::bar("replay", Some(3), ProgressDrawTarget::hidden());
        p.inc(3);
        p.finish();
        let Inner::Bar(bar) = &p.inner else { unreachable!() };
        assert_eq!(bar.position(), 3);
        assert!(bar.is_finished());
    }
}
