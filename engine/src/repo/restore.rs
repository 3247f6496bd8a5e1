//! `snapshot restore`: a snapshot's trees walked as a source of entries
//! (`NodeLeaf`, a `LeafSource` over nodes and their blobs) into the
//! destination writer (`dest/`), so everything copy promises about the
//! destination holds here too. One file on purpose: where a restore lands
//! (a tree, a `--path`, a single file, a dry run's missing DST), its walk
//! and its leaves are one story.
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use haul_formats::{IndexEntry, Node, NodeKind, Xattr, MAX_DATA_BLOB_LEN};

use super::index::MasterIndex;
use super::Repository;
use crate::dest::entry::{Entry, LinkKey};
use crate::dest::leaf::{DataSink, LeafSource, Place};
use crate::dest::{
    has_default_acl, open_or_create_root, CopySummary, DestWriter, Outcome, WriteOptions,
};
use crate::error::{Error, Step, StepError};
use crate::meta::{FileKind, Xattrs};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::worker_pool;
use crate::walk::{walk, Opened, TreeVisitor};

/// What to restore and how.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// Subtrees to restore (relative to the snapshot root); empty: everything.
    pub paths: Vec<PathBuf>,
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// Remove what DST holds beyond the snapshot, and let a non-directory
    /// replace a directory with contents.
    pub delete: bool,
    /// Entries never removed from DST.
    pub filter: crate::Filter,
    /// Report every change through [`Progress::change`].
    pub record_changes: bool,
    /// What the destination writer keeps, and whether it writes at all.
    pub write: WriteOptions,
}

impl RestoreOptions {
    /// The destination writer these options ask for.
    fn writer<'a>(&'a self, progress: &'a dyn Progress) -> DestWriter<'a> {
        DestWriter::new(
            &self.write,
            self.delete,
            &self.filter,
            self.record_changes,
            progress,
        )
    }
}

struct BlobSource<'r> {
    repo: &'r Repository,
    index: &'r MasterIndex,
}

/// A snapshot node as the destination writer wants it; a hardlink group is
/// its link key.
fn node_entry(n: &Node) -> Entry {
    let rdev = match &n.kind {
        NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => *rdev,
        _ => 0,
    };
    let t = |t: haul_formats::Timestamp| (t.secs(), i64::from(t.nanos()));
    Entry {
        kind: FileKind::of_node(&n.kind),
        perm: n.mode & 0o7777,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        rdev,
        atime: t(n.atime),
        mtime: t(n.mtime),
        // Snapshots do not record chattr flags (create reports them).
        attrs: 0,
        link: n.hardlink_group.map(LinkKey::Group),
    }
}

fn node_xattrs(n: &Node, run: &DestWriter<'_>) -> Xattrs {
    let p = run.policy;
    n.xattrs
        .iter()
        .filter(|x| p.xattrs && (p.acls || !x.name.starts_with(b"system.posix_acl_")))
        .map(|Xattr { name, value }| (OsStr::from_bytes(name).to_os_string(), value.clone()))
        .collect()
}

impl Repository {
    /// Restores snapshot `spec` into `dst`. Per-entry failures (a corrupt
    /// chunk, a permission) are in the summary; the affected file is never
    /// left under its final name.
    pub fn restore(
        &self,
        spec: &str,
        dst: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<CopySummary, Error> {
        let start = std::time::Instant::now();
        sys::raise_nofile_limit();
        let snap = self.find_snapshot(spec)?;
        let lock = self.read_lock()?;
        if opts.paths.is_empty() {
            // The record carries the totals, so the bar needs no scan.
            let sum = &snap.snapshot.summary;
            progress.discovered(sum.entries(), sum.bytes);
            progress.discovery_done();
        }
        let index = self.load_index()?;
        let ctx = BlobSource {
            repo: self,
            index: &index,
        };
        let pool =
            worker_pool(opts.jobs, "restore").map_err(|e| Error::io("starting workers", dst, e))?;
        let single = snap.snapshot.paths.len() == 1;
        if single && opts.paths.is_empty() {
            // A snapshot of one file (or other non-directory) restores as
            // `haul copy FILE DST` copies.
            if let [node] = &self.load_tree(&index, &snap.snapshot.tree)?[..] {
                if !matches!(node.kind, NodeKind::Dir { .. }) {
                    return self.restore_lone(&ctx, node, dst, &pool, opts, progress, start, &lock);
                }
            }
        }
        let wanted: Vec<PathBuf> = if opts.paths.is_empty() {
            vec![PathBuf::new()]
        } else {
            opts.paths.clone()
        };
        // Every requested path is resolved before DST is touched, so a typo
        // does not leave an empty destination behind.
        let mut nodes = Vec::new();
        for p in &wanted {
            let node = self
                .resolve_path(&index, &snap.snapshot.tree, single, p)?
                .ok_or_else(|| Error::invalid(p, "no such path in the snapshot"))?;
            let rel: PathBuf = p
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            nodes.push((rel, node));
        }
        let dry = opts.write.dry_run;
        let mut run = opts.writer(progress);
        // In a dry run a missing DST stays missing: `root` is then `None`,
        // and everything below it would be created.
        let (root, existed) = open_or_create_root(dst, dry)?;
        let clone = |f: &File| {
            f.try_clone()
                .map_err(|e| Error::io("opening destination", dst, e))
        };
        run.dst_root = root.as_ref().map(clone).transpose()?;
        if !existed {
            run.record(Outcome::Created, Path::new(""));
        }
        let run = &run;
        let restored = pool.install(|| -> Result<(), Error> {
            for (rel, node) in &nodes {
                let rel = rel.clone();
                if rel.as_os_str().is_empty() {
                    // The root itself: its contents go into DST, and for a
                    // one-path snapshot its metadata is DST's.
                    let NodeKind::Dir { subtree } = &node.kind else {
                        return Err(Error::invalid(dst, "the snapshot root is not a directory"));
                    };
                    let children = self.load_tree(&index, subtree)?;
                    let dir = RestoreDir {
                        acl: root.as_ref().is_some_and(has_default_acl),
                        dst: root.as_ref().map(clone).transpose()?,
                        rel: PathBuf::new(),
                        fresh: !existed,
                        existed,
                        node: single.then(|| node.clone()),
                    };
                    run.count_source(&node_entry(node), false);
                    let listing = run.restore_listing(&ctx, &dir, children);
                    walk(&RestoreWalk(run, &ctx), (dir, Some((listing, ()))));
                } else {
                    let parent = open_parents(root.as_ref(), &rel, !dry)
                        .map_err(|e| Error::io("creating parents", dst.join(&rel), e))?;
                    let acl = parent.as_ref().is_none_or(has_default_acl);
                    let at = RestoreDir {
                        fresh: parent.is_none(),
                        existed: parent.is_some(),
                        dst: parent,
                        rel: rel.parent().map(Path::to_path_buf).unwrap_or_default(),
                        acl,
                        node: None,
                    };
                    let item = (None, (*node).clone());
                    if let Some(sub) = run.restore_node(&ctx, &at, &item) {
                        let w = RestoreWalk(run, &ctx);
                        if let Some(opened) = w.open(&at, sub) {
                            walk(&w, opened);
                        }
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = restored {
            if !existed && !dry {
                // Only if still empty: a refused restore leaves no DST behind.
                let _ = std::fs::remove_dir(dst);
            }
            return Err(e);
        }
        let mut s = run.summary(start);
        s.seconds = start.elapsed().as_secs_f64();
        s.notices.extend(self.lock_notices(&lock));
        Ok(s)
    }
}

impl Repository {
    /// Restores the one non-directory node of a snapshot of a single file:
    /// into DST as DST/<name> when DST is a directory, else as DST (its
    /// parents created as needed), as `haul copy FILE DST` does.
    #[allow(clippy::too_many_arguments)]
    fn restore_lone(
        &self,
        ctx: &BlobSource<'_>,
        node: &Node,
        dst: &Path,
        pool: &rayon::ThreadPool,
        opts: &RestoreOptions,
        progress: &dyn Progress,
        start: std::time::Instant,
        lock: &super::LockGuard<'_>,
    ) -> Result<CopySummary, Error> {
        let dry = opts.write.dry_run;
        let (dir, name) = match sys::stat_path(dst, true) {
            Ok(st) if st.kind() == FileKind::Dir => (dst.to_path_buf(), node.name.clone()),
            _ => {
                let (dir, name) = crate::dest::split_parent(dst)?;
                if !dry {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io("creating destination", &dir, e))?;
                }
                (dir, name.into_bytes())
            }
        };
        let d = match sys::open_dir_path(&dir) {
            Ok(d) => Some(d),
            // A dry run creates no parents: the file would be new.
            Err(e) if dry && e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("opening destination", &dir, e)),
        };
        let cname = CString::new(name.clone()).map_err(|_| Error::invalid(dst, "NUL in name"))?;
        let mut run = opts.writer(progress);
        run.dst_root = d
            .as_ref()
            .map(File::try_clone)
            .transpose()
            .map_err(|e| Error::io("opening destination", &dir, e))?;
        let acl = d.as_ref().is_none_or(has_default_acl);
        let at = RestoreDir {
            fresh: d.is_none(),
            existed: d.is_some(),
            dst: d,
            rel: PathBuf::new(),
            acl,
            node: None,
        };
        let mut lone = node.clone();
        lone.name = cname.into_bytes();
        // Not a directory, so nothing comes back to walk.
        pool.install(|| run.restore_node(ctx, &at, &(None, lone)));
        let mut s = run.summary(start);
        s.notices.extend(self.lock_notices(lock));
        Ok(s)
    }
}

impl Repository {
    /// The stale locks a command broke, as notices naming the repository.
    fn lock_notices(&self, lock: &super::LockGuard<'_>) -> Vec<crate::EntryIssue> {
        lock.notices()
            .iter()
            .map(|m| crate::EntryIssue {
                path: self.location().to_path_buf(),
                reason: m.clone(),
            })
            .collect()
    }
}

/// Opens the directories above `rel` inside `root`, one component at a
/// time without following symlinks, creating them as needed if `create`.
/// `None` (only without `create`): one does not exist (or `root` does not).
fn open_parents(root: Option<&File>, rel: &Path, create: bool) -> io::Result<Option<File>> {
    let Some(root) = root else { return Ok(None) };
    let mut d = root.try_clone()?;
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            let c = CString::new(c.as_os_str().as_bytes())?;
            if create {
                match sys::mkdir_at(&d, &c, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            d = match sys::open_dir_at(&d, &c) {
                Ok(d) => d,
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
        }
    }
    Ok(Some(d))
}

/// A directory being restored, kept by the walk until everything below it
/// is done, when its metadata (that of `node`) is applied.
struct RestoreDir {
    /// `None` in a dry run below a directory that does not exist yet.
    dst: Option<File>,
    rel: PathBuf,
    fresh: bool,
    existed: bool,
    acl: bool,
    /// The directory's own node; `None` where DST's metadata is not the
    /// snapshot's (the root of a snapshot of several paths).
    node: Option<Node>,
}

/// A directory's entries in the order they are restored, each file with
/// the index entry of its first chunk.
type Listing = std::vec::IntoIter<(Option<IndexEntry>, Node)>;

/// A snapshot's leaf node, as the destination writer asks for it.
struct NodeLeaf<'r, 'a, 'c> {
    w: &'r DestWriter<'a>,
    ctx: &'r BlobSource<'c>,
    n: &'r Node,
    st: Entry,
    first: Option<&'r IndexEntry>,
}

impl LeafSource for NodeLeaf<'_, '_, '_> {
    fn entry(&self) -> &Entry {
        &self.st
    }

    /// The same quick check as copy's: size (checked by the caller) and mtime.
    fn same_content(&self, _: &File, _: &CStr, cur: &Stat) -> Result<bool, StepError> {
        Ok(cur.mtime == self.st.mtime)
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        match &self.n.kind {
            NodeKind::Symlink { target } => Ok(target.clone()),
            _ => Err(StepError {
                op: "readlink",
                err: io::Error::from_raw_os_error(libc::EINVAL),
            }),
        }
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(node_xattrs(self.n, self.w))
    }

    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        match &self.n.kind {
            NodeKind::File { data_map, chunks } => node_pieces(
                self.ctx,
                self.n,
                data_map.as_deref(),
                chunks,
                self.first,
                each,
            ),
            _ => Ok(()),
        }
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        if let NodeKind::File { data_map, chunks } = &self.n.kind {
            self.w.write_chunks(
                self.ctx,
                out,
                self.n,
                data_map.as_deref(),
                chunks,
                self.first,
            )?;
        }
        Ok((self.st.clone(), node_xattrs(self.n, self.w)))
    }
}

/// A subdirectory to restore, created when its turn comes.
struct RestoreSub {
    node: Node,
    name: CString,
    rel: PathBuf,
}

/// Restore's [`TreeVisitor`].
struct RestoreWalk<'r, 'a, 'c>(&'r DestWriter<'a>, &'r BlobSource<'c>);

impl TreeVisitor for RestoreWalk<'_, '_, '_> {
    type Dir = RestoreDir;
    type Listing = Listing;
    type Shared = ();
    type Item = (Option<IndexEntry>, Node);
    type Sub = RestoreSub;

    fn next_batch(&self, _: &RestoreDir, l: &mut Listing, out: &mut Vec<Self::Item>) -> bool {
        out.extend(l.by_ref().take(sys::BATCH));
        l.len() > 0
    }

    fn visit(&self, dir: &RestoreDir, _: &(), item: &Self::Item) -> Option<RestoreSub> {
        self.0.restore_node(self.1, dir, item)
    }

    fn open(&self, parent: &RestoreDir, sub: RestoreSub) -> Option<Opened<Self>> {
        let run = self.0;
        let RestoreSub { node, name, rel } = sub;
        let NodeKind::Dir { subtree } = &node.kind else {
            return None;
        };
        // In a dry run a directory that is not there yet has no handle
        // (`None`), and everything below it is walked as new.
        let (d, existed) = match run.ensure_dir(parent.dst.as_ref(), parent.fresh, &name, &rel) {
            Ok(x) => x,
            Err(e) => {
                run.fail(&rel, e);
                return None;
            }
        };
        let children = self.1.repo.load_tree(self.1.index, subtree);
        let dir = RestoreDir {
            acl: match &d {
                Some(d) if existed => has_default_acl(d),
                _ => parent.acl,
            },
            dst: d,
            rel,
            fresh: !existed,
            existed,
            node: Some(node),
        };
        match children {
            Ok(children) => {
                let listing = run.restore_listing(self.1, &dir, children);
                Some((dir, Some((listing, ()))))
            }
            Err(e) => {
                run.fail(&dir.rel, format!("reading tree: {e}"));
                Some((dir, None))
            }
        }
    }

    fn finish(&self, dir: &RestoreDir, _: Option<&RestoreDir>) {
        if let (Some(n), Some(d)) = (&dir.node, &dir.dst) {
            self.0.restore_dir_meta(n, d, dir.existed, &dir.rel);
        }
        if !dir.rel.as_os_str().is_empty() {
            self.0.progress.entry_done();
        }
    }
}

impl DestWriter<'_> {
    /// With `--delete`, clears what the snapshot lacks from an existing
    /// directory, and orders its entries for restoring.
    fn restore_listing(&self, ctx: &BlobSource<'_>, dir: &RestoreDir, nodes: Vec<Node>) -> Listing {
        if let (false, true, Some(d)) = (dir.fresh, self.delete, &dir.dst) {
            self.remove_extraneous(d, &dir.rel, |name| {
                nodes
                    .binary_search_by(|n| n.name.as_slice().cmp(name))
                    .is_ok()
            });
        }
        // Files first, in the order their data is stored, then directories
        // (the order create read them in): the small files of a bundle are
        // restored together, so each bundle is decoded once while it is in
        // the cache.
        // The index entry of each file's first chunk is kept for the read.
        let mut order: Vec<(bool, Option<IndexEntry>, Node)> = nodes
            .into_iter()
            .map(|n| {
                let first = match &n.kind {
                    NodeKind::File { chunks, .. } => {
                        chunks.first().and_then(|c| ctx.index.lookup(c))
                    }
                    _ => None,
                };
                (matches!(n.kind, NodeKind::Dir { .. }), first, n)
            })
            .collect();
        order.sort_by_key(|(dir, e, _)| (*dir, e.map(|e| (e.pack, e.offset, e.inner))));
        order
            .into_iter()
            .map(|(_, e, n)| (e, n))
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// One entry of a directory being restored: a directory is handed back
    /// to be walked; anything else is restored here.
    fn restore_node(
        &self,
        ctx: &BlobSource<'_>,
        dir: &RestoreDir,
        (first, n): &(Option<IndexEntry>, Node),
    ) -> Option<RestoreSub> {
        let Ok(name) = CString::new(n.name.clone()) else {
            return None;
        };
        let rel = dir.rel.join(OsStr::from_bytes(&n.name));
        let is_dir = matches!(n.kind, NodeKind::Dir { .. });
        if self.protect.excluded(&rel, is_dir) {
            return None;
        }
        let st = node_entry(n);
        self.check_owner_map(&st, &rel);
        if is_dir {
            self.count_source(&st, false);
            return Some(RestoreSub {
                node: n.clone(),
                name,
                rel,
            });
        }
        let (dst, fresh, acl) = (dir.dst.as_ref(), dir.fresh, dir.acl);
        let first = first.as_ref();
        let r = if let Some(g) = n.hardlink_group {
            match self.linked(LinkKey::Group(g), dst, &name, &rel, || {
                self.restore_leaf(ctx, n, first, &st, dst, &name, &rel, fresh, acl)
            }) {
                Ok((leader, r)) => {
                    self.count_source(&st, !leader);
                    r
                }
                Err(e) => Err(e),
            }
        } else {
            self.count_source(&st, false);
            self.restore_leaf(ctx, n, first, &st, dst, &name, &rel, fresh, acl)
                .map(drop)
        };
        if let Err(e) = r {
            self.fail(&rel, e);
        }
        self.progress.entry_done();
        None
    }

    fn restore_dir_meta(&self, n: &Node, d: &File, existed: bool, rel: &Path) {
        self.apply_dir_meta(d, &node_entry(n), || Ok(node_xattrs(n, self)), existed, rel);
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_leaf(
        &self,
        ctx: &BlobSource<'_>,
        n: &Node,
        first: Option<&IndexEntry>,
        st: &Entry,
        dst: Option<&File>,
        name: &CStr,
        rel: &Path,
        fresh: bool,
        acl: bool,
    ) -> Result<bool, StepError> {
        let src = NodeLeaf {
            w: self,
            ctx,
            n,
            st: st.clone(),
            first,
        };
        let at = Place {
            dir: dst,
            fresh,
            acl_inherit: acl,
            seen: None,
        };
        self.put_leaf(at, name, rel, &src)
    }

    /// Writes a file's chunks at their offsets (leaving holes as holes) and
    /// sets its size. Every chunk is verified against its id as it is read.
    /// `first`: the first chunk's index entry, when the caller looked it up.
    fn write_chunks(
        &self,
        ctx: &BlobSource<'_>,
        out: &File,
        n: &Node,
        data_map: Option<&[haul_formats::Extent]>,
        chunks: &[haul_formats::Id],
        first: Option<&IndexEntry>,
    ) -> Result<(), StepError> {
        node_pieces(ctx, n, data_map, chunks, first, &mut |off, bytes| {
            out.write_all_at(bytes, off).step("write")?;
            self.copied(bytes.len() as u64);
            Ok(())
        })?;
        // A dense file's writes already gave it its size; a sparse one may
        // end in a hole, which only setting the size creates.
        if data_map.is_some() {
            sys::truncate_fd(out, n.size).step("set size")?;
        }
        Ok(())
    }
}

/// A file node's data, each piece at its offset: its chunks, read and
/// verified in order, laid over its data extents (or one extent of its
/// size). A chunk list that does not fill the extents exactly is damage.
fn node_pieces(
    ctx: &BlobSource<'_>,
    n: &Node,
    data_map: Option<&[haul_formats::Extent]>,
    chunks: &[haul_formats::Id],
    first: Option<&IndexEntry>,
    each: &mut DataSink<'_>,
) -> Result<(), StepError> {
    let damaged = |what: &str| StepError {
        op: "reading data",
        err: io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
    };
    let dense = [haul_formats::Extent {
        offset: 0,
        len: n.size,
    }];
    let extents = data_map.unwrap_or(if n.size > 0 { &dense } else { &[] });
    let mut ext = extents.iter();
    let mut cur = ext.next().copied();
    let mut pos_in_ext = 0u64;
    for (i, id) in chunks.iter().enumerate() {
        let data = match first.filter(|e| i == 0 && e.id == *id) {
            Some(e) => ctx.repo.load_blob_from(ctx.index, e, id, MAX_DATA_BLOB_LEN),
            None => ctx.repo.load_data(ctx.index, id),
        };
        let data = data.map_err(|e| damaged(&e.to_string()))?;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Some(e) = cur else {
                return Err(damaged("chunks hold more data than the file's extents"));
            };
            let take = ((e.len - pos_in_ext) as usize).min(rest.len());
            each(e.offset + pos_in_ext, &rest[..take])?;
            rest = &rest[take..];
            pos_in_ext += take as u64;
            if pos_in_ext == e.len {
                cur = ext.next().copied();
                pos_in_ext = 0;
            }
        }
    }
    if cur.is_some() {
        return Err(damaged("chunks hold less data than the file's size"));
    }
    Ok(())
}
