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
use std::io::Read;
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
mod location;
mod recv;
mod send;
mod serve;

pub use location::RemotePath;
pub use serve::{serve_stdio, ServeOptions};

use conn::{Conn, ConnError};

/// How long a peer may be silent, unless told otherwise (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the serving side waits for the client's preamble and Hello.
const HANDSHAKE: Duration = Duration::from_secs(30);
/// How long a client waits for the server's answer to its Hello (ssh may
/// be slow to connect; it has its own timeouts).
const CLIENT_HANDSHAKE: Duration = Duration::from_secs(120);

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

impl Flags {
    /// The receiving side's options, with `jobs` workers.
    fn recv_options(&self, jobs: usize) -> recv::RecvOptions<'_> {
        recv::RecvOptions {
            write: &self.write,
            delete: self.delete,
            filter: &self.filter,
            checksum: self.checksum,
            verify: self.verify,
            record_changes: self.record_changes,
            jobs,
        }
    }

    /// The sending side's options: what it reads is what the receiver
    /// keeps.
    fn send_options(&self) -> send::SendOptions<'_> {
        send::SendOptions {
            filter: &self.filter,
            policy: XattrPolicy {
                xattrs: self.write.xattrs,
                acls: self.write.acls,
            },
            dry_run: self.write.dry_run,
            names: self.write.ids.needs_names(),
        }
    }
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

impl PeerSummary {
    /// Ends this side's part of a session: its Summary, then Done.
    fn send(&self, out: &conn::Out) -> Result<(), ConnError> {
        let json = serde_json::to_vec(self)
            .map_err(|e| ConnError::Io(format!("encoding the summary: {e}")))?;
        out.send(&Message::Summary { json })?;
        out.send(&Message::Done)
    }
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

    /// Ends a session that ran: `summary` with the version notice, the
    /// bytes that crossed, and the receiver's `changes`.
    fn done(self, mut summary: CopySummary, changes: Vec<(Action, String)>) -> RemoteSummary {
        self.version_notice(&mut summary);
        let (bytes_sent, bytes_received) = self.finish();
        RemoteSummary {
            summary,
            bytes_sent,
            bytes_received,
            changes,
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
    let opts = f.send_options();
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
            Ok((mine, theirs)) => Ok(s.done(merge(theirs.summary, Some(mine)), theirs.changes)),
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
    let opts = f.recv_options(o.jobs);
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
    let mine = PeerSummary {
        summary,
        changes: Vec::new(),
    };
    let _ = mine.send(&s.conn.out);
    Ok(s.done(merge(mine.summary, theirs), Vec::new()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_are_quoted() {
        assert_eq!(shell_quote("/usr/bin/haul"), "/usr/bin/haul");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
