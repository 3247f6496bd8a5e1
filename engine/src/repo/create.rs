//! `snapshot create`: the local walk that feeds the snapshot writer
//! (`writer.rs`), with parent reuse: an entry unchanged since the parent
//! snapshot is recorded from it unread. One file on purpose: the walk's
//! visitor, the per-entry decision and `create_snapshot` (which sets up the
//! walk, its progress and the record) share the reuse rules and are read
//! together.
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use haul_formats::{
    Id, Node, NodeKind, Snapshot, SnapshotSummary, Timestamp, Xattr, SNAPSHOT_VERSION,
};
use serde::Serialize;

use super::packer::Packer;
use super::writer::{entry_failed, ts, NodeError, SnapshotWriter};
use super::{hostname, username, Repository};
use crate::dest::EntryIssue;
use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::meta::{read_xattrs, FileKind, XTarget, XattrPolicy};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::{walk, DiskVisitor, Opened};

/// New blobs between index flushes during one create (about 5 MiB of index).
pub const DEFAULT_INDEX_FLUSH: usize = 100_000;

/// What to record.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// The trees (or files) to record.
    pub paths: Vec<PathBuf>,
    /// Labels for the snapshot.
    pub tags: Vec<String>,
    /// Entries to skip.
    pub filter: Filter,
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// The time to record instead of now (for imports and tests).
    pub time: Option<Timestamp>,
    /// Write an index file every this many new blobs (0: the default), so
    /// memory stays flat and an interrupted run leaves its packs indexed.
    pub index_flush_every: usize,
}

/// The outcome of a create.
#[derive(Clone, Debug, Serialize)]
pub struct CreateSummary {
    /// The new snapshot's id.
    #[serde(serialize_with = "hex")]
    pub id: Id,
    /// The snapshot it was taken relative to.
    #[serde(serialize_with = "hex_opt")]
    pub parent: Option<Id>,
    /// Regular files recorded (a hardlinked inode once, at its first name).
    pub files: u64,
    /// Symbolic links recorded.
    pub symlinks: u64,
    /// Further names of a hardlinked inode.
    pub hardlinks: u64,
    /// Fifos, sockets and devices recorded.
    pub specials: u64,
    /// Directories recorded.
    pub dirs: u64,
    /// Bytes of file data the snapshot holds (a hardlinked inode's once).
    pub bytes: u64,
    /// Bytes of file data actually read (unchanged files are not read).
    pub bytes_read: u64,
    /// Bytes of new data (plaintext) added to the repository.
    pub bytes_new: u64,
    /// Bytes written to new pack files (compressed, with headers).
    pub bytes_stored: u64,
    /// Pack files written.
    pub packs: u64,
    /// Wall time.
    pub seconds: f64,
    /// Entries that could not be recorded, with the reason (at most
    /// 100,000; the rest are counted in `failed_not_listed`).
    pub failed: Vec<EntryIssue>,
    /// Failed entries beyond the listed ones.
    pub failed_not_listed: u64,
    /// Messages about stale locks that were broken, and about the
    /// repository left out of the snapshot when it lies inside a source.
    pub notices: Vec<String>,
}

pub(crate) fn hex<S: serde::Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

pub(crate) fn hex_opt<S: serde::Serializer>(id: &Option<Id>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex()),
        None => s.serialize_none(),
    }
}

/// What one directory entry turned out to be.
enum Entry {
    /// Recorded.
    Node(Node),
    /// A directory, to walk.
    Dir(Stat),
    /// Excluded, vanished or the repository itself.
    Skip,
}

/// A directory being recorded, kept by the walk (`crate::walk`) until
/// everything below it is, when its tree is stored and its node handed to
/// its parent.
struct CreateDir {
    rel: PathBuf,
    name: Vec<u8>,
    st: Stat,
    /// Its node in the parent snapshot, when unchanged (then reused).
    same: Option<Node>,
    /// Its entries in the parent snapshot, sorted by name.
    old_children: Option<Vec<Node>>,
    /// Its xattrs, read when it was opened (none if `same`).
    xattrs: Mutex<Option<Result<Vec<Xattr>, String>>>,
    nodes: Mutex<Vec<Node>>,
}

/// A directory found in a listing, opened when its turn comes.
struct CreateSub {
    parent: Arc<File>,
    name: CString,
    rel: PathBuf,
    st: Stat,
    old: Option<Node>,
}

/// Create's [`TreeVisitor`].
struct CreateWalk<'b, 'a>(&'b SnapshotWriter<'a>);

impl CreateWalk<'_, '_> {
    fn open_dir(&self, sub: CreateSub) -> Result<Option<Opened<Self>>, NodeError> {
        let b = self.0;
        let d = match sys::open_dir_at(&sub.parent, &sub.name) {
            Ok(d) => d,
            Err(e) => {
                return Err(NodeError::Entry(StepError {
                    op: "opening directory",
                    err: e,
                }))
            }
        };
        drop(sub.parent);
        let same = sub.old.as_ref().filter(|o| unchanged(o, &sub.st)).cloned();
        let old_children = match sub.old.as_ref().map(|o| &o.kind) {
            Some(NodeKind::Dir { subtree }) => b.parent_tree(subtree, &sub.rel),
            _ => None,
        };
        let xattrs = match same {
            Some(_) => None,
            None => Some(b.xattrs(&XTarget::Fd(&d)).map_err(|f| match f {
                NodeError::Entry(m) => m.to_string(),
                NodeError::Repo(e) => e.to_string(),
            })),
        };
        let listing = match sys::DirStream::new(&d) {
            Ok(l) => Some((l, Arc::new(d))),
            Err(e) => {
                b.fail(&sub.rel, format!("reading directory: {e}"));
                None
            }
        };
        let dir = CreateDir {
            name: sub.name.to_bytes().to_vec(),
            rel: sub.rel,
            st: sub.st,
            same,
            old_children,
            xattrs: Mutex::new(xattrs),
            nodes: Mutex::default(),
        };
        Ok(Some((dir, listing)))
    }

    fn stop(&self, e: Error) {
        let mut f = self.0.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    }
}

impl DiskVisitor for CreateWalk<'_, '_> {
    type Dir = CreateDir;
    type Shared = Arc<File>;
    type Sub = CreateSub;

    /// What was read is recorded; the rest is a failure.
    fn list_failed(&self, dir: &CreateDir, e: io::Error) {
        self.0.fail(&dir.rel, format!("reading directory: {e}"))
    }

    fn stopped(&self) -> bool {
        self.0
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Files first, then subdirectories, each by name: the order a restore
    /// walks the tree in, so the small files that share a bundle are the
    /// ones a restore wants at about the same time.
    fn order(&self, batch: &mut [sys::RawEntry]) {
        batch.sort_unstable_by(|a, b| {
            (a.d_type == sys::DT_DIR, a.name.as_bytes())
                .cmp(&(b.d_type == sys::DT_DIR, b.name.as_bytes()))
        });
    }

    fn entry(&self, dir: &CreateDir, src: &Arc<File>, e: &sys::RawEntry) -> Option<CreateSub> {
        if self.stopped() {
            return None;
        }
        let rel = dir.rel.join(OsStr::from_bytes(e.name.to_bytes()));
        let old = dir.old_children.as_deref().and_then(|p| {
            p.binary_search_by(|n| n.name.as_slice().cmp(e.name.to_bytes()))
                .ok()
                .map(|i| &p[i])
        });
        match self.0.entry(src, &e.name, &rel, old) {
            Ok(Entry::Node(n)) => dir.nodes.lock().unwrap_or_else(|e| e.into_inner()).push(n),
            Ok(Entry::Dir(st)) => {
                return Some(CreateSub {
                    parent: src.clone(),
                    name: e.name.clone(),
                    rel,
                    st,
                    old: old.cloned(),
                })
            }
            Ok(Entry::Skip) => {}
            Err(NodeError::Entry(e)) => self.0.fail(&rel, e.to_string()),
            Err(NodeError::Repo(e)) => self.stop(e),
        }
        None
    }

    fn open_sub(&self, _: &CreateDir, sub: CreateSub) -> Option<Opened<Self>> {
        if self.stopped() {
            return None;
        }
        let rel = sub.rel.clone();
        match self.open_dir(sub) {
            Ok(o) => o,
            Err(NodeError::Entry(e)) => {
                self.0.fail(&rel, e.to_string());
                None
            }
            Err(NodeError::Repo(e)) => {
                self.stop(e);
                None
            }
        }
    }

    fn done(&self, dir: &CreateDir, parent: Option<&CreateDir>) {
        if self.stopped() {
            return;
        }
        let b = self.0;
        let nodes = std::mem::take(&mut *dir.nodes.lock().unwrap_or_else(|e| e.into_inner()));
        let subtree = match b.store_tree(nodes) {
            Ok(id) => id,
            Err(e) => return self.stop(e),
        };
        let kind = NodeKind::Dir { subtree };
        let node = match &dir.same {
            Some(o) => Node { kind, ..o.clone() },
            None => {
                let x = dir.xattrs.lock().unwrap_or_else(|e| e.into_inner()).take();
                match x.unwrap_or_else(|| Ok(Vec::new())) {
                    Ok(x) => b.node(&dir.name, &dir.st, kind, x),
                    Err(msg) => return b.fail(&dir.rel, msg),
                }
            }
        };
        match parent {
            Some(p) => {
                b.count(&node, &dir.st, &dir.rel);
                b.progress.entry_done();
                p.nodes.lock().unwrap_or_else(|e| e.into_inner()).push(node);
            }
            // The walk's root: node_for's caller counts it.
            None => *b.root_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(node),
        }
    }
}

fn unchanged(old: &Node, st: &Stat) -> bool {
    old.size == st.size
        && old.inode == st.ino
        && old.mtime == ts(st.mtime)
        && old.ctime == ts(st.ctime)
}

impl SnapshotWriter<'_> {
    fn xattrs(&self, t: &XTarget<'_>) -> Result<Vec<Xattr>, NodeError> {
        let policy = XattrPolicy {
            xattrs: true,
            acls: true,
        };
        Ok(read_xattrs(t, policy)
            .step("reading xattrs")?
            .into_iter()
            .map(|(n, v)| Xattr {
                name: n.into_vec(),
                value: v,
            })
            .collect())
    }

    /// One entry of a directory: recorded here, or, for a directory, handed
    /// back with its stat to be walked.
    fn entry(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
        old: Option<&Node>,
    ) -> Result<Entry, NodeError> {
        let st = match sys::stat_at(dir, name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entry::Skip),
            Err(e) => return Err(NodeError::Entry(StepError { op: "stat", err: e })),
        };
        let kind = st.kind();
        if self.filter.excluded(rel, kind == FileKind::Dir) {
            return Ok(Entry::Skip);
        }
        // By inode, not by path: a source named through a symlink or `..`
        // still finds it.
        if kind == FileKind::Dir && self.repo_dir == Some((st.dev, st.ino)) {
            self.notices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "not recording {}: it is the repository {} itself",
                    rel.display(),
                    self.repo.location().display()
                ));
            return Ok(Entry::Skip);
        }
        if kind == FileKind::Dir {
            return Ok(Entry::Dir(st));
        }
        let node = self.node_for(dir, name, rel, &st, old)?;
        self.count(&node, &st, rel);
        self.progress.entry_done();
        Ok(Entry::Node(node))
    }

    fn node_for(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
        st: &Stat,
        old: Option<&Node>,
    ) -> Result<Node, NodeError> {
        let bname = name.to_bytes();
        // Same inode, size, mtime and ctime as in the parent snapshot: nothing
        // about the entry changed (any data, owner, mode or xattr change moves
        // ctime), so the parent's node is reused without reading anything.
        let same = old.filter(|o| unchanged(o, st));
        match st.kind() {
            FileKind::Dir => {
                let parent = Arc::new(dir.try_clone().step("opening directory")?);
                let sub = CreateSub {
                    parent,
                    name: name.to_owned(),
                    rel: rel.to_path_buf(),
                    st: *st,
                    old: old.cloned(),
                };
                let walker = CreateWalk(self);
                let Some(root) = walker.open_dir(sub)? else {
                    return Err(entry_failed("opening directory", "it could not be opened"));
                };
                walk(&walker, root);
                if let Some(e) = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(NodeError::Repo(e));
                }
                self.root_done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or_else(|| {
                        entry_failed("recording directory", "its tree could not be recorded")
                    })
            }
            FileKind::File => {
                // Reuse also requires every chunk to be indexed: a damaged or
                // pruned index must lead to re-reading, not to a snapshot
                // that names data the repository does not have.
                let reusable = same.filter(|o| match &o.kind {
                    NodeKind::File { chunks, .. } => chunks.iter().all(|c| self.index.contains(c)),
                    _ => false,
                });
                if let Some(o) = reusable {
                    self.progress.bytes(st.size);
                    return Ok(o.clone());
                }
                // Later names of a hardlinked inode (same size, mtime and
                // ctime as when its first name was read) reuse that reading.
                // Best effort: a name met while another worker is still
                // reading the first is read again, which costs time, never
                // correctness (the chunks are the same and dedup stores one).
                let key = (st.dev, st.ino);
                if st.nlink > 1 {
                    let seen = self
                        .linked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&key)
                        .cloned();
                    if let Some(n) = seen.filter(|n| unchanged(n, st)) {
                        self.progress.bytes(st.size);
                        return Ok(Node {
                            name: bname.to_vec(),
                            atime: ts(st.atime),
                            ..n
                        });
                    }
                }
                let f = sys::open_read_at(dir, name).step("open")?;
                let (data_map, chunks) = self.file_chunks(&f, st)?;
                let x = self.xattrs(&XTarget::Fd(&f))?;
                let node = self.node(bname, st, NodeKind::File { data_map, chunks }, x);
                if st.nlink > 1 {
                    self.linked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, node.clone());
                }
                Ok(node)
            }
            other => {
                if let Some(o) = same.filter(|o| o.kind_name() == other.name()) {
                    return Ok(o.clone());
                }
                let kind = match other {
                    FileKind::Symlink => NodeKind::Symlink {
                        target: sys::readlink_at(dir, name).step("readlink")?,
                    },
                    FileKind::Fifo => NodeKind::Fifo,
                    FileKind::Socket => NodeKind::Socket,
                    FileKind::CharDev => NodeKind::CharDevice { rdev: st.rdev },
                    FileKind::BlockDev => NodeKind::BlockDevice { rdev: st.rdev },
                    FileKind::File | FileKind::Dir => unreachable!("handled above"),
                };
                let x = self.xattrs(&XTarget::At(dir, name))?;
                Ok(self.node(bname, st, kind, x))
            }
        }
    }

    /// The parent snapshot's tree `id` of directory `rel`, or none if it
    /// is lost (the directory is then read as if new, with a warning).
    fn parent_tree(&self, id: &Id, rel: &Path) -> Option<Vec<Node>> {
        self.repo
            .load_tree(self.index, id)
            .map_err(|e| {
                self.repo.warn(&format!(
                    "the parent snapshot's record of {:?} cannot be read ({e}); reading it again",
                    display_rel(rel)
                ))
            })
            .ok()
    }
}

fn display_rel(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "/".into()
    } else {
        rel.display().to_string()
    }
}

/// Node kinds by the same names as [`FileKind`].
pub(crate) trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for Node {
    fn kind_name(&self) -> &'static str {
        FileKind::of_node(&self.kind).name()
    }
}

impl Repository {
    /// Records `opts.paths` as a new snapshot. Takes a shared lock, so several
    /// creates can run at once. The snapshot record is written only after
    /// every pack and index it needs is durable.
    pub fn create_snapshot(
        &self,
        opts: &CreateOptions,
        progress: &dyn Progress,
    ) -> Result<CreateSummary, Error> {
        let start = Instant::now();
        sys::raise_nofile_limit();
        let lock = self.lock(false)?;
        let index = self.load_index_for_writing()?;

        let mut paths = Vec::new();
        for p in &opts.paths {
            let abs = std::fs::canonicalize(p).map_err(|e| Error::io("reading source", p, e))?;
            paths.push(abs);
        }
        if paths.is_empty() {
            return Err(Error::invalid(self.location(), "no paths to record"));
        }
        let mut names = HashSet::new();
        for p in &paths {
            let n = p
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_else(|| b"ROOT".to_vec());
            if !names.insert(n) {
                return Err(Error::invalid(p, "two paths have the same base name"));
            }
        }
        let path_strings: Vec<String> = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let host = hostname();
        let parent = {
            let mut want = path_strings.clone();
            want.sort();
            self.snapshots()?.into_iter().rev().find(|s| {
                let mut have = s.snapshot.paths.clone();
                have.sort();
                s.snapshot.hostname == host && have == want
            })
        };
        let parent_root = parent.as_ref().and_then(|p| {
            self.load_tree(&index, &p.snapshot.tree)
                .map_err(|e| {
                    self.warn(&format!(
                        "the parent snapshot {} cannot be read ({e}); reading everything again",
                        p.id.short()
                    ))
                })
                .ok()
        });

        let backup = SnapshotWriter {
            repo: self,
            index: &index,
            packer: Packer::new(self),
            pending: Mutex::default(),
            filter: &opts.filter,
            chunker: self.config().chunker,
            level: self.config().zstd_level,
            progress,
            linked: Mutex::default(),
            flush_every: if opts.index_flush_every == 0 {
                DEFAULT_INDEX_FLUSH
            } else {
                opts.index_flush_every
            },
            files: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            failed: Mutex::default(),
            names: RwLock::default(),
            repo_dir: sys::stat_path(self.location(), true)
                .ok()
                .map(|st| (st.dev, st.ino)),
            notices: Mutex::default(),
            symlinks: AtomicU64::new(0),
            specials: AtomicU64::new(0),
            hardlinks: AtomicU64::new(0),
            counted: Mutex::default(),
            attrs_lost: Mutex::default(),
            fatal: Mutex::default(),
            root_done: Mutex::default(),
        };
        let jobs = if opts.jobs == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            opts.jobs
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .stack_size(16 << 20)
            .thread_name(|i| format!("haul-backup-{i}"))
            .build()
            .map_err(|e| Error::io("starting workers", self.location(), io::Error::other(e)))?;
        let root_tree = std::thread::scope(|sc| {
            if progress.wants_totals() {
                let (paths, filter) = (&paths, &opts.filter);
                sc.spawn(move || {
                    for p in paths {
                        match sys::open_dir_path(p) {
                            Ok(d) => crate::walk::scan(d, filter, progress),
                            Err(_) => progress
                                .discovered(1, std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)),
                        }
                    }
                    progress.discovery_done();
                });
            }
            pool.install(|| -> Result<Id, Error> {
                let mut roots = Vec::new();
                for p in &paths {
                    let parent_dir = p.parent().unwrap_or(Path::new("/"));
                    let pd = sys::open_dir_path(parent_dir)
                        .map_err(|e| Error::io("opening source", parent_dir, e))?;
                    let name = match p.file_name() {
                        Some(n) => CString::new(n.as_bytes())
                            .map_err(|_| Error::invalid(p, "NUL in path"))?,
                        None => CString::new(".").expect("no NUL"),
                    };
                    let root_name = PathBuf::from(p.file_name().unwrap_or(OsStr::new("ROOT")));
                    let old = parent_root.as_deref().and_then(|r| {
                        r.iter()
                            .find(|n| n.name.as_slice() == root_name.as_os_str().as_bytes())
                    });
                    // Paths (in excludes and in reports) are relative to what
                    // a restore recreates: a one-path snapshot's root is the
                    // path's contents; several paths sit under their names.
                    let rel = if paths.len() == 1 {
                        PathBuf::new()
                    } else {
                        root_name.clone()
                    };
                    let st =
                        sys::stat_at(&pd, &name).map_err(|e| Error::io("reading source", p, e))?;
                    if backup.repo_dir == Some((st.dev, st.ino)) {
                        return Err(Error::invalid(
                            p,
                            "this is the repository itself; it cannot be recorded into itself",
                        ));
                    }
                    match backup.node_for(&pd, &name, &rel, &st, old) {
                        Ok(mut n) => {
                            n.name = root_name.as_os_str().as_bytes().to_vec();
                            backup.count(&n, &st, &rel);
                            roots.push(n);
                        }
                        Err(NodeError::Repo(e)) => return Err(e),
                        Err(NodeError::Entry(e)) => {
                            return Err(Error::io(
                                "reading source",
                                p,
                                io::Error::other(e.to_string()),
                            ))
                        }
                    }
                }
                backup.store_tree(roots)
            })
        })?;

        let SnapshotWriter {
            packer,
            files,
            dirs,
            bytes,
            bytes_read,
            bytes_new,
            failed,
            notices: walk_notices,
            symlinks,
            specials,
            hardlinks,
            attrs_lost,
            ..
        } = backup;
        let mut walk_notices = walk_notices.into_inner().unwrap_or_else(|e| e.into_inner());
        let (lost, examples) = attrs_lost.into_inner().unwrap_or_else(|e| e.into_inner());
        if lost > 0 {
            walk_notices.push(format!(
                "{lost} entries have chattr flags (immutable or append-only), which snapshots do \
                 not keep; they are restored without them: {}{}",
                examples.join(", "),
                if lost > examples.len() as u64 {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        let files = files.into_inner();
        let (entries, packs, stored) = packer.finish()?;
        self.write_index(entries)?;

        let summary = SnapshotSummary {
            files,
            symlinks: symlinks.into_inner(),
            hardlinks: hardlinks.into_inner(),
            specials: specials.into_inner(),
            dirs: dirs.into_inner(),
            bytes: bytes.into_inner(),
            bytes_new: bytes_new.into_inner(),
        };
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            time: opts.time.unwrap_or_else(Timestamp::now),
            hostname: host,
            username: username(),
            paths: path_strings,
            tags: opts.tags.clone(),
            tree: root_tree,
            parent: parent.as_ref().map(|p| p.id),
            summary,
            original: None,
        };
        let id = self.save_snapshot(&snapshot)?;
        let (failed, failed_not_listed) = failed
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_sorted();
        Ok(CreateSummary {
            id,
            parent: snapshot.parent,
            files,
            symlinks: summary.symlinks,
            hardlinks: summary.hardlinks,
            specials: summary.specials,
            dirs: summary.dirs,
            bytes: summary.bytes,
            bytes_read: bytes_read.into_inner(),
            bytes_new: summary.bytes_new,
            bytes_stored: stored,
            packs,
            seconds: start.elapsed().as_secs_f64(),
            failed,
            failed_not_listed,
            notices: lock.notices().iter().cloned().chain(walk_notices).collect(),
        })
    }
}
