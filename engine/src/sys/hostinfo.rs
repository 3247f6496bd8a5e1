//! Facts about the host for the protocol's queries (issue 17): its user and
//! group databases, and what uses a path (processes, live pid files,
//! listening TCP ports). `crate::query` turns them into JSON.
//!
//! Users and groups are enumerated through the C library
//! (`setpwent`/`getpwent`/`endpwent`, and the same for groups), not by
//! parsing `/etc/passwd` and `/etc/group`: that way the answer is what
//! `getpwnam` and `chown` on this host would see, NSS modules included
//! (systemd, sssd, LDAP where enumeration is enabled). `getpwent` keeps one
//! enumeration position and one result buffer per process, so every
//! enumeration holds [`ENUMERATION`] from `set*ent` to `end*ent` and copies
//! each record out before the next call; nothing else in haul enumerates.
//! (`getpwent_r` would not help: glibc has it, musl does not, and the
//! position is still shared.) A NULL from `getpwent` ends the listing:
//! `errno` after it is not reliable (NSS modules leave `ENOENT` behind on a
//! normal end), so a failing module shows as a shorter list.
//!
//! Path use is read from `/proc`, as `lsof` and `fuser` do. Limits, stated
//! where a caller can see them:
//! - without root, other users' processes cannot be inspected (their
//!   `/proc/<pid>/cwd` and `fd/` refuse) and are skipped;
//! - paths are as the kernel shows them to this process: a process in
//!   another mount namespace (a container) shows paths of its own view;
//! - this process itself is left out: the question is whether something
//!   else uses the path;
//! - every list is capped at [`CAP`] items and the pid-file search at
//!   [`PID_SCAN_ENTRIES`] directory entries and [`PID_SCAN_DEPTH`] levels;
//!   past a cap, `truncated` is set.
//!
//! Processes that exit during the scan are skipped.
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Items reported per list (users, groups, processes, pid files, ports).
pub(crate) const CAP: usize = 1000;
/// Users and groups reported: a directory server can enumerate many more
/// than [`CAP`], and a migration needs all of those that own files.
pub(crate) const DB_CAP: usize = 100_000;
/// Directory entries looked at when searching a tree for pid files.
pub(crate) const PID_SCAN_ENTRIES: usize = 200_000;
/// Directory levels below the queried path searched for pid files.
pub(crate) const PID_SCAN_DEPTH: usize = 16;
/// Bytes of a process's command line reported.
const COMMAND_BYTES: u64 = 1024;
/// Bytes of a pid file read: a pid is its first line.
const PID_FILE_BYTES: u64 = 64;

/// Held across one enumeration of the user or group database (see the
/// module doc).
static ENUMERATION: Mutex<()> = Mutex::new(());

/// One record of the user database.
#[derive(Clone, Debug)]
pub(crate) struct UserRecord {
    pub(crate) name: Vec<u8>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: Vec<u8>,
    pub(crate) shell: Vec<u8>,
}

/// One record of the group database.
#[derive(Clone, Debug)]
pub(crate) struct GroupRecord {
    pub(crate) name: Vec<u8>,
    pub(crate) gid: u32,
    /// The supplementary members named in the record (not the users whose
    /// primary group this is).
    pub(crate) members: Vec<Vec<u8>>,
}

/// A capped listing.
#[derive(Debug)]
pub(crate) struct Listing<T> {
    pub(crate) items: Vec<T>,
    /// More records existed than were reported.
    pub(crate) truncated: bool,
}

/// The bytes of a C string the C library handed out; empty for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for this call.
unsafe fn c_bytes(p: *const c_char) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: by the caller's promise.
    unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
}

/// The host's users, in the database's order; a name seen twice (a user in
/// both `files` and another NSS module) is reported once, as the first one,
/// which is the one `getpwnam` answers.
pub(crate) fn users() -> Listing<UserRecord> {
    let _held = ENUMERATION.lock().unwrap_or_else(|e| e.into_inner());
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut truncated = false;
    // SAFETY: no other thread enumerates while `_held` is held; each record
    // is copied out before the next call overwrites it.
    unsafe {
        libc::setpwent();
        loop {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            let p = &*p;
            let name = c_bytes(p.pw_name);
            if !seen.insert(name.clone()) {
                continue;
            }
            if items.len() == DB_CAP {
                truncated = true;
                break;
            }
            items.push(UserRecord {
                name,
                uid: p.pw_uid,
                gid: p.pw_gid,
                home: c_bytes(p.pw_dir),
                shell: c_bytes(p.pw_shell),
            });
        }
        libc::endpwent();
    }
    Listing { items, truncated }
}

/// The host's groups with their members, as [`users`] (first of a name
/// wins; the member lists capped at [`DB_CAP`] names each).
pub(crate) fn groups() -> Listing<GroupRecord> {
    let _held = ENUMERATION.lock().unwrap_or_else(|e| e.into_inner());
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut truncated = false;
    // SAFETY: as in `users`; `gr_mem` is a NULL-terminated array of
    // NUL-terminated strings in the same buffer.
    unsafe {
        libc::setgrent();
        loop {
            let g = libc::getgrent();
            if g.is_null() {
                break;
            }
            let g = &*g;
            let name = c_bytes(g.gr_name);
            if !seen.insert(name.clone()) {
                continue;
            }
            if items.len() == DB_CAP {
                truncated = true;
                break;
            }
            let mut members = Vec::new();
            let mut m = g.gr_mem;
            while !m.is_null() && !(*m).is_null() {
                if members.len() == DB_CAP {
                    truncated = true;
                    break;
                }
                members.push(c_bytes(*m));
                m = m.add(1);
            }
            items.push(GroupRecord {
                name,
                gid: g.gr_gid,
                members,
            });
        }
        libc::endgrent();
    }
    Listing { items, truncated }
}

/// How a process uses a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its working directory is there.
    Cwd,
    /// Its root directory (chroot) is there.
    Root,
    /// Its executable is there.
    Exe,
    /// It holds a file there open (or mapped through an open descriptor).
    OpenFile,
}

impl Why {
    /// The word the JSON answer uses.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Why::Cwd => "cwd",
            Why::Root => "root",
            Why::Exe => "exe",
            Why::OpenFile => "open file",
        }
    }
}

/// One use of the path by one process.
#[derive(Clone, Debug)]
pub(crate) struct ProcessUse {
    pub(crate) pid: u32,
    /// Its command line, arguments joined by spaces (capped), or `[comm]`
    /// for a kernel thread.
    pub(crate) command: Vec<u8>,
    pub(crate) why: Why,
    /// The path in use, as the kernel shows it (a deleted file ends in
    /// ` (deleted)`).
    pub(crate) file: PathBuf,
}

/// A pid file under the path naming a live process.
#[derive(Clone, Debug)]
pub(crate) struct PidFile {
    pub(crate) file: PathBuf,
    pub(crate) pid: u32,
}

/// A listening TCP socket held by a process that uses the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) pid: u32,
    /// `tcp` or `tcp6`.
    pub(crate) proto: &'static str,
}

/// What uses a path.
#[derive(Debug, Default)]
pub(crate) struct PathUse {
    /// The path, resolved (symlinks followed, absolute).
    pub(crate) path: PathBuf,
    pub(crate) processes: Vec<ProcessUse>,
    pub(crate) pid_files: Vec<PidFile>,
    pub(crate) listening: Vec<Listener>,
    /// Some list reached [`CAP`], or the pid-file search stopped at its
    /// bounds.
    pub(crate) truncated: bool,
}

impl PathUse {
    /// Whether anything was found.
    pub(crate) fn in_use(&self) -> bool {
        !(self.processes.is_empty() && self.pid_files.is_empty() && self.listening.is_empty())
    }
}

/// Why a path's use could not be told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathUseError {
    /// The path does not resolve.
    #[error("{}: resolving the path: {source}", path.display())]
    Resolve { path: PathBuf, source: io::Error },
    /// `/proc` cannot be listed: without it nothing can be said, and "not in
    /// use" would be a guess.
    #[error("/proc: listing processes: {0}")]
    Proc(io::Error),
}

fn push_capped<T>(v: &mut Vec<T>, item: T, truncated: &mut bool) {
    if v.len() < CAP {
        v.push(item);
    } else {
        *truncated = true;
    }
}

/// What uses `path` (resolved first): processes with their working
/// directory, root, executable or an open file at or under it; pid files
/// under it naming a live process; listening TCP ports of those processes.
pub(crate) fn path_in_use(path: &Path) -> Result<PathUse, PathUseError> {
    let path = fs::canonicalize(path).map_err(|source| PathUseError::Resolve {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found = PathUse {
        path,
        ..PathUse::default()
    };
    scan_processes(&mut found)?;
    scan_pid_files(&mut found);
    Ok(found)
}

/// The inode of a descriptor link `socket:[123]`.
fn socket_inode(target: &Path) -> Option<u64> {
    let s = target.as_os_str().as_bytes();
    let digits = s.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn scan_processes(found: &mut PathUse) -> Result<(), PathUseError> {
    let me = std::process::id();
    // Listening sockets per network namespace, read when first needed.
    let mut tables: HashMap<PathBuf, HashMap<u64, (u16, &'static str)>> = HashMap::new();
    for entry in fs::read_dir("/proc").map_err(PathUseError::Proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let mut uses = Vec::new();
        for (link, why) in [("cwd", Why::Cwd), ("root", Why::Root), ("exe", Why::Exe)] {
            if let Ok(t) = fs::read_link(dir.join(link)) {
                if t.starts_with(&found.path) {
                    uses.push((why, t));
                }
            }
        }
        // Socket inodes are kept only until it is known whether the process
        // uses the path; a busy server can hold many.
        let mut sockets = HashSet::new();
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                let Ok(t) = fs::read_link(fd.path()) else {
                    continue;
                };
                if let Some(inode) = socket_inode(&t) {
                    sockets.insert(inode);
                } else if t.starts_with(&found.path) {
                    uses.push((Why::OpenFile, t));
                }
            }
        }
        if uses.is_empty() {
            continue;
        }
        let command = command_of(&dir);
        for (why, file) in uses {
            let u = ProcessUse {
                pid,
                command: command.clone(),
                why,
                file,
            };
            push_capped(&mut found.processes, u, &mut found.truncated);
        }
        if sockets.is_empty() {
            continue;
        }
        // A process in another network namespace listens there: its own
        // `/proc/<pid>/net` shows that namespace's table.
        let ns = fs::read_link(dir.join("ns/net")).unwrap_or_else(|_| dir.clone());
        let table = tables
            .entry(ns)
            .or_insert_with(|| listening_sockets(&dir.join("net")));
        let mut ports: Vec<_> = sockets.iter().filter_map(|i| table.get(i)).collect();
        ports.sort_unstable();
        for &(port, proto) in ports {
            let l = Listener { port, pid, proto };
            push_capped(&mut found.listening, l, &mut found.truncated);
        }
    }
    Ok(())
}

/// A process's command line, or `[comm]` for one without (a kernel thread,
/// a zombie); empty if it is gone.
fn command_of(dir: &Path) -> Vec<u8> {
    let mut raw = Vec::new();
    if let Ok(f) = File::open(dir.join("cmdline")) {
        let _ = f.take(COMMAND_BYTES).read_to_end(&mut raw);
    }
    while raw.last() == Some(&0) {
        raw.pop();
    }
    if raw.is_empty() {
        if let Ok(comm) = fs::read(dir.join("comm")) {
            let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
            raw = [b"[", comm, b"]"].concat();
        }
        return raw;
    }
    for b in &mut raw {
        if *b == 0 {
            *b = b' ';
        }
    }
    raw
}

/// The listening TCP sockets (inode to port and protocol) of the network
/// namespace whose `/proc/<pid>/net` is `net`; empty where unreadable.
fn listening_sockets(net: &Path) -> HashMap<u64, (u16, &'static str)> {
    let mut table = HashMap::new();
    for (file, proto) in [("tcp", "tcp"), ("tcp6", "tcp6")] {
        let Ok(f) = File::open(net.join(file)) else {
            continue;
        };
        // Line by line, keeping LISTEN rows only: the table of a busy host
        // holds every connection.
        for line in BufReader::new(f).split(b'\n').skip(1) {
            let Ok(line) = line else { break };
            if let Some((inode, port)) = parse_tcp_row(&line) {
                table.insert(inode, (port, proto));
            }
        }
    }
    table
}

/// A LISTEN row of `/proc/net/tcp{,6}`: `sl local rem st tx:rx tr:when
/// retrnsmt uid timeout inode ...`, addresses as `HEXADDR:HEXPORT`, state
/// 0A for LISTEN.
fn parse_tcp_row(line: &[u8]) -> Option<(u64, u16)> {
    let line = std::str::from_utf8(line).ok()?;
    let f: Vec<&str> = line.split_ascii_whitespace().take(10).collect();
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
    let inode = f[9].parse().ok()?;
    Some((inode, port))
}

/// Searches the tree at `found.path` for `*.pid` files naming a live
/// process, without following symlinks, within the bounds in the module
/// doc. An explicit stack, not recursion: no stack depth follows the tree's.
fn scan_pid_files(found: &mut PathUse) {
    let Ok(meta) = fs::symlink_metadata(&found.path) else {
        return;
    };
    if !meta.is_dir() {
        let file = found.path.clone();
        check_pid_file(found, file);
        return;
    }
    let mut stack = vec![(found.path.clone(), 0usize)];
    let mut looked_at = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            looked_at += 1;
            if looked_at > PID_SCAN_ENTRIES {
                found.truncated = true;
                return;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if depth < PID_SCAN_DEPTH {
                    stack.push((e.path(), depth + 1));
                } else {
                    found.truncated = true;
                }
            } else if ft.is_file() {
                check_pid_file(found, e.path());
            }
        }
    }
}

/// Records `file` if it is named `*.pid` and its first line is the pid of a
/// live process.
fn check_pid_file(found: &mut PathUse, file: PathBuf) {
    let is_pid_name = file
        .file_name()
        .map(OsStr::as_bytes)
        .is_some_and(|n| n.len() > 4 && n.ends_with(b".pid"));
    if !is_pid_name {
        return;
    }
    if let Some(pid) = read_pid(&file).filter(|&p| alive(p)) {
        push_capped(
            &mut found.pid_files,
            PidFile { file, pid },
            &mut found.truncated,
        );
    }
}

/// The pid on the first line of a pid file. Opened without following a
/// symlink and without blocking, in case the name was replaced by a FIFO
/// since it was listed.
fn read_pid(file: &Path) -> Option<u32> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .ok()?;
    let mut head = Vec::new();
    f.take(PID_FILE_BYTES).read_to_end(&mut head).ok()?;
    let first = head.split(|&b| b == b'\n').next()?;
    let pid: u32 = std::str::from_utf8(first).ok()?.trim().parse().ok()?;
    (pid > 0 && i32::try_from(pid).is_ok()).then_some(pid)
}

/// Whether `pid` is a running process: it exists (signal 0 reaches it, or
/// is refused for permission) and is not a zombie, which has exited and
/// only waits for its parent.
fn alive(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    // The state follows the last ')' (the command may hold one).
    match fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after = stat
                .iter()
                .rposition(|&b| b == b')')
                .map_or(&stat[..], |i| &stat[i + 1..]);
            let state = after.iter().find(|b| !b.is_ascii_whitespace());
            !matches!(state, Some(b'Z' | b'X'))
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tcp_rows() {
        let listen = b"   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_tcp_row(listen), Some((4242, 8080)));
        let established = b"   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 4243 1";
        assert_eq!(parse_tcp_row(established), None);
        assert_eq!(parse_tcp_row(b"garbage"), None);
        assert_eq!(socket_inode(Path::new("socket:[77]")), Some(77));
        assert_eq!(socket_inode(Path::new("/tmp/socket:[77]")), None);
    }
}
