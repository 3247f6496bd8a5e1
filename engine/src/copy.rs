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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::idmap::IdMap;
use crate::meta::{read_xattrs, sync_xattrs, FileKind, XTarget, XattrPolicy, Xattrs};
use crate::progress::{Action, Progress};
use crate::sys::{self, Stat};
use crate::walk::{next_dir_batch, walk, Opened, TreeVisitor};

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

/// What one entry's work needs to know of its directory: the source and
/// destination handles (the latter absent in a dry run below a directory
/// that does not exist yet) and its path relative to the root.
#[derive(Clone, Copy)]
struct DirPair<'a> {
    src: &'a File,
    dst: Option<&'a File>,
    rel: &'a Path,
    /// DST was created by this run and holds only what this run put there:
    /// nothing in it needs to be looked up or cleaned.
    fresh: bool,
    /// New entries in DST may inherit a default ACL, so their attributes must
    /// be read back rather than assumed empty.
    acl_inherit: bool,
}

/// A directory of the copy, kept by the walk (`walk.rs`) until everything
/// below it is done, when its metadata is applied. It keeps its destination
/// handle for that, and of the source only its stat and attributes, read
/// when it was opened: one handle per pending level, so a chain 10,000
/// deep fits the usual open-file limits.
struct CopyDir {
    dst: Option<File>,
    rel: PathBuf,
    fresh: bool,
    acl_inherit: bool,
    existed: bool,
    st: Stat,
    src_x: Mutex<Option<Result<Xattrs, StepError>>>,
}

impl CopyDir {
    fn pair<'a>(&'a self, src: &'a File) -> DirPair<'a> {
        DirPair {
            src,
            dst: self.dst.as_ref(),
            rel: &self.rel,
            fresh: self.fresh,
            acl_inherit: self.acl_inherit,
        }
    }
}

/// A subdirectory found in the source, opened when its turn comes.
struct SubDir {
    /// The source directory it is in (kept open only until then).
    parent: Arc<File>,
    name: CString,
    rel: PathBuf,
    st: Stat,
}

/// The copy's [`TreeVisitor`].
struct CopyWalk<'r, 'a>(&'r Run<'a>);

impl<'a> TreeVisitor for CopyWalk<'_, 'a> {
    type Dir = CopyDir;
    type Listing = sys::DirStream;
    type Ctx = Arc<File>;
    type Item = sys::RawEntry;
    type Sub = SubDir;

    fn next_batch(
        &self,
        dir: &CopyDir,
        listing: &mut sys::DirStream,
        out: &mut Vec<sys::RawEntry>,
    ) -> bool {
        next_dir_batch(listing, out, |e| {
            self.0.fail(&dir.rel, format!("reading directory: {e}"))
        })
    }

    fn visit(&self, dir: &CopyDir, src: &Arc<File>, e: &sys::RawEntry) -> Option<SubDir> {
        let rel = dir.rel.join(name_of(&e.name));
        let (rel, st) = self.0.entry(&dir.pair(src), &e.name, &e.name, rel)?;
        Some(SubDir {
            parent: src.clone(),
            name: e.name.clone(),
            rel,
            st,
        })
    }

    fn open(&self, parent: &CopyDir, sub: SubDir) -> Option<Opened<Self>> {
        self.0.open_subdir(parent, sub)
    }

    fn finish(&self, dir: &CopyDir, _: Option<&CopyDir>) {
        self.0.finish_dir(dir);
        if !dir.rel.as_os_str().is_empty() {
            self.0.progress.entry_done();
        }
    }
}

/// `--verify`'s [`TreeVisitor`]: a directory holds nothing once listed.
struct VerifyWalk<'r, 'a>(&'r Run<'a>);

/// A directory pair found by `--verify`, opened when its turn comes.
struct VerifySub {
    parents: Arc<(File, File)>,
    name: CString,
    rel: PathBuf,
}

impl TreeVisitor for VerifyWalk<'_, '_> {
    type Dir = PathBuf;
    type Listing = sys::DirStream;
    type Ctx = Arc<(File, File)>;
    type Item = sys::RawEntry;
    type Sub = VerifySub;

    fn next_batch(
        &self,
        rel: &PathBuf,
        listing: &mut sys::DirStream,
        out: &mut Vec<sys::RawEntry>,
    ) -> bool {
        next_dir_batch(listing, out, |e| {
            self.0.mismatch(rel, format!("reading directory: {e}"))
        })
    }

    fn visit(
        &self,
        rel: &PathBuf,
        dirs: &Arc<(File, File)>,
        e: &sys::RawEntry,
    ) -> Option<VerifySub> {
        let crel = rel.join(name_of(&e.name));
        let descend = self
            .0
            .verify_entry(&dirs.0, &dirs.1, &e.name, &e.name, crel.clone());
        descend.then(|| VerifySub {
            parents: dirs.clone(),
            name: e.name.clone(),
            rel: crel,
        })
    }

    fn open(&self, _: &PathBuf, sub: VerifySub) -> Option<Opened<Self>> {
        let r = (|| -> Result<_, StepError> {
            let s = sys::open_dir_at(&sub.parents.0, &sub.name).step("open directory")?;
            let d =
                sys::open_dir_at(&sub.parents.1, &sub.name).step("open destination directory")?;
            let l = sys::DirStream::new(&s).step("read directory")?;
            Ok((l, Arc::new((s, d))))
        })();
        match r {
            Ok(listing) => Some((sub.rel, Some(listing))),
            Err(e) => {
                self.0.mismatch(&sub.rel, e.to_string());
                None
            }
        }
    }

    fn finish(&self, _: &PathBuf, _: Option<&PathBuf>) {}
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
        // Refused before DST is created: a refused run changes nothing.
        refuse_dst_in_src(src, dst)?;
        let src_dir = sys::open_dir_path(src).map_err(|e| Error::io("opening source", src, e))?;
        let (dst_dir, existed) = open_or_create_root(dst, opts.dry_run)?;
        if let Some(d) = &dst_dir {
            let dst_st = sys::stat_fd(d).map_err(|e| Error::io("reading destination", dst, e))?;
            if (dst_st.dev, dst_st.ino) == (src_st.dev, src_st.ino) {
                return Err(Error::invalid(dst, "SRC and DST are the same directory"));
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
                        scan(d, &opts.filter, progress);
                    }
                    progress.discovery_done();
                });
            }
            pool.install(|| {
                run.c.dirs.fetch_add(1, Relaxed);
                // Also in a dry run, which must count what a real run does.
                if !existed {
                    run.record(Outcome::Created, Path::new(""));
                }
                let acl_inherit = dst_dir.as_ref().is_some_and(has_default_acl);
                let verify_dst = match (&dst_dir, opts.verify && !opts.dry_run) {
                    (Some(d), true) => d.try_clone().ok(),
                    _ => None,
                };
                let root = CopyDir {
                    dst: dst_dir,
                    rel: PathBuf::new(),
                    fresh: !existed,
                    acl_inherit,
                    existed,
                    st: src_st,
                    src_x: Mutex::new(Some(
                        read_xattrs(&XTarget::Fd(&src_dir), run.policy).step("read xattrs"),
                    )),
                };
                let src_dir = Arc::new(src_dir);
                let listing = run.start_listing(&root, &src_dir);
                walk(
                    &CopyWalk(run),
                    (root, listing.map(|l| (l, src_dir.clone()))),
                );
                if let Some(d) = verify_dst {
                    match sys::DirStream::new(&src_dir).and_then(|l| Ok((l, src_dir.try_clone()?)))
                    {
                        Ok((l, s)) => {
                            walk(
                                &VerifyWalk(run),
                                (PathBuf::new(), Some((l, Arc::new((s, d))))),
                            );
                        }
                        Err(e) => run.mismatch(Path::new(""), format!("reading directory: {e}")),
                    }
                }
            });
        });
    } else {
        // A single non-directory. Like a directory, a SRC typed as a
        // symlink is followed: what it points to is copied, under the
        // name typed. DST names the copy, or, if it is a directory (or ends
        // in `/`, as for rsync), the directory it lands in, as with cp.
        let typed = src
            .file_name()
            .ok_or_else(|| Error::invalid(src, "path has no final component"))?;
        let real = std::fs::canonicalize(src).map_err(|e| Error::io("reading source", src, e))?;
        let (sdir, sname) = split_parent(&real)?;
        let into_dir = match sys::stat_path(dst, true) {
            Ok(st) => st.kind() == FileKind::Dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                dst.as_os_str().as_bytes().ends_with(b"/")
            }
            Err(e) => return Err(Error::io("reading destination", dst, e)),
        };
        let (ddir_path, dname) = if into_dir {
            let name = CString::new(typed.as_bytes())
                .map_err(|_| Error::invalid(src, "path contains a NUL"))?;
            (dst.to_path_buf(), name)
        } else {
            split_parent(dst)?
        };
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
            src: &sdir,
            dst: ddir.as_ref(),
            rel: Path::new(""),
            fresh: false,
            acl_inherit: true,
        };
        let rel = PathBuf::from(name_of(&dname));
        pool.install(|| {
            run.entry(&pair, &sname, &dname, rel);
            if opts.verify && !opts.dry_run {
                if let Some(d) = pair.dst {
                    run.verify_entry(pair.src, d, &sname, &dname, PathBuf::from(name_of(&dname)));
                }
            }
        });
    }
    Ok(run.summary(start))
}

/// Counting-only walk for progress totals (entries and bytes), run on its
/// own thread beside the real work so a progress bar can show an ETA.
/// Depth first from a list of directories still to read, each named by its
/// parent's handle: no recursion, and a handle stays open only while
/// entries below it wait.
pub(crate) fn scan(root: File, filter: &Filter, progress: &dyn Progress) {
    let mut todo: Vec<(Arc<File>, CString, PathBuf)> = Vec::new();
    let mut next = Some((root, PathBuf::new()));
    loop {
        let (dir, rel) = match next.take() {
            Some(d) => d,
            None => {
                let Some((parent, name, rel)) = todo.pop() else {
                    break;
                };
                // A scan is only an estimate for the bar: unreadable parts
                // are skipped.
                match sys::open_dir_at(&parent, &name) {
                    Ok(d) => (d, rel),
                    Err(_) => continue,
                }
            }
        };
        let dir = Arc::new(dir);
        let _ = sys::each_batch(&dir, |batch| -> io::Result<()> {
            let (mut files, mut bytes) = (0, 0);
            for e in batch {
                let Ok(st) = sys::stat_at(&dir, &e.name) else {
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
                    todo.push((dir.clone(), e.name.clone(), crel));
                }
            }
            progress.discovered(files, bytes);
            Ok(())
        });
    }
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

/// Refuses a DST that is SRC or lies inside it, judged on the path DST
/// has or would have once created: every part of it that exists is
/// resolved (symlinks, `..`), the rest is taken as typed. This runs before
/// anything is created, so a refused run leaves no trace.
fn refuse_dst_in_src(src: &Path, dst: &Path) -> Result<(), Error> {
    let s = std::fs::canonicalize(src).map_err(|e| Error::io("reading source", src, e))?;
    let d = planned_path(dst).map_err(|e| Error::io("reading destination", dst, e))?;
    if d == s {
        return Err(Error::invalid(dst, "SRC and DST are the same directory"));
    }
    if d.starts_with(&s) {
        return Err(Error::invalid(dst, "DST lies inside SRC"));
    }
    Ok(())
}

/// The absolute path `p` names: resolved as far as it exists, then lexically
/// (`..` removes the part before it, as `mkdir -p` would walk it).
fn planned_path(p: &Path) -> io::Result<PathBuf> {
    use std::path::Component;
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.push("..");
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        }
        out = match std::fs::canonicalize(&out) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if out.ends_with("..") {
                    out.pop();
                    out.pop();
                }
                out
            }
            Err(e) => return Err(e),
        };
    }
    Ok(out)
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
        issues.notices.sort_by(|a, b| a.path.cmp(&b.path));
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
        if let (Some(a), true) = (action, self.opts.record_changes) {
            self.progress.change(a, rel);
        }
    }

    /// Cleans an existing destination directory and starts reading the
    /// source one (`None`: it cannot be read, which is reported).
    fn start_listing(&self, dir: &CopyDir, src: &File) -> Option<sys::DirStream> {
        if !dir.fresh {
            self.clean_dst(&dir.pair(src));
        }
        match sys::DirStream::new(src) {
            Ok(l) => Some(l),
            Err(e) => {
                self.fail(&dir.rel, format!("reading directory: {e}"));
                None
            }
        }
    }

    /// Removes leftovers of an interrupted run and, with `--delete`, entries
    /// SRC no longer has. Runs before the directory's entries are copied, so
    /// space is freed first.
    fn clean_dst(&self, dir: &DirPair<'_>) {
        let Some(dst) = dir.dst else { return };
        let r = sys::each_batch(dst, |batch| -> io::Result<()> {
            for e in batch {
                let maybe_tmp = is_tmp_name(e.name.to_bytes());
                if !maybe_tmp && !self.opts.delete {
                    continue;
                }
                let rel = dir.rel.join(name_of(&e.name));
                match sys::stat_at_opt(dir.src, &e.name) {
                    Ok(None) => {}
                    Ok(Some(_)) => continue,
                    Err(err) => {
                        self.fail(&rel, format!("stat: {err}"));
                        continue;
                    }
                }
                let is_dir = match e.d_type {
                    sys::DT_DIR => true,
                    sys::DT_UNKNOWN => match sys::stat_at_opt(dst, &e.name) {
                        Ok(Some(st)) => st.kind() == FileKind::Dir,
                        Ok(None) => continue,
                        Err(err) => {
                            self.fail(&rel, format!("stat destination: {err}"));
                            continue;
                        }
                    },
                    _ => false,
                };
                // Only what haul itself could have left is a leftover: a
                // non-directory under a temporary name. A directory of that
                // name is the user's.
                let tmp = maybe_tmp && !is_dir;
                if !tmp && (!self.opts.delete || self.opts.filter.excluded(&rel, is_dir)) {
                    continue;
                }
                if self.opts.dry_run {
                    if !tmp {
                        if let Err(err) = self.dry_remove_tree(dst, &e.name, &rel) {
                            self.fail(&rel, format!("deleting: {err}"));
                        }
                    }
                    continue;
                }
                if let Err(err) = self.remove_tree(dst, &e.name, &rel, !tmp) {
                    self.fail(&rel, format!("deleting: {err}"));
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(dir.rel, format!("reading destination directory: {e}"));
        }
    }

    /// `--delete` for a source that is not a directory (a snapshot's tree):
    /// removes every entry of `dst` for which `wanted` is false and that the
    /// filter does not exclude, and counts it as deleted. Leftover temporary
    /// files go too, uncounted. A dry run only counts and lists.
    pub(crate) fn remove_extraneous(&self, dst: &File, rel: &Path, wanted: impl Fn(&[u8]) -> bool) {
        let r = sys::each_batch(dst, |batch| -> io::Result<()> {
            for e in batch {
                let name = e.name.to_bytes();
                if wanted(name) {
                    continue;
                }
                let crel = rel.join(name_of(&e.name));
                let is_dir = match e.d_type {
                    sys::DT_DIR => true,
                    sys::DT_UNKNOWN => match sys::stat_at_opt(dst, &e.name) {
                        Ok(Some(st)) => st.kind() == FileKind::Dir,
                        Ok(None) => continue,
                        Err(err) => {
                            self.fail(&crel, format!("stat destination: {err}"));
                            continue;
                        }
                    },
                    _ => false,
                };
                let tmp = is_tmp_name(name) && !is_dir;
                if !tmp && self.opts.filter.excluded(&crel, is_dir) {
                    continue;
                }
                if self.opts.dry_run {
                    if !tmp {
                        if let Err(err) = self.dry_remove_tree(dst, &e.name, &crel) {
                            self.fail(&crel, format!("deleting: {err}"));
                        }
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
            if self.opts.filter.excluded(&crel, is_dir) {
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

    /// A dry run's [`Run::remove_tree`]: counts and lists as deleted what
    /// it would remove, and touches nothing. Like it, it stops with an
    /// error at an entry the filter excludes (what was counted before stays
    /// counted, as what was removed before stays removed). Depth first from
    /// a list of directories still to read, each named by its parent's
    /// handle, as [`scan`] goes: no recursion.
    pub(crate) fn dry_remove_tree(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
    ) -> Result<(), StepError> {
        let st = sys::stat_at(dir, name).step("stat")?;
        if st.kind() != FileKind::Dir {
            self.deleted(true, rel);
            return Ok(());
        }
        let mut todo: Vec<(Arc<File>, CString, PathBuf)> = Vec::new();
        let first = sys::open_dir_at(dir, name).step("open directory")?;
        let mut next = Some((first, rel.to_path_buf()));
        loop {
            let (d, drel) = match next.take() {
                Some(x) => x,
                None => {
                    let Some((parent, name, crel)) = todo.pop() else {
                        break;
                    };
                    let d = sys::open_dir_at(&parent, &name).step("open directory")?;
                    (d, crel)
                }
            };
            let d = Arc::new(d);
            let mut excluded = false;
            sys::each_batch(&d, |batch| -> io::Result<()> {
                for e in batch {
                    if excluded {
                        break;
                    }
                    let crel = drel.join(name_of(&e.name));
                    let is_dir = sys::stat_at(&d, &e.name)?.kind() == FileKind::Dir;
                    if self.opts.filter.excluded(&crel, is_dir) {
                        excluded = true;
                        break;
                    }
                    if is_dir {
                        todo.push((d.clone(), e.name.clone(), crel.clone()));
                    }
                    self.deleted(true, &crel);
                }
                Ok(())
            })
            .step("read directory")?;
            if excluded {
                return Err(StepError {
                    op: "cannot remove directory holding excluded entries",
                    err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
                });
            }
        }
        self.deleted(true, rel);
        Ok(())
    }

    /// Counts (and, with `-v`, lists) one removed entry, if `report`.
    fn deleted(&self, report: bool, rel: &Path) {
        if report {
            self.c.deleted.fetch_add(1, Relaxed);
            if self.opts.record_changes {
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

    /// One entry of a directory. `sname` and `dname` differ only when a single
    /// file is copied to a new name. A directory is handed back (its path and
    /// stat), to be walked; everything else is done here.
    fn entry(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        dname: &CStr,
        rel: PathBuf,
    ) -> Option<(PathBuf, Stat)> {
        let st = match sys::stat_at(dir.src, sname) {
            Ok(st) => st,
            // Vanished since the directory was read: nothing to copy.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.fail(&rel, format!("stat: {e}"));
                return None;
            }
        };
        let kind = st.kind();
        if self.opts.filter.excluded(&rel, kind == FileKind::Dir) {
            return None;
        }
        self.check_owner_map(&st, &rel);
        if kind == FileKind::Dir {
            self.count_source(&st, false);
            return Some((rel, st));
        }
        let r = if st.nlink > 1 {
            self.linked_leaf(dir, sname, dname, &rel, &st)
        } else {
            self.count_source(&st, false);
            self.leaf(dir, sname, dname, &rel, &st).map(|_| ())
        };
        if let Err(e) = r {
            self.fail(&rel, e);
        }
        self.progress.entry_done();
        None
    }

    /// A non-directory with several names: the first name seen is copied,
    /// later ones become hardlinks to it.
    fn linked_leaf(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<(), StepError> {
        let first = self.linked((st.dev, st.ino), dir.dst, dname, rel, || {
            self.leaf(dir, sname, dname, rel, st)
        });
        let (first, r) = first?;
        self.count_source(st, !first);
        r
    }

    /// Hardlink groups, for any source: `key` names the inode. The first
    /// name met is written by `write_first`, which says whether it kept the
    /// inode already there; later names are linked to it.
    /// Returns (whether this was the first name, the write's result).
    #[allow(clippy::type_complexity)]
    pub(crate) fn linked(
        &self,
        key: (u64, u64),
        dst: Option<&File>,
        dname: &CStr,
        rel: &Path,
        write_first: impl FnOnce() -> Result<bool, StepError>,
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
            // In a dry run the first name still has its old inode, which
            // the later names keep only if a real run would keep it too.
            (Ok(kept), Some(d)) if *kept || !self.opts.dry_run => match sys::stat_at(d, dname) {
                Ok(s) => Link::Done {
                    rel: rel.to_path_buf(),
                    dst: Some((s.dev, s.ino)),
                },
                Err(_) => Link::Failed,
            },
            (Ok(_), _) => Link::Done {
                rel: rel.to_path_buf(),
                dst: None,
            },
            (Err(_), _) => Link::Failed,
        };
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, state);
        Ok((true, r.map(drop)))
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
    fn set_new_attrs(&self, f: &File, st: &Stat, partial: &mut Vec<String>) {
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
            Some(c) if c.kind() == FileKind::Dir && !self.opts.delete => {
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

    /// A file, symlink, fifo, socket or device. Returns whether the entry
    /// already in DST was kept (its metadata fixed in place, if need be).
    fn leaf(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<bool, StepError> {
        let cur = match dir.dst {
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
                    let d = dir.dst.expect("cur implies dst");
                    sys::readlink_at(dir.src, sname).step("readlink")?
                        == sys::readlink_at(d, dname).step("readlink destination")?
                }
                FileKind::CharDev | FileKind::BlockDev => cur.unwrap().rdev == st.rdev,
                _ => true,
            };
        if reusable {
            let d = dir.dst.expect("cur implies dst");
            let c = cur.expect("reusable implies cur");
            let src_x =
                read_xattrs(&XTarget::At(dir.src, sname), self.policy).step("read xattrs")?;
            return self
                .fix_in_place(Target::At(d, dname, kind), st, &src_x, &c, rel)
                .map(|()| true);
        }
        if let (Some(d), Some(c)) = (dir.dst, &cur) {
            self.may_replace(d, dname, Some(c))?;
            if !self.opts.dry_run {
                self.unlock(d, dname, c)?;
            }
        }
        let outcome = if cur.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        let Some(d) = dir.dst.filter(|_| !self.opts.dry_run) else {
            self.record(outcome, rel);
            return Ok(false);
        };
        if kind == FileKind::File
            && st.size == 0
            && cur.is_none()
            && self.create_empty(dir, sname, d, dname, st, rel)?
        {
            return Ok(false);
        }
        let mut partial = Vec::new();
        if kind == FileKind::File {
            let f = self.put_new_file(d, dname, st.perm() & 0o777, cur, rel, |out| {
                self.write_file(dir, sname, out, st, rel, &mut partial)
            })?;
            self.set_new_attrs(&f, st, &mut partial);
        } else {
            self.put_new_special(d, dname, cur, rel, |tmp| {
                self.write_special(dir, sname, d, tmp, st, &mut partial)
            })?;
        }
        self.record(outcome, rel);
        self.partial(rel, partial);
        Ok(false)
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
        dir: &DirPair<'_>,
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
        let src_x = read_xattrs(&XTarget::At(dir.src, sname), self.policy).step("read xattrs")?;
        let have = sys::stat_fd(&out).step("stat new file")?;
        self.sync_meta(
            Target::Fd(&out),
            st,
            &src_x,
            &have,
            Fresh::Yes(have_x),
            &mut partial,
        )?;
        self.set_new_attrs(&out, st, &mut partial);
        self.record(Outcome::Created, rel);
        self.partial(rel, partial);
        Ok(true)
    }

    /// Fills the new regular file `out` with SRC's data and metadata.
    fn write_file(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        out: &File,
        st: &Stat,
        rel: &Path,
        partial: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let sdir = dir.src;
        // What a new entry carries before haul sets anything: no attributes,
        // unless the directory hands down a default ACL.
        let none = Xattrs::new();
        let have_x = (!dir.acl_inherit).then_some(&none);
        // An empty file has no data to read: its attributes are read by
        // name, which saves an open and a close per file (a tree of a
        // million empty files is a real case).
        let mut want = *st;
        let src_x = if st.size == 0 {
            read_xattrs(&XTarget::At(sdir, sname), self.policy).step("read xattrs")?
        } else {
            let src = self.copy_stable(sdir, sname, out, &mut want, rel)?;
            read_xattrs(&XTarget::Fd(&src), self.policy).step("read xattrs")?
        };
        let have = sys::stat_fd(out).step("stat new file")?;
        self.sync_meta(
            Target::Fd(out),
            &want,
            &src_x,
            &have,
            Fresh::Yes(have_x),
            partial,
        )
        .map(drop)
    }

    /// Copies the data of `sname` (last seen as `want`) into `out`, and
    /// makes sure it did not change while it was read: its inode, size,
    /// mtime and ctime are checked again afterwards, from the open file. A
    /// change means the copy may be torn (a file truncated mid-copy would
    /// otherwise arrive with a size it never had): the file is read once
    /// more, and if it changes again it fails by name. A file that only grew
    /// (a log being appended to) keeps what was read, its size and mtime as
    /// first seen, with a notice; the next run brings the rest. Returns the
    /// source file read; `want` is left as the state that was copied.
    fn copy_stable(
        &self,
        sdir: &File,
        sname: &CStr,
        out: &File,
        want: &mut Stat,
        rel: &Path,
    ) -> Result<File, StepError> {
        let mut retried = false;
        loop {
            let src = sys::open_read_at(sdir, sname).step("open")?;
            if retried {
                *want = sys::stat_fd(&src).step("stat")?;
                if want.kind() != FileKind::File {
                    return Err(StepError {
                        op: "source changed while being read",
                        err: io::Error::other("it is no longer a regular file"),
                    });
                }
                sys::truncate_fd(out, 0).step("truncate")?;
            }
            self.copy_data(&src, out, want).step("copy data")?;
            let now = sys::stat_fd(&src).step("stat after reading")?;
            let same = |a: &Stat, b: &Stat| {
                (a.dev, a.ino, a.size, a.mtime, a.ctime) == (b.dev, b.ino, b.size, b.mtime, b.ctime)
            };
            if same(want, &now) {
                return Ok(src);
            }
            if (now.dev, now.ino) == (want.dev, want.ino) && now.size > want.size {
                self.notice(
                    rel,
                    format!(
                        "grew while being read ({} -> {} bytes): copied the first {}",
                        want.size, now.size, want.size
                    ),
                );
                return Ok(src);
            }
            if retried {
                return Err(StepError {
                    op: "source changed while being read, twice; not copied",
                    err: io::Error::other(format!(
                        "size {} -> {} bytes, mtime {}.{:09} -> {}.{:09}",
                        want.size, now.size, want.mtime.0, want.mtime.1, now.mtime.0, now.mtime.1
                    )),
                });
            }
            retried = true;
        }
    }

    /// Creates a symlink, fifo, socket or device under the temporary name
    /// `tmp`, complete with metadata.
    fn write_special(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        d: &File,
        tmp: &CStr,
        st: &Stat,
        partial: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let sdir = dir.src;
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
    /// is removed, since nothing can be renamed or linked over it. Without
    /// `--delete` only an empty one is (see [`Run::may_replace`]).
    fn clear_dir_for(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir && self.opts.delete => {
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

    /// Whether an existing destination file already holds SRC's content.
    fn same_content(
        &self,
        dir: &DirPair<'_>,
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
        let d = dir.dst.expect("cur implies dst");
        let src = sys::open_read_at(dir.src, sname).step("open")?;
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

    /// Opens a subdirectory for the walk: its source, and in DST a real
    /// directory (replacing a symlink or file, never following it), cleaned
    /// of leftovers (and, with `--delete`, of what SRC lacks).
    fn open_subdir<'r>(
        &'r self,
        parent: &CopyDir,
        sub: SubDir,
    ) -> Option<Opened<CopyWalk<'r, 'a>>> {
        let SubDir {
            parent: psrc,
            name,
            rel,
            st,
        } = sub;
        let src = match sys::open_dir_at(&psrc, &name) {
            Ok(f) => f,
            Err(e) => {
                self.fail(&rel, format!("open directory: {e}"));
                return None;
            }
        };
        drop(psrc);
        let (dst, existed) = match self.ensure_dir(parent.dst.as_ref(), parent.fresh, &name, &rel) {
            Ok(x) => x,
            Err(e) => {
                self.fail(&rel, e);
                return None;
            }
        };
        let acl_inherit = match &dst {
            Some(d) if existed => has_default_acl(d),
            _ => parent.acl_inherit,
        };
        let dir = CopyDir {
            dst,
            rel,
            fresh: !existed,
            acl_inherit,
            existed,
            st,
            src_x: Mutex::new(Some(
                read_xattrs(&XTarget::Fd(&src), self.policy).step("read xattrs"),
            )),
        };
        let src = Arc::new(src);
        let listing = self.start_listing(&dir, &src);
        Some((dir, listing.map(|l| (l, src))))
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

    /// Applies a directory's metadata once its contents are done.
    fn finish_dir(&self, dir: &CopyDir) {
        let Some(d) = &dir.dst else { return };
        let src_x = || {
            dir.src_x
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| Ok(Xattrs::new()))
        };
        self.apply_dir_meta(d, &dir.st, src_x, dir.existed, &dir.rel);
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

    /// `--verify`: compares one entry of DST with SRC; returns true for a
    /// directory on both sides, which the walk then goes into.
    fn verify_entry(
        &self,
        sdir: &File,
        ddir: &File,
        sname: &CStr,
        dname: &CStr,
        rel: PathBuf,
    ) -> bool {
        let r = (|| -> Result<Result<bool, String>, StepError> {
            let st = sys::stat_at(sdir, sname).step("stat")?;
            if self.opts.filter.excluded(&rel, st.kind() == FileKind::Dir) {
                return Ok(Ok(false));
            }
            let Some(dt) = sys::stat_at_opt(ddir, dname).step("stat destination")? else {
                return Ok(Err("missing from destination".into()));
            };
            if dt.kind() != st.kind() {
                return Ok(Err(format!(
                    "type differs: {:?} vs {:?}",
                    st.kind(),
                    dt.kind()
                )));
            }
            match st.kind() {
                FileKind::Dir => return Ok(Ok(true)),
                FileKind::File => {
                    if dt.size != st.size {
                        return Ok(Err(format!("size differs: {} vs {}", st.size, dt.size)));
                    }
                    let a =
                        hash_file(&sys::open_read_at(sdir, sname).step("open")?).step("read")?;
                    let b = hash_file(&sys::open_read_at(ddir, dname).step("open destination")?)
                        .step("read destination")?;
                    if a != b {
                        return Ok(Err(format!(
                            "content differs: blake3 {} vs {}",
                            a.to_hex(),
                            b.to_hex()
                        )));
                    }
                }
                FileKind::Symlink => {
                    let same = sys::readlink_at(sdir, sname).step("readlink")?
                        == sys::readlink_at(ddir, dname).step("readlink destination")?;
                    if !same {
                        return Ok(Err("symlink target differs".into()));
                    }
                }
                _ => {}
            }
            Ok(Ok(false))
        })();
        match r {
            Ok(Ok(descend)) => descend,
            Ok(Err(m)) => {
                self.mismatch(&rel, m);
                false
            }
            Err(e) => {
                self.mismatch(&rel, e.to_string());
                false
            }
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
