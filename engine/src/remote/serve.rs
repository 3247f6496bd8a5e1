//! `haul serve --stdio`: the other end of a session, as ssh runs it. The
//! client is untrusted: the handshake has a deadline, the root must be
//! within `--restrict-to-path`, `--read-only` refuses pushes, and threads
//! and memory are this side's to set.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use haul_formats::wire::{Message, Role, PROTOCOL_VERSION};

use super::conn::{Conn, ConnError};
use super::{flags, peer_summary, recv, send, Flags, PeerSummary, DEFAULT_TIMEOUT, HANDSHAKE};
use crate::error::Error;
use crate::progress::{Action, Progress};
use crate::sys;
use crate::walk::worker_pool;

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
        Role::Pull => serve_pull(conn, &root, &f),
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
    let opts = f.recv_options(0);
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
    let r = PeerSummary { summary, changes }.send(&conn.out);
    let _ = conn.close();
    r.map_err(|e| Error::remote("serving", root, e.to_string()))
}

fn serve_pull(mut conn: Conn, root: &Path, f: &Flags) -> Result<(), Error> {
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
    let opts = f.send_options();
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
