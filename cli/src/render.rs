//! Progress rendering (an indicatif bar on a terminal, nothing otherwise)
//! and the escaping of names in human output.
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_engine::{Action, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress line. The bar has a fixed width: a `wide_bar` gets what the
/// other fields leave of the terminal, which on 60 columns is nothing. The
/// rest (entries, rate, ETA) is the message, which a narrow terminal cuts
/// short instead of wrapping the line.
const BAR_TEMPLATE: &str = "{spinner} [{bar:20}] {bytes}/{total_bytes} {wide_msg}";

/// At most this many changes are kept for a JSON summary; the rest are only
/// counted (as failed and partial entries are), so memory stays bounded on
/// a tree of millions of files.
pub const MAX_CHANGES: usize = 100_000;

/// How changes are shown as they happen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ChangeSink {
    /// Not shown.
    None,
    /// One line per change on stdout.
    Lines,
    /// Collected for the JSON summary (at most [`MAX_CHANGES`]).
    Collect,
}

/// The changes collected for a JSON summary.
#[derive(Debug, Default)]
pub struct Changes {
    /// The first ones, as (action, path as JSON shows it).
    pub listed: Vec<(Action, String)>,
    /// How many more there were.
    pub not_listed: u64,
}

impl Changes {
    /// Puts `changes` and `changes_not_listed` into a JSON summary.
    pub fn add_to(&self, v: &mut serde_json::Value) {
        v["changes"] = self
            .listed
            .iter()
            .map(|(a, p)| serde_json::json!({"action": action_word(*a), "path": p}))
            .collect();
        v["changes_not_listed"] = serde_json::json!(self.not_listed);
    }
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
    changes: Mutex<Changes>,
    /// How many changes are listed ([`MAX_CHANGES`]).
    cap: usize,
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
                ProgressStyle::with_template(BAR_TEMPLATE)
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
            changes: Mutex::new(Changes::default()),
            cap: MAX_CHANGES,
        }
    }

    /// Stops drawing and clears the bar; returns the collected changes.
    pub fn finish(mut self) -> Changes {
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
    bar.set_message(format!(
        "{files}/{ftotal}{suffix} entries {}/s ETA {:#}",
        indicatif::BinaryBytes(bar.per_sec() as u64),
        indicatif::HumanDuration(bar.eta())
    ));
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
        match self.sink {
            ChangeSink::None => {}
            ChangeSink::Collect => {
                let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
                if c.listed.len() < self.cap {
                    c.listed.push((action, json_path(path)));
                } else {
                    c.not_listed += 1;
                }
            }
            ChangeSink::Lines => {
                let line = format!("{} {}\n", action_word(action), escape_path(path));
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

/// A path relative to a tree's root as JSON shows it: lossy UTF-8, and `.`
/// for the root itself (whose relative path is empty).
pub fn json_path(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_string()
    } else {
        p.to_string_lossy().into_owned()
    }
}

/// A path relative to a tree's root as human output shows it: escaped by
/// [`escape_bytes`], and `.` for the root.
pub fn escape_path(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_string()
    } else {
        escape_bytes(p.as_os_str().as_bytes())
    }
}

/// A line of text (an error message, a name the engine already turned into
/// a string) made safe for a terminal, as [`escape_bytes`] does.
pub fn escape_str(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// Makes a name safe to print on a terminal, as rsync does: every control
/// character (C0, DEL and the C1 range, which some terminals obey too) and
/// every byte that is not UTF-8 becomes `\#ooo`, each byte in three octal
/// digits. A backslash followed by `#` becomes `\#134`, so that an escape in
/// the output always stands for a byte the name had. A planted name with
/// ESC, CR or LF could otherwise clear the screen or forge a line.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let esc = |out: &mut String, bytes: &[u8]| {
        for c in bytes {
            out.push_str(&format!("\\#{c:03o}"));
        }
    };
    for chunk in b.utf8_chunks() {
        let valid = chunk.valid();
        let mut chars = valid.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next_is_hash = chars.peek().is_some_and(|&(_, n)| n == '#');
            if c.is_control() || (c == '\\' && next_is_hash) {
                esc(&mut out, &valid.as_bytes()[i..i + c.len_utf8()]);
            } else {
                out.push(c);
            }
        }
        esc(&mut out, chunk.invalid());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_changes_are_capped_and_the_rest_counted() {
        let mut r = Reporter::new(false, ChangeSink::Collect);
        r.cap = 3;
        for i in 0..10 {
            r.change(Action::Create, Path::new(&format!("f{i}")));
        }
        r.change(Action::Delete, Path::new(""));
        let c = r.finish();
        let paths: Vec<&str> = c.listed.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(paths, ["f0", "f1", "f2"]);
        assert_eq!(c.not_listed, 8);
        let mut v = serde_json::json!({});
        c.add_to(&mut v);
        assert_eq!(v["changes"].as_array().unwrap().len(), 3);
        assert_eq!(v["changes"][0]["action"], "create");
        assert_eq!(v["changes_not_listed"], 8);
        assert_eq!(MAX_CHANGES, 100_000);
    }

    #[test]
    fn escapes_like_rsync() {
        assert_eq!(escape_bytes(b"plain name.txt"), "plain name.txt");
        assert_eq!(escape_bytes(b"a\x1b[2Jb"), "a\\#033[2Jb");
        assert_eq!(escape_bytes(b"x\ry\nz\x7f"), "x\\#015y\\#012z\\#177");
        // Not UTF-8: each bad byte; C1 controls: each of their two bytes.
        assert_eq!(escape_bytes(b"\xff\xfeok"), "\\#377\\#376ok");
        assert_eq!(escape_bytes("a\u{9b}b".as_bytes()), "a\\#302\\#233b");
        // Printable non-ASCII stays.
        assert_eq!(escape_bytes("café".as_bytes()), "café");
        // A literal `\#` cannot be mistaken for an escape; a lone `\` stays.
        assert_eq!(escape_bytes(b"\\#033"), "\\#134#033");
        assert_eq!(escape_bytes(b"a\\b\\"), "a\\b\\");
        assert_eq!(escape_path(Path::new("")), ".");
        assert_eq!(json_path(Path::new("")), ".");
    }

    #[derive(Debug, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            60
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.trim().is_empty() {
                self.0.lock().unwrap().push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bar_keeps_its_width_on_60_columns() {
        let screen = Screen::default();
        let lines = screen.0.clone();
        let bar = ProgressBar::with_draw_target(
            Some(2 << 30),
            ProgressDrawTarget::term_like(Box::new(screen)),
        );
        bar.set_style(
            ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap()
                .progress_chars("=> "),
        );
        let c = Counts::default();
        c.bytes_total.store(2 << 30, Relaxed);
        c.bytes_done.store(1 << 30, Relaxed);
        c.files_total.store(123_456, Relaxed);
        c.files_done.store(61_728, Relaxed);
        draw(&bar, &c);
        bar.force_draw();
        let lines = lines.lock().unwrap();
        let line = lines.last().expect("the bar was drawn");
        // Half done: ten '=' (or nine and the head) in a 20-column bar,
        // and the line still fits the terminal.
        let bar_part = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        assert_eq!(bar_part.chars().count(), 20, "{line:?}");
        assert!(bar_part.starts_with("========="), "{line:?}");
        assert!(line.chars().count() <= 60, "{line:?}");
    }
}
