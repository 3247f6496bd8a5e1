//! `copy`: make DST an exact mirror of the contents of SRC.
//!
//! Shape of a run:
//! - Directories are processed depth first on a rayon pool. A directory's
//!   entries are read in batches (so one flat directory of a million files is
//!   split across workers too, and memory stays bounded), and each batch is
//!   handed to `par_iter`; a subdirectory recurses inside its worker.
//! - Every write into the destination goes through a directory handle and a
//!   single name (`*at` syscalls, `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), so a
//!   symlink already in the destination is replaced, never written through.
//! - New content is written where nobody sees it, and named only once its
//!   data and metadata are complete, so an interrupted run never leaves a
//!   truncated file under its final name. A new regular file is an unnamed
//!   `O_TMPFILE` inode that is linked into place (less kernel work than a
//!   named create and a rename, and a crash leaves nothing behind); anything
//!   else, and a file that replaces another, goes to a temporary name and
//!   is renamed.
//! - A directory's own metadata is applied after its contents, so its mtime
//!   and a read-only mode stick.
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::idmap::IdMap;
use crate::meta::{read_xattrs, sync_xattrs, FileKind, XTarget, XattrPolicy, Xattrs};
use crate::progress::{Action, Progress};
use crate::sys::{self, Stat};

/// At most this many failed (and, separately, partial) entries are kept with
/// their reasons; the rest are only counted, so memory stays bounded.
const MAX_ISSUES: usize = 100_000;
/// Size of the per-thread buffer for the userspace copy and hashing paths.
const BUF: usize = 256 * 1024;
const TMP_PREFIX: &[u8] = b".haul-tmp.";

/// What a copy keeps and how it decides what to write.
#[derive(Debug)]
pub struct CopyOptions {
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// Remove entries in DST that are not in SRC (excluded ones are kept).
    pub delete: bool,
    /// Entries to skip.
    pub filter: Filter,
    /// Compare content by blake3 instead of size and mtime.
    pub checksum: bool,
    /// Report what would change and touch nothing.
    pub dry_run: bool,
    /// Re-read DST after the copy and compare digests with SRC.
    pub verify: bool,
    /// Preserve numeric owner and group.
    pub owner: bool,
    /// Preserve extended attributes.
    pub xattrs: bool,
    /// Preserve POSIX ACLs (the `system.posix_acl_*` attributes).
    pub acls: bool,
    /// Owner remapping.
    pub ids: IdMap,
    /// Report every change through [`Progress::change`].
    pub record_changes: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 0,
            delete: false,
            filter: Filter::default(),
            checksum: false,
            dry_run: false,
            verify: false,
            owner: true,
            xattrs: true,
            acls: true,
            ids: IdMap::new(),
            record_changes: false,
        }
    }
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
    /// Things worth knowing that are not about an entry (a restore breaking
    /// a stale repository lock).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
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
    failed_more: u64,
    partial_more: u64,
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

/// A directory being processed: its source handle, its destination handle
/// (absent in a dry run below a directory that does not exist yet), and its
/// path relative to the root.
struct DirPair {
    src: File,
    dst: Option<File>,
    rel: PathBuf,
    /// DST was created by this run and holds only what this run put there:
    /// nothing in it needs to be looked up or cleaned.
    fresh: bool,
    /// New entries in DST may inherit a default ACL, so their attributes must
    /// be read back rather than assumed empty.
    acl_inherit: bool,
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
    fn is_symlink(&self) -> bool {
        matches!(self, Target::At(_, _, FileKind::Symlink))
    }
}

const TMPFILE_UNKNOWN: u8 = 0;
const TMPFILE_YES: u8 = 1;
const TMPFILE_NO: u8 = 2;

/// A new regular file being written, not yet under its final name: an
/// unnamed `O_TMPFILE` inode (`tmp` is `None`) or a file under its
/// temporary name. [`Run::publish`] names it; dropping it unpublished
/// leaves nothing but, for a named one, the temporary name, which
/// [`Run::discard`] removes.
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

pub(crate) struct Run<'a> {
    pub(crate) opts: &'a CopyOptions,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) policy: XattrPolicy,
    pub(crate) is_root: bool,
    c: Counters,
    issues: Mutex<Issues>,
    links: Mutex<HashMap<(u64, u64), Link>>,
    reflink_ok: AtomicBool,
    cfr_ok: AtomicBool,
    /// Whether new files can be `O_TMPFILE` inodes linked into place:
    /// `TMPFILE_UNKNOWN` until the first one is tried.
    tmpfile: AtomicU8,
    /// The destination root, for hardlinks whose first name is elsewhere.
    pub(crate) dst_root: Option<File>,
    mismatches: Mutex<Vec<EntryIssue>>,
}

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < BUF {
            b.resize(BUF, 0);
        }
        f(&mut b)
    })
}

fn name_of(c: &CStr) -> &OsStr {
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

fn is_tmp_name(name: &[u8]) -> bool {
    name.len() == TMP_PREFIX.len() + 16
        && name.starts_with(TMP_PREFIX)
        && name[TMP_PREFIX.len()..].iter().all(u8::is_ascii_hexdigit)
}

/// Copies SRC to DST; see the module docs. Returns `Err` only when the run
/// could not proceed at all; per-entry problems are in the summary.
pub fn copy(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopySummary, Error> {
    let start = Instant::now();
    sys::raise_nofile_limit();
    let src_st = sys::stat_path(src, true).map_err(|e| Error::io("reading source", src, e))?;
    let pool = worker_pool(opts.jobs, "copy").map_err(|e| Error::io("starting workers", src, e))?;

    let mut run = Run::new(opts, progress);

    if src_st.kind() == FileKind::Dir {
        let src_dir = sys::open_dir_path(src).map_err(|e| Error::io("opening source", src, e))?;
        let (dst_dir, existed) = open_or_create_root(dst, opts.dry_run)?;
        if let Some(d) = &dst_dir {
            let dst_st = sys::stat_fd(d).map_err(|e| Error::io("reading destination", dst, e))?;
            if (dst_st.dev, dst_st.ino) == (src_st.dev, src_st.ino) {
                return Err(Error::invalid(dst, "SRC and DST are the same directory"));
            }
            if is_inside(dst, src) {
                return Err(Error::invalid(dst, "DST lies inside SRC"));
            }
            run.dst_root = Some(
                d.try_clone()
                    .map_err(|e| Error::io("opening destination", dst, e))?,
            );
        }
        let run = &run;
        std::thread::scope(|s| {
            if progress.wants_totals() {
                s.spawn(|| {
                    if let Ok(d) = sys::open_dir_path(src) {
                        scan(&d, PathBuf::new(), &opts.filter, progress);
                    }
                    progress.discovery_done();
                });
            }
            pool.install(|| {
                run.c.dirs.fetch_add(1, Relaxed);
                if !existed && dst_dir.is_some() {
                    run.record(Outcome::Created, Path::new(""));
                }
                let acl_inherit = dst_dir.as_ref().is_some_and(has_default_acl);
                let root = DirPair {
                    src: src_dir,
                    dst: dst_dir,
                    rel: PathBuf::new(),
                    fresh: !existed,
                    acl_inherit,
                };
                run.walk_dir(&root);
                run.finish_dir(&root, &src_st, existed, Path::new(""));
                if opts.verify && !opts.dry_run {
                    if let Some(d) = &root.dst {
                        run.verify_dir(&root.src, d, PathBuf::new());
                    }
                }
            });
        });
    } else {
        // A single non-directory: DST is its new name.
        let (sdir, sname) = split_parent(src)?;
        let (ddir_path, dname) = split_parent(dst)?;
        let sdir = sys::open_dir_path(&sdir).map_err(|e| Error::io("opening source", &sdir, e))?;
        let ddir = match sys::open_dir_path(&ddir_path) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound && opts.dry_run => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&ddir_path)
                    .map_err(|e| Error::io("creating destination", &ddir_path, e))?;
                Some(
                    sys::open_dir_path(&ddir_path)
                        .map_err(|e| Error::io("opening destination", &ddir_path, e))?,
                )
            }
            Err(e) => return Err(Error::io("opening destination", &ddir_path, e)),
        };
        let pair = DirPair {
            src: sdir,
            dst: ddir,
            rel: PathBuf::new(),
            fresh: false,
            acl_inherit: true,
        };
        let rel = PathBuf::from(name_of(&dname));
        pool.install(|| {
            run.entry(&pair, &sname, &dname, rel);
            if opts.verify && !opts.dry_run {
                if let Some(d) = &pair.dst {
                    run.verify_entry(&pair.src, d, &sname, &dname, PathBuf::from(name_of(&dname)));
                }
            }
        });
    }
    Ok(run.summary(start))
}

/// Counting-only walk for progress totals (entries and bytes), run on its
/// own thread beside the real work so a progress bar can show an ETA.
pub(crate) fn scan(dir: &File, rel: PathBuf, filter: &Filter, progress: &dyn Progress) {
    // A scan is only an estimate for the bar: unreadable parts are skipped.
    let _ = sys::each_batch(dir, |batch| -> io::Result<()> {
        let (mut files, mut bytes) = (0, 0);
        for e in batch {
            let Ok(st) = sys::stat_at(dir, &e.name) else {
                continue;
            };
            let crel = rel.join(name_of(&e.name));
            let is_dir = st.kind() == FileKind::Dir;
            if filter.excluded(&crel, is_dir) {
                continue;
            }
            files += 1;
            if st.kind() == FileKind::File {
                bytes += st.size;
            }
            if is_dir {
                if let Ok(d) = sys::open_dir_at(dir, &e.name) {
                    scan(&d, crel, filter, progress);
                }
            }
        }
        progress.discovered(files, bytes);
        Ok(())
    });
}

/// A rayon pool with deep stacks (the walk recurses per directory level).
pub(crate) fn worker_pool(jobs: usize, what: &'static str) -> io::Result<rayon::ThreadPool> {
    let jobs = if jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        jobs
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .stack_size(16 << 20)
        .thread_name(move |i| format!("haul-{what}-{i}"))
        .build()
        .map_err(io::Error::other)
}

fn is_inside(dst: &Path, src: &Path) -> bool {
    match (std::fs::canonicalize(dst), std::fs::canonicalize(src)) {
        (Ok(d), Ok(s)) => d.starts_with(s),
        _ => false,
    }
}

fn split_parent(p: &Path) -> Result<(PathBuf, CString), Error> {
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

impl<'a> Run<'a> {
    pub(crate) fn new(opts: &'a CopyOptions, progress: &'a dyn Progress) -> Run<'a> {
        Run {
            opts,
            progress,
            policy: XattrPolicy {
                xattrs: opts.xattrs,
                acls: opts.acls,
            },
            is_root: sys::euid() == 0,
            c: Counters::default(),
            issues: Mutex::default(),
            links: Mutex::default(),
            reflink_ok: AtomicBool::new(true),
            cfr_ok: AtomicBool::new(true),
            tmpfile: AtomicU8::new(TMPFILE_UNKNOWN),
            dst_root: None,
            mismatches: Mutex::default(),
        }
    }

    pub(crate) fn summary(&self, start: Instant) -> CopySummary {
        let c = &self.c;
        let mut issues =
            std::mem::take(&mut *self.issues.lock().unwrap_or_else(|e| e.into_inner()));
        issues.failed.sort_by(|a, b| a.path.cmp(&b.path));
        issues.partial.sort_by(|a, b| a.path.cmp(&b.path));
        let mut mismatches =
            std::mem::take(&mut *self.mismatches.lock().unwrap_or_else(|e| e.into_inner()));
        mismatches.sort_by(|a, b| a.path.cmp(&b.path));
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
            verify_mismatches: mismatches,
            failed_not_listed: issues.failed_more,
            partial_not_listed: issues.partial_more,
            notices: Vec::new(),
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
        if let (Some(a), true) = (action, self.opts.record_changes) {
            self.progress.change(a, rel);
        }
    }

    fn walk_dir(&self, dir: &DirPair) {
        if !dir.fresh {
            self.clean_dst(dir);
        }
        let r = sys::each_batch(&dir.src, |batch| -> io::Result<()> {
            batch.par_iter().for_each(|e| {
                let rel = dir.rel.join(name_of(&e.name));
                self.entry(dir, &e.name, &e.name, rel);
            });
            Ok(())
        });
        if let Err(e) = r {
            self.fail(&dir.rel, format!("reading directory: {e}"));
        }
    }

    /// Removes leftovers of an interrupted run and, with `--delete`, entries
    /// SRC no longer has. Runs before the directory's entries are copied, so
    /// space is freed first.
    fn clean_dst(&self, dir: &DirPair) {
        let Some(dst) = &dir.dst else { return };
        let r = sys::each_batch(dst, |batch| -> io::Result<()> {
            for e in batch {
                let tmp = is_tmp_name(e.name.to_bytes());
                if !tmp && !self.opts.delete {
                    continue;
                }
                match sys::stat_at_opt(&dir.src, &e.name) {
                    Ok(None) => {}
                    Ok(Some(_)) => continue,
                    Err(err) => {
                        self.fail(&dir.rel.join(name_of(&e.name)), format!("stat: {err}"));
                        continue;
                    }
                }
                let rel = dir.rel.join(name_of(&e.name));
                if !tmp {
                    let is_dir = e.d_type == sys::DT_DIR;
                    if self.opts.filter.excluded(&rel, is_dir) {
                        continue;
                    }
                }
                if self.opts.dry_run {
                    if !tmp {
                        self.c.deleted.fetch_add(1, Relaxed);
                        if self.opts.record_changes {
                            self.progress.change(Action::Delete, &rel);
                        }
                    }
                    continue;
                }
                match self.remove_tree(dst, &e.name, &rel, !tmp) {
                    Ok(()) => {}
                    Err(err) => self.fail(&rel, format!("deleting: {err}")),
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(&dir.rel, format!("reading destination directory: {e}"));
        }
    }

    /// Removes `name` in `dir`, recursively, never following a symlink.
    pub(crate) fn remove_tree(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
        report: bool,
    ) -> Result<(), StepError> {
        let st = sys::stat_at(dir, name).step("stat")?;
        if st.kind() == FileKind::Dir {
            let d = sys::open_dir_at(dir, name).step("open directory")?;
            if !self.is_root && st.perm() & 0o700 != 0o700 {
                sys::chmod_fd(&d, st.perm() | 0o700).step("chmod")?;
            }
            sys::each_batch(&d, |batch| -> Result<(), StepError> {
                for e in batch {
                    self.remove_tree(&d, &e.name, &rel.join(name_of(&e.name)), report)?;
                }
                Ok(())
            })?;
            sys::unlink_at(dir, name, true).step("rmdir")?;
        } else {
            sys::unlink_at(dir, name, false).step("unlink")?;
        }
        if report {
            self.c.deleted.fetch_add(1, Relaxed);
            if self.opts.record_changes {
                self.progress.change(Action::Delete, rel);
            }
        }
        Ok(())
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

    /// One entry of a directory. `sname` and `dname` differ only when a single
    /// file is copied to a new name.
    fn entry(&self, dir: &DirPair, sname: &CStr, dname: &CStr, rel: PathBuf) {
        let st = match sys::stat_at(&dir.src, sname) {
            Ok(st) => st,
            // Vanished since the directory was read: nothing to copy.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => return self.fail(&rel, format!("stat: {e}")),
        };
        let kind = st.kind();
        if self.opts.filter.excluded(&rel, kind == FileKind::Dir) {
            return;
        }
        if kind == FileKind::Dir {
            self.count_source(&st, false);
            self.dir_entry(dir, sname, dname, rel, &st);
        } else {
            let r = if st.nlink > 1 {
                self.linked_leaf(dir, sname, dname, &rel, &st)
            } else {
                self.count_source(&st, false);
                self.leaf(dir, sname, dname, &rel, &st).map(|_| ())
            };
            if let Err(e) = r {
                self.fail(&rel, e);
            }
        }
        self.progress.entry_done();
    }

    /// A non-directory with several names: the first name seen is copied,
    /// later ones become hardlinks to it.
    fn linked_leaf(
        &self,
        dir: &DirPair,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<(), StepError> {
        let first = self.linked((st.dev, st.ino), dir.dst.as_ref(), dname, rel, || {
            self.leaf(dir, sname, dname, rel, st)
        });
        let (first, r) = first?;
        self.count_source(st, !first);
        r
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
            None => sys::link_at(&ldir, &lname, dst, dname).step("link")?,
            Some(c) => {
                if c.kind() == FileKind::Dir {
                    self.remove_tree(dst, dname, rel, false)?;
                }
                let tmp = tmp_name(dname);
                self.clear_tmp(dst, &tmp)?;
                sys::link_at(&ldir, &lname, dst, &tmp).step("link")?;
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

    /// Removes a leftover temporary entry from an interrupted run.
    pub(crate) fn clear_tmp(&self, dst: &File, tmp: &CStr) -> Result<(), StepError> {
        match sys::stat_at_opt(dst, tmp).step("stat temporary")? {
            Some(st) if st.kind() == FileKind::Dir => {
                self.remove_tree(dst, tmp, Path::new(""), false)
            }
            Some(_) => sys::unlink_at(dst, tmp, false).step("remove temporary"),
            None => Ok(()),
        }
    }

    /// A file, symlink, fifo, socket or device.
    fn leaf(
        &self,
        dir: &DirPair,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<(), StepError> {
        let cur = match &dir.dst {
            Some(d) if !dir.fresh => sys::stat_at_opt(d, dname).step("stat destination")?,
            _ => None,
        };
        let kind = st.kind();
        // A destination inode that other names share can only be kept if the
        // source entry is hardlinked too; otherwise fixing it in place would
        // change those other names, so it is replaced, which breaks the link.
        let same_type = cur.is_some_and(|c| c.kind() == kind && (c.nlink == 1 || st.nlink > 1));
        let reusable = same_type
            && match kind {
                FileKind::File => {
                    self.same_content(dir, sname, dname, st, cur.as_ref().unwrap())?
                }
                FileKind::Symlink => {
                    let d = dir.dst.as_ref().expect("cur implies dst");
                    sys::readlink_at(&dir.src, sname).step("readlink")?
                        == sys::readlink_at(d, dname).step("readlink destination")?
                }
                FileKind::CharDev | FileKind::BlockDev => cur.unwrap().rdev == st.rdev,
                _ => true,
            };
        if reusable {
            let d = dir.dst.as_ref().expect("cur implies dst");
            let c = cur.expect("reusable implies cur");
            let src_x =
                read_xattrs(&XTarget::At(&dir.src, sname), self.policy).step("read xattrs")?;
            return self.fix_in_place(Target::At(d, dname, kind), st, &src_x, &c, rel);
        }
        let outcome = if cur.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        let Some(d) = dir.dst.as_ref().filter(|_| !self.opts.dry_run) else {
            self.record(outcome, rel);
            return Ok(());
        };
        if kind == FileKind::File
            && st.size == 0
            && cur.is_none()
            && self.create_empty(dir, sname, d, dname, st, rel)?
        {
            return Ok(());
        }
        let mut partial = Vec::new();
        if kind == FileKind::File {
            self.put_new_file(d, dname, st.perm() & 0o777, cur, rel, |out| {
                self.write_file(dir, sname, out, st, &mut partial)
            })?;
        } else {
            self.put_new_special(d, dname, cur, rel, |tmp| {
                self.write_special(dir, sname, d, tmp, st, &mut partial)
            })?;
        }
        self.record(outcome, rel);
        self.partial(rel, partial);
        Ok(())
    }

    /// A new empty file is created under its final name: it has no content a
    /// crash could tear, and this saves a rename per file (a tree of a
    /// million empty files is a real case). If a crash leaves its metadata
    /// unfinished, the next run completes it: same size, another mtime, so
    /// the contents are compared (equal) and the metadata fixed in place.
    /// Returns false if the name was taken meanwhile (the caller then goes
    /// the temporary-name way).
    fn create_empty(
        &self,
        dir: &DirPair,
        sname: &CStr,
        d: &File,
        dname: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> Result<bool, StepError> {
        let out = match sys::create_excl_at(d, dname, st.perm() & 0o777) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(StepError {
                    op: "create",
                    err: e,
                })
            }
        };
        let none = Xattrs::new();
        let have_x = (!dir.acl_inherit).then_some(&none);
        let mut partial = Vec::new();
        let src_x = read_xattrs(&XTarget::At(&dir.src, sname), self.policy).step("read xattrs")?;
        let have = sys::stat_fd(&out).step("stat new file")?;
        self.sync_meta(
            Target::Fd(&out),
            st,
            &src_x,
            &have,
            Fresh::Yes(have_x),
            &mut partial,
        )?;
        self.record(Outcome::Created, rel);
        self.partial(rel, partial);
        Ok(true)
    }

    /// Fills the new regular file `out` with SRC's data and metadata.
    fn write_file(
        &self,
        dir: &DirPair,
        sname: &CStr,
        out: &File,
        st: &Stat,
        partial: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let sdir = &dir.src;
        // What a new entry carries before haul sets anything: no attributes,
        // unless the directory hands down a default ACL.
        let none = Xattrs::new();
        let have_x = (!dir.acl_inherit).then_some(&none);
        // An empty file has no data to read: its attributes are read by
        // name, which saves an open and a close per file (a tree of a
        // million empty files is a real case).
        let src_x = if st.size == 0 {
            read_xattrs(&XTarget::At(sdir, sname), self.policy).step("read xattrs")?
        } else {
            let src = sys::open_read_at(sdir, sname).step("open")?;
            self.copy_data(&src, out, st).step("copy data")?;
            read_xattrs(&XTarget::Fd(&src), self.policy).step("read xattrs")?
        };
        let have = sys::stat_fd(out).step("stat new file")?;
        self.sync_meta(
            Target::Fd(out),
            st,
            &src_x,
            &have,
            Fresh::Yes(have_x),
            partial,
        )
        .map(drop)
    }

    /// Creates a symlink, fifo, socket or device under the temporary name
    /// `tmp`, complete with metadata.
    fn write_special(
        &self,
        dir: &DirPair,
        sname: &CStr,
        d: &File,
        tmp: &CStr,
        st: &Stat,
        partial: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let sdir = &dir.src;
        let kind = st.kind();
        let none = Xattrs::new();
        let have_x = (!dir.acl_inherit).then_some(&none);
        let target = match kind {
            FileKind::Symlink => Some(sys::readlink_at(sdir, sname).step("readlink")?),
            _ => None,
        };
        let have = self.create_special(d, tmp, st, target.as_deref())?;
        let src_x = read_xattrs(&XTarget::At(sdir, sname), self.policy).step("read xattrs")?;
        let t = Target::At(d, tmp, kind);
        self.sync_meta(t, st, &src_x, &have, Fresh::Yes(have_x), partial)
            .map(drop)
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
    /// left behind and `cur` is untouched.
    pub(crate) fn put_new_file(
        &self,
        d: &File,
        name: &CStr,
        perm: u32,
        cur: Option<Stat>,
        rel: &Path,
        write: impl FnOnce(&File) -> Result<(), StepError>,
    ) -> Result<(), StepError> {
        let f = self.new_file(d, name, perm, cur.is_some())?;
        let written = write(&f.file).and_then(|()| self.clear_dir_for(d, name, cur, rel));
        if let Err(e) = written {
            self.discard(d, f);
            return Err(e);
        }
        self.publish(d, f, name)
    }

    /// [`Run::put_new_file`] for a symlink, fifo, socket or device: `write`
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
    /// is removed, since nothing can be renamed or linked over it.
    fn clear_dir_for(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir => self.remove_tree(d, name, rel, false),
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
    fn publish(&self, d: &File, f: NewFile, name: &CStr) -> Result<(), StepError> {
        let tmp = match f.tmp {
            Some(tmp) => tmp,
            None => match sys::link_fd_at(&f.file, d, name) {
                Ok(()) => return Ok(()),
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
        self.rename_into_place(d, &tmp, name)
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

    /// Whether an existing destination file already holds SRC's content.
    fn same_content(
        &self,
        dir: &DirPair,
        sname: &CStr,
        dname: &CStr,
        st: &Stat,
        cur: &Stat,
    ) -> Result<bool, StepError> {
        if cur.size != st.size {
            return Ok(false);
        }
        if !self.opts.checksum && cur.mtime == st.mtime {
            return Ok(true);
        }
        let d = dir.dst.as_ref().expect("cur implies dst");
        let src = sys::open_read_at(&dir.src, sname).step("open")?;
        let dst = sys::open_rw_at(d, dname).step("open destination")?;
        if self.opts.checksum {
            let a = hash_file(&src).step("read")?;
            return Ok(a == hash_file(&dst).step("read destination")?);
        }
        // Same size, different mtime: the content may well be unchanged
        // (`touch`, a restore, an editor that saved without changes). Comparing
        // costs the same reads as copying but no writes, and keeps the inode
        // and any other names of it; the first difference ends it.
        files_equal(&src, &dst).step("compare")
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
        if self.opts.owner {
            let (uid, gid) = (self.opts.ids.uid(src.uid), self.opts.ids.gid(src.gid));
            if (have.uid, have.gid) != (uid, gid) {
                wrote = true;
                if !dry {
                    match t.chown(uid, gid) {
                        // chown clears setuid and setgid, nothing else.
                        Ok(()) => force_mode = src.perm() & 0o6000 != 0,
                        Err(e) => partial.push(format!("owner {uid}:{gid} not set: {e}")),
                    }
                }
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
        if !t.is_symlink() && (force_mode || have.perm() != src.perm()) {
            wrote |= have.perm() != src.perm();
            if !dry {
                if let Err(e) = t.chmod(src.perm()) {
                    partial.push(format!("mode {:o} not set: {e}", src.perm()));
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
        Ok(wrote)
    }

    /// Copies file data, keeping holes: reflink if possible, else
    /// `copy_file_range` per data extent, else a fixed-size userspace buffer.
    fn copy_data(&self, src: &File, dst: &File, st: &Stat) -> io::Result<()> {
        let size = st.size;
        if size == 0 {
            return Ok(());
        }
        // Fewer allocated blocks than the size implies holes worth preserving.
        let sparse = st.blocks.saturating_mul(512) < size;
        if !sparse {
            if self.reflink_ok.load(Relaxed) {
                match sys::reflink(src, dst) {
                    Ok(()) => {
                        self.copied(size);
                        return Ok(());
                    }
                    Err(e) if sys::is_unsupported(&e) => self.reflink_ok.store(false, Relaxed),
                    Err(e) => return Err(e),
                }
            }
            return self.copy_extent(src, dst, 0, size);
        }
        let mut off = 0;
        while off < size {
            let Some(start) = sys::seek_data(src, off)? else {
                break;
            };
            if start >= size {
                break;
            }
            let end = sys::seek_hole(src, start)?.min(size);
            self.copy_extent(src, dst, start, end - start)?;
            off = end;
        }
        sys::truncate_fd(dst, size)
    }

    pub(crate) fn copied(&self, n: u64) {
        self.c.copied.fetch_add(n, Relaxed);
        self.progress.bytes(n);
    }

    fn copy_extent(&self, src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        if self.cfr_ok.load(Relaxed) {
            while done < len {
                let want = (len - done).min(1 << 30) as usize;
                match sys::copy_range(src, off + done, dst, off + done, want) {
                    Ok(0) => return Ok(()), // source shrank under us
                    Ok(n) => {
                        done += n as u64;
                        self.copied(n as u64);
                    }
                    Err(e) if done == 0 && sys::is_unsupported(&e) => {
                        self.cfr_ok.store(false, Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if done == len {
                return Ok(());
            }
        }
        with_buffer(|buf| {
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = src.read_at(&mut buf[..want], off + done)?;
                if n == 0 {
                    return Ok(());
                }
                dst.write_all_at(&buf[..n], off + done)?;
                done += n as u64;
                self.copied(n as u64);
            }
            Ok(())
        })
    }

    /// A subdirectory: make sure DST has a real directory there (replacing a
    /// symlink or file, never following it), copy its contents, then its metadata.
    fn dir_entry(&self, parent: &DirPair, sname: &CStr, dname: &CStr, rel: PathBuf, st: &Stat) {
        let src = match sys::open_dir_at(&parent.src, sname) {
            Ok(f) => f,
            Err(e) => return self.fail(&rel, format!("open directory: {e}")),
        };
        let (dst, existed) = match self.ensure_dir(parent.dst.as_ref(), parent.fresh, dname, &rel) {
            Ok(x) => x,
            Err(e) => return self.fail(&rel, e),
        };
        let acl_inherit = match &dst {
            Some(d) if existed => has_default_acl(d),
            _ => parent.acl_inherit,
        };
        let child = DirPair {
            src,
            dst,
            rel,
            fresh: !existed,
            acl_inherit,
        };
        self.walk_dir(&child);
        self.finish_dir(&child, st, existed, &child.rel);
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
                if other.is_some() {
                    sys::unlink_at(pd, dname, false).step("remove non-directory")?;
                }
                sys::mkdir_at(pd, dname, 0o700).step("mkdir")?;
                let d = sys::open_dir_at(pd, dname).step("open new directory")?;
                self.record(outcome, rel);
                Ok((Some(d), false))
            }
        }
    }

    /// Applies a directory's metadata once its contents are done.
    fn finish_dir(&self, dir: &DirPair, st: &Stat, existed: bool, rel: &Path) {
        let Some(d) = &dir.dst else { return };
        let src_x = || read_xattrs(&XTarget::Fd(&dir.src), self.policy).step("read xattrs");
        self.apply_dir_meta(d, st, src_x, existed, rel);
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

    /// `--verify`: re-reads DST and compares it with SRC entry by entry.
    fn verify_dir(&self, src: &File, dst: &File, rel: PathBuf) {
        let r = sys::each_batch(src, |batch| -> io::Result<()> {
            batch.par_iter().for_each(|e| {
                self.verify_entry(src, dst, &e.name, &e.name, rel.join(name_of(&e.name)));
            });
            Ok(())
        });
        if let Err(e) = r {
            self.mismatch(&rel, format!("reading directory: {e}"));
        }
    }

    fn verify_entry(&self, sdir: &File, ddir: &File, sname: &CStr, dname: &CStr, rel: PathBuf) {
        let r = (|| -> Result<Option<String>, StepError> {
            let st = sys::stat_at(sdir, sname).step("stat")?;
            if self.opts.filter.excluded(&rel, st.kind() == FileKind::Dir) {
                return Ok(None);
            }
            let Some(dt) = sys::stat_at_opt(ddir, dname).step("stat destination")? else {
                return Ok(Some("missing from destination".into()));
            };
            if dt.kind() != st.kind() {
                return Ok(Some(format!(
                    "type differs: {:?} vs {:?}",
                    st.kind(),
                    dt.kind()
                )));
            }
            match st.kind() {
                FileKind::Dir => {
                    let s = sys::open_dir_at(sdir, sname).step("open directory")?;
                    let d = sys::open_dir_at(ddir, dname).step("open destination directory")?;
                    self.verify_dir(&s, &d, rel.clone());
                }
                FileKind::File => {
                    if dt.size != st.size {
                        return Ok(Some(format!("size differs: {} vs {}", st.size, dt.size)));
                    }
                    let a =
                        hash_file(&sys::open_read_at(sdir, sname).step("open")?).step("read")?;
                    let b = hash_file(&sys::open_read_at(ddir, dname).step("open destination")?)
                        .step("read destination")?;
                    if a != b {
                        return Ok(Some(format!(
                            "content differs: blake3 {} vs {}",
                            a.to_hex(),
                            b.to_hex()
                        )));
                    }
                }
                FileKind::Symlink => {
                    let same = sys::readlink_at(sdir, sname).step("readlink")?
                        == sys::readlink_at(ddir, dname).step("readlink destination")?;
                    return Ok((!same).then(|| "symlink target differs".into()));
                }
                _ => {}
            }
            Ok(None)
        })();
        match r {
            Ok(None) => {}
            Ok(Some(m)) => self.mismatch(&rel, m),
            Err(e) => self.mismatch(&rel, e.to_string()),
        }
    }

    fn mismatch(&self, rel: &Path, reason: String) {
        let mut m = self.mismatches.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_ISSUES {
            m.push(EntryIssue {
                path: rel.to_path_buf(),
                reason,
            });
        }
    }
}

/// Whether two files hold the same bytes, read side by side through the
/// per-thread buffer; stops at the first difference.
fn files_equal(a: &File, b: &File) -> io::Result<bool> {
    with_buffer(|buf| {
        let (x, y) = buf.split_at_mut(BUF / 2);
        let mut off = 0u64;
        loop {
            let n = read_full_at(a, x, off)?;
            let m = read_full_at(b, &mut y[..x.len()], off)?;
            if n != m || x[..n] != y[..n] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
            off += n as u64;
        }
    })
}

/// Fills `buf` from `off` unless the file ends first; returns the bytes read.
fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// blake3 of a file's content, read through a fixed-size buffer.
pub(crate) fn hash_file(f: &File) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    with_buffer(|buf| {
        let mut off = 0u64;
        loop {
            let n = f.read_at(buf, off)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let opts = CopyOptions::default();
        let run = Run::new(&opts, &crate::NoProgress);
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
