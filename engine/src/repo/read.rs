//! Reading snapshots back: blobs, trees, listings and differences.
use std::path::Path;
use std::sync::Arc;

use haul_formats::{
    bundle_member, decode_blob_into, decode_tree, Id, IndexEntry, Node, NodeKind, RepoFile,
    MAX_DATA_BLOB_LEN, MAX_TREE_BLOB_LEN,
};
use serde::Serialize;

use super::blocks::{Block, MAX_CACHED_BLOCK};
use super::create::KindName;
use super::index::MasterIndex;
use super::Repository;
use crate::error::Error;

/// One entry of a snapshot listing.
#[derive(Clone, Debug, Serialize)]
pub struct LsEntry {
    /// Path relative to the snapshot root.
    pub path: String,
    /// file, dir, symlink, fifo, socket, chardev or blockdev.
    pub kind: &'static str,
    /// Size in bytes (files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
}

/// How an entry differs between two snapshots.
#[derive(Clone, Debug, Serialize)]
pub struct DiffChange {
    /// Path relative to the snapshot root.
    pub path: String,
    /// added, removed, content or metadata.
    pub change: &'static str,
}

fn join(prefix: &str, name: &[u8]) -> String {
    let n = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        n.into_owned()
    } else {
        format!("{prefix}/{n}")
    }
}

/// The largest read buffer a thread keeps for the next read.
const MAX_KEPT_READ_BUFFER: usize = 8 << 20;

thread_local! {
    /// Each thread's buffer for stored blobs read from packs: reused, so a
    /// read costs neither an allocation nor zeroing the memory first.
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A verified blob's plaintext: a slice of its decoded stored blob, which
/// it shares with the cache and its bundle's other members (no copy).
pub(crate) struct Blob {
    block: Arc<Block>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.block[self.range.clone()]
    }
}

impl Repository {
    /// Reads and verifies one blob (its plaintext must hash to `id`). A
    /// bundle is fetched and decoded once for all the members read while it
    /// stays in the cache; `max` caps the stored blob's whole plaintext.
    pub(crate) fn load_blob(
        &self,
        index: &MasterIndex,
        id: &Id,
        max: usize,
    ) -> Result<Blob, Error> {
        self.load_blob_from(index, &self.indexed(index, id)?, id, max)
    }

    /// [`Repository::load_blob_at`] entry `first`, and if that copy cannot
    /// be read or is damaged, each other copy the index names in turn: a
    /// blob the repository holds twice survives the loss of one pack.
    pub(crate) fn load_blob_from(
        &self,
        index: &MasterIndex,
        first: &IndexEntry,
        id: &Id,
        max: usize,
    ) -> Result<Blob, Error> {
        let err = match self.load_blob_at(first, id, max) {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        for e in index.lookup_all(id).iter().filter(|e| *e != first) {
            if let Ok(b) = self.load_blob_at(e, id, max) {
                return Ok(b);
            }
        }
        Err(err)
    }

    /// The index entry of blob `id`; an error if no index holds it.
    fn indexed(&self, index: &MasterIndex, id: &Id) -> Result<IndexEntry, Error> {
        index.lookup(id).ok_or_else(|| {
            Error::corrupt(
                "reading blob",
                self.location(),
                super::bad("blob", format!("{} is not in any index", id.to_hex())),
            )
        })
    }

    /// [`Repository::load_blob`] for a blob already looked up.
    pub(crate) fn load_blob_at(&self, e: &IndexEntry, id: &Id, max: usize) -> Result<Blob, Error> {
        let name = || RepoFile::Pack.path(&e.pack);
        let key = (e.pack, e.offset);
        let block = self.blocks.get(key, |plain| {
            STORED.with(|buf| {
                let mut buf = buf.borrow_mut();
                let len = e.stored_len as usize;
                let name = name();
                self.backend()
                    .get_range_into(&name, u64::from(e.offset), len as u64, &mut buf)
                    .map_err(|err| Error::io("reading pack", self.file_path(&name), err))?;
                let decoded = decode_blob_into(&buf[..len], max, plain)
                    .map(drop)
                    .map_err(|err| Error::corrupt("reading blob", self.file_path(&name), err));
                if buf.len() > MAX_KEPT_READ_BUFFER {
                    *buf = Vec::new();
                }
                decoded
            })
        })?;
        let member = bundle_member(&block, e.inner, e.raw_len, id)
            .map_err(|err| Error::corrupt("reading blob", self.file_path(&name()), err))?;
        let range = e.inner as usize..e.inner as usize + member.len();
        if range.len() == block.len() || block.len() > MAX_CACHED_BLOCK {
            // Stored alone, nobody else will ask for it; and a bundle larger
            // than haul writes (another writer's, or a hostile one) is not
            // kept, so the cache stays within a few MiB per thread.
            self.blocks.forget(key);
        }
        Ok(Blob { block, range })
    }

    /// Reads a data blob.
    pub(crate) fn load_data(&self, index: &MasterIndex, id: &Id) -> Result<Blob, Error> {
        self.load_blob(index, id, MAX_DATA_BLOB_LEN)
    }

    /// Reads and decodes a tree blob.
    pub(crate) fn load_tree(&self, index: &MasterIndex, id: &Id) -> Result<Vec<Node>, Error> {
        let bytes = self.load_blob(index, id, MAX_TREE_BLOB_LEN)?;
        decode_tree(&bytes).map_err(|e| Error::corrupt("reading tree", self.location(), e))
    }

    /// The nodes at `path` (relative to the snapshot root; empty for the root),
    /// and the tree they came from. For a snapshot of one path, the root is
    /// that path's own contents.
    pub(crate) fn resolve_path(
        &self,
        index: &MasterIndex,
        root: &Id,
        single: bool,
        path: &Path,
    ) -> Result<Option<Node>, Error> {
        let roots = self.load_tree(index, root)?;
        let mut comps: Vec<&[u8]> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(std::os::unix::ffi::OsStrExt::as_bytes(s)),
                _ => None,
            })
            .collect();
        // A one-path snapshot's root is that path's contents when it is a
        // directory; a single file sits under its name, as each path of a
        // snapshot of several paths does (so `ls` shows it, and `restore
        // --path` takes that name).
        let single =
            single && matches!(roots.first(), Some(n) if matches!(n.kind, NodeKind::Dir { .. }));
        let mut cur: Node = if single {
            match roots.into_iter().next() {
                Some(n) => n,
                None => return Ok(None),
            }
        } else {
            // A virtual directory holding one node per recorded path.
            if comps.is_empty() {
                return Ok(Some(virtual_root(*root)));
            }
            let first = comps.remove(0);
            match roots.into_iter().find(|n| n.name == first) {
                Some(n) => n,
                None => return Ok(None),
            }
        };
        for c in comps {
            let NodeKind::Dir { subtree } = &cur.kind else {
                return Ok(None);
            };
            let nodes = self.load_tree(index, subtree)?;
            match nodes.into_iter().find(|n| n.name == c) {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Every entry of snapshot `spec` below `path`, depth first, sorted by
    /// name, handed to `each` as it is read (so a listing of millions of
    /// entries is not held in memory).
    pub fn ls<E: From<Error>>(
        &self,
        spec: &str,
        path: Option<&Path>,
        mut each: impl FnMut(LsEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let snap = self.find_snapshot(spec)?;
        let index = self.load_index()?;
        let single = snap.snapshot.paths.len() == 1;
        let start = path.unwrap_or(Path::new(""));
        let node = self
            .resolve_path(&index, &snap.snapshot.tree, single, start)?
            .ok_or_else(|| Error::invalid(start, "no such path in the snapshot"))?;
        let prefix = start.to_string_lossy().trim_matches('/').to_string();
        if !prefix.is_empty() {
            each(ls_entry(&prefix, &node))?;
        }
        if let NodeKind::Dir { subtree } = &node.kind {
            self.ls_tree(&index, subtree, &prefix, &mut each)?;
        }
        Ok(())
    }

    /// Lists tree `id` below `prefix` depth first, in name order, from a
    /// stack of the directories being listed: no recursion, so any depth.
    fn ls_tree<E: From<Error>>(
        &self,
        index: &MasterIndex,
        id: &Id,
        prefix: &str,
        out: &mut impl FnMut(LsEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stack = vec![(self.load_tree(index, id)?.into_iter(), prefix.to_string())];
        while let Some((rest, dir)) = stack.last_mut() {
            let Some(n) = rest.next() else {
                stack.pop();
                continue;
            };
            let p = join(dir, &n.name);
            out(ls_entry(&p, &n))?;
            if let NodeKind::Dir { subtree } = &n.kind {
                stack.push((self.load_tree(index, subtree)?.into_iter(), p));
            }
        }
        Ok(())
    }

    /// Entries added, removed or changed from snapshot `a` to `b`, in path
    /// order, handed to `each` as they are found.
    pub fn diff<E: From<Error>>(
        &self,
        a: &str,
        b: &str,
        mut each: impl FnMut(DiffChange) -> Result<(), E>,
    ) -> Result<(), E> {
        let (sa, sb) = (self.find_snapshot(a)?, self.find_snapshot(b)?);
        let index = self.load_index()?;
        let root = |s: &super::SnapshotInfo| -> Result<Option<Id>, Error> {
            let single = s.snapshot.paths.len() == 1;
            Ok(
                match self.resolve_path(&index, &s.snapshot.tree, single, Path::new(""))? {
                    Some(Node {
                        kind: NodeKind::Dir { subtree },
                        ..
                    }) => Some(subtree),
                    _ => None,
                },
            )
        };
        self.diff_trees(&index, root(&sa)?, root(&sb)?, "", &mut each)
    }

    /// Compares two trees depth first, in name order, from a stack of the
    /// directory pairs being compared: no recursion, so any depth. A pair
    /// of subtrees with the same id is identical and not walked.
    fn diff_trees<E: From<Error>>(
        &self,
        index: &MasterIndex,
        a: Option<Id>,
        b: Option<Id>,
        prefix: &str,
        out: &mut impl FnMut(DiffChange) -> Result<(), E>,
    ) -> Result<(), E> {
        struct Pair {
            a: Vec<Node>,
            b: Vec<Node>,
            i: usize,
            j: usize,
            prefix: String,
        }
        let load = |id: Option<Id>| -> Result<Vec<Node>, Error> {
            id.map(|i| self.load_tree(index, &i))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let mut stack = Vec::new();
        if a != b {
            stack.push(Pair {
                a: load(a)?,
                b: load(b)?,
                i: 0,
                j: 0,
                prefix: prefix.to_string(),
            });
        }
        while let Some(top) = stack.last_mut() {
            let (na, nb) = (&top.a, &top.b);
            let ord = match (na.get(top.i), nb.get(top.j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => {
                    stack.pop();
                    continue;
                }
            };
            let mut descend = None;
            match ord {
                std::cmp::Ordering::Less => {
                    self.report_all(index, &na[top.i], &top.prefix, "removed", out)?;
                    top.i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.report_all(index, &nb[top.j], &top.prefix, "added", out)?;
                    top.j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (&na[top.i], &nb[top.j]);
                    let p = join(&top.prefix, &x.name);
                    match (&x.kind, &y.kind) {
                        (NodeKind::Dir { subtree: sa }, NodeKind::Dir { subtree: sb }) => {
                            if meta_differs(x, y) {
                                out(DiffChange {
                                    path: p.clone(),
                                    change: "metadata",
                                })?;
                            }
                            if sa != sb {
                                descend = Some((*sa, *sb, p));
                            }
                        }
                        (ka, kb) if x.kind_name() != y.kind_name() || content_differs(ka, kb) => {
                            out(DiffChange {
                                path: p,
                                change: "content",
                            })?;
                        }
                        _ if x.size != y.size => out(DiffChange {
                            path: p,
                            change: "content",
                        })?,
                        _ if meta_differs(x, y) => out(DiffChange {
                            path: p,
                            change: "metadata",
                        })?,
                        _ => {}
                    }
                    top.i += 1;
                    top.j += 1;
                }
            }
            if let Some((sa, sb, p)) = descend {
                stack.push(Pair {
                    a: load(Some(sa))?,
                    b: load(Some(sb))?,
                    i: 0,
                    j: 0,
                    prefix: p,
                });
            }
        }
        Ok(())
    }

    /// Reports `n` and, for a directory, everything below it, as `change`.
    fn report_all<E: From<Error>>(
        &self,
        index: &MasterIndex,
        n: &Node,
        prefix: &str,
        change: &'static str,
        out: &mut impl FnMut(DiffChange) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = join(prefix, &n.name);
        out(DiffChange {
            path: p.clone(),
            change,
        })?;
        let NodeKind::Dir { subtree } = &n.kind else {
            return Ok(());
        };
        let mut stack = vec![(self.load_tree(index, subtree)?.into_iter(), p)];
        while let Some((rest, dir)) = stack.last_mut() {
            let Some(c) = rest.next() else {
                stack.pop();
                continue;
            };
            let p = join(dir, &c.name);
            out(DiffChange {
                path: p.clone(),
                change,
            })?;
            if let NodeKind::Dir { subtree } = &c.kind {
                stack.push((self.load_tree(index, subtree)?.into_iter(), p));
            }
        }
        Ok(())
    }
}

fn content_differs(a: &NodeKind, b: &NodeKind) -> bool {
    match (a, b) {
        (
            NodeKind::File {
                data_map: ma,
                chunks: ca,
            },
            NodeKind::File {
                data_map: mb,
                chunks: cb,
            },
        ) => ma != mb || ca != cb,
        (NodeKind::Symlink { target: a }, NodeKind::Symlink { target: b }) => a != b,
        (NodeKind::CharDevice { rdev: a }, NodeKind::CharDevice { rdev: b })
        | (NodeKind::BlockDevice { rdev: a }, NodeKind::BlockDevice { rdev: b }) => a != b,
        _ => false,
    }
}

fn meta_differs(a: &Node, b: &Node) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.xattrs != b.xattrs
}

fn virtual_root(tree: Id) -> Node {
    Node {
        name: b"ROOT".to_vec(),
        kind: NodeKind::Dir { subtree: tree },
        mode: 0o755,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: haul_formats::Timestamp::EPOCH,
        atime: haul_formats::Timestamp::EPOCH,
        ctime: haul_formats::Timestamp::EPOCH,
        inode: 0,
        device: 0,
        nlink: 1,
        size: 0,
        hardlink_group: None,
        xattrs: Vec::new(),
    }
}

fn ls_entry(path: &str, n: &Node) -> LsEntry {
    LsEntry {
        path: path.to_string(),
        kind: n.kind_name(),
        size: n.size,
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        mtime: n
            .mtime
            .to_rfc3339()
            .unwrap_or_else(|_| n.mtime.secs().to_string()),
    }
}
