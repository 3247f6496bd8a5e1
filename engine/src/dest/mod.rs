//! The destination writer: everything that writes into a local tree, for
//! every source (a local tree for `copy`, a snapshot for `restore`, and
//! later archives and the wire). Its guarantees are those of
//! ARCHITECTURE.md's invariants 1 to 5:
//! - every write goes through a directory handle and a single name (`*at`
//!   syscalls, `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), so a symlink already in
//!   the destination is replaced, never written through;
//! - new content is written where nobody sees it and named only once its
//!   data and metadata are complete: a new regular file is an unnamed
//!   `O_TMPFILE` inode linked into place, anything else, or a file that
//!   replaces another, goes to a temporary name and is renamed;
//! - metadata in a fixed order (owner, xattrs, mode, times, chattr flags),
//!   a directory's after its contents, and only what differs is written;
//! - every entry's outcome is tallied and reaches the caller's summary.
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::idmap::IdMap;
use crate::meta::{read_xattrs, sync_xattrs, FileKind, XTarget, XattrPolicy, Xattrs};
use crate::progress::{Action, Progress};
use crate::sys::{self, Stat};

pub(crate) mod leaf;

/// At most this many failed (and, separately, partial) entries are kept with
/// their reasons; the rest are only counted, so memory stays bounded.
pub(crate) const MAX_ISSUES: usize = 100_000;
const TMP_PREFIX: &[u8] = b".haul-tmp.";

/// What the destination writer keeps of each entry, and how it writes.
#[derive(Debug)]
pub struct WriteOptions {
    /// Report what would change and touch nothing.
    pub dry_run: bool,
    /// Preserve numeric owner and group.
    pub owner: bool,
    /// Preserve extended attributes.
    pub xattrs: bool,
    /// Preserve POSIX ACLs (the `system.posix_acl_*` attributes).
    pub acls: bool,
    /// Owner remapping.
    pub ids: IdMap,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dry_run: false,
            owner: true,
            xattrs: true,
            acls: true,
            ids: IdMap::new(),
        }
    }
}

/// Writes entries into a destination tree (see the module docs), and
/// tallies what it did.
pub(crate) struct DestWriter<'a> {
    pub(crate) opts: &'a WriteOptions,
    /// A non-directory may replace a directory with contents, which is
    /// then removed and counted as deleted.
    pub(crate) delete: bool,
    /// Entries this filter excludes are never removed.
    pub(crate) protect: &'a Filter,
    /// Report every change through [`Progress::change`].
    pub(crate) record_changes: bool,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) policy: XattrPolicy,
    pub(crate) is_root: bool,
    c: Counters,
    issues: Mutex<Issues>,
    links: Mutex<HashMap<(u64, u64), Link>>,
    /// Whether new files can be `O_TMPFILE` inodes linked into place:
    /// `TMPFILE_UNKNOWN` until the first one is tried.
    tmpfile: AtomicU8,
    /// The destination root, for hardlinks whose first name is elsewhere.
    pub(crate) dst_root: Option<File>,
}

/// Entries seen in SRC, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceCounts {
    /// Regular files (the first name of each hardlinked inode included).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Further names of an inode already seen.
    pub hardlinks: u64,
    /// Fifos, sockets and devices.
    pub specials: u64,
    /// Bytes of regular-file content (apparent size).
    pub bytes: u64,
}

/// One entry that failed or was not fully preserved.
#[derive(Clone, Debug, Serialize)]
pub struct EntryIssue {
    /// Path relative to the root of the copy.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// What went wrong, with the OS's reason.
    pub reason: String,
}

fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The outcome of a copy. Every entry's fate is in here: nothing is dropped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopySummary {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Wall time of the run.
    pub seconds: f64,
    /// What SRC holds.
    pub source: SourceCounts,
    /// Entries created in DST.
    pub created: u64,
    /// Entries whose content was rewritten or whose type changed.
    pub updated: u64,
    /// Entries whose metadata alone was fixed in place.
    pub metadata_only: u64,
    /// Entries already identical.
    pub unchanged: u64,
    /// Entries removed from DST.
    pub deleted: u64,
    /// Bytes of file data written.
    pub bytes_copied: u64,
    /// Entries that could not be copied.
    pub failed: Vec<EntryIssue>,
    /// Entries copied, but with some metadata not preserved.
    pub partial: Vec<EntryIssue>,
    /// Differences `--verify` found.
    pub verify_mismatches: Vec<EntryIssue>,
    /// Failed entries beyond the recorded list.
    pub failed_not_listed: u64,
    /// Partial entries beyond the recorded list.
    pub partial_not_listed: u64,
    /// Things the user should still hear about that do not change the exit
    /// code: a file that grew while it was read, a setuid file given to root
    /// by a map, a stale repository lock a restore broke (named by the
    /// repository's path).
    pub notices: Vec<EntryIssue>,
    /// Notices beyond the recorded list.
    pub notices_not_listed: u64,
}

impl CopySummary {
    /// Total failed entries.
    pub fn failed_count(&self) -> u64 {
        self.failed.len() as u64 + self.failed_not_listed
    }

    /// Total partially preserved entries.
    pub fn partial_count(&self) -> u64 {
        self.partial.len() as u64 + self.partial_not_listed
    }
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    specials: AtomicU64,
    bytes: AtomicU64,
    created: AtomicU64,
    updated: AtomicU64,
    metadata: AtomicU64,
    unchanged: AtomicU64,
    deleted: AtomicU64,
    copied: AtomicU64,
}

#[derive(Default)]
struct Issues {
    failed: Vec<EntryIssue>,
    partial: Vec<EntryIssue>,
    notices: Vec<EntryIssue>,
    failed_more: u64,
    partial_more: u64,
    notices_more: u64,
}

/// The state of a hardlinked inode's first destination name.
enum Link {
    Pending,
    Done {
        rel: PathBuf,
        dst: Option<(u64, u64)>,
    },
    Failed,
}

pub(crate) fn has_default_acl(d: &File) -> bool {
    use xattr::FileExt;
    !matches!(d.get_xattr("system.posix_acl_default"), Ok(None))
}

/// Where metadata is applied: an open file or directory, or a name in a
/// directory for entries that are not opened (symlinks, fifos, devices).
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Fd(&'a File),
    At(&'a File, &'a CStr, FileKind),
}

impl Target<'_> {
    fn xtarget(&self) -> XTarget<'_> {
        match *self {
            Target::Fd(f) => XTarget::Fd(f),
            Target::At(d, n, _) => XTarget::At(d, n),
        }
    }
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::chown_fd(f, uid, gid),
            Target::At(d, n, _) => sys::chown_at(d, n, uid, gid),
        }
    }
    fn chmod(&self, mode: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::chmod_fd(f, mode),
            Target::At(_, _, FileKind::Symlink) => Ok(()),
            Target::At(d, n, _) => sys::chmod_at(d, n, mode),
        }
    }
    fn times(&self, st: &Stat) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::set_times_fd(f, st.atime, st.mtime),
            Target::At(d, n, _) => sys::set_times_at(d, n, st.atime, st.mtime),
        }
    }
    /// Sets the kept `chattr` flags; only files and directories have them.
    fn set_attrs(&self, attrs: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::set_attrs_fd(f, attrs),
            Target::At(d, n, FileKind::File | FileKind::Dir) => {
                sys::set_attrs_fd(&sys::open_for_attrs_at(d, n)?, attrs)
            }
            Target::At(..) if attrs == 0 => Ok(()),
            Target::At(..) => Err(io::Error::from_raw_os_error(libc::ENOTTY)),
        }
    }
    fn is_symlink(&self) -> bool {
        matches!(self, Target::At(_, _, FileKind::Symlink))
    }
}

const TMPFILE_UNKNOWN: u8 = 0;
const TMPFILE_YES: u8 = 1;
const TMPFILE_NO: u8 = 2;

/// A new regular file being written, not yet under its final name: an
/// unnamed `O_TMPFILE` inode (`tmp` is `None`) or a file under its
/// temporary name. [`DestWriter::publish`] names it; dropping it unpublished
/// leaves nothing but, for a named one, the temporary name, which
/// [`DestWriter::discard`] removes.
struct NewFile {
    file: File,
    tmp: Option<CString>,
}

/// Whether an entry was just created by this run, and if so whether its
/// attributes are known (`None`: read them back).
#[derive(Clone, Copy)]
pub(crate) enum Fresh<'a> {
    No,
    Yes(Option<&'a Xattrs>),
}

pub(crate) enum Outcome {
    Created,
    Updated,
    Metadata,
    Unchanged,
}

pub(crate) fn name_of(c: &CStr) -> &OsStr {
    OsStr::from_bytes(c.to_bytes())
}

/// The temporary name for `name`: fixed length (so it fits NAME_MAX whatever
/// `name` is) and derived from the name, so a re-run after a crash reuses,
/// and so clears, the same slot.
pub(crate) fn tmp_name(name: &CStr) -> CString {
    let h = blake3::hash(name.to_bytes());
    let hex = h.to_hex();
    let mut v = TMP_PREFIX.to_vec();
    v.extend_from_slice(&hex.as_bytes()[..16]);
    CString::new(v).expect("no NUL in hex")
}

/// `linkat(AT_EMPTY_PATH)` refused for want of privilege (`ENOENT` is what
/// kernels before 6.10 answer without `CAP_DAC_READ_SEARCH`).
fn flink_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::EPERM | libc::EACCES | libc::EINVAL)
    )
}

/// `linkat`, also to an immutable or append-only inode (which refuses new
/// names): its flags come off for the link and go back on.
fn link_past_attrs(odir: &File, old: &CStr, ndir: &File, new: &CStr) -> io::Result<()> {
    match sys::link_at(odir, old, ndir, new) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let st = sys::stat_at(odir, old)?;
            if st.attrs == 0 {
                return Err(e);
            }
            let f = sys::open_for_attrs_at(odir, old)?;
            sys::set_attrs_fd(&f, 0)?;
            let r = sys::link_at(odir, old, ndir, new);
            sys::set_attrs_fd(&f, st.attrs)?;
            r
        }
        r => r,
    }
}

/// `+i`, `+a` or `+ia`, as chattr spells them.
fn attrs_word(attrs: u32) -> String {
    let mut w = String::from("+");
    if attrs & sys::ATTR_IMMUTABLE != 0 {
        w.push('i');
    }
    if attrs & sys::ATTR_APPEND != 0 {
        w.push('a');
    }
    w
}

/// The failure of an entry whose place in DST is a directory with contents.
fn not_empty() -> StepError {
    StepError {
        op: "cannot replace non-empty directory (--delete would)",
        err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
    }
}

pub(crate) fn is_tmp_name(name: &[u8]) -> bool {
    name.len() == TMP_PREFIX.len() + 16
        && name.starts_with(TMP_PREFIX)
        && name[TMP_PREFIX.len()..].iter().all(u8::is_ascii_hexdigit)
}

/// A path's directory (`.` if none) and final name.
pub(crate) fn split_parent(p: &Path) -> Result<(PathBuf, CString), Error> {
    let name = p
        .file_name()
        .ok_or_else(|| Error::invalid(p, "path has no final component"))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let c = CString::new(name.as_bytes()).map_err(|_| Error::invalid(p, "path contains a NUL"))?;
    Ok((parent, c))
}

/// Opens DST, creating it and its parents if missing. A DST that exists but
/// is not a directory is an error rather than something to replace: the user
/// named it.
pub(crate) fn open_or_create_root(
    dst: &Path,
    dry_run: bool,
) -> Result<(Option<File>, bool), Error> {
    match sys::stat_path(dst, true) {
        Ok(st) if st.kind() == FileKind::Dir => {
            let d =
                sys::open_dir_path(dst).map_err(|e| Error::io("opening destination", dst, e))?;
            Ok((Some(d), true))
        }
        Ok(_) => Err(Error::invalid(
            dst,
            "destination exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dry_run {
                return Ok((None, false));
            }
            std::fs::create_dir_all(dst).map_err(|e| Error::io("creating destination", dst, e))?;
            let d =
                sys::open_dir_path(dst).map_err(|e| Error::io("opening destination", dst, e))?;
            Ok((Some(d), false))
        }
        Err(e) => Err(Error::io("reading destination", dst, e)),
    }
}

impl<'a> DestWriter<'a> {
    pub(crate) fn new(
        opts: &'a WriteOptions,
        delete: bool,
        protect: &'a Filter,
        record_changes: bool,
        progress: &'a dyn Progress,
    ) -> DestWriter<'a> {
        DestWriter {
            opts,
            delete,
            protect,
            record_changes,
            progress,
            policy: XattrPolicy {
                xattrs: opts.xattrs,
                acls: opts.acls,
            },
            is_root: sys::euid() == 0,
            c: Counters::default(),
            issues: Mutex::default(),
            links: Mutex::default(),
            tmpfile: AtomicU8::new(TMPFILE_UNKNOWN),
            dst_root: None,
        }
    }

    pub(crate) fn summary(&self, start: Instant) -> CopySummary {
        let c = &self.c;
        let mut issues =
            std::mem::take(&mut *self.issues.lock().unwrap_or_else(|e| e.into_inner()));
        issues.failed.sort_by(|a, b| a.path.cmp(&b.path));
        issues.partial.sort_by(|a, b| a.path.cmp(&b.path));
        issues.notices.sort_by(|a, b| a.path.cmp(&b.path));
        CopySummary {
            dry_run: self.opts.dry_run,
            seconds: start.elapsed().as_secs_f64(),
            source: SourceCounts {
                files: c.files.load(Relaxed),
                dirs: c.dirs.load(Relaxed),
                symlinks: c.symlinks.load(Relaxed),
                hardlinks: c.hardlinks.load(Relaxed),
                specials: c.specials.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
            },
            created: c.created.load(Relaxed),
            updated: c.updated.load(Relaxed),
            metadata_only: c.metadata.load(Relaxed),
            unchanged: c.unchanged.load(Relaxed),
            deleted: c.deleted.load(Relaxed),
            bytes_copied: c.copied.load(Relaxed),
            failed: issues.failed,
            partial: issues.partial,
            verify_mismatches: Vec::new(),
            failed_not_listed: issues.failed_more,
            partial_not_listed: issues.partial_more,
            notices: issues.notices,
            notices_not_listed: issues.notices_more,
        }
    }

    pub(crate) fn fail(&self, rel: &Path, e: impl std::fmt::Display) {
        let mut i = self.issues.lock().unwrap_or_else(|e| e.into_inner());
        if i.failed.len() < MAX_ISSUES {
            i.failed.push(EntryIssue {
                path: rel.to_path_buf(),
                reason: e.to_string(),
            });
        } else {
            i.failed_more += 1;
        }
    }

    /// Records a notice (see [`CopySummary::notices`]).
    pub(crate) fn notice(&self, rel: &Path, msg: impl std::fmt::Display) {
        let mut i = self.issues.lock().unwrap_or_else(|e| e.into_inner());
        if i.notices.len() < MAX_ISSUES {
            i.notices.push(EntryIssue {
                path: rel.to_path_buf(),
                reason: msg.to_string(),
            });
        } else {
            i.notices_more += 1;
        }
    }

    pub(crate) fn partial(&self, rel: &Path, reasons: Vec<String>) {
        if reasons.is_empty() {
            return;
        }
        let mut i = self.issues.lock().unwrap_or_else(|e| e.into_inner());
        if i.partial.len() < MAX_ISSUES {
            i.partial.push(EntryIssue {
                path: rel.to_path_buf(),
                reason: reasons.join("; "),
            });
        } else {
            i.partial_more += 1;
        }
    }

    pub(crate) fn record(&self, o: Outcome, rel: &Path) {
        let (counter, action) = match o {
            Outcome::Created => (&self.c.created, Some(Action::Create)),
            Outcome::Updated => (&self.c.updated, Some(Action::Update)),
            Outcome::Metadata => (&self.c.metadata, Some(Action::Metadata)),
            Outcome::Unchanged => (&self.c.unchanged, None),
        };
        counter.fetch_add(1, Relaxed);
        if let (Some(a), true) = (action, self.record_changes) {
            self.progress.change(a, rel);
        }
    }

    /// `--delete` for a source that is not a directory (a snapshot's tree):
    /// removes every entry of `dst` for which `wanted` is false, and counts
    /// it as deleted. Leftover temporary files go too, uncounted.
    pub(crate) fn remove_extraneous(&self, dst: &File, rel: &Path, wanted: impl Fn(&[u8]) -> bool) {
        let r = sys::each_batch(dst, |batch| -> io::Result<()> {
            for e in batch {
                let name = e.name.to_bytes();
                if wanted(name) {
                    continue;
                }
                let crel = rel.join(name_of(&e.name));
                let tmp = is_tmp_name(name)
                    && sys::stat_at(dst, &e.name).is_ok_and(|st| st.kind() != FileKind::Dir);
                if self.opts.dry_run {
                    if !tmp {
                        self.c.deleted.fetch_add(1, Relaxed);
                    }
                    continue;
                }
                if let Err(err) = self.remove_tree(dst, &e.name, &crel, !tmp) {
                    self.fail(&crel, format!("deleting: {err}"));
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(rel, format!("reading destination directory: {e}"));
        }
    }

    /// Removes `name` in `dir` and everything below it, never following a
    /// symlink. `report`: count (and list) every removed entry as deleted.
    /// Inside a removed directory, entries the filter excludes are kept, as
    /// they are everywhere else (`--exclude` protects from `--delete`); the
    /// directory then stays and this fails, naming why. Depth first from a
    /// stack of the directories being emptied, one handle each, so a chain
    /// of any depth goes without recursion.
    pub(crate) fn remove_tree(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
        report: bool,
    ) -> Result<(), StepError> {
        /// A directory being emptied, and the entries of it still to remove.
        struct Emptying {
            fd: File,
            name: CString,
            rel: PathBuf,
            todo: Vec<sys::RawEntry>,
        }
        let st = sys::stat_at(dir, name).step("stat")?;
        self.unlock(dir, name, &st)?;
        if st.kind() != FileKind::Dir {
            sys::unlink_at(dir, name, false).step("unlink")?;
            self.deleted(report, rel);
            return Ok(());
        }
        let open = |parent: &File, name: &CStr, st: &Stat| -> Result<File, StepError> {
            let d = sys::open_dir_at(parent, name).step("open directory")?;
            if !self.is_root && st.perm() & 0o700 != 0o700 {
                sys::chmod_fd(&d, st.perm() | 0o700).step("chmod")?;
            }
            Ok(d)
        };
        let mut stack = vec![Emptying {
            fd: open(dir, name, &st)?,
            name: name.to_owned(),
            rel: rel.to_path_buf(),
            todo: Vec::new(),
        }];
        while let Some(top) = stack.last_mut() {
            let Some(e) = top.todo.pop() else {
                // What is left is read from the start again: the entries
                // removed since are gone from it.
                let mut left = Vec::new();
                sys::DirStream::new(&top.fd)
                    .and_then(|mut s| s.read_batch(&mut left, sys::BATCH))
                    .step("read directory")?;
                if !left.is_empty() {
                    top.todo = left;
                    continue;
                }
                let done = stack.pop().expect("a directory");
                drop(done.fd);
                let parent = stack.last().map_or(dir, |p| &p.fd);
                sys::unlink_at(parent, &done.name, true).step("rmdir")?;
                self.deleted(report, &done.rel);
                continue;
            };
            let crel = top.rel.join(name_of(&e.name));
            let cst = sys::stat_at(&top.fd, &e.name).step("stat")?;
            let is_dir = cst.kind() == FileKind::Dir;
            if self.protect.excluded(&crel, is_dir) {
                return Err(StepError {
                    op: "cannot remove directory holding excluded entries",
                    err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
                });
            }
            self.unlock(&top.fd, &e.name, &cst)?;
            if is_dir {
                let fd = open(&top.fd, &e.name, &cst)?;
                stack.push(Emptying {
                    fd,
                    name: e.name,
                    rel: crel,
                    todo: Vec::new(),
                });
            } else {
                sys::unlink_at(&top.fd, &e.name, false).step("unlink")?;
                self.deleted(report, &crel);
            }
        }
        Ok(())
    }

    /// Counts (and, with `-v`, lists) one removed entry, if `report`.
    pub(crate) fn deleted(&self, report: bool, rel: &Path) {
        if report {
            self.c.deleted.fetch_add(1, Relaxed);
            if self.record_changes {
                self.progress.change(Action::Delete, rel);
            }
        }
    }

    /// Warns when a map or `--chown` hands a setuid file that root does
    /// not own to root: it will run as root on the destination.
    pub(crate) fn check_owner_map(&self, st: &Stat, rel: &Path) {
        if self.opts.owner
            && st.kind() == FileKind::File
            && st.perm() & 0o4000 != 0
            && st.uid != 0
            && self.opts.ids.uid(st.uid) == 0
        {
            self.notice(
                rel,
                format!(
                    "setuid file of uid {} is given to root by the owner map",
                    st.uid
                ),
            );
        }
    }

    pub(crate) fn count_source(&self, st: &Stat, follower: bool) {
        let c = &self.c;
        match st.kind() {
            _ if follower => c.hardlinks.fetch_add(1, Relaxed),
            FileKind::File => {
                c.bytes.fetch_add(st.size, Relaxed);
                c.files.fetch_add(1, Relaxed)
            }
            FileKind::Dir => c.dirs.fetch_add(1, Relaxed),
            FileKind::Symlink => c.symlinks.fetch_add(1, Relaxed),
            _ => c.specials.fetch_add(1, Relaxed),
        };
    }

    /// Hardlink groups, for any source: `key` names the inode. The first
    /// name met is written by `write_first`; later names are linked to it.
    /// Returns (whether this was the first name, the write's result).
    #[allow(clippy::type_complexity)]
    pub(crate) fn linked(
        &self,
        key: (u64, u64),
        dst: Option<&File>,
        dname: &CStr,
        rel: &Path,
        write_first: impl FnOnce() -> Result<(), StepError>,
    ) -> Result<(bool, Result<(), StepError>), StepError> {
        // A later name must be linked while its directory is still being
        // processed (its metadata is applied afterwards), so it waits for the
        // first name to be written. The wait runs other queued work through
        // rayon::yield_now, and cannot deadlock: writing a first name is
        // straight-line code that never waits on anything.
        let leader = loop {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            match links.get(&key) {
                None | Some(Link::Failed) => {
                    links.insert(key, Link::Pending);
                    break None;
                }
                Some(Link::Pending) => {
                    drop(links);
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
                Some(Link::Done { rel, dst }) => break Some((rel.clone(), *dst)),
            }
        };
        if let Some((lrel, ldst)) = leader {
            let r = match dst {
                Some(d) => self.make_link(d, dname, rel, &lrel, ldst),
                None => {
                    self.record(Outcome::Created, rel);
                    Ok(())
                }
            };
            return Ok((false, r));
        }
        let r = write_first();
        let state = match (&r, dst) {
            (Ok(_), Some(d)) => match sys::stat_at(d, dname) {
                Ok(s) => Link::Done {
                    rel: rel.to_path_buf(),
                    dst: Some((s.dev, s.ino)),
                },
                Err(_) => Link::Failed,
            },
            (Ok(_), None) => Link::Done {
                rel: rel.to_path_buf(),
                dst: None,
            },
            (Err(_), _) => Link::Failed,
        };
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, state);
        Ok((true, r))
    }

    /// Makes `dname` in `dst` another name of the destination inode first
    /// written at `leader_rel`.
    fn make_link(
        &self,
        dst: &File,
        dname: &CStr,
        rel: &Path,
        leader_rel: &Path,
        leader_dst: Option<(u64, u64)>,
    ) -> Result<(), StepError> {
        let cur = sys::stat_at_opt(dst, dname).step("stat destination")?;
        if let (Some(c), Some(l)) = (cur, leader_dst) {
            if (c.dev, c.ino) == l {
                self.record(Outcome::Unchanged, rel);
                return Ok(());
            }
        }
        self.may_replace(dst, dname, cur.as_ref())?;
        if let (Some(c), false) = (&cur, self.opts.dry_run) {
            self.unlock(dst, dname, c)?;
        }
        let outcome = if cur.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        if self.opts.dry_run {
            self.record(outcome, rel);
            return Ok(());
        }
        let (ldir, lname) = self
            .open_dst_parent(leader_rel)
            .step("open hardlink target")?;
        match cur {
            None => link_past_attrs(&ldir, &lname, dst, dname).step("link")?,
            Some(c) => {
                let tmp = tmp_name(dname);
                self.clear_tmp(dst, &tmp)?;
                link_past_attrs(&ldir, &lname, dst, &tmp).step("link")?;
                if let Err(e) = self.clear_dir_for(dst, dname, Some(c), rel) {
                    let _ = sys::unlink_at(dst, &tmp, false);
                    return Err(e);
                }
                sys::rename_at(dst, &tmp, dst, dname).step("rename")?;
            }
        }
        self.record(outcome, rel);
        Ok(())
    }

    /// Opens the destination directory holding `rel`, one component at a time
    /// with `O_NOFOLLOW`.
    fn open_dst_parent(&self, rel: &Path) -> io::Result<(File, CString)> {
        let root = self
            .dst_root
            .as_ref()
            .ok_or_else(|| io::Error::other("no destination root"))?;
        let mut d = root.try_clone()?;
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other("empty path"))?;
        if let Some(parent) = rel.parent() {
            for comp in parent.components() {
                let c = CString::new(comp.as_os_str().as_bytes())?;
                d = sys::open_dir_at(&d, &c)?;
            }
        }
        Ok((d, CString::new(name.as_bytes())?))
    }

    /// Removes a leftover temporary entry from an interrupted run: only a
    /// non-directory, which is all haul ever puts under a temporary name.
    /// A directory there is the user's and is left alone (the entry fails).
    pub(crate) fn clear_tmp(&self, dst: &File, tmp: &CStr) -> Result<(), StepError> {
        match sys::stat_at_opt(dst, tmp).step("stat temporary")? {
            Some(st) if st.kind() == FileKind::Dir => Err(StepError {
                op: "temporary name taken by a directory, left alone",
                err: io::Error::from_raw_os_error(libc::EEXIST),
            }),
            Some(_) => sys::unlink_at(dst, tmp, false).step("remove temporary"),
            None => Ok(()),
        }
    }

    /// Gives a new file, now under its final name, the source's `chattr`
    /// flags (a failure to is reported as partial).
    pub(crate) fn set_new_attrs(&self, f: &File, st: &Stat, partial: &mut Vec<String>) {
        if st.attrs != 0 && !self.opts.dry_run {
            if let Err(e) = sys::set_attrs_fd(f, st.attrs) {
                partial.push(format!(
                    "chattr flags {} not set: {e}",
                    attrs_word(st.attrs)
                ));
            }
        }
    }

    /// Clears the `chattr` flags of an entry in DST that is about to be
    /// replaced or written into (a rename over, or an unlink of, an
    /// immutable or append-only entry fails).
    pub(crate) fn unlock(&self, d: &File, name: &CStr, cur: &Stat) -> Result<(), StepError> {
        if cur.attrs == 0 {
            return Ok(());
        }
        Target::At(d, name, cur.kind())
            .set_attrs(0)
            .step("clear chattr flags")
    }

    /// Whether a new non-directory may take the place of `cur`. A directory
    /// is only replaced when it is empty or with `--delete` (then all it
    /// holds is removed and counted as deleted), as rsync does: without
    /// `--delete`, whatever is inside is not haul's to remove.
    pub(crate) fn may_replace(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<&Stat>,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir && !self.delete => {
                let sub = sys::open_dir_at(d, name).step("open destination directory")?;
                if sys::DirStream::new(&sub)
                    .and_then(|mut s| s.read_batch(&mut Vec::new(), 1))
                    .step("read destination directory")?
                    > 0
                {
                    return Err(not_empty());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Creates the symlink (to `target`), fifo, socket or device `st`
    /// describes under the temporary name `tmp`, and returns its stat.
    /// `target` is given for a symlink and only for one.
    pub(crate) fn create_special(
        &self,
        d: &File,
        tmp: &CStr,
        st: &Stat,
        target: Option<&[u8]>,
    ) -> Result<Stat, StepError> {
        let kind = st.kind();
        match target {
            Some(target) => {
                self.create_tmp(d, tmp, || sys::symlink_at(target, d, tmp))?;
            }
            None => {
                let dev = matches!(kind, FileKind::CharDev | FileKind::BlockDev);
                let rdev = if dev { st.rdev } else { 0 };
                let mode = kind.type_bits() | 0o600;
                self.create_tmp(d, tmp, || sys::mknod_at(d, tmp, mode, rdev))?;
            }
        }
        sys::stat_at(d, tmp).step("stat new entry")
    }

    /// Puts a new regular file at `name` in `d`, in place of `cur`: creates
    /// it with permission bits `perm`, has `write` fill it (data and
    /// metadata), and only then gives it its name. On an error nothing is
    /// left behind and `cur` is untouched. Returns the file, for what can
    /// only come after its name (`chattr` flags: an immutable inode can be
    /// neither linked nor renamed).
    pub(crate) fn put_new_file(
        &self,
        d: &File,
        name: &CStr,
        perm: u32,
        cur: Option<Stat>,
        rel: &Path,
        write: impl FnOnce(&File) -> Result<(), StepError>,
    ) -> Result<File, StepError> {
        let f = self.new_file(d, name, perm, cur.is_some())?;
        let written = write(&f.file).and_then(|()| self.clear_dir_for(d, name, cur, rel));
        if let Err(e) = written {
            self.discard(d, f);
            return Err(e);
        }
        self.publish(d, f, name)
    }

    /// [`DestWriter::put_new_file`] for a symlink, fifo, socket or device: `write`
    /// creates it, with its metadata, under the temporary name it is given.
    pub(crate) fn put_new_special(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
        write: impl FnOnce(&CStr) -> Result<(), StepError>,
    ) -> Result<(), StepError> {
        let tmp = tmp_name(name);
        let written = write(&tmp).and_then(|()| self.clear_dir_for(d, name, cur, rel));
        if let Err(e) = written {
            let _ = sys::unlink_at(d, &tmp, false);
            return Err(e);
        }
        self.rename_into_place(d, &tmp, name)
    }

    /// Makes room for a new entry named `name`: a directory there (`cur`)
    /// is removed, since nothing can be renamed or linked over it. Without
    /// `--delete` only an empty one is (see [`DestWriter::may_replace`]).
    fn clear_dir_for(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir && self.delete => {
                self.remove_tree(d, name, rel, true)
            }
            Some(c) if c.kind() == FileKind::Dir => sys::unlink_at(d, name, true).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    not_empty()
                } else {
                    StepError {
                        op: "remove empty directory",
                        err: e,
                    }
                }
            }),
            _ => Ok(()),
        }
    }

    /// Renames a complete entry from its temporary name to `name`; on an
    /// error the temporary name is removed.
    fn rename_into_place(&self, d: &File, tmp: &CStr, name: &CStr) -> Result<(), StepError> {
        sys::rename_at(d, tmp, d, name)
            .step("rename into place")
            .inspect_err(|_| {
                let _ = sys::unlink_at(d, tmp, false);
            })
    }

    /// Creates the new regular file that will become `name` in `d`, with
    /// permission bits `perm`. `replacing`: `name` exists and this file
    /// will take its place (a link cannot replace, so it gets a temporary
    /// name and is renamed over it).
    fn new_file(
        &self,
        d: &File,
        name: &CStr,
        perm: u32,
        replacing: bool,
    ) -> Result<NewFile, StepError> {
        let state = self.tmpfile.load(Relaxed);
        if !replacing && state != TMPFILE_NO {
            match sys::open_tmpfile_at(d, perm) {
                Ok(file) if state == TMPFILE_YES => return Ok(NewFile { file, tmp: None }),
                Ok(file) => {
                    // The first one: whether this process may link an
                    // unnamed file (kernels before 6.10 want
                    // CAP_DAC_READ_SEARCH) is learnt by naming this one
                    // with its temporary name, which it then keeps.
                    let tmp = tmp_name(name);
                    self.clear_tmp(d, &tmp)?;
                    match sys::link_fd_at(&file, d, &tmp) {
                        Ok(()) => {
                            self.tmpfile.store(TMPFILE_YES, Relaxed);
                            return Ok(NewFile {
                                file,
                                tmp: Some(tmp),
                            });
                        }
                        Err(e) if flink_refused(&e) => self.tmpfile.store(TMPFILE_NO, Relaxed),
                        Err(e) => return Err(e).step("link new file"),
                    }
                }
                // No O_TMPFILE on this filesystem (EISDIR: a kernel older
                // than 3.11 read it as O_DIRECTORY).
                Err(e) if sys::is_unsupported(&e) || e.raw_os_error() == Some(libc::EISDIR) => {
                    self.tmpfile.store(TMPFILE_NO, Relaxed);
                }
                Err(e) => return Err(e).step("create"),
            }
        }
        let tmp = tmp_name(name);
        let file = self.create_tmp(d, &tmp, || sys::create_excl_at(d, &tmp, perm))?;
        Ok(NewFile {
            file,
            tmp: Some(tmp),
        })
    }

    /// Gives a complete new file its final name, replacing what is there.
    /// On an error nothing is left under a temporary name.
    fn publish(&self, d: &File, f: NewFile, name: &CStr) -> Result<File, StepError> {
        let tmp = match f.tmp {
            Some(tmp) => tmp,
            None => match sys::link_fd_at(&f.file, d, name) {
                Ok(()) => return Ok(f.file),
                // The name was taken meanwhile: replace it by a rename.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let tmp = tmp_name(name);
                    self.clear_tmp(d, &tmp)?;
                    sys::link_fd_at(&f.file, d, &tmp).step("link new file")?;
                    tmp
                }
                Err(e) => return Err(e).step("link new file"),
            },
        };
        self.rename_into_place(d, &tmp, name)?;
        Ok(f.file)
    }

    /// Removes what an unpublished new file left: its temporary name, if any.
    fn discard(&self, d: &File, f: NewFile) {
        if let Some(tmp) = f.tmp {
            let _ = sys::unlink_at(d, &tmp, false);
        }
    }

    /// Runs `create` for a temporary name; a leftover of an interrupted run
    /// under that name is removed and the creation tried once more.
    pub(crate) fn create_tmp<T>(
        &self,
        d: &File,
        tmp: &CStr,
        create: impl Fn() -> io::Result<T>,
    ) -> Result<T, StepError> {
        match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear_tmp(d, tmp)?;
                create().step("create")
            }
            r => r.step("create"),
        }
    }

    /// An existing entry that already holds the right content: fixes its
    /// metadata where it differs and records metadata or unchanged.
    pub(crate) fn fix_in_place(
        &self,
        t: Target<'_>,
        want: &Stat,
        want_x: &Xattrs,
        have: &Stat,
        rel: &Path,
    ) -> Result<(), StepError> {
        let mut partial = Vec::new();
        let wrote = self.sync_meta(t, want, want_x, have, Fresh::No, &mut partial)?;
        self.record(
            if wrote {
                Outcome::Metadata
            } else {
                Outcome::Unchanged
            },
            rel,
        );
        self.partial(rel, partial);
        Ok(())
    }

    /// Brings `t`'s owner, xattrs, mode and times in line with SRC's, writing
    /// only what differs (so a re-run with no changes writes nothing).
    ///
    /// Order matters: chown first (it clears setuid/setgid and file
    /// capabilities), then xattrs (ACLs included), then the mode, then times.
    /// Returns whether anything was (or, in a dry run, would be) written.
    pub(crate) fn sync_meta(
        &self,
        t: Target<'_>,
        src: &Stat,
        src_x: &Xattrs,
        have: &Stat,
        fresh: Fresh<'_>,
        partial: &mut Vec<String>,
    ) -> Result<bool, StepError> {
        let (fresh, known_x) = match fresh {
            Fresh::No => (false, None),
            Fresh::Yes(x) => (true, x),
        };
        let dry = self.opts.dry_run;
        let mut wrote = false;
        let mut force_mode = false;
        // An immutable or append-only entry refuses every change, so its
        // flags come off first when anything is to change, and go back on
        // (the source's) last, after data and metadata.
        let mut attrs = have.attrs;
        let kept = sys::ATTR_IMMUTABLE | sys::ATTR_APPEND;
        if attrs & kept != 0
            && !dry
            && (src.attrs != have.attrs
                || src.perm() != have.perm()
                || src.mtime != have.mtime
                || (self.opts.owner
                    && (self.opts.ids.uid(src.uid), self.opts.ids.gid(src.gid))
                        != (have.uid, have.gid)))
        {
            t.set_attrs(0).step("clear chattr flags")?;
            attrs = 0;
        }
        // The owner the entry should have, and the one it has once this is
        // done (they differ when the owner is not preserved or not settable).
        let (want_owner, mut owner) = if self.opts.owner {
            let want = (self.opts.ids.uid(src.uid), self.opts.ids.gid(src.gid));
            (want, (have.uid, have.gid))
        } else {
            ((src.uid, src.gid), (have.uid, have.gid))
        };
        if self.opts.owner && owner != want_owner {
            let (uid, gid) = want_owner;
            wrote = true;
            if !dry {
                match t.chown(uid, gid) {
                    // chown clears setuid and setgid, nothing else.
                    Ok(()) => {
                        force_mode = src.perm() & 0o6000 != 0;
                        owner = want_owner;
                    }
                    Err(e) => partial.push(format!("owner {uid}:{gid} not set: {e}")),
                }
            } else {
                owner = want_owner;
            }
        }
        // A setuid or setgid file whose owner or group did not come along
        // would run as whoever owns it here: the bit is dropped, as cp does.
        let mut mode = src.perm();
        if src.kind() == FileKind::File && mode & 0o6000 != 0 {
            let mut drop_bits = 0;
            if mode & 0o4000 != 0 && owner.0 != want_owner.0 {
                drop_bits |= 0o4000;
            }
            if mode & 0o2000 != 0 && owner.1 != want_owner.1 {
                drop_bits |= 0o2000;
            }
            if drop_bits != 0 {
                mode &= !drop_bits;
                partial.push(format!(
                    "{} cleared: owner not preserved",
                    match drop_bits {
                        0o4000 => "setuid",
                        0o2000 => "setgid",
                        _ => "setuid and setgid",
                    }
                ));
            }
        }
        if self.policy.any() {
            let read;
            let have_x = match known_x {
                Some(x) => x,
                None => {
                    read =
                        read_xattrs(&t.xtarget(), self.policy).step("read destination xattrs")?;
                    &read
                }
            };
            if dry {
                wrote |= have_x != src_x;
            } else if sync_xattrs(&t.xtarget(), have_x, src_x, partial) {
                wrote = true;
                force_mode = true;
            }
        }
        // `have` is read back even for a fresh entry, and new files are
        // created with their final permission bits (as rsync does), so the
        // common file needs no chmod at all.
        if !t.is_symlink() && (force_mode || have.perm() != mode) {
            wrote |= have.perm() != mode;
            if !dry {
                if let Err(e) = t.chmod(mode) {
                    partial.push(format!("mode {mode:o} not set: {e}"));
                }
            }
        }
        if fresh || have.mtime != src.mtime {
            wrote |= have.mtime != src.mtime;
            if !dry {
                if let Err(e) = t.times(src) {
                    partial.push(format!("times not set: {e}"));
                }
            }
        }
        // A new file gets its flags once it has its name (see put_new_file).
        let deferred = fresh && src.kind() == FileKind::File;
        if src.attrs != attrs && !deferred {
            wrote |= src.attrs != have.attrs;
            if !dry {
                if let Err(e) = t.set_attrs(src.attrs) {
                    partial.push(format!(
                        "chattr flags {} not set: {e}",
                        attrs_word(src.attrs)
                    ));
                }
            }
        }
        Ok(wrote)
    }

    pub(crate) fn copied(&self, n: u64) {
        self.c.copied.fetch_add(n, Relaxed);
        self.progress.bytes(n);
    }

    /// Makes sure `dname` in the destination directory `parent` (absent in a
    /// dry run below a new directory) is a real directory, replacing anything
    /// else without following it. Returns its handle and whether it existed.
    pub(crate) fn ensure_dir(
        &self,
        parent: Option<&File>,
        parent_fresh: bool,
        dname: &CStr,
        rel: &Path,
    ) -> Result<(Option<File>, bool), StepError> {
        let Some(pd) = parent else {
            self.record(Outcome::Created, rel);
            return Ok((None, false));
        };
        let cur = if parent_fresh {
            None
        } else {
            sys::stat_at_opt(pd, dname).step("stat destination")?
        };
        match cur {
            Some(c) if c.kind() == FileKind::Dir => {
                let d = sys::open_dir_at(pd, dname).step("open destination directory")?;
                // Entries inside cannot change while it is immutable; its
                // metadata pass puts the source's flags back.
                if c.attrs != 0 && !self.opts.dry_run {
                    sys::set_attrs_fd(&d, 0).step("clear chattr flags")?;
                }
                if !self.is_root && !self.opts.dry_run && c.perm() & 0o700 != 0o700 {
                    // Let this run write inside; the final metadata pass restores the mode.
                    sys::chmod_fd(&d, c.perm() | 0o700).step("chmod")?;
                }
                Ok((Some(d), true))
            }
            other => {
                let outcome = if other.is_some() {
                    Outcome::Updated
                } else {
                    Outcome::Created
                };
                if self.opts.dry_run {
                    self.record(outcome, rel);
                    return Ok((None, false));
                }
                if let Some(c) = &other {
                    self.unlock(pd, dname, c)?;
                    sys::unlink_at(pd, dname, false).step("remove non-directory")?;
                }
                sys::mkdir_at(pd, dname, 0o700).step("mkdir")?;
                let d = sys::open_dir_at(pd, dname).step("open new directory")?;
                self.record(outcome, rel);
                Ok((Some(d), false))
            }
        }
    }

    /// Brings a finished directory's metadata in line with `st` and `want_x`,
    /// and records the outcome (for one that existed: metadata or unchanged).
    pub(crate) fn apply_dir_meta(
        &self,
        d: &File,
        st: &Stat,
        want_x: impl FnOnce() -> Result<Xattrs, StepError>,
        existed: bool,
        rel: &Path,
    ) {
        let r = (|| -> Result<bool, StepError> {
            let want_x = want_x()?;
            let have = sys::stat_fd(d).step("stat destination")?;
            let mut partial = Vec::new();
            let fresh = if existed { Fresh::No } else { Fresh::Yes(None) };
            let wrote = self.sync_meta(Target::Fd(d), st, &want_x, &have, fresh, &mut partial)?;
            self.partial(rel, partial);
            Ok(wrote)
        })();
        match r {
            Ok(true) if existed => self.record(Outcome::Metadata, rel),
            Ok(false) if existed => self.record(Outcome::Unchanged, rel),
            Ok(_) => {}
            Err(e) => self.fail(rel, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn tmp_names_are_fixed_length_and_recognised() {
        let long = CString::new(vec![b'x'; 255]).unwrap();
        let t = tmp_name(&long);
        assert!(t.to_bytes().len() < 64);
        assert!(is_tmp_name(t.to_bytes()));
        assert!(!is_tmp_name(b".haul-tmp.notahexname!!"));
        assert_eq!(tmp_name(&long), tmp_name(&long));
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A new file shows under no name until it is published, and then under
    /// its final name only; the name taken meanwhile is replaced; a discarded
    /// one leaves nothing. Each case runs three times, since the first new
    /// file of a run goes its own way (it learns whether linking works).
    #[test]
    fn new_files_appear_only_when_published() {
        let dir = tempfile::tempdir().unwrap();
        let d = sys::open_dir_path(dir.path()).unwrap();
        let opts = WriteOptions::default();
        let protect = Filter::default();
        let run = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
        for round in 0..3 {
            let name = CString::new(format!("f{round}")).unwrap();
            let f = run.new_file(&d, &name, 0o640, false).unwrap();
            f.file.write_all_at(b"data", 0).unwrap();
            assert!(!dir.path().join(name.to_str().unwrap()).exists());
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"data");

            // Someone else takes the name before the file is published.
            let name = CString::new(format!("taken{round}")).unwrap();
            let f = run.new_file(&d, &name, 0o640, false).unwrap();
            f.file.write_all_at(b"ours", 0).unwrap();
            std::fs::write(dir.path().join(name.to_str().unwrap()), b"theirs").unwrap();
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"ours");

            // Replacing an existing file, and giving up on one.
            let f = run.new_file(&d, &name, 0o640, true).unwrap();
            f.file.write_all_at(b"again", 0).unwrap();
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"again");
            let gone = CString::new("gone").unwrap();
            for replacing in [false, true] {
                let f = run.new_file(&d, &gone, 0o640, replacing).unwrap();
                f.file.write_all_at(b"x", 0).unwrap();
                run.discard(&d, f);
            }
        }
        assert_eq!(
            names(dir.path()),
            ["f0", "f1", "f2", "taken0", "taken1", "taken2"]
        );
    }
}
