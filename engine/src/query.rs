//! Answers to the protocol's Query messages (issue 17), for the coming
//! migrate command: the host's users and groups, and whether a path is in
//! use. The facts come from `sys::hostinfo`; this module only shapes them
//! as JSON, which the serving side sends back in a `QueryReply` and the CLI
//! can render when it asks locally.
//!
//! Names and paths that are not UTF-8 are shown with U+FFFD in place of the
//! bad bytes: the answers are for a person or a plan, not for naming files.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use haul_formats::wire::QueryKind;
use serde_json::{json, Value};

use crate::sys::hostinfo::{self, GroupRecord, PathUse, UserRecord};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_text(p: &Path) -> String {
    text(p.as_os_str().as_bytes())
}

/// The JSON bytes that answer `kind`, for a `QueryReply`.
// Called by the serving side of the transport (engine/src/remote/, being
// written); until it lands only the tests call it.
pub(crate) fn answer(kind: &QueryKind) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_vec(&query_local(kind)).unwrap_or_default()
}

/// Answers a protocol query about this host, as the serving side of
/// `haul serve` does for its peer:
///
/// - [`QueryKind::Users`]: `{"users": [{"name", "uid", "gid", "home",
///   "shell"}], "truncated": bool}`, from the C library's user database
///   (NSS modules included);
/// - [`QueryKind::Groups`]: `{"groups": [{"name", "gid", "members": [..]}],
///   "truncated": bool}`;
/// - [`QueryKind::PathInUse`]: `{"path", "in_use": bool, "processes":
///   [{"pid", "command", "why", "file"}], "pid_files": [{"file", "pid"}],
///   "listening": [{"port", "pid", "proto"}], "truncated": bool}`, where
///   `path` is the resolved path, `why` is `cwd`, `root`, `exe` or
///   `open file`, pid files are `*.pid` files under the path naming a live
///   process, and listening ports are TCP sockets in LISTEN held by the
///   processes listed; or `{"error": "..."}` when the path does not resolve
///   or `/proc` cannot be read.
///
/// Lists are capped (1,000 items for a path's use, 100,000 users or
/// groups) and `truncated` says a cap was reached. Without root, other
/// users' processes cannot be inspected and are not reported; this process
/// itself is never reported.
pub fn query_local(kind: &QueryKind) -> Value {
    match kind {
        QueryKind::Users => {
            let l = hostinfo::users();
            let users: Vec<Value> = l.items.iter().map(user_json).collect();
            json!({ "users": users, "truncated": l.truncated })
        }
        QueryKind::Groups => {
            let l = hostinfo::groups();
            let groups: Vec<Value> = l.items.iter().map(group_json).collect();
            json!({ "groups": groups, "truncated": l.truncated })
        }
        QueryKind::PathInUse(path) => {
            match hostinfo::path_in_use(Path::new(OsStr::from_bytes(path))) {
                Ok(u) => path_use_json(&u),
                Err(e) => json!({ "error": e.to_string() }),
            }
        }
    }
}

fn user_json(u: &UserRecord) -> Value {
    json!({
        "name": text(&u.name),
        "uid": u.uid,
        "gid": u.gid,
        "home": text(&u.home),
        "shell": text(&u.shell),
    })
}

fn group_json(g: &GroupRecord) -> Value {
    let members: Vec<String> = g.members.iter().map(|m| text(m)).collect();
    json!({ "name": text(&g.name), "gid": g.gid, "members": members })
}

fn path_use_json(u: &PathUse) -> Value {
    let processes: Vec<Value> = u
        .processes
        .iter()
        .map(|p| {
            json!({
                "pid": p.pid,
                "command": text(&p.command),
                "why": p.why.word(),
                "file": path_text(&p.file),
            })
        })
        .collect();
    let pid_files: Vec<Value> = u
        .pid_files
        .iter()
        .map(|f| json!({ "file": path_text(&f.file), "pid": f.pid }))
        .collect();
    let listening: Vec<Value> = u
        .listening
        .iter()
        .map(|l| json!({ "port": l.port, "pid": l.pid, "proto": l.proto }))
        .collect();
    json!({
        "path": path_text(&u.path),
        "in_use": u.in_use(),
        "processes": processes,
        "pid_files": pid_files,
        "listening": listening,
        "truncated": u.truncated,
    })
}

#[cfg(test)]
mod tests;
