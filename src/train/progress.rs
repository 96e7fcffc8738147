//! How a run reports progress while an epoch runs.

use std::io::IsTerminal;
use std::time::Instant;

/// How a run reports progress: an interactive bar on a terminal, periodic plain lines otherwise, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, periodic plain lines otherwise.
    Auto,
    /// No progress output (the per-epoch line is still the caller's to print).
    Quiet,
}

/// The per-epoch progress display: an indicatif bar on a terminal, a plain line every ~10% otherwise.
pub(super) struct Bar {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: usize,
    epoch: usize,
    epochs: usize,
}

impl Bar {
    pub(super) fn new(mode: ProgressMode, total: usize, epoch: usize, epochs: usize) -> Bar {
        let interactive = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = interactive.then(|| {
            let pb = indicatif::ProgressBar::new(total as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.set_prefix(format!("{epoch}/{epochs}"));
            pb
        });
        Bar {
            bar,
            plain: mode == ProgressMode::Auto && !interactive,
            total,
            epoch,
            epochs,
        }
    }

    pub(super) fn update(&self, done: usize, loss: f64, acc: f64, seen: usize, start: Instant) {
        let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let msg = format!("loss {loss:.4} acc {acc:.3} {rate:.0} img/s");
        if let Some(pb) = &self.bar {
            pb.set_position(done as u64);
            pb.set_message(msg);
        } else if self.plain {
            let step = (self.total / 10).max(1);
            if done.is_multiple_of(step) || done == self.total {
                eprintln!(
                    "epoch {}/{} batch {done}/{} {msg}",
                    self.epoch, self.epochs, self.total
                );
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}
