//! `snapshot upload`: an archive's members, in stream order, into a new
//! snapshot through the snapshot writer (`writer.rs`): data chunked and
//! deduplicated as it streams in, no temporary tree.
//!
//! A snapshot's trees are written bottom-up (a directory's tree blob names
//! its subdirectories' trees), while an archive may name its members in
//! any order. The directories on the path to the current member are open
//! (a stack); a directory the stream leaves is held, closed but not yet
//! stored, so that a member arriving later inside it (an unsorted archive,
//! a directory named after its children, a hardlink to a file there) still
//! finds it. At most [`MAX_HELD`] nodes are held: beyond that the oldest
//! closed directory is stored, and a member that later falls inside it is
//! refused with a message saying so (a failed member, exit 3). Archives
//! written depth first (haul's, GNU tar's, Info-ZIP's) never leave a
//! directory and come back, so they never meet that limit. Parents the
//! archive never names are made with mode 0755, the importing user as
//! owner and the import's time. A name given twice keeps its last member.
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use haul_formats::{Node, NodeKind, Snapshot, SnapshotSummary, Timestamp, Xattr, SNAPSHOT_VERSION};

use super::writer::{NodeError, SnapshotWriter};
use super::{create::CreateSummary, create::DEFAULT_INDEX_FLUSH, hostname, username, Repository};
use crate::archive::{open_reader, ArchiveInput, Member, MemberRead, ReadError};
use crate::dest::entry::Entry;
use crate::error::Error;
use crate::filter::Filter;
use crate::meta::FileKind;
use crate::progress::Progress;
use crate::sys;
use crate::walk::worker_pool;

/// Nodes of closed directories kept in memory at most (tens of MiB).
pub(crate) const MAX_HELD: usize = 50_000;

/// What to import.
#[derive(Debug, Default)]
pub struct ImportOptions {
    /// Labels for the snapshot.
    pub tags: Vec<String>,
    /// Worker threads (decompressing the archive); 0 picks one per CPU.
    pub jobs: usize,
    /// The time to record instead of now.
    pub time: Option<Timestamp>,
}

/// A directory of the snapshot being built.
struct Dir {
    /// Its path's components (empty for the root).
    path: Vec<Vec<u8>>,
    /// Its own entry and attributes, once the archive names it.
    meta: Option<(Entry, Vec<Xattr>)>,
    nodes: Vec<Node>,
    /// Position in `nodes` of each name, so a later member of the same
    /// name replaces the earlier one.
    at: HashMap<Vec<u8>, usize>,
}

impl Dir {
    fn new(path: Vec<Vec<u8>>) -> Dir {
        Dir {
            path,
            meta: None,
            nodes: Vec::new(),
            at: HashMap::new(),
        }
    }

    /// Adds `n`, replacing a node of the same name.
    fn put(&mut self, n: Node) {
        match self.at.get(&n.name) {
            Some(&i) => self.nodes[i] = n,
            None => {
                self.at.insert(n.name.clone(), self.nodes.len());
                self.nodes.push(n);
            }
        }
    }

    fn get_mut(&mut self, name: &[u8]) -> Option<&mut Node> {
        let i = *self.at.get(name)?;
        self.nodes.get_mut(i)
    }
}

/// Why a member cannot be recorded.
enum Refused {
    /// This member only.
    Member(String),
    /// The archive cannot be read on: the run stops.
    Archive(String),
    /// The repository: the run stops.
    Repo(Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Refused {
        Refused::Repo(e)
    }
}

/// The snapshot's directories as the stream builds them.
struct Builder<'w, 'a> {
    w: &'w SnapshotWriter<'a>,
    /// The root and the directories down to the current member's.
    open: Vec<Dir>,
    /// Closed directories not stored yet, by path, with their closing turn.
    held: HashMap<Vec<Vec<u8>>, (u64, Dir)>,
    /// Closing turn → path, oldest first.
    order: BTreeMap<u64, Vec<Vec<u8>>>,
    turn: u64,
    held_nodes: usize,
    /// Defaults for directories the archive does not name.
    uid: u32,
    gid: u32,
    now: (i64, i64),
}

fn show(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

impl Builder<'_, '_> {
    /// Makes `comps` the innermost open directory, closing those the
    /// stream leaves and opening (or reopening) those it enters.
    fn enter(&mut self, comps: &[Vec<u8>]) -> Result<(), Refused> {
        let mut k = 0;
        while k < comps.len() && k + 1 < self.open.len() && self.open[k + 1].path[k] == comps[k] {
            k += 1;
        }
        while self.open.len() > k + 1 {
            let d = self.open.pop().expect("more than the root");
            self.hold(d)?;
        }
        for i in k..comps.len() {
            let path = comps[..=i].to_vec();
            let d = match self.held.remove(&path) {
                Some((t, d)) => {
                    self.order.remove(&t);
                    self.held_nodes -= d.nodes.len() + 1;
                    d
                }
                None => {
                    let parent = self.open.last().expect("the root is always open");
                    let stored = parent
                        .at
                        .get(&comps[i])
                        .is_some_and(|&j| matches!(parent.nodes[j].kind, NodeKind::Dir { .. }));
                    if stored {
                        return Err(Refused::Member(format!(
                            "directory {} was already stored: the archive returns to it after \
                             more than {MAX_HELD} other entries (upload holds no more)",
                            show(&path)
                        )));
                    }
                    Dir::new(path)
                }
            };
            self.open.push(d);
        }
        Ok(())
    }

    /// Keeps a closed directory, storing the oldest ones beyond the limit.
    fn hold(&mut self, d: Dir) -> Result<(), Error> {
        self.held_nodes += d.nodes.len() + 1;
        self.turn += 1;
        self.order.insert(self.turn, d.path.clone());
        self.held.insert(d.path.clone(), (self.turn, d));
        while self.held_nodes > MAX_HELD {
            let Some((_, path)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, d)) = self.held.remove(&path) {
                self.held_nodes -= d.nodes.len() + 1;
                self.store(d)?;
            }
        }
        Ok(())
    }

    /// The directory at `path`, open or held.
    fn dir_mut(&mut self, path: &[Vec<u8>]) -> Option<&mut Dir> {
        if let Some(i) = self.open.iter().position(|d| d.path == path) {
            return self.open.get_mut(i);
        }
        self.held.get_mut(path).map(|(_, d)| d)
    }

    /// The node of a directory: its own entry, or the defaults.
    fn dir_node(
        &self,
        name: &[u8],
        meta: Option<(Entry, Vec<Xattr>)>,
        subtree: haul_formats::Id,
    ) -> Node {
        let kind = NodeKind::Dir { subtree };
        match meta {
            Some((e, x)) => self.w.entry_node(name, &e, kind, x, None),
            None => {
                let e = Entry {
                    kind: FileKind::Dir,
                    perm: 0o755,
                    uid: self.uid,
                    gid: self.gid,
                    size: 0,
                    rdev: 0,
                    atime: self.now,
                    mtime: self.now,
                    attrs: 0,
                    link: None,
                };
                self.w.entry_node(name, &e, kind, Vec::new(), None)
            }
        }
    }

    /// Stores a closed directory's tree and gives its node to its parent.
    fn store(&mut self, d: Dir) -> Result<(), Error> {
        let subtree = self.w.store_tree(d.nodes)?;
        let (parent, name) = d.path.split_at(d.path.len() - 1);
        let n = self.dir_node(&name[0], d.meta, subtree);
        self.w.count_entry(&n, false);
        self.w.progress.entry_done();
        match self.dir_mut(parent) {
            Some(p) => p.put(n),
            None => {
                // Parents close after their children, so this cannot
                // happen; said rather than lost if it does.
                self.w.fail(
                    Path::new(OsStr::from_bytes(&d.path.join(&b'/'))),
                    "its parent directory was stored before it".into(),
                );
            }
        }
        Ok(())
    }

    /// Stores everything and returns the root's node, named `name`.
    fn finish(mut self, name: &[u8]) -> Result<Node, Error> {
        while self.open.len() > 1 {
            let d = self.open.pop().expect("more than the root");
            self.held_nodes += d.nodes.len() + 1;
            self.turn += 1;
            self.order.insert(self.turn, d.path.clone());
            self.held.insert(d.path.clone(), (self.turn, d));
        }
        while let Some((_, path)) = self.order.pop_first() {
            if let Some((_, d)) = self.held.remove(&path) {
                self.store(d)?;
            }
        }
        let root = self.open.pop().expect("the root");
        let subtree = self.w.store_tree(root.nodes)?;
        let n = self.dir_node(name, root.meta, subtree);
        self.w.count_entry(&n, false);
        Ok(n)
    }
}

/// A member's path as plain components; `None` for a hostile one (an
/// absolute path, a `..` component or a NUL), which is refused as
/// extraction refuses it.
fn components(path: &[u8]) -> Option<Vec<Vec<u8>>> {
    if path.first() == Some(&b'/') || path.contains(&0) {
        return None;
    }
    let mut v = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => v.push(c.to_vec()),
        }
    }
    Some(v)
}

/// A member's data as a `Read`, remembering a reader error so that an
/// archive-wide one is not mistaken for this member's.
struct DataReader<'r> {
    r: &'r mut dyn MemberRead,
    err: Option<ReadError>,
}

impl Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read_data(buf).map_err(|e| {
            let msg = e.to_string();
            self.err = Some(e);
            io::Error::new(io::ErrorKind::InvalidData, msg)
        })
    }
}

fn group_key(path: &[Vec<u8>]) -> u64 {
    let h = blake3::hash(&path.join(&b'/'));
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Builder<'_, '_> {
    /// Records one member.
    fn member(&mut self, m: Member, r: &mut dyn MemberRead) -> Result<(), Refused> {
        let refused = || Refused::Member("refusing a path that is absolute or holds '..'".into());
        let comps = components(&m.path).ok_or_else(refused)?;
        let mut xattrs: Vec<Xattr> = m
            .xattrs
            .iter()
            .map(|(k, v)| Xattr {
                name: k.as_bytes().to_vec(),
                value: v.clone(),
            })
            .collect();
        // Trees hold them sorted, each name once; archives need not (GNU
        // tar gives ACLs after the other attributes). The last one given
        // wins, as for members.
        xattrs.reverse();
        xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        xattrs.dedup_by(|a, b| a.name == b.name);
        let Some((name, parent)) = comps.split_last() else {
            if m.entry.kind != FileKind::Dir {
                return Err(Refused::Member(
                    "the archive's root member is not a directory".into(),
                ));
            }
            self.open[0].meta = Some((m.entry, xattrs));
            return Ok(());
        };
        if m.entry.kind == FileKind::Dir && m.hardlink.is_none() {
            return match self.enter(&comps) {
                Ok(()) => {
                    self.open.last_mut().expect("entered").meta = Some((m.entry, xattrs));
                    Ok(())
                }
                Err(Refused::Member(_)) => {
                    // Stored already: only its own metadata changes.
                    self.enter(parent)?;
                    let e = m.entry;
                    let node = self.open.last_mut().expect("entered").get_mut(name);
                    if let Some(n) = node {
                        let kind = n.kind.clone();
                        *n = self.w.entry_node(name, &e, kind, xattrs, None);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        self.enter(parent)?;
        // A later non-directory of a directory's name replaces it.
        if let Some((t, d)) = self.held.remove(&comps) {
            self.order.remove(&t);
            self.held_nodes -= d.nodes.len() + 1;
        }
        let node = if let Some(target) = &m.hardlink {
            let t = components(target).ok_or_else(refused)?;
            let Some((tname, tdir)) = t.split_last() else {
                return Err(Refused::Member("a hardlink to the archive's root".into()));
            };
            let key = group_key(&t);
            let found = self
                .dir_mut(tdir)
                .and_then(|d| d.get_mut(tname))
                .and_then(|n| {
                    if matches!(n.kind, NodeKind::Dir { .. }) {
                        return None;
                    }
                    let g = *n.hardlink_group.get_or_insert(key);
                    Some(Node {
                        name: name.clone(),
                        hardlink_group: Some(g),
                        ..n.clone()
                    })
                });
            let n = found.ok_or_else(|| {
                Refused::Member(format!(
                    "hardlink to {}, which is not an earlier non-directory member (or is more \
                     than {MAX_HELD} entries back)",
                    show(&t)
                ))
            })?;
            self.w.count_entry(&n, true);
            n
        } else {
            let kind = match m.entry.kind {
                FileKind::File => {
                    let regions: Vec<(u64, u64)> = match &m.sparse {
                        Some(r) => r.iter().copied().filter(|&(_, l)| l > 0).collect(),
                        None => vec![(0, m.entry.size)],
                    };
                    let mut dr = DataReader { r, err: None };
                    let got = self.w.stream_chunks(&mut dr, &regions, m.sparse.is_some());
                    let archive_err = |dr: &mut DataReader<'_>| match dr.err.take() {
                        Some(ReadError::Archive(msg)) => Some(msg),
                        _ => None,
                    };
                    let (data_map, chunks) = match got {
                        Ok(x) => x,
                        Err(NodeError::Repo(e)) => return Err(Refused::Repo(e)),
                        Err(NodeError::Entry(e)) => {
                            if let Some(msg) = archive_err(&mut dr) {
                                return Err(Refused::Archive(msg));
                            }
                            return Err(Refused::Member(e.to_string()));
                        }
                    };
                    // Anything past the promised bytes, or a bad CRC the
                    // reader finds at the end, is this member's failure.
                    let mut one = [0u8; 1];
                    match dr.read(&mut one) {
                        Ok(0) => {}
                        Ok(_) => {
                            return Err(Refused::Member(
                                "the member's data is longer than its declared size".into(),
                            ))
                        }
                        Err(e) => {
                            if let Some(msg) = archive_err(&mut dr) {
                                return Err(Refused::Archive(msg));
                            }
                            return Err(Refused::Member(e.to_string()));
                        }
                    }
                    NodeKind::File { data_map, chunks }
                }
                FileKind::Symlink => NodeKind::Symlink {
                    target: m.target.clone(),
                },
                FileKind::Fifo => NodeKind::Fifo,
                FileKind::Socket => NodeKind::Socket,
                FileKind::CharDev => NodeKind::CharDevice { rdev: m.entry.rdev },
                FileKind::BlockDev => NodeKind::BlockDevice { rdev: m.entry.rdev },
                FileKind::Dir => unreachable!("handled above"),
            };
            let n = self.w.entry_node(name, &m.entry, kind, xattrs, None);
            self.w.count_entry(&n, false);
            n
        };
        self.w.progress.entry_done();
        self.open.last_mut().expect("entered").put(node);
        Ok(())
    }
}

impl Repository {
    /// Records the archive `input` (any format haul reads) as a new
    /// snapshot, deduplicated against the repository, streamed with no
    /// temporary tree. Members that cannot be recorded (a hostile path, a
    /// bad CRC) are the summary's failures; an archive that cannot be read
    /// to its end (truncated, corrupt) is an `Error`, and then no snapshot
    /// is recorded.
    pub fn import_snapshot(
        &self,
        input: &ArchiveInput,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<CreateSummary, Error> {
        let start = Instant::now();
        let arch = input.display();
        let lock = self.lock(false)?;
        let index = self.load_index_for_writing()?;
        let filter = Filter::default();
        let w = SnapshotWriter::new(self, &index, &filter, progress, DEFAULT_INDEX_FLUSH);
        let pool = worker_pool(opts.jobs, "upload")
            .map_err(|e| Error::io("starting workers", &arch, e))?;
        let time = opts.time.unwrap_or_else(Timestamp::now);
        let root_name = match input {
            ArchiveInput::Path(p) => p
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_else(|| b"ROOT".to_vec()),
            ArchiveInput::Stdin => b"stdin".to_vec(),
        };
        let root = pool.install(|| -> Result<Node, Error> {
            let (_, mut reader) = open_reader(input, pool.current_num_threads())?;
            let mut b = Builder {
                w: &w,
                open: vec![Dir::new(Vec::new())],
                held: HashMap::new(),
                order: BTreeMap::new(),
                turn: 0,
                held_nodes: 0,
                uid: sys::euid(),
                gid: nix::unistd::getegid().as_raw(),
                now: (time.secs(), i64::from(time.nanos())),
            };
            loop {
                let m = match reader.next_member() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(ReadError::Member(msg)) => {
                        w.fail(&arch, msg);
                        continue;
                    }
                    Err(ReadError::Named { path, msg }) => {
                        w.fail(Path::new(&path), msg);
                        continue;
                    }
                    Err(ReadError::Archive(msg)) => return Err(named(&arch, msg)),
                };
                let path = PathBuf::from(OsStr::from_bytes(&m.path));
                match b.member(m, &mut *reader) {
                    Ok(()) => {}
                    Err(Refused::Member(msg)) => w.fail(&path, msg),
                    Err(Refused::Archive(msg)) => return Err(named(&arch, msg)),
                    Err(Refused::Repo(e)) => return Err(e),
                }
            }
            b.finish(&root_name)
        })?;
        let root_tree = w.store_tree(vec![root])?;

        let SnapshotWriter {
            packer,
            files,
            dirs,
            bytes,
            bytes_read,
            bytes_new,
            failed,
            symlinks,
            specials,
            hardlinks,
            ..
        } = w;
        let (entries, packs, stored) = packer.finish()?;
        self.write_index(entries)?;
        let summary = SnapshotSummary {
            files: files.into_inner(),
            symlinks: symlinks.into_inner(),
            hardlinks: hardlinks.into_inner(),
            specials: specials.into_inner(),
            dirs: dirs.into_inner(),
            bytes: bytes.into_inner(),
            bytes_new: bytes_new.into_inner(),
        };
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            time,
            hostname: hostname(),
            username: username(),
            paths: vec![arch.to_string_lossy().into_owned()],
            tags: opts.tags.clone(),
            tree: root_tree,
            parent: None,
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
            parent: None,
            files: summary.files,
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
            notices: lock.notices().to_vec(),
        })
    }
}

/// An archive-wide read error, naming the archive.
fn named(arch: &Path, msg: String) -> Error {
    Error::io(
        "reading archive",
        arch,
        io::Error::new(io::ErrorKind::InvalidData, msg),
    )
}
