//! Copies to and from other hosts: `haul copy SRC host:DST`, `haul copy
//! host:SRC DST`, and `haul serve --stdio` on the other end of an ssh pipe.
//!
//! A session is one protocol (`haul_formats::wire`) over ssh's stdin and
//! stdout: the client sends its preamble and a Hello naming the role and
//! the root on the serving side; the server answers HelloOk (or an Error)
//! and then one side sends (`send.rs`: the ordered walk's entries, and
//! content when asked) while the other receives (`recv.rs`: the
//! destination writer's by-path mode, a quick check per file, and deltas
//! by content-defined chunks). Both end with their summaries and Done.
//!
//! No async runtime: three threads per session (reader, writer, and in a
//! sender a relay) carry the pipe, and the disk work is the walker's and
//! the writer's as for a local copy.
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_formats::wire::{self, Message, Role, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

use crate::dest::{CopySummary, WriteOptions};
use crate::error::Error;
use crate::filter::Filter;
use crate::idmap::IdMap;
use crate::meta::XattrPolicy;
use crate::progress::{Action, Progress};
use crate::sys;
use crate::walk::worker_pool;

mod conn;
mod recv;
mod send;

use conn::{Conn, ConnError};

/// How long a peer may be silent, unless told otherwise (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the serving side waits for the client's preamble and Hello.
const HANDSHAKE: Duration = Duration::from_secs(30);
/// How long a client waits for the server's answer to its Hello (ssh may
/// be slow to connect; it has its own timeouts).
const CLIENT_HANDSHAKE: Duration = Duration::from_secs(120);

/// A path on another host, as `[user@]host:path` or
/// `ssh://[user@]host[:port]/path` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePath {
    /// The login name, if given.
    pub user: Option<String>,
    /// The host.
    pub host: String,
    /// The ssh port, if given (`ssh://` form only).
    pub port: Option<u16>,
    /// The path on that host, raw (empty: the login's home directory).
    pub path: Vec<u8>,
}

impl std::fmt::Display for RemotePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}:{}", self.host, String::from_utf8_lossy(&self.path))
    }
}

impl RemotePath {
    /// Parses a command-line location: `None` for a local path (no colon,
    /// or a slash before the first colon, as rsync decides), else the
    /// remote path or why it is not one.
    pub fn parse(s: &OsStr) -> Option<Result<RemotePath, String>> {
        let b = s.as_bytes();
        if let Some(rest) = b.strip_prefix(b"ssh://") {
            return Some(parse_url(rest));
        }
        let colon = b.iter().position(|&c| c == b':')?;
        if colon == 0 || b[..colon].contains(&b'/') {
            return None;
        }
        let (login, path) = (&b[..colon], &b[colon + 1..]);
        if path.first() == Some(&b':') {
            return Some(Err(format!(
                "{}: rsync daemon paths (host::module) are not supported; use host:path",
                s.to_string_lossy()
            )));
        }
        Some(split_login(login).map(|(user, host)| RemotePath {
            user,
            host,
            port: None,
            path: path.to_vec(),
        }))
    }
}

fn split_login(login: &[u8]) -> Result<(Option<String>, String), String> {
    let login =
        std::str::from_utf8(login).map_err(|_| "the user and host are not UTF-8".to_string())?;
    let (user, host) = match login.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, login),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
    if host.is_empty() || host.starts_with('-') || host.contains(bad) {
        return Err(format!("{login:?} is not a host name"));
    }
    if let Some(u) = &user {
        if u.is_empty() || u.starts_with('-') || u.contains(bad) {
            return Err(format!("{u:?} is not a user name"));
        }
    }
    Ok((user, host.to_string()))
}

fn parse_url(rest: &[u8]) -> Result<RemotePath, String> {
    let slash = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
    let (auth, path) = rest.split_at(slash);
    // The port follows the last colon outside brackets.
    let (login, port) = match auth.iter().rposition(|&c| c == b':') {
        Some(i) if !auth[i..].contains(&b']') => {
            let p = std::str::from_utf8(&auth[i + 1..])
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| {
                    format!(
                        "ssh://{}: the port is not a number",
                        String::from_utf8_lossy(rest)
                    )
                })?;
            (&auth[..i], Some(p))
        }
        _ => (auth, None),
    };
    let (user, host) = split_login(login)?;
    Ok(RemotePath {
        user,
        host,
        port,
        path: if path.is_empty() {
            b"/".to_vec()
        } else {
            path.to_vec()
        },
    })
}

/// A copy to or from another host: the copy's flags (which travel to the
/// serving side in the Hello) and how to reach it.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Worker threads on this side; 0 picks one per CPU.
    pub jobs: usize,
    /// `--delete`.
    pub delete: bool,
    /// `--checksum`: content decides, not size and mtime.
    pub checksum: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--verify`: each file written is read back and its blake3 compared
    /// with the sender's.
    pub verify: bool,
    /// Report every change through [`Progress::change`].
    pub record_changes: bool,
    /// Keep owners.
    pub owner: bool,
    /// Keep extended attributes.
    pub xattrs: bool,
    /// Keep POSIX ACLs.
    pub acls: bool,
    /// `--exclude` globs.
    pub exclude: Vec<String>,
    /// `--usermap` specs.
    pub usermap: Vec<String>,
    /// `--groupmap` specs.
    pub groupmap: Vec<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--map-by-name`, resolved on the receiving host.
    pub map_by_name: bool,
    /// The ssh command and its arguments (`-e`).
    pub rsh: Vec<String>,
    /// The haul to run on the other host.
    pub remote_haul: String,
    /// zstd level of frames sent; `None`: none.
    pub compress_level: Option<i32>,
    /// Bytes per second this side sends, at most.
    pub bwlimit: Option<u64>,
    /// How long the other side may send nothing at all (it sends
    /// keepalives while busy) before the session fails (`--timeout`).
    pub timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            jobs: 0,
            delete: false,
            checksum: false,
            dry_run: false,
            verify: false,
            record_changes: false,
            owner: true,
            xattrs: true,
            acls: true,
            exclude: Vec::new(),
            usermap: Vec::new(),
            groupmap: Vec::new(),
            chown: None,
            map_by_name: false,
            rsh: vec!["ssh".into()],
            remote_haul: "haul".into(),
            compress_level: Some(1),
            bwlimit: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RemoteOptions {
    fn wire(&self) -> wire::Options {
        wire::Options {
            delete: self.delete,
            checksum: self.checksum,
            dry_run: self.dry_run,
            verify: self.verify,
            no_owner: !self.owner,
            no_xattrs: !self.xattrs,
            no_acls: !self.acls,
            map_by_name: self.map_by_name,
            record_changes: self.record_changes,
            exclude: self.exclude.clone(),
            usermap: self.usermap.clone(),
            groupmap: self.groupmap.clone(),
            chown: self.chown.clone(),
            compress_level: self.compress_level,
        }
    }
}

/// The copy flags both sides build their options from.
struct Flags {
    write: WriteOptions,
    filter: Filter,
    delete: bool,
    checksum: bool,
    verify: bool,
    record_changes: bool,
}

fn flags(o: &wire::Options, receiving: bool) -> Result<Flags, String> {
    let mut ids = IdMap::new();
    for m in &o.usermap {
        ids = ids.usermap(m).map_err(|e| format!("--usermap {m}: {e}"))?;
    }
    for m in &o.groupmap {
        ids = ids
            .groupmap(m)
            .map_err(|e| format!("--groupmap {m}: {e}"))?;
    }
    if let Some(c) = &o.chown {
        ids = ids.chown(c).map_err(|e| format!("--chown {c}: {e}"))?;
    }
    ids = ids.map_by_name(o.map_by_name);
    if receiving {
        ids = ids.remote_source();
    }
    Ok(Flags {
        write: WriteOptions {
            dry_run: o.dry_run,
            owner: !o.no_owner,
            xattrs: !o.no_xattrs,
            acls: !o.no_acls && !o.no_xattrs,
            ids,
        },
        filter: Filter::new(&o.exclude).map_err(|e| e.to_string())?,
        delete: o.delete,
        checksum: o.checksum,
        verify: o.verify,
        record_changes: o.record_changes,
    })
}

/// A summary as one side sends it to the other: its copy summary, and
/// the changes it made (with `-n` or `-v`).
#[derive(Serialize, Deserialize)]
pub(crate) struct PeerSummary {
    pub(crate) summary: CopySummary,
    #[serde(default)]
    pub(crate) changes: Vec<(Action, String)>,
}

/// The outcome of a copy to or from another host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoteSummary {
    /// The copy's summary: the receiver's, with the sender's failures and
    /// notices added.
    #[serde(flatten)]
    pub summary: CopySummary,
    /// Bytes this side wrote to the ssh pipe.
    pub bytes_sent: u64,
    /// Bytes this side read from it.
    pub bytes_received: u64,
    /// The changes the receiving side reported (with `-n` or `-v`; for a
    /// pull they went to the progress hooks instead), paths lossy.
    #[serde(skip)]
    pub changes: Vec<(Action, String)>,
}

fn merge(mut into: CopySummary, from: Option<CopySummary>) -> CopySummary {
    if let Some(f) = from {
        into.failed.extend(f.failed);
        into.failed_not_listed += f.failed_not_listed;
        into.notices.extend(f.notices);
        into.notices_not_listed += f.notices_not_listed;
    }
    into
}

/// A running ssh with `haul serve --stdio` at its other end.
struct Session {
    conn: Conn,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    peer: String,
    /// The remote haul's version, from its preamble.
    peer_version: String,
}

/// The ssh command line for `remote` (`-e` words, then haul's options,
/// then the login and the remote command).
fn ssh_command(remote: &RemotePath, o: &RemoteOptions) -> Result<Command, String> {
    let (prog, args) = o
        .rsh
        .split_first()
        .ok_or_else(|| "the --rsh command is empty".to_string())?;
    let mut cmd = Command::new(prog);
    // A port in an ssh:// location comes first: ssh keeps the first value
    // it is given, and the location names this host's port.
    if let Some(p) = remote.port {
        cmd.args(["-p", &p.to_string()]);
    }
    cmd.args(args);
    // haul compresses; ssh's compression would only cost CPU.
    cmd.args(["-o", "Compression=no"]);
    cmd.arg(match &remote.user {
        Some(u) => format!("{u}@{}", remote.host),
        None => remote.host.clone(),
    });
    cmd.arg(format!("{} serve --stdio", shell_quote(&o.remote_haul)));
    Ok(cmd)
}

/// Quotes a word for the remote shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Session {
    /// Starts ssh and the handshake; on failure, says what the host said.
    fn open(remote: &RemotePath, o: &RemoteOptions, role: Role) -> Result<Session, Error> {
        let peer = remote.to_string();
        let mut cmd = ssh_command(remote, o).map_err(|m| Error::invalid(&peer, m))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            Error::remote(
                "starting ssh",
                &peer,
                format!(
                    "cannot run {:?}: {e}",
                    o.rsh.first().map_or("", |s| s.as_str())
                ),
            )
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr.clone();
        let stderr_thread = std::thread::Builder::new()
            .name("ssh-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.extend_from_slice(&buf[..n]);
                    // Only the end matters for an error message.
                    if t.len() > 16 << 10 {
                        let cut = t.len() - (8 << 10);
                        t.drain(..cut);
                    }
                }
            })
            .ok();
        let conn = Conn::start(stdout, stdin, o.compress_level, o.bwlimit, o.timeout);
        let mut s = Session {
            conn,
            child,
            stderr,
            stderr_thread,
            peer,
            peer_version: String::new(),
        };
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            haul_version: env!("CARGO_PKG_VERSION").into(),
            role,
            root: remote.path.clone(),
            options: Box::new(o.wire()),
        };
        let r = s
            .conn
            .out
            .send(&hello)
            .and_then(|()| s.conn.preamble(CLIENT_HANDSHAKE))
            .and_then(|p| {
                s.peer_version = p.haul_version;
                s.conn.recv_within(Some(CLIENT_HANDSHAKE))
            });
        match r {
            Ok(Message::HelloOk { .. }) => Ok(s),
            Ok(Message::Error { message, .. }) => Err(s.fail(ConnError::Peer(message))),
            Ok(m) => Err(s.fail(ConnError::Wire(format!(
                "the server answered the Hello with {}",
                m.name()
            )))),
            Err(e) => Err(s.fail(e)),
        }
    }

    /// The session's error, with what ssh and the remote side said.
    fn fail(mut self, e: ConnError) -> Error {
        let host = self.peer.clone();
        // What ssh or the remote haul printed, once they have ended.
        drop(self.conn);
        let status = wait_briefly(&mut self.child);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let said = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner()))
            .trim()
            .to_string();
        let said = said.lines().rev().take(5).collect::<Vec<_>>();
        let said: Vec<&str> = said.into_iter().rev().collect();
        let said = said.join("; ");
        let msg = match (&e, status) {
            (ConnError::Closed | ConnError::Wire(_), Some(127)) => {
                format!(
                "the remote haul was not found on the host (give its path with --remote-haul){}",
                if said.is_empty() { String::new() } else { format!(": {said}") }
            )
            }
            (ConnError::Closed | ConnError::Wire(_), Some(255)) => format!("ssh failed: {said}"),
            (ConnError::Closed, Some(c)) if c != 0 => {
                format!("the remote side exited with status {c}: {said}")
            }
            _ if !said.is_empty() && !matches!(e, ConnError::Peer(_)) => format!("{e} ({said})"),
            _ => e.to_string(),
        };
        Error::remote("remote session", host, msg)
    }

    /// A notice when the remote haul is another version (the protocol
    /// is the same, or the handshake would have failed).
    fn version_notice(&self, into: &mut CopySummary) {
        let mine = env!("CARGO_PKG_VERSION");
        if self.peer_version != mine {
            into.notices.push(crate::dest::EntryIssue {
                path: PathBuf::new(),
                reason: format!(
                    "the haul on {} is version {} (this one is {mine}); both speak protocol {PROTOCOL_VERSION}",
                    self.peer, self.peer_version
                ),
            });
        }
    }

    /// Ends the session cleanly: closes the pipe and waits for ssh.
    /// Returns the bytes sent and received.
    fn finish(self) -> (u64, u64) {
        let Session {
            conn,
            mut child,
            stderr_thread,
            ..
        } = self;
        let bytes = conn.close();
        let _ = wait_briefly(&mut child);
        if let Some(t) = stderr_thread {
            let _ = t.join();
        }
        bytes
    }
}

/// Waits for `child` to exit (killing it after a while); its exit code.
fn wait_briefly(child: &mut Child) -> Option<i32> {
    for _ in 0..100 {
        match child.try_wait() {
            Ok(Some(s)) => return s.code(),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return None,
        }
    }
    let _ = child.kill();
    child.wait().ok().and_then(|s| s.code())
}

/// Copies the local directory `src` (its contents) to `dst` on another
/// host. Per-entry problems are in the summary; `Err` when the session
/// could not be run.
pub fn push(
    src: &Path,
    dst: &RemotePath,
    o: &RemoteOptions,
    progress: &dyn Progress,
) -> Result<RemoteSummary, Error> {
    let r = push_many(src, std::slice::from_ref(dst), o, progress)
        .pop()
        .expect("one result per destination")?;
    for (a, p) in &r.changes {
        progress.change(*a, Path::new(p));
    }
    Ok(r)
}

/// Copies `src` to several hosts at once (fan-out): the sessions are
/// opened in parallel, the source is walked once and each entry sent to
/// every host, and each host's requests for content are answered as they
/// come. A host that cannot be reached, or whose session fails, does not
/// stop the others. One result per destination, in order.
pub fn push_many(
    src: &Path,
    dsts: &[RemotePath],
    o: &RemoteOptions,
    progress: &dyn Progress,
) -> Vec<Result<RemoteSummary, Error>> {
    sys::raise_nofile_limit();
    let all_err = |e: &Error| {
        dsts.iter()
            .map(|_| {
                Err(Error::io(
                    "opening source",
                    src,
                    std::io::Error::other(e.to_string()),
                ))
            })
            .collect()
    };
    let root = match sys::open_dir_path(src) {
        Ok(r) => r,
        Err(e) => return all_err(&Error::io("opening source", src, e)),
    };
    let f = match flags(&o.wire(), false) {
        Ok(f) => f,
        Err(m) => return all_err(&Error::invalid(src, m)),
    };
    let pool = match worker_pool(o.jobs, "send") {
        Ok(p) => p,
        Err(e) => return all_err(&Error::io("starting workers", src, e)),
    };
    let opened: Vec<Result<Session, Error>> = std::thread::scope(|sc| {
        let hs: Vec<_> = dsts
            .iter()
            .map(|d| sc.spawn(move || Session::open(d, o, Role::Push)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::remote("remote session", "", "a thread panicked"))
                })
            })
            .collect()
    });
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let mut results: Vec<Option<Result<RemoteSummary, Error>>> = Vec::new();
    for r in opened {
        match r {
            Ok(mut s) => {
                s.conn.unbound(send::WINDOW + 64);
                sessions.push(Some(s));
                results.push(None);
            }
            Err(e) => {
                sessions.push(None);
                results.push(Some(Err(e)));
            }
        }
    }
    let live: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].is_some())
        .collect();
    if live.is_empty() {
        return results.into_iter().map(|r| r.expect("set")).collect();
    }
    let opts = send::SendOptions {
        filter: &f.filter,
        policy: XattrPolicy {
            xattrs: o.xattrs,
            acls: o.acls && o.xattrs,
        },
        dry_run: o.dry_run,
        names: f.write.ids.needs_names(),
    };
    let conns: Vec<&Conn> = live
        .iter()
        .map(|&i| &sessions[i].as_ref().expect("live").conn)
        .collect();
    let sent = pool.install(|| send::send_to_all(&conns, root, &opts, progress));
    drop(conns);
    for (&i, mine) in live.iter().zip(sent) {
        let s = sessions[i].take().expect("live");
        let r = mine.and_then(|mine| peer_summary(&s.conn).map(|t| (mine, t)));
        results[i] = Some(match r {
            Ok((mine, theirs)) => {
                let mut summary = merge(theirs.summary, Some(mine));
                s.version_notice(&mut summary);
                let (bytes_sent, bytes_received) = s.finish();
                Ok(RemoteSummary {
                    summary,
                    bytes_sent,
                    bytes_received,
                    changes: theirs.changes,
                })
            }
            Err(e) => Err(s.fail(e)),
        });
    }
    results.into_iter().map(|r| r.expect("set")).collect()
}

/// The peer's Summary and Done, at the end of a session.
fn peer_summary(conn: &Conn) -> Result<PeerSummary, ConnError> {
    let mut got = None;
    loop {
        match conn.recv()? {
            Message::Summary { json } => {
                got = Some(
                    serde_json::from_slice(&json)
                        .map_err(|e| ConnError::Wire(format!("the peer's summary: {e}")))?,
                )
            }
            Message::Done => {
                return got.ok_or_else(|| ConnError::Wire("Done without a Summary".into()))
            }
            Message::Error {
                index: None,
                message,
            } => return Err(ConnError::Peer(message)),
            m => {
                return Err(ConnError::Wire(format!(
                    "unexpected {} message at the end of the session",
                    m.name()
                )))
            }
        }
    }
}

/// Copies the directory `src` on another host (its contents) into the
/// local `dst`.
pub fn pull(
    src: &RemotePath,
    dst: &Path,
    o: &RemoteOptions,
    progress: &dyn Progress,
) -> Result<RemoteSummary, Error> {
    let f = flags(&o.wire(), true).map_err(|m| Error::invalid(dst, m))?;
    let s = Session::open(src, o, Role::Pull)?;
    let opts = recv::RecvOptions {
        write: &f.write,
        delete: f.delete,
        filter: &f.filter,
        checksum: f.checksum,
        verify: f.verify,
        record_changes: f.record_changes,
        jobs: o.jobs,
    };
    let (summary, theirs) = match recv::receive_tree(&s.conn, dst, &opts, progress) {
        Ok(r) => r,
        Err(recv::RecvError::Local(e)) => {
            let _ = s.conn.out.send(&Message::Error {
                index: None,
                message: e.to_string(),
            });
            let _ = s.finish();
            return Err(e);
        }
        Err(recv::RecvError::Conn(e)) => return Err(s.fail(e)),
    };
    let json = serde_json::to_vec(&PeerSummary {
        summary: summary.clone(),
        changes: Vec::new(),
    })
    .unwrap_or_default();
    let _ = s.conn.out.send(&Message::Summary { json });
    let _ = s.conn.out.send(&Message::Done);
    let mut summary = merge(summary, theirs);
    s.version_notice(&mut summary);
    let (bytes_sent, bytes_received) = s.finish();
    Ok(RemoteSummary {
        summary,
        bytes_sent,
        bytes_received,
        changes: Vec::new(),
    })
}

/// What `haul serve` allows its clients.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Roots must be at or below one of these (after resolving symlinks);
    /// empty: anywhere the login may go.
    pub restrict_to: Vec<PathBuf>,
    /// Refuse pushes (nothing is written).
    pub read_only: bool,
    /// How long the client may send nothing at all before the session
    /// fails.
    pub timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            restrict_to: Vec::new(),
            read_only: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Collects the changes a serving receiver makes, for the client's `-n`
/// and `-v`.
#[derive(Default)]
struct Collect(Mutex<Vec<(Action, String)>>);

impl Progress for Collect {
    fn change(&self, action: Action, path: &Path) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded, as the summary's lists are.
        if v.len() < crate::dest::MAX_ISSUES {
            v.push((action, path.to_string_lossy().into_owned()));
        }
    }
}

/// Serves one session on stdin and stdout (`haul serve --stdio`, as ssh
/// runs it). Returns when the client is done; `Err` when the session
/// failed (the client was told, if it could be).
pub fn serve_stdio(opts: &ServeOptions) -> Result<(), Error> {
    let mut conn = Conn::start(
        std::io::stdin(),
        std::io::stdout(),
        None,
        None,
        opts.timeout,
    );
    // The Error reaches the client before this process exits: closing
    // waits for the writer.
    let fail = |conn: Conn, msg: String| {
        let _ = conn.out.send(&Message::Error {
            index: None,
            message: msg.clone(),
        });
        let _ = conn.close();
        Error::remote("serving", "stdin", msg)
    };
    if let Err(e) = conn.preamble(HANDSHAKE) {
        return Err(fail(conn, e.to_string()));
    }
    let (role, root, options) = match conn.recv_within(Some(HANDSHAKE)) {
        Ok(Message::Hello {
            role,
            root,
            options,
            ..
        }) => (role, root, options),
        Ok(m) => return Err(fail(conn, format!("expected Hello, got {}", m.name()))),
        Err(e) => return Err(fail(conn, e.to_string())),
    };
    let root = PathBuf::from(OsStr::from_bytes(&root));
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    if let Err(m) = allowed(&root, opts) {
        return Err(fail(conn, m));
    }
    if role == Role::Push && opts.read_only {
        return Err(fail(
            conn,
            "this haul serve is --read-only: pushes are refused".into(),
        ));
    }
    let f = match flags(&options, role == Role::Push) {
        Ok(f) => f,
        Err(m) => return Err(fail(conn, m)),
    };
    conn.set_level(options.compress_level);
    let ok = Message::HelloOk {
        protocol: PROTOCOL_VERSION,
        haul_version: env!("CARGO_PKG_VERSION").into(),
    };
    conn.out
        .send(&ok)
        .map_err(|e| Error::remote("serving", "stdin", e.to_string()))?;
    match role {
        Role::Push => serve_push(conn, &root, &f),
        Role::Pull => serve_pull(conn, &root, &f, &options),
        Role::Query => serve_queries(conn, &root),
    }
}

/// Answers Query messages until the client is done.
fn serve_queries(conn: Conn, root: &Path) -> Result<(), Error> {
    loop {
        match conn.recv() {
            Ok(Message::Query { kind }) => {
                let json = crate::query::answer(&kind);
                if let Err(e) = conn.out.send(&Message::QueryReply { json }) {
                    return Err(Error::remote("serving", root, e.to_string()));
                }
            }
            Ok(Message::Done) | Err(ConnError::Closed) => break,
            Ok(m) => {
                let msg = format!("unexpected {} message in a query session", m.name());
                let _ = conn.out.send(&Message::Error {
                    index: None,
                    message: msg.clone(),
                });
                let _ = conn.close();
                return Err(Error::remote("serving", root, msg));
            }
            Err(e) => return Err(Error::remote("serving", root, e.to_string())),
        }
    }
    let _ = conn.close();
    Ok(())
}

/// Asks the host of `remote` each question in `kinds` (its user and group
/// databases, whether a path is in use: for `migrate`'s pre-flight
/// checks); the answers in order, as JSON.
pub fn query(
    remote: &RemotePath,
    kinds: &[wire::QueryKind],
    o: &RemoteOptions,
) -> Result<Vec<serde_json::Value>, Error> {
    let s = Session::open(remote, o, Role::Query)?;
    let mut out = Vec::new();
    for k in kinds {
        let r = s
            .conn
            .out
            .send(&Message::Query { kind: k.clone() })
            .and_then(|()| match s.conn.recv()? {
                Message::QueryReply { json } => serde_json::from_slice(&json)
                    .map_err(|e| ConnError::Wire(format!("a query answer: {e}"))),
                Message::Error { message, .. } => Err(ConnError::Peer(message)),
                m => Err(ConnError::Wire(format!(
                    "unexpected {} message answering a query",
                    m.name()
                ))),
            });
        match r {
            Ok(v) => out.push(v),
            Err(e) => return Err(s.fail(e)),
        }
    }
    let _ = s.conn.out.send(&Message::Done);
    s.finish();
    Ok(out)
}

/// Whether `root` is within the allowed directories.
fn allowed(root: &Path, opts: &ServeOptions) -> Result<(), String> {
    if opts.restrict_to.is_empty() {
        return Ok(());
    }
    if root
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{}: `..` is refused here", root.display()));
    }
    // The longest existing ancestor, resolved; the rest cannot hold a
    // symlink yet.
    let mut base = root.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        match base.canonicalize() {
            Ok(p) => break p,
            Err(_) => match (base.parent(), base.file_name()) {
                (Some(p), Some(n)) => {
                    rest.push(n.to_os_string());
                    base = if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    };
                }
                _ => return Err(format!("{}: cannot be resolved", root.display())),
            },
        }
    };
    let full: PathBuf = resolved.join(rest.iter().rev().collect::<PathBuf>());
    for r in &opts.restrict_to {
        if let Ok(r) = r.canonicalize() {
            if full.starts_with(&r) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "{}: outside the paths this haul serve is restricted to",
        root.display()
    ))
}

fn serve_push(conn: Conn, root: &Path, f: &Flags) -> Result<(), Error> {
    let collect = Collect::default();
    let opts = recv::RecvOptions {
        write: &f.write,
        delete: f.delete,
        filter: &f.filter,
        checksum: f.checksum,
        verify: f.verify,
        record_changes: f.record_changes,
        jobs: 0,
    };
    let (summary, _) = match recv::receive_tree(&conn, root, &opts, &collect) {
        Ok(r) => r,
        Err(recv::RecvError::Local(e)) => {
            let _ = conn.out.send(&Message::Error {
                index: None,
                message: e.to_string(),
            });
            let _ = conn.close();
            return Err(e);
        }
        Err(recv::RecvError::Conn(e)) => {
            let _ = conn.out.send(&Message::Error {
                index: None,
                message: e.to_string(),
            });
            let _ = conn.close();
            return Err(Error::remote("serving", root, e.to_string()));
        }
    };
    let changes = std::mem::take(&mut *collect.0.lock().unwrap_or_else(|e| e.into_inner()));
    let json = serde_json::to_vec(&PeerSummary { summary, changes }).unwrap_or_default();
    let r = conn
        .out
        .send(&Message::Summary { json })
        .and_then(|()| conn.out.send(&Message::Done));
    let _ = conn.close();
    r.map_err(|e| Error::remote("serving", root, e.to_string()))
}

fn serve_pull(mut conn: Conn, root: &Path, f: &Flags, o: &wire::Options) -> Result<(), Error> {
    let fail = |conn: Conn, e: String| {
        let _ = conn.out.send(&Message::Error {
            index: None,
            message: e.clone(),
        });
        let _ = conn.close();
        Error::remote("serving", root, e)
    };
    let dir = match sys::open_dir_path(root) {
        Ok(d) => d,
        Err(e) => {
            return Err(fail(
                conn,
                format!("{}: opening source: {e}", root.display()),
            ))
        }
    };
    conn.unbound(send::WINDOW + 64);
    let opts = send::SendOptions {
        filter: &f.filter,
        policy: XattrPolicy {
            xattrs: !o.no_xattrs,
            acls: !o.no_acls && !o.no_xattrs,
        },
        dry_run: o.dry_run,
        names: f.write.ids.needs_names(),
    };
    let pool = worker_pool(0, "send").map_err(|e| Error::io("starting workers", root, e))?;
    if let Err(e) =
        pool.install(|| send::send_tree(&conn, dir, &opts, &crate::progress::NoProgress))
    {
        return Err(fail(conn, e.to_string()));
    }
    let r = peer_summary(&conn);
    let _ = conn.close();
    r.map(drop)
        .map_err(|e| Error::remote("serving", root, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Result<RemotePath, String>> {
        RemotePath::parse(OsStr::new(s))
    }

    #[test]
    fn locations_parse_as_rsync_does() {
        assert_eq!(p("/a/b"), None);
        assert_eq!(p("./a:b"), None);
        assert_eq!(p("a/b:c"), None);
        assert_eq!(p(":x"), None);
        let r = p("root@h:/opt/x").unwrap().unwrap();
        assert_eq!(
            r,
            RemotePath {
                user: Some("root".into()),
                host: "h".into(),
                port: None,
                path: b"/opt/x".to_vec()
            }
        );
        let r = p("h:").unwrap().unwrap();
        assert_eq!((r.user, r.path), (None, Vec::new()));
        let r = p("ssh://u@127.0.0.1:2222/srv/d").unwrap().unwrap();
        assert_eq!(r.port, Some(2222));
        assert_eq!(r.host, "127.0.0.1");
        assert_eq!(r.path, b"/srv/d");
        let r = p("ssh://[::1]:22/x").unwrap().unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(22)));
        assert!(p("h::mod").unwrap().is_err());
        assert!(p("-oProxyCommand=x:y").unwrap().is_err());
        assert!(p("ssh://h:notaport/x").unwrap().is_err());
    }

    #[test]
    fn remote_words_are_quoted() {
        assert_eq!(shell_quote("/usr/bin/haul"), "/usr/bin/haul");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
