//! A hostile peer on the ssh pipe (issue 17): the peer is untrusted in both directions.
//!
//! (a) A hostile CLIENT of `haul serve --stdio`: the test spawns the serving side
//!     directly (no ssh needed), with `--restrict-to-path` around a temporary root, and
//!     speaks to it with bytes built by `haul_formats::wire` (or by hand, where the encoder
//!     would refuse them). Each attack must end the session with a non-zero exit or an
//!     Error message (or the entry reported failed in the Summary), with nothing written
//!     outside the root, no panic, and within [`DEADLINE`] (then it is killed and the test
//!     fails): the test keeps its end of the pipe open, so a server that waits for more
//!     instead of refusing what it got is caught.
//! (b) A hostile SERVER: `--remote-haul` is a script that replays a crafted byte stream
//!     and then keeps the session open; the client must exit non-zero with an error and
//!     write nothing outside DST.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use haul_formats::wire::{
    encode_frame, encode_preamble, Decoder, Entry, EntryKind, Message, OldChunk, Options, Received,
    Role, WireTime, FRAME_HEADER_LEN, MAGIC, MAX_FRAME, PROTOCOL_VERSION,
};
use haul_tests::fixture;
use haul_tests::sshd::Sshd;
use haul_tests::util::tmp;
use haul_tests::{exists, haul_bin, list_entries, read, require_root, RunResult, Untouched};

/// How long a peer may take to refuse an attack.
const DEADLINE: Duration = Duration::from_secs(30);

/// The haul version this test suite goes with (the workspace's, as the binary's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------------------------
// Building messages
// ---------------------------------------------------------------------------------------

fn preamble() -> Vec<u8> {
    encode_preamble(VERSION).unwrap()
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_frame(m, None, &mut out).unwrap_or_else(|e| panic!("encode {}: {e}", m.name()));
    }
    out
}

fn hello(role: Role, root: &Path) -> Message {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        haul_version: VERSION.into(),
        role,
        root: root.as_os_str().as_encoded_bytes().to_vec(),
        options: Box::new(Options::default()),
    }
}

fn entry(index: u64, path: &[u8], kind: EntryKind, size: u64) -> Entry {
    Entry {
        index,
        path: path.to_vec(),
        kind,
        perm: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size,
        rdev: 0,
        atime: WireTime {
            secs: 1_700_000_000,
            nanos: 0,
        },
        mtime: WireTime {
            secs: 1_700_000_000,
            nanos: 0,
        },
        xattrs: Vec::new(),
        symlink_target: None,
        hardlink_of: None,
        link_leader: false,
        regions: None,
        attrs: 0,
    }
}

fn root_entry() -> Message {
    Message::Entry(Box::new(entry(0, b".", EntryKind::Dir, 0)))
}

fn file_entry(index: u64, path: &[u8], content: &[u8]) -> Message {
    Message::Entry(Box::new(entry(
        index,
        path,
        EntryKind::File,
        content.len() as u64,
    )))
}

fn symlink_entry(index: u64, path: &[u8], target: &Path) -> Message {
    let t = target.as_os_str().as_encoded_bytes().to_vec();
    let mut e = entry(index, path, EntryKind::Symlink, t.len() as u64);
    e.symlink_target = Some(t);
    e.perm = 0o777;
    Message::Entry(Box::new(e))
}

fn content_msgs(index: u64, content: &[u8]) -> Vec<Message> {
    vec![
        Message::Data {
            index,
            offset: 0,
            bytes: content.to_vec(),
        },
        Message::FileDone {
            index,
            blake3: *blake3::hash(content).as_bytes(),
        },
    ]
}

/// A frame header declaring a payload one byte over the cap, and a few payload bytes.
fn oversized_frame(kind: u8) -> Vec<u8> {
    let mut b = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    b.push(kind);
    b.push(0);
    assert_eq!(b.len(), FRAME_HEADER_LEN);
    b.extend_from_slice(&[0x41; 100]);
    b
}

fn abs_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// The places an attack must not reach
// ---------------------------------------------------------------------------------------

/// A test directory: `allowed/` (the `--restrict-to-path`), `allowed/dst/` (the root the
/// client names), and `outside/` with a victim file (the target of symlink attacks).
struct Ground {
    t: tempfile::TempDir,
    /// Paths under `t` outside `allowed/dst`, before the attack.
    before: BTreeSet<PathBuf>,
    outside: Untouched,
}

impl Ground {
    fn new() -> Ground {
        let t = tmp();
        fixture::mkdir(&t.path().join("allowed/dst"));
        fixture::write_file(&t.path().join("outside/victim"), b"victim\n");
        let outside = Untouched::record(&t.path().join("outside"));
        let mut g = Ground {
            t,
            before: BTreeSet::new(),
            outside,
        };
        g.before = g.paths_outside_dst();
        g
    }

    fn allowed(&self) -> PathBuf {
        self.t.path().join("allowed")
    }

    fn dst(&self) -> PathBuf {
        self.t.path().join("allowed/dst")
    }

    fn outside(&self) -> PathBuf {
        self.t.path().join("outside")
    }

    fn paths_outside_dst(&self) -> BTreeSet<PathBuf> {
        list_entries(self.t.path())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !p.starts_with("allowed/dst"))
            .collect()
    }

    /// Nothing outside `allowed/dst` was created, removed or modified.
    fn assert_untouched(&self, what: &str) {
        let now = self.paths_outside_dst();
        let added: Vec<_> = now.difference(&self.before).collect();
        let removed: Vec<_> = self.before.difference(&now).collect();
        assert!(
            added.is_empty() && removed.is_empty(),
            "{what}: outside the root, created {added:?}, removed {removed:?}"
        );
        self.outside.assert_unchanged(what);
        for p in ["/tmp/escape", "/escape"] {
            assert!(!exists(Path::new(p)), "{what}: {p} was created");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (a) A hostile client of `haul serve --stdio`
// ---------------------------------------------------------------------------------------

enum Event {
    Msg(Message),
    /// The server's bytes do not decode.
    Bad(String),
    /// The server closed its stdout.
    Eof,
}

/// A `haul serve --stdio` the test talks to.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Event>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
    received: Vec<Message>,
}

/// How a session ended.
struct Ended {
    status: ExitStatus,
    received: Vec<Message>,
    stderr: String,
}

impl Ended {
    fn describe(&self) -> String {
        let msgs: Vec<String> = self
            .received
            .iter()
            .map(|m| match m {
                Message::Error { index, message } => format!("Error({index:?}: {message})"),
                Message::Summary { json } => {
                    format!("Summary({})", String::from_utf8_lossy(json))
                }
                m => m.name().to_string(),
            })
            .collect();
        format!(
            "serve exited {:?} (signal {:?})\nreceived: {msgs:?}\n--- stderr ---\n{}",
            self.status.code(),
            self.status.signal(),
            self.stderr
        )
    }

    fn error_message(&self) -> Option<&str> {
        self.received.iter().find_map(|m| match m {
            Message::Error { message, .. } => Some(message.as_str()),
            _ => None,
        })
    }

    /// The Summary says the run failed or an entry failed.
    fn summary_reports_failure(&self) -> bool {
        self.received.iter().any(|m| match m {
            Message::Summary { json } => {
                let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
                // The serving side sends {"summary": {...}, "changes": [...]}.
                [&v, &v["summary"]].iter().any(|s| {
                    s["exit_code"].as_i64().is_some_and(|c| c != 0)
                        || s["failed"].as_array().is_some_and(|a| !a.is_empty())
                })
            }
            _ => false,
        })
    }

    /// Refused: a non-zero exit, an Error message or a failure in the Summary; no panic;
    /// not killed by a signal.
    fn assert_refused(&self, what: &str) {
        eprintln!("{what}: {}", self.describe().replace('\n', " | "));
        assert!(
            self.status.signal().is_none(),
            "{what}: serve died of a signal\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: serve panicked\n{}",
            self.describe()
        );
        assert_ne!(
            self.status.code(),
            Some(2),
            "{what}: a usage error: serve did not even run\n{}",
            self.describe()
        );
        assert!(
            self.status.code() != Some(0)
                || self.error_message().is_some()
                || self.summary_reports_failure(),
            "{what}: serve accepted it (exit 0, no Error message, no failure in the Summary)\n{}",
            self.describe()
        );
    }
}

impl Served {
    fn start(extra: &[&str], restrict: &Path) -> Served {
        let mut cmd = Command::new(haul_bin());
        cmd.args(["serve", "--stdio", "--restrict-to-path"])
            .arg(restrict)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", haul_bin().display()));
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut d = Decoder::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        if let Err(e) = d.finish() {
                            let _ = tx.send(Event::Bad(format!("at the end: {e}")));
                        }
                        let _ = tx.send(Event::Eof);
                        return;
                    }
                    Ok(n) => n,
                };
                d.feed(&buf[..n]);
                loop {
                    match d.next() {
                        Ok(Some(Received::Preamble(_))) => {}
                        Ok(Some(Received::Message(m))) => {
                            if tx.send(Event::Msg(m)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Event::Bad(e.to_string()));
                            // Drain the rest so the server does not block on a full pipe.
                            while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
                            let _ = tx.send(Event::Eof);
                            return;
                        }
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        Served {
            stdin: child.stdin.take(),
            child,
            events,
            stderr: Some(stderr),
            started: Instant::now(),
            received: Vec::new(),
        }
    }

    /// Writes bytes; a server that already hung up is not an error here (what it said
    /// before is checked).
    fn send(&mut self, bytes: &[u8]) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(bytes).and_then(|()| s.flush());
        }
    }

    fn send_msgs(&mut self, msgs: &[Message]) {
        self.send(&frames(msgs));
    }

    /// The next event, or `None` once the deadline has passed.
    fn next(&mut self) -> Option<Event> {
        let left = DEADLINE.checked_sub(self.started.elapsed())?;
        match self.events.recv_timeout(left) {
            Ok(Event::Msg(m)) => {
                self.received.push(m.clone());
                Some(Event::Msg(m))
            }
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Event::Eof),
        }
    }

    /// Waits for the server's HelloOk; panics on anything else.
    fn expect_hello_ok(&mut self) {
        match self.next() {
            Some(Event::Msg(Message::HelloOk { protocol, .. })) => {
                assert_eq!(protocol, PROTOCOL_VERSION);
            }
            Some(Event::Msg(m)) => {
                let ended = self.end();
                panic!("expected HelloOk, got {}\n{}", m.name(), ended.describe());
            }
            Some(Event::Bad(e)) => {
                let ended = self.end();
                panic!(
                    "the server's reply does not decode: {e}\n{}",
                    ended.describe()
                )
            }
            Some(Event::Eof) | None => {
                let ended = self.end();
                panic!("no HelloOk\n{}", ended.describe())
            }
        }
    }

    /// Waits (with our end of the pipe still open) until the server reports an error or
    /// closes its stdout, then closes stdin and waits for it to exit. Panics, after
    /// killing it, if that takes past the deadline.
    fn end(&mut self) -> Ended {
        loop {
            match self.next() {
                None => self.timed_out("neither refused nor ended"),
                Some(Event::Msg(Message::Error { .. })) | Some(Event::Eof) => break,
                Some(Event::Bad(e)) => {
                    eprintln!("the server's bytes do not decode: {e}");
                    break;
                }
                Some(Event::Msg(_)) => {}
            }
        }
        self.stdin = None;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Whatever it sent after the Error.
                while let Ok(Event::Msg(m)) = self.events.try_recv() {
                    self.received.push(m);
                }
                let stderr = self.stderr.take().unwrap().join().unwrap();
                return Ended {
                    status,
                    received: std::mem::take(&mut self.received),
                    stderr,
                };
            }
            if self.started.elapsed() > DEADLINE {
                self.timed_out("did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn timed_out(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        let names: Vec<&str> = self.received.iter().map(|m| m.name()).collect();
        panic!(
            "haul serve {what} within {DEADLINE:?}; killed it. Received {names:?}\n\
             --- stderr ---\n{stderr}"
        );
    }

    /// Plays the client's side of a push of `msgs` (entries, ending with EndOfList):
    /// answers each Need with the content in `contents` (or `reply`'s messages), sends
    /// Done once every file entry was answered, and ends.
    fn play_push(
        &mut self,
        msgs: Vec<Message>,
        mut reply: impl FnMut(u64, &Option<Vec<OldChunk>>) -> Vec<Message>,
    ) -> Ended {
        let files: BTreeSet<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                Message::Entry(e) if e.kind == EntryKind::File => Some(e.index),
                _ => None,
            })
            .collect();
        self.send_msgs(&msgs);
        let mut answered = BTreeSet::new();
        let mut done_sent = false;
        loop {
            match self.next() {
                None => self.timed_out("neither refused nor ended the push"),
                Some(Event::Msg(Message::Need { index, old_chunks })) => {
                    answered.insert(index);
                    let r = reply(index, &old_chunks);
                    self.send_msgs(&r);
                }
                Some(Event::Msg(Message::Skip { index })) => {
                    answered.insert(index);
                }
                Some(Event::Msg(Message::Error { .. })) | Some(Event::Eof) => break,
                Some(Event::Bad(e)) => {
                    eprintln!("the server's bytes do not decode: {e}");
                    break;
                }
                Some(Event::Msg(_)) => {}
            }
            if !done_sent && files.is_subset(&answered) {
                self.send_msgs(&[Message::Done]);
                done_sent = true;
            }
        }
        self.end()
    }
}

/// Starts `haul serve --stdio --restrict-to-path allowed/` and opens a push into
/// `allowed/dst/`.
fn push_session(g: &Ground) -> Served {
    let mut s = Served::start(&[], &g.allowed());
    let mut b = preamble();
    b.extend(frames(&[hello(Role::Push, &g.dst())]));
    s.send(&b);
    s.expect_hello_ok();
    s
}

/// Content for every Need.
fn with(
    contents: HashMap<u64, Vec<u8>>,
) -> impl FnMut(u64, &Option<Vec<OldChunk>>) -> Vec<Message> {
    move |i, _| match contents.get(&i) {
        Some(c) => content_msgs(i, c),
        None => Vec::new(),
    }
}

#[test]
fn serve_refuses_garbage_after_the_preamble() {
    let g = Ground::new();
    let mut s = Served::start(&[], &g.allowed());
    let mut b = preamble();
    b.extend(fixture::random_bytes("garbage", 4096));
    s.send(&b);
    s.end().assert_refused("garbage after the preamble");
    g.assert_untouched("garbage after the preamble");
}

#[test]
fn serve_refuses_garbage_instead_of_the_preamble() {
    let g = Ground::new();
    let mut s = Served::start(&[], &g.allowed());
    s.send(b"SSH-2.0-OpenSSH_9.2\r\nnot haul at all\n");
    s.end().assert_refused("garbage instead of the preamble");
    g.assert_untouched("garbage instead of the preamble");
}

#[test]
fn serve_refuses_a_frame_over_the_size_cap() {
    // In place of the Hello.
    let g = Ground::new();
    let mut s = Served::start(&[], &g.allowed());
    let mut b = preamble();
    b.extend(oversized_frame(1));
    s.send(&b);
    s.end().assert_refused("an oversized Hello frame");

    // After the handshake, as an Entry.
    let mut s = push_session(&g);
    s.send_msgs(&[root_entry()]);
    s.send(&oversized_frame(3));
    s.end().assert_refused("an oversized Entry frame");
    g.assert_untouched("oversized frames");
}

#[test]
fn serve_refuses_entry_paths_that_leave_the_root() {
    let g = Ground::new();
    let abs = g.outside().join("abs");
    let bad: Vec<Vec<u8>> = vec![
        b"../escape".to_vec(),
        b"a/../../escape".to_vec(),
        b"./../escape".to_vec(),
        abs_bytes(&abs),
        b"/tmp/escape".to_vec(),
        b"a//b".to_vec(),
        b"".to_vec(),
    ];
    for path in bad {
        let what = format!("Entry path {:?}", String::from_utf8_lossy(&path));
        let mut s = push_session(&g);
        let content = b"evil\n".to_vec();
        let ended = s.play_push(
            vec![
                root_entry(),
                file_entry(1, &path, &content),
                Message::EndOfList,
            ],
            with(HashMap::from([(1, content)])),
        );
        ended.assert_refused(&what);
        g.assert_untouched(&what);
    }
}

#[test]
fn serve_does_not_follow_a_symlink_it_was_sent() {
    let g = Ground::new();
    let mut s = push_session(&g);
    let content = b"through the link\n".to_vec();
    let ended = s.play_push(
        vec![
            root_entry(),
            symlink_entry(1, b"link", &g.outside()),
            file_entry(2, b"link/x", &content),
            file_entry(3, b"link/victim", &content),
            Message::EndOfList,
        ],
        with(HashMap::from([(2, content.clone()), (3, content)])),
    );
    ended.assert_refused("a file entry through a symlink entry");
    g.assert_untouched("a file entry through a symlink entry");
    // The symlink itself may well have been made: inside the root, harmless.
    if let Ok(t) = fs::read_link(g.dst().join("link")) {
        assert_eq!(t, g.outside());
    }
}

#[test]
fn serve_refuses_data_for_an_index_never_announced() {
    let g = Ground::new();
    let mut s = push_session(&g);
    s.send_msgs(&[
        root_entry(),
        Message::Data {
            index: 7,
            offset: 0,
            bytes: b"nobody asked\n".to_vec(),
        },
    ]);
    s.end().assert_refused("Data for index 7, never announced");

    // And for an entry announced but not asked for (no Need was sent for it).
    let mut s = push_session(&g);
    let content = b"unasked\n".to_vec();
    let mut msgs = vec![
        root_entry(),
        Message::Entry(Box::new(entry(1, b"d", EntryKind::Dir, 0))),
    ];
    msgs.extend(content_msgs(1, &content));
    s.send_msgs(&msgs);
    s.end().assert_refused("Data for a directory entry");
    g.assert_untouched("Data for an unannounced index");
}

#[test]
fn serve_refuses_a_chunk_it_did_not_list() {
    let g = Ground::new();
    // An old version for the server to list chunks of.
    let old = fixture::random_bytes("old-version", 512 << 10);
    fixture::write_file(&g.dst().join("f"), &old);
    let mut new = old.clone();
    new.extend_from_slice(b"appended");
    let mut s = push_session(&g);
    let listed = std::cell::Cell::new(None);
    let ended = s.play_push(
        vec![root_entry(), file_entry(1, b"f", &new), Message::EndOfList],
        |index, old_chunks| {
            listed.set(Some(old_chunks.as_ref().map_or(0, Vec::len)));
            let mut bad = [0xabu8; 32];
            if let Some(c) = old_chunks.as_ref().and_then(|c| c.first()) {
                // A real id with one bit flipped: close to right, still wrong.
                bad = c.id;
                bad[0] ^= 1;
            }
            vec![
                Message::Chunk {
                    index,
                    offset: 0,
                    id: bad,
                },
                Message::FileDone {
                    index,
                    blake3: *blake3::hash(&new).as_bytes(),
                },
            ]
        },
    );
    eprintln!("the server listed {:?} old chunks", listed.get());
    ended.assert_refused("a Chunk with an id the server did not list");
    assert!(
        listed.get().is_some(),
        "the server never sent a Need for the changed file\n{}",
        ended.describe()
    );
    // The old version is still there, whole, or replaced by nothing half-made.
    if exists(&g.dst().join("f")) {
        let got = read(&g.dst().join("f"));
        assert!(
            got == old || got == new,
            "f is neither the old nor the new version"
        );
    }
    g.assert_untouched("a Chunk with a wrong id");
}

#[test]
fn serve_refuses_a_root_outside_the_restriction() {
    let g = Ground::new();
    fixture::symlink(g.outside(), &g.allowed().join("sneaky"));
    let mut before = g.before.clone();
    before.insert(PathBuf::from("allowed/sneaky"));
    let g = Ground { before, ..g };
    let roots = [
        g.outside(),
        g.allowed().join("../outside"),
        g.allowed().join("sneaky"),
        g.allowed().join("sneaky/sub"),
        PathBuf::from("/"),
        PathBuf::from("/tmp"),
        PathBuf::from(""),
    ];
    for root in roots {
        for role in [Role::Push, Role::Pull] {
            let what = format!("{role} with root {}", root.display());
            let mut s = Served::start(&[], &g.allowed());
            let mut b = preamble();
            b.extend(frames(&[hello(role, &root)]));
            // If it were accepted, this would write into it.
            if role == Role::Push {
                b.extend(frames(&[
                    root_entry(),
                    file_entry(1, b"pwned", b"x"),
                    Message::EndOfList,
                ]));
            }
            s.send(&b);
            let ended = s.end();
            ended.assert_refused(&what);
            assert!(
                ended.error_message().is_some(),
                "{what}: no Error message sent to the client\n{}",
                ended.describe()
            );
            assert!(
                !ended
                    .received
                    .iter()
                    .any(|m| matches!(m, Message::HelloOk { .. } | Message::Entry(_))),
                "{what}: the server accepted the root\n{}",
                ended.describe()
            );
            g.assert_untouched(&what);
        }
    }
}

#[test]
fn read_only_serve_refuses_a_push_and_allows_a_pull() {
    let g = Ground::new();
    fixture::write_file(&g.dst().join("existing"), b"keep me\n");
    let before = Untouched::record(&g.dst());
    let mut s = Served::start(&["--read-only"], &g.allowed());
    let mut b = preamble();
    b.extend(frames(&[
        hello(Role::Push, &g.dst()),
        root_entry(),
        file_entry(1, b"new", b"x"),
        Message::EndOfList,
    ]));
    s.send(&b);
    let ended = s.end();
    ended.assert_refused("a push to --read-only");
    assert!(
        ended.error_message().is_some(),
        "no Error message for a push to --read-only\n{}",
        ended.describe()
    );
    before.assert_unchanged("DST of a refused push");
    g.assert_untouched("a push to --read-only");

    // A pull is what --read-only is for.
    let mut s = Served::start(&["--read-only"], &g.allowed());
    let mut b = preamble();
    b.extend(frames(&[hello(Role::Pull, &g.dst())]));
    s.send(&b);
    s.expect_hello_ok();
    let mut entries = 0;
    loop {
        match s.next() {
            Some(Event::Msg(Message::Entry(_))) => entries += 1,
            Some(Event::Msg(Message::EndOfList)) => break,
            Some(Event::Msg(Message::Error { message, .. })) => {
                panic!("a pull from --read-only failed: {message}")
            }
            Some(Event::Msg(_)) => {}
            other => panic!(
                "a pull from --read-only ended before EndOfList ({})",
                if other.is_none() { "timeout" } else { "eof" }
            ),
        }
    }
    assert_eq!(entries, 2, "the pull announced . and existing");
    s.stdin = None;
    let _ = s.end();
}

// ---------------------------------------------------------------------------------------
// (b) A hostile server
// ---------------------------------------------------------------------------------------

fn start_sshd() -> Sshd {
    Sshd::start().unwrap_or_else(|e| panic!("cannot start the test sshd: {e}"))
}

/// A `--remote-haul` that replays `stream` and then holds the session open until the
/// client hangs up.
fn replaying_server(dir: &Path, name: &str, stream: &[u8]) -> PathBuf {
    let bytes = dir.join(format!("{name}.bin"));
    fs::write(&bytes, stream).unwrap();
    let script = dir.join(name);
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat '{}'\nexec cat >/dev/null\n",
            bytes.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// `haul copy` with `--remote-haul server`, killed (and the test failed) after
/// [`DEADLINE`].
fn run_client(
    sshd: &Sshd,
    server: &Path,
    extra: &[&str],
    src: OsString,
    dst: OsString,
) -> RunResult {
    let mut args: Vec<OsString> = vec![
        "copy".into(),
        "--no-progress".into(),
        "--remote-haul".into(),
        server.into(),
        "-e".into(),
        sshd.ssh_command().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.push(src);
    args.push(dst);
    let child = Command::new(haul_bin())
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(DEADLINE) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "haul {args:?} did not end within {DEADLINE:?} against a hostile server; killed it"
            );
        }
    };
    RunResult {
        args,
        code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a server says before its tree: preamble and HelloOk.
fn server_opening() -> Vec<u8> {
    let mut b = preamble();
    b.extend(frames(&[Message::HelloOk {
        protocol: PROTOCOL_VERSION,
        haul_version: VERSION.into(),
    }]));
    b
}

#[test]
fn a_hostile_server_cannot_write_outside_dst_in_a_pull() {
    require_root("a_hostile_server_cannot_write_outside_dst_in_a_pull (sshd)");
    let sshd = start_sshd();
    let t = tmp();
    let scripts = t.path().join("scripts");
    fixture::mkdir(&scripts);
    fixture::write_file(&t.path().join("outside/victim"), b"victim\n");
    let outside = t.path().join("outside");
    // DST deep enough that every `..` below stays inside the test directory.
    let dst = t.path().join("a/b/dst");
    fixture::mkdir(&dst);
    let evil = b"evil\n".to_vec();

    let pulled_file = |path: &[u8]| -> Vec<Message> {
        let mut v = vec![root_entry(), file_entry(1, path, &evil)];
        v.extend(content_msgs(1, &evil));
        v.extend([Message::EndOfList, Message::Done]);
        v
    };
    let mut cases: Vec<(String, Vec<Message>)> = vec![
        ("../../x".into(), pulled_file(b"../../x")),
        ("../escape".into(), pulled_file(b"../escape")),
        (
            "absolute path".into(),
            pulled_file(&abs_bytes(&outside.join("abs"))),
        ),
        ("a file through a symlink".into(), {
            let mut v = vec![
                root_entry(),
                symlink_entry(1, b"link", &outside),
                file_entry(2, b"link/x", &evil),
                file_entry(3, b"link/victim", &evil),
            ];
            v.extend(content_msgs(2, &evil));
            v.extend(content_msgs(3, &evil));
            v.extend([Message::EndOfList, Message::Done]);
            v
        }),
        ("Data for an index never announced".into(), {
            let mut v = vec![root_entry()];
            v.extend(content_msgs(9, &evil));
            v.extend([Message::EndOfList, Message::Done]);
            v
        }),
        (
            "a Delete of ../../outside/victim".into(),
            vec![
                root_entry(),
                Message::EndOfList,
                Message::Delete {
                    path: b"../../../outside/victim".to_vec(),
                },
                Message::Done,
            ],
        ),
    ];
    // Entries that need no content (no Need to wait for) through a symlink entry.
    cases.push(("a fifo and a directory through a symlink".into(), {
        let mut fifo = entry(2, b"link/fifo", EntryKind::Fifo, 0);
        fifo.perm = 0o644;
        vec![
            root_entry(),
            symlink_entry(1, b"link", &outside),
            Message::Entry(Box::new(fifo)),
            Message::Entry(Box::new(entry(3, b"link/dir", EntryKind::Dir, 0))),
            Message::EndOfList,
            Message::Summary {
                json: SERVER_SUMMARY.to_vec(),
            },
            Message::Done,
        ]
    }));
    // A Delete through a symlink the server made.
    cases.push((
        "a Delete through a symlink".into(),
        vec![
            root_entry(),
            symlink_entry(1, b"link", &outside),
            Message::EndOfList,
            Message::Delete {
                path: b"link/victim".to_vec(),
            },
            Message::Done,
        ],
    ));

    for (i, (what, msgs)) in cases.into_iter().enumerate() {
        let mut stream = server_opening();
        stream.extend(frames(&msgs));
        let server = replaying_server(&scripts, &format!("server{i}"), &stream);
        let before: BTreeSet<PathBuf> = list_entries(t.path())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !p.starts_with("a/b/dst"))
            .collect();
        let untouched = Untouched::record(&outside);
        let mut src = OsString::from(format!("{}:", sshd.user_at_host()));
        src.push(t.path().join("whatever"));
        let r = run_client(&sshd, &server, &["--delete"], src, dst.clone().into());
        assert_ne!(
            r.code,
            0,
            "{what}: the client accepted it\n{}",
            r.describe()
        );
        assert_ne!(r.code, 2, "{what}: a usage error\n{}", r.describe());
        assert!(
            r.code < 128,
            "{what}: the client died of a signal\n{}",
            r.describe()
        );
        assert!(!r.stderr.contains("panicked"), "{what}\n{}", r.describe());
        assert!(
            !r.stderr.trim().is_empty(),
            "{what}: no error message\n{}",
            r.describe()
        );
        let after: BTreeSet<PathBuf> = list_entries(t.path())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !p.starts_with("a/b/dst"))
            .collect();
        assert_eq!(
            before,
            after,
            "{what}: something changed outside DST\n{}",
            r.describe()
        );
        untouched.assert_unchanged(&what);
        eprintln!("{what}: exit {}, {}", r.code, r.stderr.trim());
    }
}

#[test]
fn a_hostile_server_with_oversized_frames_or_garbage_is_refused() {
    require_root("a_hostile_server_with_oversized_frames_or_garbage_is_refused (sshd)");
    let sshd = start_sshd();
    let t = tmp();
    let dst = t.path().join("dst");
    let mut src = OsString::from(format!("{}:", sshd.user_at_host()));
    src.push(t.path().join("whatever"));

    let mut oversized = server_opening();
    oversized.extend(oversized_frame(3));
    let mut garbage = server_opening();
    garbage.extend(fixture::random_bytes("server-garbage", 4096));
    let mut other_protocol = MAGIC.to_vec();
    other_protocol.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    other_protocol.push(5);
    other_protocol.extend_from_slice(b"9.9.9");
    let mut error = server_opening();
    error.extend(frames(&[Message::Error {
        index: None,
        message: "the server says no".into(),
    }]));

    for (i, (what, stream, must_say)) in [
        ("an oversized frame", oversized, None),
        ("garbage after HelloOk", garbage, None),
        ("another protocol version", other_protocol, Some("9.9.9")),
        ("a session Error", error, Some("the server says no")),
    ]
    .into_iter()
    .enumerate()
    {
        let server = replaying_server(t.path(), &format!("server{i}"), &stream);
        for (dir, from, to) in [
            ("pull", src.clone(), dst.clone().into_os_string()),
            ("push", t.path().join("scripts_src").into_os_string(), {
                let mut d = OsString::from(format!("{}:", sshd.user_at_host()));
                d.push(t.path().join("remote_dst"));
                d
            }),
        ] {
            fixture::mkdir(&t.path().join("scripts_src"));
            let r = run_client(&sshd, &server, &[], from, to);
            r.expect_code(1);
            assert!(!r.stderr.contains("panicked"), "{what}\n{}", r.describe());
            assert!(
                r.stderr.contains("127.0.0.1"),
                "{dir}, {what}: the error does not name the host\n{}",
                r.describe()
            );
            if let Some(s) = must_say {
                assert!(
                    r.stderr.contains(s),
                    "{dir}, {what}: no {s:?} in the error\n{}",
                    r.describe()
                );
            }
        }
        assert!(
            !exists(&dst) || list_entries(&dst).len() == 1,
            "{what}: the pull wrote into DST"
        );
    }
}

/// The serving side's summary of an empty tree, as haul serve sends it.
const SERVER_SUMMARY: &[u8] = br#"{"summary":{"dry_run":false,"seconds":0.0,"source":{"files":0,"dirs":1,"symlinks":0,"hardlinks":0,"specials":0,"bytes":0},"created":0,"updated":0,"metadata_only":0,"unchanged":0,"deleted":0,"bytes_copied":0,"failed":[],"partial":[],"verify_mismatches":[],"failed_not_listed":0,"partial_not_listed":0,"notices":[],"notices_not_listed":0},"changes":[]}"#;

/// A whole pull of an empty directory, as a server of haul `version` would send it.
fn empty_pull_stream(version: &str) -> Vec<u8> {
    let mut b = encode_preamble(version).unwrap();

    b.extend(frames(&[
        Message::HelloOk {
            protocol: PROTOCOL_VERSION,
            haul_version: version.into(),
        },
        root_entry(),
        Message::EndOfList,
        Message::Summary {
            json: SERVER_SUMMARY.to_vec(),
        },
        Message::Done,
    ]));
    b
}

/// A remote haul of another version that speaks the same protocol version works (that
/// is what the protocol version is for), and the summary says so, naming the host and
/// the version found; another protocol version is refused by the handshake. The
/// control run (this haul's own version) has no such notice.
#[test]
fn a_remote_haul_of_another_version_is_named() {
    require_root("a_remote_haul_of_another_version_is_named (sshd)");
    let sshd = start_sshd();
    let t = tmp();
    let mut src = OsString::from(format!("{}:", sshd.user_at_host()));
    src.push(t.path().join("whatever"));

    let same = replaying_server(t.path(), "same", &empty_pull_stream(VERSION));
    let r = run_client(
        &sshd,
        &same,
        &[],
        src.clone(),
        t.path().join("dst_same").into(),
    );
    r.expect_code(0);
    assert!(!r.stderr.contains("is version"), "{}", r.describe());

    let other = replaying_server(t.path(), "other", &empty_pull_stream("9.9.9"));
    let r = run_client(&sshd, &other, &[], src, t.path().join("dst_other").into());
    r.expect_code(0);
    for s in ["127.0.0.1", "9.9.9", "protocol 1"] {
        assert!(
            r.stderr.contains(s),
            "no {s:?} in the notice\n{}",
            r.describe()
        );
    }
}

/// A server that answers the handshake and then falls silent (it neither sends nor
/// closes) must not hang the client: with `--timeout 2`, a pull (waiting for entries)
/// and a push (waiting for answers) each end with exit 1 and a message saying the
/// peer sent nothing, well within the test's deadline. A live but busy peer sends
/// keepalives (the other tests run with the default timeout and pass).
#[test]
fn a_silent_server_ends_the_session_at_the_timeout() {
    require_root("a_silent_server_ends_the_session_at_the_timeout (sshd)");
    let sshd = start_sshd();
    let t = tmp();
    let mut stream = encode_preamble(VERSION).unwrap();
    stream.extend(frames(&[Message::HelloOk {
        protocol: PROTOCOL_VERSION,
        haul_version: VERSION.into(),
    }]));
    let mute = replaying_server(t.path(), "mute", &stream);

    // Pull: the root comes, then nothing.
    let mut pull_stream = stream.clone();
    pull_stream.extend(frames(&[root_entry()]));
    let mute_pull = replaying_server(t.path(), "mute_pull", &pull_stream);
    let mut remote = OsString::from(format!("{}:", sshd.user_at_host()));
    remote.push(t.path().join("whatever"));
    let started = Instant::now();
    let r = run_client(
        &sshd,
        &mute_pull,
        &["--timeout", "2"],
        remote.clone(),
        t.path().join("dst_pull").into(),
    );
    r.expect_code(1);
    assert!(r.stderr.contains("sent nothing"), "{}", r.describe());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{}",
        r.describe()
    );

    // Push: the client announces a file and waits for an answer that never comes.
    let src = t.path().join("src");
    fixture::write_file(&src.join("f"), b"content");
    let started = Instant::now();
    let r = run_client(&sshd, &mute, &["--timeout", "2"], src.into(), remote);
    r.expect_code(1);
    assert!(r.stderr.contains("sent nothing"), "{}", r.describe());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{}",
        r.describe()
    );
}

/// A server whose content for a large (streamed) file does not match its own FileDone
/// digest fails that file only: nothing is named with the bad content, the session
/// goes on, and the next file arrives exact (exit 3). Also for a small (assembled)
/// file. The receiver must not read the next file's content as the rest of the bad
/// one's.
#[test]
fn a_wrong_digest_fails_that_file_and_the_next_arrives() {
    require_root("a_wrong_digest_fails_that_file_and_the_next_arrives (sshd)");
    let sshd = start_sshd();
    let t = tmp();
    for (what, size) in [("streamed", 3usize << 20), ("assembled", 100 << 10)] {
        let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let good = b"good file\n".to_vec();
        let mut msgs = vec![
            root_entry(),
            file_entry(1, b"bad", &big),
            file_entry(2, b"good", &good),
            Message::EndOfList,
        ];
        for (i, piece) in big.chunks(256 << 10).enumerate() {
            msgs.push(Message::Data {
                index: 1,
                offset: (i * (256 << 10)) as u64,
                bytes: piece.to_vec(),
            });
        }
        msgs.push(Message::FileDone {
            index: 1,
            blake3: *blake3::hash(b"something else").as_bytes(),
        });
        msgs.extend(content_msgs(2, &good));
        msgs.extend([
            Message::Summary {
                json: SERVER_SUMMARY.to_vec(),
            },
            Message::Done,
        ]);
        let mut stream = encode_preamble(VERSION).unwrap();
        stream.extend(frames(&[Message::HelloOk {
            protocol: PROTOCOL_VERSION,
            haul_version: VERSION.into(),
        }]));
        stream.extend(frames(&msgs));
        let server = replaying_server(t.path(), &format!("server-{what}"), &stream);
        let dst = t.path().join(format!("dst-{what}"));
        let mut src = OsString::from(format!("{}:", sshd.user_at_host()));
        src.push(t.path().join("whatever"));
        let r = run_client(&sshd, &server, &[], src, dst.clone().into());
        r.expect_code(3);
        assert!(r.stderr.contains("bad"), "{what}: {}", r.describe());
        assert!(r.stderr.contains("blake3"), "{what}: {}", r.describe());
        assert!(!exists(&dst.join("bad")), "{what}: bad content was named");
        assert_eq!(read(&dst.join("good")), good, "{what}: {}", r.describe());
    }
}

/// A large file whose write fails mid-way (the destination fills up) while entries of
/// later files arrive in the middle of its content: the failed file is named nowhere,
/// the rest of its content is read past, and the entries that came meanwhile are still
/// handled (the small file after it arrives exact; exit 3). Skipping the content must
/// read the pipe, not cycle through those waiting entries.
#[test]
fn a_file_that_fills_the_disk_mid_stream_fails_alone() {
    require_root("a_file_that_fills_the_disk_mid_stream_fails_alone (sshd, mount)");
    let sshd = start_sshd();
    let t = tmp();
    let fs = crate::full_disk::SmallFs::mount(1024);
    let dst = fs.path().join("dst");
    let big: Vec<u8> = (0..3usize << 20).map(|i| (i % 253) as u8).collect();
    let small = b"small file\n".to_vec();
    let mut msgs = vec![root_entry(), file_entry(1, b"big", &big)];
    for (i, piece) in big.chunks(256 << 10).enumerate() {
        msgs.push(Message::Data {
            index: 1,
            offset: (i * (256 << 10)) as u64,
            bytes: piece.to_vec(),
        });
        if i == 0 {
            // Entries of later files, in the middle of big's content.
            msgs.push(file_entry(2, b"small", &small));
            msgs.push(Message::Entry(Box::new(entry(
                3,
                b"sub",
                EntryKind::Dir,
                0,
            ))));
        }
    }
    msgs.push(Message::FileDone {
        index: 1,
        blake3: *blake3::hash(&big).as_bytes(),
    });
    msgs.extend(content_msgs(2, &small));
    msgs.extend([
        Message::EndOfList,
        Message::Summary {
            json: SERVER_SUMMARY.to_vec(),
        },
        Message::Done,
    ]);
    let mut stream = encode_preamble(VERSION).unwrap();
    stream.extend(frames(&[Message::HelloOk {
        protocol: PROTOCOL_VERSION,
        haul_version: VERSION.into(),
    }]));
    stream.extend(frames(&msgs));
    let server = replaying_server(t.path(), "server", &stream);
    let mut src = OsString::from(format!("{}:", sshd.user_at_host()));
    src.push(t.path().join("whatever"));
    let r = run_client(&sshd, &server, &[], src, dst.clone().into());
    r.expect_code(3);
    assert!(r.stderr.contains("big"), "{}", r.describe());
    assert!(r.stderr.contains("No space left"), "{}", r.describe());
    assert!(!exists(&dst.join("big")), "a partial big was named");
    assert_eq!(read(&dst.join("small")), small, "{}", r.describe());
    assert!(dst.join("sub").is_dir(), "{}", r.describe());
}
