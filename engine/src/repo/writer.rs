//! The snapshot writer: what a new snapshot's blobs, trees and counts go
//! through, whatever feeds it. Data is chunked (`crate::chunk`), hashed,
//! deduplicated against the index and this run, compressed in bundles or
//! alone, and packed; tree blobs are stored as directories finish.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};

use haul_formats::{
    encode_blob_with_id, encode_tree, BlobKind, ChunkerParams, Extent, Id, Node, NodeKind,
    Timestamp, Xattr,
};

use super::index::MasterIndex;
use super::packer::{Packer, BUNDLE_MEMBER_MAX};
use super::Repository;
use crate::chunk::{chunk_region, data_regions, is_sparse, ChunkError};
use crate::dest::entry::Entry;
use crate::dest::IssueTally;
use crate::error::{Error, Step, StepError};
use crate::filter::Filter;
use crate::meta::FileKind;
use crate::progress::Progress;
use crate::sys::Stat;

/// A per-entry problem, or one that stops the whole run.
pub(super) enum NodeError {
    /// This entry failed, as copy's and restore's entries fail.
    Entry(StepError),
    Repo(Error),
}

impl From<Error> for NodeError {
    fn from(e: Error) -> NodeError {
        NodeError::Repo(e)
    }
}

impl From<StepError> for NodeError {
    fn from(e: StepError) -> NodeError {
        NodeError::Entry(e)
    }
}

/// An entry's failure that has a message rather than an OS error.
pub(super) fn entry_failed(op: &'static str, msg: impl Into<String>) -> NodeError {
    NodeError::Entry(StepError {
        op,
        err: io::Error::other(msg.into()),
    })
}

/// (is a user, id) → name, as looked up on this host.
pub(super) type NameCache = HashMap<(bool, u32), Option<Vec<u8>>>;

/// Records a snapshot's blobs and trees into a repository: stores data
/// chunks and tree blobs (deduplicated against the index and this run),
/// builds nodes from stats or entries, and tallies what it recorded. Fed
/// files and stats (a local walk, `create.rs`) or entries and data streams
/// (an archive upload, `import.rs`), not directory handles.
pub(super) struct SnapshotWriter<'a> {
    pub(super) repo: &'a Repository,
    pub(super) index: &'a MasterIndex,
    pub(super) packer: Packer<'a>,
    pub(super) pending: Mutex<HashSet<Id>>,
    pub(super) filter: &'a Filter,
    pub(super) chunker: ChunkerParams,
    pub(super) level: i32,
    pub(super) progress: &'a dyn Progress,
    pub(super) flush_every: usize,
    /// First recorded node of each hardlinked inode, by (dev, ino).
    pub(super) linked: Mutex<HashMap<(u64, u64), Node>>,
    pub(super) files: AtomicU64,
    pub(super) dirs: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) bytes_new: AtomicU64,
    pub(super) failed: Mutex<IssueTally>,
    pub(super) names: RwLock<NameCache>,
    /// (dev, ino) of the repository's directory, which is never recorded
    /// (a repository inside the source would otherwise hold itself, and
    /// double with each run).
    pub(super) repo_dir: Option<(u64, u64)>,
    pub(super) notices: Mutex<Vec<String>>,
    /// Recorded symlinks, devices, fifos and sockets, and further names of
    /// a hardlinked inode (files and bytes count each inode once).
    pub(super) symlinks: AtomicU64,
    pub(super) specials: AtomicU64,
    pub(super) hardlinks: AtomicU64,
    /// Hardlinked inodes counted so far.
    pub(super) counted: Mutex<HashSet<(u64, u64)>>,
    /// Entries whose chattr flags a snapshot does not keep: how many, and
    /// the first few.
    pub(super) attrs_lost: Mutex<(u64, Vec<String>)>,
    /// An error that stops the run (the repository, not an entry); the walk
    /// winds down once it is set.
    pub(super) fatal: Mutex<Option<Error>>,
    /// The node of the directory a walk started at, once it is finished.
    pub(super) root_done: Mutex<Option<Node>>,
}

pub(super) fn ts(t: (i64, i64)) -> Timestamp {
    Timestamp::new(t.0, t.1.clamp(0, 999_999_999) as u32).unwrap_or(Timestamp::EPOCH)
}

/// A stable key shared by all names of one inode within a snapshot.
pub(super) fn link_key(st: &Stat) -> u64 {
    st.dev.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ st.ino
}

impl<'a> SnapshotWriter<'a> {
    /// A writer into `repo` with nothing recorded yet.
    pub(super) fn new(
        repo: &'a Repository,
        index: &'a MasterIndex,
        filter: &'a Filter,
        progress: &'a dyn Progress,
        flush_every: usize,
    ) -> SnapshotWriter<'a> {
        SnapshotWriter {
            repo,
            index,
            packer: Packer::new(repo),
            pending: Mutex::default(),
            filter,
            chunker: repo.config().chunker,
            level: repo.config().zstd_level,
            progress,
            flush_every,
            linked: Mutex::default(),
            files: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            failed: Mutex::default(),
            names: RwLock::default(),
            repo_dir: None,
            notices: Mutex::default(),
            symlinks: AtomicU64::new(0),
            specials: AtomicU64::new(0),
            hardlinks: AtomicU64::new(0),
            counted: Mutex::default(),
            attrs_lost: Mutex::default(),
            fatal: Mutex::default(),
            root_done: Mutex::default(),
        }
    }
}

impl SnapshotWriter<'_> {
    pub(super) fn fail(&self, rel: &Path, reason: String) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rel, reason);
    }

    pub(super) fn name_of(&self, user: bool, id: u32) -> Option<Vec<u8>> {
        if let Some(n) = self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(user, id))
        {
            return n.clone();
        }
        let n = if user {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id))
                .ok()
                .flatten()
                .map(|u| u.name)
        } else {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id))
                .ok()
                .flatten()
                .map(|g| g.name)
        }
        .map(String::into_bytes);
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((user, id), n.clone());
        n
    }

    /// Writes an index file for the packs finished so far and forgets their
    /// blobs from the in-memory set: memory stays flat however much new data
    /// one run adds, and an interrupted run leaves those packs indexed.
    pub(super) fn flush_index(&self) -> Result<(), Error> {
        let entries = self.packer.take_written();
        let ids: Vec<Id> = entries.iter().map(|e| e.id).collect();
        if let Some((name, id)) = self.repo.write_index(entries)? {
            // Into the lookups first, out of `pending` second: a concurrent
            // store sees the blob in one or the other (at worst in neither,
            // which stores a harmless duplicate).
            self.index.add(self.repo.load_index_file(&name, id)?);
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                pending.remove(id);
            }
            pending.shrink_to_fit();
        }
        Ok(())
    }

    /// Stores a blob unless the repository (or this run) already has it.
    pub(super) fn store(&self, kind: BlobKind, data: &[u8]) -> Result<Id, Error> {
        let id = Id::hash(data);
        if self.index.contains(&id)
            || !self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id)
        {
            return Ok(id);
        }
        // Small files and the tails of large ones are bundled; the chunks
        // FastCDC cut from a large file (min_size or more) are stored alone,
        // so restoring that file decodes only its own data.
        if data.len() < BUNDLE_MEMBER_MAX.min(self.chunker.min_size as usize) {
            self.packer.add_small(kind, id, data)?;
        } else {
            let blob = encode_blob_with_id(kind, data, id, self.level)
                .map_err(|e| Error::corrupt("encoding blob", self.repo.location(), e))?;
            self.packer.add(&blob)?;
        }
        if self.packer.written_len() >= self.flush_every {
            self.flush_index()?;
        }
        if kind == BlobKind::Data {
            self.bytes_new.fetch_add(data.len() as u64, Relaxed);
        }
        Ok(id)
    }

    pub(super) fn node(&self, name: &[u8], st: &Stat, kind: NodeKind, xattrs: Vec<Xattr>) -> Node {
        let is_dir = matches!(kind, NodeKind::Dir { .. });
        Node {
            name: name.to_vec(),
            mode: st.perm(),
            uid: st.uid,
            gid: st.gid,
            user: self.name_of(true, st.uid),
            group: self.name_of(false, st.gid),
            mtime: ts(st.mtime),
            atime: ts(st.atime),
            ctime: ts(st.ctime),
            inode: st.ino,
            device: st.dev,
            nlink: st.nlink,
            size: if matches!(kind, NodeKind::File { .. }) {
                st.size
            } else {
                0
            },
            hardlink_group: (st.nlink > 1 && !is_dir).then(|| link_key(st)),
            xattrs,
            kind,
        }
    }

    pub(super) fn store_tree(&self, nodes: Vec<Node>) -> Result<Id, Error> {
        let bytes = encode_tree(nodes)
            .map_err(|e| Error::corrupt("encoding tree", self.repo.location(), e))?;
        self.store(BlobKind::Tree, &bytes)
    }

    /// Counts an entry once it is recorded (a failed one is not in the
    /// snapshot, so it is not in its totals either), by kind as copy and
    /// restore count: a hardlinked inode's data once, at its first name.
    /// Flags a snapshot cannot keep are noted here too.
    pub(super) fn count(&self, n: &Node, st: &Stat, rel: &Path) {
        if st.attrs != 0 {
            let mut lost = self.attrs_lost.lock().unwrap_or_else(|e| e.into_inner());
            lost.0 += 1;
            if lost.1.len() < 3 {
                lost.1.push(rel.display().to_string());
            }
        }
        if st.nlink > 1 && st.kind() != FileKind::Dir {
            let first = self
                .counted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((st.dev, st.ino));
            if !first {
                self.hardlinks.fetch_add(1, Relaxed);
                return;
            }
        }
        match n.kind {
            NodeKind::Dir { .. } => self.dirs.fetch_add(1, Relaxed),
            NodeKind::File { .. } => {
                self.bytes.fetch_add(n.size, Relaxed);
                self.files.fetch_add(1, Relaxed)
            }
            NodeKind::Symlink { .. } => self.symlinks.fetch_add(1, Relaxed),
            _ => self.specials.fetch_add(1, Relaxed),
        };
    }

    /// Reads a file's data regions and stores their chunks.
    pub(super) fn file_chunks(
        &self,
        f: &File,
        st: &Stat,
    ) -> Result<(Option<Vec<Extent>>, Vec<Id>), NodeError> {
        let size = st.size;
        let mut chunks = Vec::new();
        if size == 0 {
            return Ok((None, chunks));
        }
        let extents = if is_sparse(st) {
            let regions = data_regions(f, size).step("seek data")?;
            Some(
                regions
                    .into_iter()
                    .map(|(offset, len)| Extent { offset, len })
                    .collect::<Vec<_>>(),
            )
        } else {
            None
        };
        let regions: Vec<(u64, u64)> = match &extents {
            Some(v) => v.iter().map(|e| (e.offset, e.len)).collect(),
            None => vec![(0, size)],
        };
        for (off, len) in regions {
            let got = chunk_region(f, off, len, &self.chunker, |data| {
                let n = data.len() as u64;
                self.bytes_read.fetch_add(n, Relaxed);
                self.progress.bytes(n);
                chunks.push(self.store(BlobKind::Data, data)?);
                Ok::<(), Error>(())
            })
            .map_err(|e| match e {
                ChunkError::Read(m) => entry_failed("read", m),
                ChunkError::Params(m) => {
                    NodeError::Repo(Error::corrupt("chunker", self.repo.location(), m))
                }
                ChunkError::Consumer(e) => NodeError::Repo(e),
            })?;
            if got != len {
                return Err(entry_failed(
                    "file changed while it was read",
                    format!("expected {len} bytes at offset {off}, got {got}"),
                ));
            }
        }
        Ok((extents, chunks))
    }

    /// A node from an entry that has no local inode (an archive member):
    /// `group` is its hardlink group, if other names share it.
    pub(super) fn entry_node(
        &self,
        name: &[u8],
        e: &Entry,
        kind: NodeKind,
        xattrs: Vec<Xattr>,
        group: Option<u64>,
    ) -> Node {
        Node {
            name: name.to_vec(),
            mode: e.perm,
            uid: e.uid,
            gid: e.gid,
            user: self.name_of(true, e.uid),
            group: self.name_of(false, e.gid),
            mtime: ts(e.mtime),
            atime: ts(e.atime),
            // An archive keeps no ctime; the mtime is the nearest thing.
            ctime: ts(e.mtime),
            inode: 0,
            device: 0,
            nlink: 1,
            size: if matches!(kind, NodeKind::File { .. }) {
                e.size
            } else {
                0
            },
            hardlink_group: group,
            xattrs,
            kind,
        }
    }

    /// Counts a node recorded from an entry, as [`SnapshotWriter::count`]
    /// counts one from a stat: a further name of a hardlinked inode
    /// (`follower`) is counted as a hardlink only.
    pub(super) fn count_entry(&self, n: &Node, follower: bool) {
        if follower {
            self.hardlinks.fetch_add(1, Relaxed);
            return;
        }
        match n.kind {
            NodeKind::Dir { .. } => self.dirs.fetch_add(1, Relaxed),
            NodeKind::File { .. } => {
                self.bytes.fetch_add(n.size, Relaxed);
                self.files.fetch_add(1, Relaxed)
            }
            NodeKind::Symlink { .. } => self.symlinks.fetch_add(1, Relaxed),
            _ => self.specials.fetch_add(1, Relaxed),
        };
    }

    /// Chunks and stores data read from a stream: `regions` (offset,
    /// length) are the file's data regions, whose bytes `r` gives
    /// concatenated. Each region is chunked on its own, as
    /// [`SnapshotWriter::file_chunks`] chunks a local file's, so the same
    /// data gives the same chunks whichever way it came in. A stream that
    /// ends early is the entry's failure.
    pub(super) fn stream_chunks(
        &self,
        r: &mut dyn Read,
        regions: &[(u64, u64)],
        sparse: bool,
    ) -> Result<(Option<Vec<Extent>>, Vec<Id>), NodeError> {
        let mut chunks = Vec::new();
        for &(off, len) in regions {
            if len == 0 {
                continue;
            }
            let it = self
                .chunker
                .stream_chunks(r.take(len))
                .map_err(|e| NodeError::Repo(Error::corrupt("chunker", self.repo.location(), e)))?;
            let mut got = 0u64;
            for c in it {
                let c = c.map_err(|e| entry_failed("read", e.to_string()))?;
                let n = c.data.len() as u64;
                got += n;
                self.bytes_read.fetch_add(n, Relaxed);
                self.progress.bytes(n);
                chunks.push(self.store(BlobKind::Data, &c.data)?);
            }
            if got != len {
                return Err(entry_failed(
                    "read",
                    format!("the data ends early: {got} of {len} bytes at offset {off}"),
                ));
            }
        }
        let extents = sparse.then(|| {
            regions
                .iter()
                .map(|&(offset, len)| Extent { offset, len })
                .collect()
        });
        Ok((extents, chunks))
    }
}
