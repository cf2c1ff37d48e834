//! Progress while `finguard compare` runs: a bar per target on a terminal
//! (indicatif), a plain line a second otherwise (logs, CI).

use super::Tick;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    tty: bool,
    targets: usize,
    bar: Option<(usize, ProgressBar)>,
}

impl Progress {
    pub fn new(targets: usize) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            targets,
            bar: None,
        }
    }

    pub fn tick(&mut self, t: &Tick) {
        let msg = format!("sent {} answered {} failed {}", t.sent, t.answered, t.failed);
        if !self.tty {
            eprintln!(
                "finguard compare: [{}/{}] {} {:>4.0}s/{:.0}s {msg}",
                t.index + 1,
                self.targets,
                t.name,
                t.elapsed.as_secs_f64(),
                t.duration.as_secs_f64()
            );
            return;
        }
        if self.bar.as_ref().is_none_or(|(i, _)| *i != t.index) {
            self.finish();
            let bar = ProgressBar::new(t.duration.as_secs());
            let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(t.name.to_string());
            self.bar = Some((t.index, bar));
        }
        if let Some((_, bar)) = &self.bar {
            bar.set_position(t.elapsed.as_secs());
            bar.set_message(msg);
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish();
        }
    }
}
