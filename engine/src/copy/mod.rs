//! `copy`: make DST an exact mirror of the contents of SRC.
//!
//! The source side of a copy: a walk of SRC (`walk.rs`), the decision per
//! entry (what changed, by size and mtime or by digest), and the reading of
//! its data (reflink, `copy_file_range` per data extent, or a buffer),
//! checked for changes while read. Everything written into DST goes
//! through the destination writer (`dest/`).
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::dest::entry::{Entry, LinkKey};
use crate::dest::{
    has_default_acl, is_tmp_name, name_of, open_or_create_root, split_parent, CopySummary,
    DestWriter, EntryIssue, Outcome, WriteOptions,
};
use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::meta::{read_xattrs, FileKind, XTarget, Xattrs};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::{walk, worker_pool, DiskVisitor, Opened};

mod data;
mod verify;

use verify::VerifyWalk;

/// How a copy decides what to write; what it keeps is the writer's.
#[derive(Debug, Default)]
pub struct CopyOptions {
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// Remove entries in DST that are not in SRC (excluded ones are kept).
    pub delete: bool,
    /// Entries to skip.
    pub filter: Filter,
    /// Compare content by blake3 instead of size and mtime.
    pub checksum: bool,
    /// Re-read DST after the copy and compare digests with SRC.
    pub verify: bool,
    /// Report every change through [`Progress::change`].
    pub record_changes: bool,
    /// What the destination writer keeps, and whether it writes at all.
    pub write: WriteOptions,
}

/// A copy: the destination writer, and what only the source side needs.
pub(crate) struct Copier<'a> {
    w: DestWriter<'a>,
    opts: &'a CopyOptions,
    reflink_ok: AtomicBool,
    cfr_ok: AtomicBool,
    mismatches: Mutex<Vec<EntryIssue>>,
}

impl<'a> std::ops::Deref for Copier<'a> {
    type Target = DestWriter<'a>;
    fn deref(&self) -> &DestWriter<'a> {
        &self.w
    }
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
struct CopyWalk<'r, 'a>(&'r Copier<'a>);

impl<'a> DiskVisitor for CopyWalk<'_, 'a> {
    type Dir = CopyDir;
    type Shared = Arc<File>;
    type Sub = SubDir;

    fn list_failed(&self, dir: &CopyDir, e: io::Error) {
        self.0.fail(&dir.rel, format!("reading directory: {e}"))
    }

    fn entry(&self, dir: &CopyDir, src: &Arc<File>, e: &sys::RawEntry) -> Option<SubDir> {
        let rel = dir.rel.join(name_of(&e.name));
        let (rel, st) = self.0.entry(&dir.pair(src), &e.name, &e.name, rel)?;
        Some(SubDir {
            parent: src.clone(),
            name: e.name.clone(),
            rel,
            st,
        })
    }

    fn open_sub(&self, parent: &CopyDir, sub: SubDir) -> Option<Opened<Self>> {
        self.0.open_subdir(parent, sub)
    }

    fn done(&self, dir: &CopyDir, _: Option<&CopyDir>) {
        self.0.finish_dir(dir);
        if !dir.rel.as_os_str().is_empty() {
            self.0.progress.entry_done();
        }
    }
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

    let mut run = Copier::new(opts, progress);

    if src_st.kind() == FileKind::Dir {
        // Refused before DST is created: a refused run changes nothing.
        refuse_dst_in_src(src, dst)?;
        let src_dir = sys::open_dir_path(src).map_err(|e| Error::io("opening source", src, e))?;
        let (dst_dir, existed) = open_or_create_root(dst, opts.write.dry_run)?;
        if let Some(d) = &dst_dir {
            let dst_st = sys::stat_fd(d).map_err(|e| Error::io("reading destination", dst, e))?;
            if (dst_st.dev, dst_st.ino) == (src_st.dev, src_st.ino) {
                return Err(Error::invalid(dst, "SRC and DST are the same directory"));
            }
            run.w.dst_root = Some(
                d.try_clone()
                    .map_err(|e| Error::io("opening destination", dst, e))?,
            );
        }
        let run = &run;
        std::thread::scope(|s| {
            if progress.wants_totals() {
                s.spawn(|| {
                    if let Ok(d) = sys::open_dir_path(src) {
                        crate::walk::scan(d, &opts.filter, progress);
                    }
                    progress.discovery_done();
                });
            }
            pool.install(|| {
                run.count_source(&Entry::from_stat(&src_st), false);
                // Also in a dry run, which must count what a real run does.
                if !existed {
                    run.record(Outcome::Created, Path::new(""));
                }
                let acl_inherit = dst_dir.as_ref().is_some_and(has_default_acl);
                let verify_dst = match (&dst_dir, opts.verify && !opts.write.dry_run) {
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
            Err(e) if e.kind() == io::ErrorKind::NotFound && opts.write.dry_run => None,
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
            if opts.verify && !opts.write.dry_run {
                if let Some(d) = pair.dst {
                    run.verify_entry(pair.src, d, &sname, &dname, PathBuf::from(name_of(&dname)));
                }
            }
        });
    }
    Ok(run.summary(start))
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

impl<'a> Copier<'a> {
    pub(crate) fn new(opts: &'a CopyOptions, progress: &'a dyn Progress) -> Copier<'a> {
        Copier {
            w: DestWriter::new(
                &opts.write,
                opts.delete,
                &opts.filter,
                opts.record_changes,
                progress,
            ),
            opts,
            reflink_ok: AtomicBool::new(true),
            cfr_ok: AtomicBool::new(true),
            mismatches: Mutex::default(),
        }
    }

    /// The writer's tally, with what `--verify` found.
    fn summary(&self, start: Instant) -> CopySummary {
        let mut s = self.w.summary(start);
        let mut m = std::mem::take(&mut *self.mismatches.lock().unwrap_or_else(|e| e.into_inner()));
        m.sort_by(|a, b| a.path.cmp(&b.path));
        s.verify_mismatches = m;
        s
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
                let is_dir = match sys::is_dir_entry(dst, e) {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(err) => {
                        self.fail(&rel, format!("stat destination: {err}"));
                        continue;
                    }
                };
                // Only what haul itself could have left is a leftover: a
                // non-directory under a temporary name. A directory of that
                // name is the user's.
                let tmp = maybe_tmp && !is_dir;
                if !tmp && (!self.opts.delete || self.opts.filter.excluded(&rel, is_dir)) {
                    continue;
                }
                if self.opts.write.dry_run {
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
        let e = Entry::from_stat(&st);
        self.check_owner_map(&e, &rel);
        if kind == FileKind::Dir {
            self.count_source(&e, false);
            return Some((rel, st));
        }
        let r = match e.link.clone() {
            Some(key) => self.linked_leaf(dir, sname, dname, &rel, &st, e, key),
            None => {
                self.count_source(&e, false);
                self.leaf(dir, sname, dname, &rel, &st, e).map(|_| ())
            }
        };
        if let Err(e) = r {
            self.fail(&rel, e);
        }
        self.progress.entry_done();
        None
    }

    /// A non-directory with several names: the first name seen is copied,
    /// later ones become hardlinks to it.
    #[allow(clippy::too_many_arguments)]
    fn linked_leaf(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
        e: Entry,
        key: LinkKey,
    ) -> Result<(), StepError> {
        let counted = e.clone();
        let first = self.linked(key, dir.dst, dname, rel, || {
            self.leaf(dir, sname, dname, rel, st, e)
        });
        let (first, r) = first?;
        self.count_source(&counted, !first);
        r
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
        self.apply_dir_meta(d, &Entry::from_stat(&dir.st), src_x, dir.existed, &dir.rel);
    }
}
