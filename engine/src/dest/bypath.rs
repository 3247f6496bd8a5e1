//! The destination writer's by-path mode, for sources that arrive as one
//! stream in any order (a tar or zip file, the wire), each entry naming its
//! path from the root. Directory handles are kept in a small cache, and
//! opened one component at a time without following a symlink, so a
//! symlink planted earlier in the stream (or already in DST) never leads a
//! later entry out of the root (tar-rs CVE-2026-33056, zip CVE-2025-29787).
//! Parents the stream did not name are created. Directory metadata is
//! deferred to [`PathWriter::finish`] and applied deepest first, so a
//! directory's mtime and a read-only mode stick whatever the order.
//!
//! Its users: archive extraction, and next the ssh receiver.
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::entry::Entry;
use super::leaf::{LeafSource, Place};
use super::DestWriter;
use crate::error::{Step, StepError};
use crate::meta::Xattrs;
use crate::sys::{self, Stat};

/// Directory handles kept open at most; the cache is emptied when full.
const MAX_OPEN_DIRS: usize = 64;

/// A stream's writer into the tree below `root`.
pub(crate) struct PathWriter<'w, 'a> {
    w: &'w DestWriter<'a>,
    root: Dir,
    /// Open directories by path, with whether each hands down a default
    /// ACL (new entries in it then have their attributes read back).
    dirs: HashMap<PathBuf, Dir>,
    /// Directories whose metadata waits for the end.
    deferred: Deferred,
}

/// An open directory, shareable with the threads that write leaves into
/// it, and whether it has a default ACL.
pub(crate) type Dir = (Arc<File>, bool);

fn open(f: File) -> Dir {
    let acl = super::has_default_acl(&f);
    (Arc::new(f), acl)
}

/// A path from the stream split into its plain components, or refused.
fn components(rel: &Path) -> Result<Vec<CString>, StepError> {
    let mut v = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => v.push(CString::new(n.as_bytes()).map_err(|_| refused())?),
            Component::CurDir => {}
            _ => return Err(refused()),
        }
    }
    if v.is_empty() {
        return Err(refused());
    }
    Ok(v)
}

fn refused() -> StepError {
    StepError {
        op: "refusing a path that is absolute, empty or holds '..'",
        err: io::Error::from_raw_os_error(libc::EINVAL),
    }
}

impl<'w, 'a> PathWriter<'w, 'a> {
    pub(crate) fn new(w: &'w DestWriter<'a>, root: File) -> PathWriter<'w, 'a> {
        PathWriter {
            w,
            root: open(root),
            dirs: HashMap::new(),
            deferred: Deferred::default(),
        }
    }

    /// The directory `comps` names below the root, opened component by
    /// component without following a symlink; missing ones are created
    /// (in a dry run: `None`, everything below it would be new).
    fn dir(&mut self, comps: &[CString]) -> Result<Option<Dir>, StepError> {
        let rel: PathBuf = comps
            .iter()
            .map(|c| std::ffi::OsStr::from_bytes(c.to_bytes()))
            .collect();
        if let Some(d) = self.dirs.get(&rel) {
            return Ok(Some(d.clone()));
        }
        let mut d = self.root.clone();
        let mut at = PathBuf::new();
        for c in comps {
            at.push(std::ffi::OsStr::from_bytes(c.to_bytes()));
            if let Some(cached) = self.dirs.get(&at) {
                d = cached.clone();
                continue;
            }
            let next = match sys::open_dir_at(&d.0, c) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !self.w.opts.dry_run => {
                    match sys::mkdir_at(&d.0, c, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e).step("mkdir"),
                    }
                    sys::open_dir_at(&d.0, c).step("open new directory")?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                // A symlink or a file where a directory should be: never
                // followed, never replaced on the way to another entry.
                Err(e) => return Err(e).step("open parent directory"),
            };
            if self.dirs.len() >= MAX_OPEN_DIRS {
                self.dirs.clear();
            }
            let next = open(next);
            self.dirs.insert(at.clone(), next.clone());
            d = next;
        }
        Ok(Some(d))
    }

    /// A directory entry of the stream: made a real directory (replacing a
    /// non-directory there, never following it); its metadata is applied
    /// by [`PathWriter::finish`].
    pub(crate) fn put_dir(
        &mut self,
        rel: &Path,
        entry: Entry,
        xattrs: Xattrs,
    ) -> Result<(), StepError> {
        let comps = components(rel)?;
        let (name, parents) = comps.split_last().expect("not empty");
        let parent = self.dir(parents)?;
        let (d, existed) = self
            .w
            .ensure_dir(parent.as_ref().map(|p| &*p.0), false, name, rel)?;
        if d.is_none() && !existed {
            // A dry run below a directory that does not exist: recorded as
            // new, with no metadata to apply.
            return Ok(());
        }
        if let Some(d) = d {
            self.dirs.remove(rel);
            if self.dirs.len() < MAX_OPEN_DIRS {
                self.dirs.insert(rel.to_path_buf(), open(d));
            }
        }
        self.deferred
            .push(self.w, (rel.to_path_buf(), entry, xattrs, existed));
        Ok(())
    }

    /// The stream's root entry (a tar's `./`): its metadata becomes the
    /// root's, applied last.
    pub(crate) fn put_root(&mut self, entry: Entry, xattrs: Xattrs) {
        self.deferred
            .push(self.w, (PathBuf::new(), entry, xattrs, true));
    }

    /// A leaf of the stream, through the writer's one leaf function.
    pub(crate) fn put_leaf<S: LeafSource>(&mut self, rel: &Path, src: &S) -> Result<(), StepError> {
        let (dir, name) = self.leaf_dir(rel)?;
        put_leaf_at(self.w, dir.as_ref(), &name, rel, src, None)
    }

    /// Where the leaf `rel` goes: its directory (opened, or created, as
    /// [`PathWriter::put_leaf`] does) and its name, for a leaf written on
    /// another thread with [`put_leaf_at`].
    pub(crate) fn leaf_dir(&mut self, rel: &Path) -> Result<(Option<Dir>, CString), StepError> {
        let mut comps = components(rel)?;
        let name = comps.pop().expect("not empty");
        Ok((self.dir(&comps)?, name))
    }

    /// A hardlink of the stream: `rel` becomes another name of the entry
    /// already written at `target` (a path of the same stream).
    pub(crate) fn put_link(&mut self, rel: &Path, target: &Path) -> Result<(), StepError> {
        let comps = components(rel)?;
        components(target)?;
        let (name, parents) = comps.split_last().expect("not empty");
        match self.dir(parents)? {
            Some((parent, _)) => {
                // The first name's inode, so that a name already linked to
                // it is left alone (a re-run changes nothing).
                let leader = self
                    .w
                    .open_dst_parent(target)
                    .ok()
                    .and_then(|(d, n)| sys::stat_at_opt(&d, &n).ok().flatten())
                    .map(|st| (st.dev, st.ino));
                self.w.make_link(&parent, name, rel, target, leader)
            }
            None => {
                // A dry run below a directory that does not exist.
                self.w.record(super::Outcome::Created, rel);
                Ok(())
            }
        }
    }

    /// Spills deferred directories to disk past `cap` of them (tests).
    #[cfg(test)]
    pub(crate) fn spill_past(&mut self, cap: usize) {
        self.deferred.cap = cap;
    }

    /// Applies the deferred directory metadata, deepest directory first
    /// (within what is held together; spilled blocks last ones first, so a
    /// depth-first stream's children still come before their parents).
    pub(crate) fn finish(mut self) {
        let mut blocks = vec![std::mem::take(&mut self.deferred.held)];
        let spilled = std::mem::take(&mut self.deferred.spilled);
        for &(at, len) in spilled.iter().rev() {
            match self.deferred.read_block(at, len) {
                Ok(b) => blocks.push(b),
                Err(e) => self.w.fail(
                    Path::new(""),
                    format!("reading back spilled directory metadata: {e}"),
                ),
            }
            // Applied block by block: one block in memory at a time.
            self.apply(std::mem::take(&mut blocks));
        }
        self.apply(blocks);
    }

    fn apply(&mut self, blocks: Vec<Vec<Pending>>) {
        for mut deferred in blocks {
            deferred.sort_by_key(|(rel, ..)| std::cmp::Reverse(rel.components().count()));
            for (rel, entry, xattrs, existed) in deferred {
                let d = if rel.as_os_str().is_empty() {
                    Ok(Some(self.root.0.clone()))
                } else {
                    components(&rel)
                        .and_then(|c| self.dir(&c))
                        .map(|d| d.map(|d| d.0))
                };
                match d {
                    Ok(Some(d)) => self
                        .w
                        .apply_dir_meta(&d, &entry, || Ok(xattrs), existed, &rel),
                    // Only in a dry run: it would have been created.
                    Ok(None) => {}
                    Err(e) => self.w.fail(&rel, e),
                }
            }
        }
    }
}

/// A directory whose metadata waits for the end: its path, the wanted
/// entry and attributes, and whether it was there before.
type Pending = (PathBuf, Entry, Xattrs, bool);

/// Deferred directories held in memory at most; the next ones are written
/// to a temporary file in blocks of this many, so an archive of millions
/// of directories stays within memory (held, a record takes about 450
/// bytes: a block is about 9 MiB).
const MAX_HELD: usize = 20_000;

/// The deferred directories: held in memory, and beyond [`MAX_HELD`]
/// spilled to an unnamed temporary file (in `$TMPDIR`) as blocks.
struct Deferred {
    /// [`MAX_HELD`], lower in tests.
    cap: usize,
    held: Vec<Pending>,
    file: Option<File>,
    /// (offset, length) of each spilled block.
    spilled: Vec<(u64, u64)>,
    end: u64,
}

fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    put_u64(v, b.len() as u64);
    v.extend_from_slice(b);
}

/// Reads the spill format back (written by this process, so a mismatch is
/// a bug or a damaged temporary file: an error, not a panic).
struct Cursor<'b>(&'b [u8]);

impl Cursor<'_> {
    fn u64(&mut self) -> io::Result<u64> {
        let (a, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "spill record cut short"))?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*a))
    }

    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        if n > self.0.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "spill record cut short",
            ));
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a.to_vec())
    }
}

impl Default for Deferred {
    fn default() -> Deferred {
        Deferred {
            cap: MAX_HELD,
            held: Vec::new(),
            file: None,
            spilled: Vec::new(),
            end: 0,
        }
    }
}

impl Deferred {
    fn push(&mut self, w: &DestWriter<'_>, p: Pending) {
        self.held.push(p);
        if self.held.len() >= self.cap {
            if let Err(e) = self.spill() {
                // Kept in memory instead: correct, only larger.
                w.notice(
                    Path::new(""),
                    format!("directory metadata kept in memory (spilling failed: {e})"),
                );
            }
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut v = Vec::new();
        for (rel, e, x, existed) in &self.held {
            put_bytes(&mut v, rel.as_os_str().as_bytes());
            for n in [
                u64::from(e.perm),
                u64::from(e.uid),
                u64::from(e.gid),
                e.atime.0 as u64,
                e.atime.1 as u64,
                e.mtime.0 as u64,
                e.mtime.1 as u64,
                u64::from(e.attrs),
                u64::from(*existed),
                x.len() as u64,
            ] {
                put_u64(&mut v, n);
            }
            for (k, val) in x {
                put_bytes(&mut v, k.as_bytes());
                put_bytes(&mut v, val);
            }
        }
        if self.file.is_none() {
            self.file = Some(tempfile::tempfile()?);
        }
        let f = self.file.as_ref().expect("just made");
        f.write_all_at(&v, self.end)?;
        self.spilled.push((self.end, v.len() as u64));
        self.end += v.len() as u64;
        self.held.clear();
        Ok(())
    }

    fn read_block(&self, at: u64, len: u64) -> io::Result<Vec<Pending>> {
        use std::os::unix::fs::FileExt;
        let f = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no spill file"))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, at)?;
        let mut c = Cursor(&buf);
        let mut out = Vec::new();
        while !c.0.is_empty() {
            let rel = PathBuf::from(std::ffi::OsString::from_vec(c.bytes()?));
            let mut n = [0u64; 10];
            for x in &mut n {
                *x = c.u64()?;
            }
            let mut xattrs = Xattrs::new();
            for _ in 0..n[9] {
                let k = std::ffi::OsString::from_vec(c.bytes()?);
                xattrs.push((k, c.bytes()?));
            }
            let entry = Entry {
                kind: crate::meta::FileKind::Dir,
                perm: n[0] as u32,
                uid: n[1] as u32,
                gid: n[2] as u32,
                size: 0,
                rdev: 0,
                atime: (n[3] as i64, n[4] as i64),
                mtime: (n[5] as i64, n[6] as i64),
                attrs: n[7] as u32,
                link: None,
            };
            out.push((rel, entry, xattrs, n[8] != 0));
        }
        Ok(out)
    }
}

/// Puts one leaf into `dir` (from [`PathWriter::leaf_dir`]): what
/// [`PathWriter::put_leaf`] does, callable from any thread. `seen`: what
/// the caller found at `name` just now, if it looked.
pub(crate) fn put_leaf_at<S: LeafSource>(
    w: &DestWriter<'_>,
    dir: Option<&Dir>,
    name: &CString,
    rel: &Path,
    src: &S,
    seen: Option<Option<Stat>>,
) -> Result<(), StepError> {
    // No directory: a dry run below one that does not exist yet.
    let at = Place {
        dir: dir.map(|d| &*d.0),
        fresh: dir.is_none(),
        acl_inherit: dir.is_none_or(|d| d.1),
        seen,
    };
    w.put_leaf(at, name, rel, src).map(drop)
}
