//! Extraction: an archive's members through the destination writer's
//! by-path mode, which refuses every path that would leave DST (`..`,
//! absolute paths, a symlink planted earlier in the stream or already in
//! DST: tar-rs CVE-2026-33056, zip CVE-2025-29787, GNU tar CVE-2025-45582,
//! Python tarfile CVE-2025-4517), and writes nothing under a final name
//! until it is complete.
//!
//! The permission policy, as GNU tar's and Python's `data` filter: setuid,
//! setgid and sticky bits and device nodes are kept only when haul runs as
//! root and `--no-same-permissions` is not given; otherwise the bits are
//! cleared and devices not created, each named in the notices. Owners are
//! kept only as root.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use super::{
    open_reader, ArchiveInput, ExtractOptions, ListedMember, Member, MemberRead, ReadError,
};
use crate::dest::bypath::{put_leaf_at, PathWriter};
use crate::dest::entry::Entry;
use crate::dest::leaf::{DataSink, LeafSource};
use crate::dest::{open_or_create_root, CopySummary, DestWriter, Outcome, WriteOptions};
use crate::error::{Error, StepError};
use crate::meta::{FileKind, Xattrs};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::worker_pool;

/// Lists an archive's members, in stream order.
pub fn list_archive(
    input: &ArchiveInput,
    each: &mut dyn FnMut(&ListedMember),
) -> Result<(), Error> {
    let name = input.display();
    let (_, mut r) = open_reader(input, 0)?;
    while let Some(m) = next(&mut *r, &name)? {
        each(&m.listed());
    }
    Ok(())
}

/// The next member, or the archive's error (a member error is one too:
/// listing has nothing else to report it in).
fn next(r: &mut dyn MemberRead, name: &Path) -> Result<Option<Member>, Error> {
    r.next_member().map_err(|e| corrupt(name, e))
}

fn corrupt(name: &Path, e: ReadError) -> Error {
    Error::io(
        "reading archive",
        name,
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    )
}

/// A member's path as the writer takes it: leading `./` and trailing `/`
/// dropped; empty for the root. `..`, absolute paths and the rest are left
/// for the writer to refuse.
fn member_rel(path: &[u8]) -> PathBuf {
    let p = Path::new(OsStr::from_bytes(path));
    let plain = p
        .components()
        .all(|c| matches!(c, Component::CurDir | Component::Normal(_)));
    if plain {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect()
    } else {
        p.to_path_buf()
    }
}

/// Whether `rel` is one of `paths` or below one.
fn wanted(paths: &[PathBuf], rel: &Path) -> bool {
    paths.is_empty() || paths.iter().any(|p| rel.starts_with(p))
}

/// A member's leaf as the destination writer reads it: data straight from
/// the archive stream, written at each region's offset.
struct StreamLeaf<'r> {
    entry: Entry,
    xattrs: Xattrs,
    target: Vec<u8>,
    sparse: Option<Vec<(u64, u64)>>,
    reader: &'r RefCell<&'r mut dyn MemberRead>,
    /// Bytes written, for the summary.
    copied: RefCell<u64>,
}

fn step(op: &'static str, e: impl std::fmt::Display) -> StepError {
    StepError {
        op,
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

impl StreamLeaf<'_> {
    fn pieces(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        let regions = match &self.sparse {
            Some(r) => r.clone(),
            None => vec![(0, self.entry.size)],
        };
        let mut r = self.reader.borrow_mut();
        let mut buf = vec![0u8; 1 << 20];
        for (off, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = r
                    .read_data(&mut buf[..want])
                    .map_err(|e| step("reading archive", e))?;
                if n == 0 {
                    return Err(step("reading archive", "the member's data ends early"));
                }
                each(off + done, &buf[..n])?;
                done += n as u64;
            }
        }
        // Anything after the promised bytes (a zip member that inflates
        // past its declared size) is an error, and so is a bad CRC, which
        // the reader reports at the end.
        let n = r
            .read_data(&mut buf[..1])
            .map_err(|e| step("reading archive", e))?;
        if n != 0 {
            return Err(step(
                "reading archive",
                "the member's data is longer than its declared size",
            ));
        }
        Ok(())
    }
}

/// Writes a member's data pieces at their offsets into the new file
/// `out`, and for a sparse member sets its size (the holes up to its end).
/// Returns the bytes written.
fn fill_file(
    out: &File,
    entry: &Entry,
    sparse: &Option<Vec<(u64, u64)>>,
    pieces: impl FnOnce(&mut DataSink<'_>) -> Result<(), StepError>,
) -> Result<u64, StepError> {
    let mut written = 0u64;
    pieces(&mut |off, b| {
        written += b.len() as u64;
        out.write_all_at(b, off).map_err(|e| StepError {
            op: "write",
            err: e,
        })
    })?;
    if sparse.is_some() {
        sys::truncate_fd(out, entry.size).map_err(|e| StepError {
            op: "set size",
            err: e,
        })?;
    }
    Ok(written)
}

impl LeafSource for StreamLeaf<'_> {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn same_content(
        &self,
        _d: &File,
        _name: &std::ffi::CStr,
        cur: &Stat,
    ) -> Result<bool, StepError> {
        // rsync's quick check, as `haul copy` makes it: the same size
        // (checked by the caller) and the same mtime to the nanosecond.
        // A stream cannot be read twice to compare bytes. The member's
        // data is then skipped.
        Ok(cur.mtime == self.entry.mtime)
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        Ok(self.target.clone())
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(self.xattrs.clone())
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        *self.copied.borrow_mut() = fill_file(out, &self.entry, &self.sparse, |e| self.pieces(e))?;
        Ok((self.entry.clone(), self.xattrs.clone()))
    }

    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        self.pieces(each)
    }
}

/// Extracts the archive `input` into `dst` (created if missing). Members
/// that cannot be extracted are in the summary's failures; an archive that
/// cannot be read on is an `Error` (what was extracted before stays, each
/// file complete).
pub fn extract_archive(
    input: &ArchiveInput,
    dst: &Path,
    opts: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<CopySummary, Error> {
    let start = Instant::now();
    let name = input.display();
    sys::raise_nofile_limit();
    let is_root = sys::euid() == 0;
    let (_, mut reader) = open_reader(input, opts.jobs)?;
    // Owners are set only as root, as GNU tar does for other users.
    let write = WriteOptions {
        dry_run: opts.write.dry_run,
        owner: opts.write.owner && is_root,
        xattrs: opts.write.xattrs,
        acls: opts.write.acls,
        ids: opts.write.ids.clone(),
    };
    let keep_special = is_root && !opts.no_same_permissions;
    let mut w = DestWriter::new(
        &write,
        opts.delete,
        &opts.filter,
        opts.record_changes,
        progress,
    );
    let (root, existed) = open_or_create_root(dst, write.dry_run)?;
    let clone = |f: &File| {
        f.try_clone()
            .map_err(|e| Error::io("opening destination", dst, e))
    };
    w.dst_root = root.as_ref().map(clone).transpose()?;
    if !existed {
        w.record(Outcome::Created, Path::new(""));
    }
    let w = &w;
    // With --delete, what the archive holds, by a 128-bit hash of each
    // path: a million members cost tens of MiB, not their names.
    let mut seen: HashSet<u128> = HashSet::new();
    let mut pw = match &root {
        Some(r) => Some(PathWriter::new(w, clone(r)?)),
        None => None,
    };
    let reader_cell: RefCell<&mut dyn MemberRead> = RefCell::new(&mut *reader);
    let mut fatal = None;
    let pool =
        worker_pool(opts.jobs, "extract").map_err(|e| Error::io("starting workers", dst, e))?;
    pool.in_place_scope(|scope| {
        let mut flight = InFlight::new();
        loop {
            let m = match reader_cell.borrow_mut().next_member() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(ReadError::Member(msg)) => {
                    w.fail(Path::new(&name), msg);
                    continue;
                }
                Err(ReadError::Named { path, msg }) => {
                    w.fail(&member_rel(path.as_bytes()), msg);
                    continue;
                }
                Err(e) => {
                    fatal = Some(corrupt(&name, e));
                    break;
                }
            };
            let rel = member_rel(&m.path);
            let is_dir = m.entry.kind == FileKind::Dir;
            if !wanted(&opts.paths, &rel)
                || (!rel.as_os_str().is_empty() && opts.filter.excluded(&rel, is_dir))
            {
                continue;
            }
            if opts.delete {
                let mut a = PathBuf::new();
                for c in rel.components() {
                    a.push(c);
                    seen.insert(path_hash(&a));
                }
            }
            let mut m = m;
            if !keep_special {
                if m.entry.perm & 0o7000 != 0 {
                    w.notice(&rel, "setuid, setgid or sticky bit cleared");
                    m.entry.perm &= 0o777;
                }
                if matches!(m.entry.kind, FileKind::CharDev | FileKind::BlockDev)
                    && m.hardlink.is_none()
                {
                    w.notice(&rel, "device node not created");
                    continue;
                }
            }
            w.count_source(&m.entry, m.hardlink.is_some());
            w.check_owner_map(&m.entry, &rel);
            let Some(pw) = pw.as_mut() else {
                // A dry run into a DST that does not exist: all would be new.
                w.record(Outcome::Created, &rel);
                continue;
            };
            // Members are written in stream order as far as anyone can
            // tell: one that touches a path a leaf still being written on
            // the pool touches (the same name twice, a file through an
            // earlier name, a hardlink to it) waits for the pool to drain.
            let target = m.hardlink.as_deref().map(member_rel);
            if flight.conflicts(&rel, !is_dir, target.as_deref()) {
                flight.drain();
            }
            let data_len = m.data_len();
            let xattrs = filter_xattrs(std::mem::take(&mut m.xattrs), &write);
            let r = if rel.as_os_str().is_empty() {
                if is_dir {
                    pw.put_root(m.entry, xattrs);
                    Ok(())
                } else {
                    Err(step(
                        "extracting",
                        "the archive's root member is not a directory",
                    ))
                }
            } else if let Some(t) = &target {
                pw.put_link(&rel, t)
            } else if is_dir {
                pw.put_dir(&rel, m.entry, xattrs)
            } else if m.entry.kind == FileKind::File && data_len <= SMALL_MEMBER {
                // Small: read whole here, written on the pool.
                let data = match read_whole(&mut **reader_cell.borrow_mut(), data_len) {
                    Ok(d) => d,
                    Err(ReadError::Member(msg) | ReadError::Named { msg, .. }) => {
                        w.fail(&rel, msg);
                        continue;
                    }
                    Err(e) => {
                        w.fail(&rel, &e);
                        fatal = Some(corrupt(&name, e));
                        break;
                    }
                };
                match pw.leaf_dir(&rel) {
                    Ok((dir, cname)) => {
                        let leaf = BufLeaf {
                            entry: m.entry,
                            xattrs,
                            sparse: m.sparse,
                            data,
                            written: Default::default(),
                        };
                        let n = leaf.data.len();
                        flight.wait_for_room(n);
                        flight.add(&rel, n);
                        let tx = flight.tx.clone();
                        let rel = rel.clone();
                        scope.spawn(move |_| {
                            if let Err(e) = put_leaf_at(w, dir.as_ref(), &cname, &rel, &leaf, None)
                            {
                                w.fail(&rel, e);
                            } else {
                                w.copied(leaf.written.load(std::sync::atomic::Ordering::Relaxed));
                            }
                            let _ = tx.send((rel, n));
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                let leaf = StreamLeaf {
                    entry: m.entry,
                    xattrs,
                    target: m.target,
                    sparse: m.sparse,
                    reader: &reader_cell,
                    copied: RefCell::new(0),
                };
                let r = pw.put_leaf(&rel, &leaf);
                w.copied(*leaf.copied.borrow());
                r
            };
            if let Err(e) = r {
                w.fail(&rel, e);
            }
        }
        flight.drain();
    });
    // Removal before the directories' metadata, whose mtimes it changes.
    if fatal.is_none() && opts.delete && opts.paths.is_empty() {
        if let Some(r) = &root {
            remove_unseen(w, r, &seen);
        }
    }
    if let Some(pw) = pw {
        pw.finish();
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    Ok(w.summary(start))
}

/// Members up to this size are read whole and written on the pool.
const SMALL_MEMBER: u64 = 1 << 20;
/// Bytes of members read ahead and not yet written, at most.
const MAX_INFLIGHT_BYTES: usize = 32 << 20;
/// Members not yet written, at most.
const MAX_INFLIGHT: usize = 512;

/// The leaves being written on the pool: their paths (with counts, as a
/// name may come twice) and the directories above them, and their bytes.
pub(crate) struct InFlight {
    leaves: HashMap<PathBuf, u32>,
    above: HashMap<PathBuf, u32>,
    bytes: usize,
    count: usize,
    pub(crate) tx: crossbeam_channel::Sender<(PathBuf, usize)>,
    rx: crossbeam_channel::Receiver<(PathBuf, usize)>,
}

fn bump(m: &mut HashMap<PathBuf, u32>, p: &Path, up: bool) {
    if up {
        *m.entry(p.to_path_buf()).or_default() += 1;
    } else if let Some(n) = m.get_mut(p) {
        *n -= 1;
        if *n == 0 {
            m.remove(p);
        }
    }
}

impl InFlight {
    pub(crate) fn new() -> InFlight {
        let (tx, rx) = crossbeam_channel::unbounded();
        InFlight {
            leaves: HashMap::new(),
            above: HashMap::new(),
            bytes: 0,
            count: 0,
            tx,
            rx,
        }
    }

    pub(crate) fn add(&mut self, rel: &Path, n: usize) {
        bump(&mut self.leaves, rel, true);
        for a in rel.ancestors().skip(1) {
            bump(&mut self.above, a, true);
        }
        self.bytes += n;
        self.count += 1;
    }

    fn wait_one(&mut self) {
        let Ok((rel, n)) = self.rx.recv() else { return };
        bump(&mut self.leaves, &rel, false);
        for a in rel.ancestors().skip(1) {
            bump(&mut self.above, a, false);
        }
        self.bytes -= n;
        self.count -= 1;
    }

    pub(crate) fn wait_for_room(&mut self, n: usize) {
        while self.count > 0 && (self.count >= MAX_INFLIGHT || self.bytes + n > MAX_INFLIGHT_BYTES)
        {
            self.wait_one();
        }
    }

    pub(crate) fn drain(&mut self) {
        while self.count > 0 {
            self.wait_one();
        }
    }

    /// Whether a member at `rel` (a non-directory if `leaf`), linking to
    /// `target`, touches a path a leaf in flight touches.
    pub(crate) fn conflicts(&self, rel: &Path, leaf: bool, target: Option<&Path>) -> bool {
        if self.count == 0 {
            return false;
        }
        let hit = |p: &Path| p.ancestors().any(|a| self.leaves.contains_key(a));
        hit(rel) || (leaf && self.above.contains_key(rel)) || target.is_some_and(hit)
    }
}

/// A member's data, read whole: `len` bytes and then its end (where a zip
/// reader reports a bad CRC or data past the declared size).
fn read_whole(r: &mut dyn MemberRead, len: u64) -> Result<Vec<u8>, ReadError> {
    let mut data = vec![0u8; len as usize];
    let mut got = 0;
    while got < data.len() {
        match r.read_data(&mut data[got..])? {
            0 => return Err(ReadError::Member("the member's data ends early".into())),
            n => got += n,
        }
    }
    if r.read_data(&mut [0u8; 1])? != 0 {
        return Err(ReadError::Member(
            "the member's data is longer than its declared size".into(),
        ));
    }
    Ok(data)
}

/// A small member's leaf, its data in memory, written on the pool.
struct BufLeaf {
    entry: Entry,
    xattrs: Xattrs,
    sparse: Option<Vec<(u64, u64)>>,
    data: Vec<u8>,
    written: std::sync::atomic::AtomicU64,
}

impl BufLeaf {
    fn pieces(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        let regions = match &self.sparse {
            Some(r) => r.clone(),
            None => vec![(0, self.entry.size)],
        };
        let mut at = 0usize;
        for (off, len) in regions {
            let b = &self.data[at..at + len as usize];
            if !b.is_empty() {
                each(off, b)?;
            }
            at += len as usize;
        }
        Ok(())
    }
}

impl LeafSource for BufLeaf {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn same_content(
        &self,
        _d: &File,
        _name: &std::ffi::CStr,
        cur: &Stat,
    ) -> Result<bool, StepError> {
        // The quick check, as for streamed members.
        Ok(cur.mtime == self.entry.mtime)
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        Ok(Vec::new())
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(self.xattrs.clone())
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        let n = fill_file(out, &self.entry, &self.sparse, |e| self.pieces(e))?;
        self.written.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok((self.entry.clone(), self.xattrs.clone()))
    }

    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        self.pieces(each)
    }
}

pub(crate) fn path_hash(p: &Path) -> u128 {
    let h = blake3::hash(p.as_os_str().as_bytes());
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// `--delete`: removes what DST holds that the archive did not name,
/// walking DST's directories that the archive named.
pub(crate) fn remove_unseen(w: &DestWriter<'_>, root: &File, seen: &HashSet<u128>) {
    // Each directory is opened when taken off the stack, through its
    // parent's handle (shared), so a wide tree holds few descriptors.
    let root = match root.try_clone() {
        Ok(r) => Rc::new(r),
        Err(e) => return w.fail(Path::new(""), format!("opening destination: {e}")),
    };
    type Pending = (PathBuf, Option<(Rc<File>, CString)>);
    let mut stack: Vec<Pending> = vec![(PathBuf::new(), None)];
    while let Some((rel, at)) = stack.pop() {
        let d = match at {
            None => root.clone(),
            Some((parent, name)) => match sys::open_dir_at(&parent, &name) {
                Ok(d) => Rc::new(d),
                Err(e) => {
                    w.fail(&rel, format!("opening destination directory: {e}"));
                    continue;
                }
            },
        };
        w.remove_extraneous(&d, &rel, |name| {
            seen.contains(&path_hash(&rel.join(OsStr::from_bytes(name))))
        });
        let _ = sys::each_batch(&d, |batch| -> std::io::Result<()> {
            for e in batch {
                let crel = rel.join(OsStr::from_bytes(e.name.to_bytes()));
                // Only directories the archive named hold entries to weigh;
                // the others were removed whole (or are protected).
                if seen.contains(&path_hash(&crel)) {
                    if let Ok(Some(true)) = sys::is_dir_entry(&d, e) {
                        stack.push((crel, Some((d.clone(), e.name.clone()))));
                    }
                }
            }
            Ok(())
        });
    }
}

pub(crate) fn filter_xattrs(x: Xattrs, w: &WriteOptions) -> Xattrs {
    x.into_iter()
        .filter(|(k, _)| {
            let acl = k.as_bytes().starts_with(b"system.posix_acl_");
            w.xattrs && (w.acls || !acl)
        })
        .collect()
}
