//! Progress rendering: an indicatif bar on a terminal, nothing otherwise.
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_engine::{Action, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How changes are shown as they happen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ChangeSink {
    /// Not shown.
    None,
    /// One line per change on stdout.
    Lines,
    /// Collected for the JSON summary.
    Collect,
}

#[derive(Default)]
struct Counts {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    scanned: AtomicBool,
}

/// The CLI's [`Progress`]: counts in atomics, drawn by a ticker thread so
/// the workers never wait on the terminal.
pub struct Reporter {
    counts: Arc<Counts>,
    bar: Option<ProgressBar>,
    ticker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    sink: ChangeSink,
    changes: Mutex<Vec<(Action, String)>>,
}

impl Reporter {
    pub fn new(show_bar: bool, sink: ChangeSink) -> Reporter {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let show = show_bar && std::io::stderr().is_terminal();
        let (bar, ticker) = if show {
            let bar =
                ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            let (b, c, s) = (bar.clone(), counts.clone(), stop.clone());
            let t = std::thread::spawn(move || {
                while !s.load(Relaxed) {
                    draw(&b, &c);
                    std::thread::sleep(Duration::from_millis(100));
                }
                draw(&b, &c);
            });
            (Some(bar), Some(t))
        } else {
            (None, None)
        };
        Reporter {
            counts,
            bar,
            ticker,
            stop,
            sink,
            changes: Mutex::new(Vec::new()),
        }
    }

    /// Stops drawing and clears the bar; returns the collected changes.
    pub fn finish(mut self) -> Vec<(Action, String)> {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn draw(bar: &ProgressBar, c: &Counts) {
    let done = c.bytes_done.load(Relaxed);
    // The scan may lag the copy; the length never drops below the position,
    // and the position only grows, so the bar never goes backwards.
    let total = c.bytes_total.load(Relaxed).max(done);
    bar.set_length(total);
    bar.set_position(done);
    let files = c.files_done.load(Relaxed);
    let ftotal = c.files_total.load(Relaxed).max(files);
    let suffix = if c.scanned.load(Relaxed) { "" } else { "+" };
    bar.set_message(format!("{files}/{ftotal}{suffix} entries"));
}

pub fn action_word(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Metadata => "metadata",
        Action::Delete => "delete",
    }
}

impl Progress for Reporter {
    fn wants_totals(&self) -> bool {
        self.bar.is_some()
    }
    fn discovered(&self, files: u64, bytes: u64) {
        self.counts.files_total.fetch_add(files, Relaxed);
        self.counts.bytes_total.fetch_add(bytes, Relaxed);
    }
    fn discovery_done(&self) {
        self.counts.scanned.store(true, Relaxed);
    }
    fn entry_done(&self) {
        self.counts.files_done.fetch_add(1, Relaxed);
    }
    fn bytes(&self, n: u64) {
        self.counts.bytes_done.fetch_add(n, Relaxed);
    }
    fn change(&self, action: Action, path: &Path) {
        let p = path.to_string_lossy().into_owned();
        match self.sink {
            ChangeSink::None => {}
            ChangeSink::Collect => self
                .changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((action, p)),
            ChangeSink::Lines => {
                let line = format!(
                    "{} {}\n",
                    action_word(action),
                    if p.is_empty() { "." } else { &p }
                );
                match &self.bar {
                    Some(b) => b.suspend(|| {
                        let _ = std::io::stdout().write_all(line.as_bytes());
                    }),
                    None => {
                        let _ = std::io::stdout().lock().write_all(line.as_bytes());
                    }
                }
            }
        }
    }
}
