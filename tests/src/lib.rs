//! Test support: an independent tree walker and helpers to run the haul binary.
//!
//! Nothing here uses `haul-engine`: the walker reads metadata straight from the kernel
//! (`lstat`, `l*xattr`, `lseek(SEEK_DATA/SEEK_HOLE)`) so that the end-to-end tests check
//! haul against an implementation that shares none of its code.

pub mod fixture;
pub mod hostile;
pub mod repo;
pub mod sshd;
pub mod util;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// The kind of a filesystem entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Everything the walker records about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Apparent size; only meaningful (and only compared) for regular files.
    pub size: u64,
    /// (seconds, nanoseconds) of the modification time.
    pub mtime: (i64, i64),
    /// Device number of char/block devices (0 otherwise).
    pub rdev: u64,
    /// Target of a symlink.
    pub target: Option<PathBuf>,
    /// Layout-independent content hash of a regular file (holes hash like zeros).
    pub hash: Option<String>,
    /// All extended attributes, every namespace the caller can see (not following symlinks).
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// `st_blocks * 512`.
    pub allocated: u64,
    /// Data segments (offset, len) of a regular file, from SEEK_DATA/SEEK_HOLE.
    pub data_segments: Vec<(u64, u64)>,
    /// Canonical hardlink group: the smallest relative path in the tree that shares this
    /// entry's (dev, ino). `None` for entries that have no other link inside the tree.
    pub link_group: Option<PathBuf>,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl EntryRecord {
    /// Total bytes covered by data segments.
    pub fn data_bytes(&self) -> u64 {
        self.data_segments.iter().map(|s| s.1).sum()
    }

    /// A regular file whose allocation is smaller than its apparent size.
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.allocated < self.size
    }
}

/// Relative path -> record. The root of the walk itself is recorded under `"."`.
pub type Tree = BTreeMap<PathBuf, EntryRecord>;

/// The key of the walked root directory in a [`Tree`].
pub const ROOT: &str = ".";

/// The kind of a file type, as the walker records it.
pub(crate) fn kind_of(ft: &fs::FileType) -> Kind {
    if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else {
        panic!("unknown file type {ft:?}")
    }
}

/// Every path under `root` (recursively, not following symlinks), relative to `root`,
/// including `root` itself as `"."`, with its `lstat` metadata.
pub fn list_entries(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let md = fs::symlink_metadata(root)
        .unwrap_or_else(|e| panic!("walker: lstat {}: {e}", root.display()));
    out.push((PathBuf::from(ROOT), md));
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("walker: read_dir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap_or_else(|e| panic!("walker: read_dir {}: {e}", dir.display()));
            let child_rel = rel.join(ent.file_name());
            let abs = root.join(&child_rel);
            let md = fs::symlink_metadata(&abs)
                .unwrap_or_else(|e| panic!("walker: lstat {}: {e}", abs.display()));
            if md.file_type().is_dir() {
                stack.push(child_rel.clone());
            }
            out.push((child_rel, md));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Read all extended attributes of `path` without following symlinks.
pub fn read_xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names =
        xattr::list(path).unwrap_or_else(|e| panic!("walker: listxattr {}: {e}", path.display()));
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(v)) => {
                out.insert(name, v);
            }
            Ok(None) => {}
            Err(e) => panic!("walker: getxattr {} {:?}: {e}", path.display(), name),
        }
    }
    out
}

/// Data segments of an open regular file via SEEK_DATA / SEEK_HOLE.
pub fn data_segments(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut segs = Vec::new();
    let mut off: i64 = 0;
    let size = size as i64;
    while off < size {
        let data = match lseek(fd, off, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,
            Err(e) => panic!("walker: lseek SEEK_DATA: {e}"),
        };
        if data >= size {
            break;
        }
        let hole = match lseek(fd, data, Whence::SeekHole) {
            Ok(h) => h.min(size),
            Err(e) => panic!("walker: lseek SEEK_HOLE: {e}"),
        };
        if hole <= data {
            break;
        }
        segs.push((data as u64, (hole - data) as u64));
        off = hole;
    }
    segs
}

const HASH_BLOCK: u64 = 64 * 1024;
static ZEROS: [u8; HASH_BLOCK as usize] = [0u8; HASH_BLOCK as usize];

/// A content hash that does not depend on the hole layout: the file is cut into 64 KiB
/// blocks; blocks that are entirely zero (holes or written zeros) are skipped, the others
/// are hashed with their index. Only blocks that intersect a data segment are read.
pub fn content_hash(file: &File, size: u64, segs: &[(u64, u64)]) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_BLOCK as usize];
    let mut last_block: Option<u64> = None;
    for &(off, len) in segs {
        let first = off / HASH_BLOCK;
        let last = (off + len - 1) / HASH_BLOCK;
        for idx in first..=last {
            if last_block.is_some_and(|l| idx <= l) {
                continue;
            }
            last_block = Some(idx);
            let start = idx * HASH_BLOCK;
            let n = HASH_BLOCK.min(size - start) as usize;
            file.read_exact_at(&mut buf[..n], start)
                .unwrap_or_else(|e| panic!("walker: read at {start}: {e}"));
            if buf[..n] == ZEROS[..n] {
                continue;
            }
            hasher.update(&idx.to_le_bytes());
            hasher.update(&buf[..n]);
        }
    }
    hasher.update(b"size");
    hasher.update(&size.to_le_bytes());
    hasher.finalize().to_hex().to_string()
}

/// Hash of a whole file's content (same scheme as the walker's).
pub fn file_hash(path: &Path) -> String {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = f.metadata().unwrap().len();
    let segs = data_segments(&f, size);
    content_hash(&f, size, &segs)
}

/// Walk `root` and record every entry. Panics on any I/O error (it is a test helper).
pub fn walk(root: &Path) -> Tree {
    let mut tree = Tree::new();
    for (rel, md) in list_entries(root) {
        let abs = if rel.as_os_str() == ROOT {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let kind = kind_of(&md.file_type());
        let mut rec = EntryRecord {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == Kind::File { md.size() } else { 0 },
            mtime: (md.mtime(), md.mtime_nsec()),
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                md.rdev()
            } else {
                0
            },
            target: None,
            hash: None,
            xattrs: read_xattrs(&abs),
            allocated: md.blocks() * 512,
            data_segments: Vec::new(),
            link_group: None,
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
        };
        match kind {
            Kind::Symlink => {
                rec.target = Some(
                    fs::read_link(&abs)
                        .unwrap_or_else(|e| panic!("walker: readlink {}: {e}", abs.display())),
                );
            }
            Kind::File => {
                let f = File::open(&abs)
                    .unwrap_or_else(|e| panic!("walker: open {}: {e}", abs.display()));
                rec.data_segments = data_segments(&f, rec.size);
                rec.hash = Some(content_hash(&f, rec.size, &rec.data_segments));
            }
            _ => {}
        }
        tree.insert(rel, rec);
    }
    // Hardlink groups.
    let mut groups: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for (rel, rec) in &tree {
        if rec.kind != Kind::Dir && rec.nlink > 1 {
            groups
                .entry((rec.dev, rec.ino))
                .or_default()
                .push(rel.clone());
        }
    }
    for members in groups.values() {
        if members.len() < 2 {
            continue;
        }
        let canon = members.iter().min().unwrap().clone();
        for m in members {
            tree.get_mut(m).unwrap().link_group = Some(canon.clone());
        }
    }
    tree
}

/// ctime (secs, nsecs) of every entry under `root` (including `"."`).
pub fn ctimes(root: &Path) -> BTreeMap<PathBuf, (i64, i64)> {
    list_entries(root)
        .into_iter()
        .map(|(p, md)| (p, (md.ctime(), md.ctime_nsec())))
        .collect()
}

/// Inode number of a path (not following symlinks).
pub fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .ino()
}

/// Which fields [`compare`] looks at.
#[derive(Clone, Debug)]
pub struct CompareOpts {
    /// uid and gid.
    pub owner: bool,
    /// Extended attributes other than POSIX ACLs.
    pub xattrs: bool,
    /// `system.posix_acl_access` / `system.posix_acl_default`.
    pub acls: bool,
    pub mtime: bool,
    pub mode: bool,
    /// Compare the metadata of the roots themselves (`"."`).
    pub root: bool,
    /// Hardlink groups.
    pub hardlinks: bool,
    /// Sparse allocation check (dst allocation <= src allocation + 64 KiB for sparse files).
    pub sparse: bool,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            owner: true,
            xattrs: true,
            acls: true,
            mtime: true,
            mode: true,
            root: true,
            hardlinks: true,
            sparse: true,
        }
    }
}

/// Slack allowed on the allocation of sparse files.
pub const SPARSE_SLACK: u64 = 64 * 1024;

pub fn is_acl_xattr(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"system.posix_acl_")
}

fn filtered_xattrs(
    x: &BTreeMap<OsString, Vec<u8>>,
    opts: &CompareOpts,
) -> BTreeMap<OsString, Vec<u8>> {
    x.iter()
        .filter(|(k, _)| {
            if is_acl_xattr(k) {
                opts.acls
            } else {
                opts.xattrs
            }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn show_xattrs(x: &BTreeMap<OsString, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                k.to_string_lossy(),
                String::from_utf8_lossy(v).escape_debug()
            )
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Human-readable differences between a source tree `a` and a destination tree `b`.
/// An empty vector means equal under `opts`.
pub fn compare(a: &Tree, b: &Tree, opts: &CompareOpts) -> Vec<String> {
    let mut diffs = Vec::new();
    for p in a.keys() {
        if !b.contains_key(p) {
            diffs.push(format!("{p:?}: missing in destination"));
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            diffs.push(format!("{p:?}: only in destination ({:?})", b[p].kind));
        }
    }
    for (p, x) in a {
        let Some(y) = b.get(p) else { continue };
        if p.as_os_str() == ROOT && !opts.root {
            continue;
        }
        let mut d = |what: String| diffs.push(format!("{p:?}: {what}"));
        if x.kind != y.kind {
            d(format!("kind {:?} != {:?}", x.kind, y.kind));
            continue;
        }
        if opts.mode && x.mode != y.mode {
            d(format!("mode {:#o} != {:#o}", x.mode, y.mode));
        }
        if opts.owner && (x.uid, x.gid) != (y.uid, y.gid) {
            d(format!("owner {}:{} != {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if opts.mtime && x.mtime != y.mtime {
            d(format!(
                "mtime {}.{:09} != {}.{:09}",
                x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
            ));
        }
        match x.kind {
            Kind::File => {
                if x.size != y.size {
                    d(format!("size {} != {}", x.size, y.size));
                }
                if x.hash != y.hash {
                    d("content differs".to_string());
                }
                if opts.sparse && x.is_sparse() {
                    if y.allocated > x.allocated + SPARSE_SLACK {
                        d(format!(
                            "sparse file allocation {} > {} + {} (data segments src {:?} dst {:?})",
                            y.allocated,
                            x.allocated,
                            SPARSE_SLACK,
                            x.data_segments,
                            y.data_segments
                        ));
                    }
                    if y.data_bytes() > x.data_bytes() + SPARSE_SLACK {
                        d(format!(
                            "sparse file data segments cover {} > {} + {} bytes (src {:?} dst {:?})",
                            y.data_bytes(),
                            x.data_bytes(),
                            SPARSE_SLACK,
                            x.data_segments,
                            y.data_segments
                        ));
                    }
                }
            }
            Kind::Symlink if x.target != y.target => {
                d(format!("symlink target {:?} != {:?}", x.target, y.target));
            }
            Kind::CharDev | Kind::BlockDev if x.rdev != y.rdev => {
                d(format!("rdev {:#x} != {:#x}", x.rdev, y.rdev));
            }
            _ => {}
        }
        let xa = filtered_xattrs(&x.xattrs, opts);
        let ya = filtered_xattrs(&y.xattrs, opts);
        if xa != ya {
            d(format!(
                "xattrs {} != {}",
                show_xattrs(&xa),
                show_xattrs(&ya)
            ));
        }
        if opts.hardlinks && x.link_group != y.link_group {
            d(format!(
                "hardlink group {:?} != {:?}",
                x.link_group, y.link_group
            ));
        }
    }
    diffs
}

/// Panic with every difference if the trees differ.
pub fn assert_trees_equal(a: &Tree, b: &Tree, opts: &CompareOpts, context: &str) {
    let diffs = compare(a, b, opts);
    if !diffs.is_empty() {
        panic!(
            "{context}: trees differ ({} differences):\n  {}",
            diffs.len(),
            diffs.join("\n  ")
        );
    }
}

/// A copy of `tree` without the given relative paths and everything below them.
pub fn without(tree: &Tree, paths: &[&str]) -> Tree {
    tree.iter()
        .filter(|(p, _)| !paths.iter().any(|x| p.starts_with(x)))
        .map(|(p, r)| (p.clone(), r.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running the haul binary.
// ---------------------------------------------------------------------------------------

/// The workspace's target directory (`CARGO_TARGET_DIR` if set, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        if t.is_absolute() {
            return t;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// Locate the haul binary: `$HAUL_BIN`, else `target/release/haul` or `target/debug/haul`
/// (if both exist, the most recently built one, so that a stale build is not used).
pub fn haul_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HAUL_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HAUL_BIN={} does not exist", p.display());
        return p;
    }
    let t = target_dir();
    let candidates: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|prof| t.join(prof).join("haul"))
        .filter(|p| p.is_file())
        .collect();
    let newest = candidates
        .iter()
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .cloned();
    match newest {
        Some(p) => p,
        None => panic!(
            "haul binary not found (looked at $HAUL_BIN, {0}/release/haul, {0}/debug/haul): \
             build it with `cargo build -p haul-cli`",
            t.display()
        ),
    }
}

/// How long one haul run may take before the test gives up and kills it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The outcome of one haul run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub args: Vec<OsString>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunResult {
    /// One-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!(
            "`haul {}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            args.join(" "),
            self.code,
            truncate(&self.stdout, 8000),
            truncate(&self.stderr, 8000)
        )
    }

    /// Parse stdout as the single JSON object `--json` prints, and check that its
    /// `exit_code` matches the process's.
    pub fn json(&self) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not one JSON object ({e}):\n{}", self.describe())
        });
        assert!(
            v.is_object(),
            "JSON output is not an object:\n{}",
            self.describe()
        );
        assert_eq!(
            v.get("exit_code").and_then(|c| c.as_i64()),
            Some(self.code as i64),
            "JSON exit_code does not match the process exit code:\n{}",
            self.describe()
        );
        v
    }

    /// Assert exit code `code`, with the whole run in the message.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "unexpected exit code:\n{}",
            self.describe()
        );
        self
    }

    /// Assert a clean `--json` run: exit 0, ok, no failures or partial entries.
    pub fn expect_clean(&self) -> serde_json::Value {
        self.expect_code(0);
        let v = self.json();
        assert_eq!(
            v["ok"],
            serde_json::Value::Bool(true),
            "JSON ok is not true:\n{}",
            self.describe()
        );
        assert_eq!(
            json_paths(&v, "failed"),
            Vec::<String>::new(),
            "failed:\n{}",
            self.describe()
        );
        assert_eq!(
            json_paths(&v, "partial"),
            Vec::<String>::new(),
            "partial:\n{}",
            self.describe()
        );
        v
    }
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `path` fields of the objects in array `key` of a haul JSON report.
pub fn json_paths(v: &serde_json::Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|e| {
                e.get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_else(|| panic!("{key} entry without a path string: {e}"))
                    .to_string()
            })
            .collect(),
        Some(other) => panic!("JSON {key} is not an array: {other}"),
        None => panic!("JSON report has no {key:?} field: {v}"),
    }
}

/// An integer field of a haul JSON report.
pub fn json_count(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|c| c.as_u64())
        .unwrap_or_else(|| panic!("JSON report has no integer {key:?}: {v}"))
}

/// The (action, path) pairs of the `changes` array.
pub fn json_changes(v: &serde_json::Value) -> Vec<(String, String)> {
    match v.get("changes") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|e| {
                let s = |k: &str| {
                    e.get(k)
                        .and_then(|x| x.as_str())
                        .unwrap_or_else(|| panic!("change entry without {k}: {e}"))
                        .to_string()
                };
                (s("action"), s("path"))
            })
            .collect(),
        Some(other) => panic!("JSON changes is not an array: {other}"),
        None => panic!("JSON report has no \"changes\" field: {v}"),
    }
}

/// A command for `program`, optionally run as another uid/gid. When a root process sets
/// a uid, std also clears the supplementary groups (`setgroups(0, NULL)`), so the child
/// has exactly `uid`, `gid` and no other group.
pub fn command_as(program: &Path, as_user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).env_remove("RUST_LOG");
    if let Some((uid, gid)) = as_user {
        cmd.uid(uid).gid(gid);
        // A cwd the unprivileged user can enter.
        cmd.current_dir("/");
    }
    cmd
}

/// Build the command for one haul run, optionally as another uid/gid.
pub fn haul_command<I, S>(args: I, as_user: Option<(u32, u32)>) -> (Command, Vec<OsString>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let mut cmd = command_as(&haul_bin(), as_user);
    cmd.args(&args);
    (cmd, args)
}

/// Run haul to completion (killing it after [`RUN_TIMEOUT`]).
pub fn run_haul_opt<I, S>(args: I, as_user: Option<(u32, u32)>) -> RunResult
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (cmd, args) = haul_command(args, as_user);
    run_to_end(cmd, args)
}

/// Runs a prepared haul command with its output captured, killing it after
/// [`RUN_TIMEOUT`]; `args` is what it was given, for messages.
pub fn run_to_end(mut cmd: Command, args: Vec<OsString>) -> RunResult {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", haul_bin().display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(r) => r.expect("waiting for haul"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("haul {args:?} did not finish within {RUN_TIMEOUT:?}; killed it");
        }
    };
    let code = match out.status.code() {
        Some(c) => c,
        None => 128 + out.status.signal().unwrap_or(0),
    };
    RunResult {
        args,
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run haul as the current user.
pub fn run_haul<I, S>(args: I) -> RunResult
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_haul_opt(args, None)
}

/// Run haul as `uid:gid` with no supplementary groups (the caller must be root).
pub fn run_haul_as<I, S>(uid: u32, gid: u32, args: I) -> RunResult
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    require_root("running haul as another user");
    run_haul_opt(args, Some((uid, gid)))
}

/// Start haul in the background with stdout/stderr discarded.
pub fn spawn_haul<I, S>(args: I, as_user: Option<(u32, u32)>) -> Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (mut cmd, _) = haul_command(args, as_user);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", haul_bin().display()))
}

/// Arguments for `haul copy --json --no-progress EXTRA... SRC DST`.
pub fn copy_args(extra: &[&str], src: &Path, dst: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["copy".into(), "--json".into(), "--no-progress".into()];
    v.extend(extra.iter().map(OsString::from));
    v.push(src.as_os_str().to_os_string());
    v.push(dst.as_os_str().to_os_string());
    v
}

/// `haul copy --json --no-progress EXTRA... SRC DST` as the current user.
pub fn haul_copy(extra: &[&str], src: &Path, dst: &Path) -> RunResult {
    run_haul(copy_args(extra, src, dst))
}

/// `haul copy --json --no-progress EXTRA... SRC DST` as `uid:gid`.
pub fn haul_copy_as(uid: u32, gid: u32, extra: &[&str], src: &Path, dst: &Path) -> RunResult {
    run_haul_as(uid, gid, copy_args(extra, src, dst))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Panic with a clear message unless running as root.
pub fn require_root(what: &str) {
    if !is_root() {
        panic!("{what} needs root: run the haul end-to-end tests as root (CI does)");
    }
}

/// Read a whole file (test helper).
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

/// `true` if `path` exists (without following a final symlink).
pub fn exists(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => panic!("lstat {}: {e}", path.display()),
    }
}

/// Bytes in regular files under `dir`, tolerant of entries vanishing meanwhile
/// (haul may be writing there).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_file() {
            n += md.len();
        } else if md.is_dir() {
            n += tree_bytes(&e.path());
        }
    }
    n
}

/// The state of a directory that must not be touched (the target of a
/// symlink planted in a destination): its tree and ctimes, to compare later.
pub struct Untouched {
    dir: PathBuf,
    tree: Tree,
    ctimes: BTreeMap<PathBuf, (i64, i64)>,
}

impl Untouched {
    /// Records `dir` as it is now.
    pub fn record(dir: &Path) -> Untouched {
        Untouched {
            dir: dir.to_path_buf(),
            tree: walk(dir),
            ctimes: ctimes(dir),
        }
    }

    /// Panics if anything in the directory changed, its ctimes included.
    pub fn assert_unchanged(&self, context: &str) {
        assert_trees_equal(
            &self.tree,
            &walk(&self.dir),
            &CompareOpts::default(),
            context,
        );
        assert_eq!(
            self.ctimes,
            ctimes(&self.dir),
            "{context}: something was modified"
        );
    }
}
