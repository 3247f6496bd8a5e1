//! `snapshot download`: a snapshot's trees, depth first in name order, as
//! archive members, with their data read from the repository blob by blob:
//! no temporary tree, and memory bounded whatever the snapshot's size.
//!
//! Three kinds of thread share the work. A walker reads the trees and
//! sends, in stream order, each node as a member and then a slot for each
//! of its chunks; loader threads fill the slots (read, decompress and
//! verify a blob), so blobs are read ahead of the writer, at most
//! [`READ_AHEAD`] bytes of them; the calling thread writes the members
//! (compressing `.tar.zst` frames on the pool) as the slots fill.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use haul_formats::{Id, Node, NodeKind};

use super::index::MasterIndex;
use super::read::Blob;
use super::Repository;
use crate::archive::{member_writer, ArchiveOptions, ArchiveSummary, Member};
use crate::dest::entry::Entry;
use crate::dest::IssueTally;
use crate::error::Error;
use crate::meta::FileKind;
use crate::progress::Progress;
use crate::walk::worker_pool;

/// Plaintext of blobs read ahead of the writer at most (one larger blob is
/// still let through alone).
const READ_AHEAD: u64 = 12 << 20;
/// Loader threads at most: each keeps buffers of a few MiB, and a few
/// decode faster than the writer compresses.
const LOADERS: usize = 3;
/// Messages (members and chunk slots) queued between walker and writer.
const QUEUE: usize = 1024;

/// What the walker sends the writer, in stream order.
enum Msg {
    /// A member; its data is the chunk slots that follow, one per chunk.
    Member { m: Box<Member>, chunks: usize },
    /// One chunk's blob, as a loader reads it, and its plaintext length.
    Chunk(Receiver<Result<Blob, Error>>, u64),
    /// A node left out (a socket, a tree that cannot be read), and why.
    Skipped {
        path: PathBuf,
        reason: String,
        failed: bool,
    },
}

/// The bytes read ahead, waited on by the walker and released by the
/// writer. `closed` ends every wait (the writer stopped).
struct Budget {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Budget {
    /// Waits until `n` more bytes fit; false once closed.
    fn take(&self, n: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.1 && s.0 > 0 && s.0 + n > READ_AHEAD {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 += n;
        !s.1
    }

    fn give(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(n);
        self.cv.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

/// Closes the budget when the writer leaves, however it leaves.
struct CloseOnDrop<'b>(&'b Budget);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A snapshot node as an archive entry (hardlinks are named by path in
/// archives, so no link key).
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
        size: if matches!(n.kind, NodeKind::File { .. }) {
            n.size
        } else {
            0
        },
        rdev,
        atime: t(n.atime),
        mtime: t(n.mtime),
        attrs: 0,
        link: None,
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn rel(path: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(path))
}

/// The walker: the snapshot's nodes in stream order, with their chunks
/// queued for the loaders.
struct Walker<'r> {
    repo: &'r Repository,
    index: &'r MasterIndex,
    out: Sender<Msg>,
    loads: Sender<(Id, Sender<Result<Blob, Error>>)>,
    budget: &'r Budget,
    /// First member path of each hardlink group seen.
    groups: HashMap<u64, Vec<u8>>,
}

impl Walker<'_> {
    /// Sends `n` as the member `path`; false once the writer stopped.
    fn send(&mut self, path: Vec<u8>, n: &Node) -> bool {
        let mut entry = node_entry(n);
        let mut m = Member {
            path,
            entry: entry.clone(),
            xattrs: n
                .xattrs
                .iter()
                .map(|x| (OsStr::from_bytes(&x.name).to_os_string(), x.value.clone()))
                .collect(),
            target: Vec::new(),
            hardlink: None,
            sparse: None,
        };
        let mut chunks: &[Id] = &[];
        match &n.kind {
            NodeKind::Socket => {
                let msg = Msg::Skipped {
                    path: rel(&m.path),
                    reason: "socket not archived (no archive format holds one)".into(),
                    failed: false,
                };
                return self.out.send(msg).is_ok();
            }
            NodeKind::Dir { .. } => {}
            _ if n.hardlink_group.is_some() => {
                let g = n.hardlink_group.unwrap_or_default();
                if let Some(first) = self.groups.get(&g) {
                    // A later name of an inode: a link to its first.
                    entry.size = 0;
                    m.entry = entry;
                    m.hardlink = Some(first.clone());
                    let msg = Msg::Member {
                        m: Box::new(m),
                        chunks: 0,
                    };
                    return self.out.send(msg).is_ok();
                }
                self.groups.insert(g, m.path.clone());
            }
            _ => {}
        }
        match &n.kind {
            NodeKind::Symlink { target } => m.target = target.clone(),
            NodeKind::File {
                data_map,
                chunks: c,
            } => {
                m.sparse = data_map
                    .as_ref()
                    .map(|d| d.iter().map(|e| (e.offset, e.len)).collect());
                chunks = c;
            }
            _ => {}
        }
        let msg = Msg::Member {
            m: Box::new(m),
            chunks: chunks.len(),
        };
        if self.out.send(msg).is_err() {
            return false;
        }
        for id in chunks {
            let len = self.index.lookup(id).map_or(0, |e| u64::from(e.raw_len));
            if !self.budget.take(len) {
                return false;
            }
            let (tx, rx) = bounded(1);
            if self.loads.send((*id, tx)).is_err() || self.out.send(Msg::Chunk(rx, len)).is_err() {
                return false;
            }
        }
        true
    }

    /// Sends `dir`'s nodes below `prefix`, depth first in name order, from
    /// a stack of the directories being listed (no recursion: any depth).
    fn walk(&mut self, top: Vec<Node>, prefix: Vec<u8>) {
        let mut stack = vec![(top.into_iter(), prefix)];
        while let Some((rest, dir)) = stack.last_mut() {
            let Some(n) = rest.next() else {
                stack.pop();
                continue;
            };
            let path = join(dir, &n.name);
            if !self.send(path.clone(), &n) {
                return;
            }
            if let NodeKind::Dir { subtree } = &n.kind {
                match self.repo.load_tree(self.index, subtree) {
                    Ok(nodes) => stack.push((nodes.into_iter(), path)),
                    Err(e) => {
                        let msg = Msg::Skipped {
                            path: rel(&path),
                            reason: format!("its contents cannot be read: {e}"),
                            failed: true,
                        };
                        if self.out.send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl Repository {
    /// Writes snapshot `spec` into `out` as an archive of `opts.format`:
    /// every node a member at its snapshot-relative path (a one-path
    /// snapshot's root is `./`), with its modes, owners, times, xattrs,
    /// hardlinks (later names link to the first), holes, symlinks,
    /// devices and fifos. Sockets are left out (no format holds one), with
    /// a notice. A file whose data cannot be read is a failure in the
    /// summary (its member is still written, padded with zeros, so the
    /// archive stays readable); an output that cannot be written is an
    /// `Error`.
    pub fn export_snapshot(
        &self,
        spec: &str,
        out: Box<dyn Write + Send>,
        opts: &ArchiveOptions,
        progress: &dyn Progress,
    ) -> Result<ArchiveSummary, Error> {
        let start = Instant::now();
        let format = opts
            .format
            .ok_or_else(|| Error::invalid("-", "no archive format given"))?;
        let snap = self.find_snapshot(spec)?;
        let _lock = self.read_lock()?;
        let sum = &snap.snapshot.summary;
        progress.discovered(sum.entries(), sum.bytes);
        progress.discovery_done();
        let index = self.load_index()?;
        // Bundles are read in stream order by a few loaders: a few cached
        // ones serve them, and keep the command under 100 MiB (the default,
        // sized for restore's workers, let it reach 108 MiB).
        self.blocks.limit(LOADERS + 2);
        crate::sys::return_large_buffers();
        let roots = self.load_tree(&index, &snap.snapshot.tree)?;
        let pool = worker_pool(opts.jobs, "download")
            .map_err(|e| Error::io("starting workers", self.location(), e))?;
        let jobs = pool.current_num_threads();
        let single_dir = snap.snapshot.paths.len() == 1
            && matches!(&roots[..], [n] if matches!(n.kind, NodeKind::Dir { .. }));
        let budget = Budget {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
        };
        let (out_tx, out_rx) = bounded::<Msg>(QUEUE);
        let (load_tx, load_rx) = bounded::<(Id, Sender<Result<Blob, Error>>)>(QUEUE);
        let index = &index;
        let budget = &budget;
        std::thread::scope(|sc| {
            for _ in 0..jobs.clamp(2, LOADERS) {
                let rx = load_rx.clone();
                sc.spawn(move || {
                    for (id, slot) in rx {
                        // The writer may be gone: then nobody wants it.
                        let _ = slot.send(self.load_data(index, &id));
                    }
                });
            }
            drop(load_rx);
            sc.spawn(move || {
                let mut w = Walker {
                    repo: self,
                    index,
                    out: out_tx,
                    loads: load_tx,
                    budget,
                    groups: HashMap::new(),
                };
                if single_dir {
                    // The root's own metadata as `./`, as `archive create
                    // SRC/` stores it; its contents at the archive's root.
                    let root = &roots[0];
                    if !w.send(b"./".to_vec(), root) {
                        return;
                    }
                    let NodeKind::Dir { subtree } = &root.kind else {
                        return;
                    };
                    match self.load_tree(index, subtree) {
                        Ok(nodes) => w.walk(nodes, Vec::new()),
                        Err(e) => {
                            let _ = w.out.send(Msg::Skipped {
                                path: PathBuf::new(),
                                reason: format!("its contents cannot be read: {e}"),
                                failed: true,
                            });
                        }
                    }
                } else {
                    w.walk(roots, Vec::new());
                }
            });
            let _close = CloseOnDrop(budget);
            let rx = out_rx;
            let r = pool.install(|| write_members(format, out, opts, jobs, &rx, budget, progress));
            // Gone before the threads are joined: a walker waiting to send
            // then stops.
            drop(rx);
            r
        })
        .map(|mut s| {
            s.seconds = start.elapsed().as_secs_f64();
            s
        })
    }
}

/// The writer's side: members and their chunks from `rx`, into the format
/// writer.
fn write_members(
    format: crate::ArchiveFormat,
    out: Box<dyn Write + Send>,
    opts: &ArchiveOptions,
    jobs: usize,
    rx: &Receiver<Msg>,
    budget: &Budget,
    progress: &dyn Progress,
) -> Result<ArchiveSummary, Error> {
    let mut w = member_writer(format, out, opts, jobs);
    let mut sum = ArchiveSummary {
        format: format.name(),
        ..ArchiveSummary::default()
    };
    let mut failed = IssueTally::default();
    let mut notices = IssueTally::default();
    while let Ok(msg) = rx.recv() {
        let (m, chunks) = match msg {
            Msg::Member { m, chunks } => (m, chunks),
            Msg::Skipped {
                path,
                reason,
                failed: f,
            } => {
                if f {
                    failed.push(&path, reason)
                } else {
                    notices.push(&path, reason)
                }
                continue;
            }
            Msg::Chunk(_, len) => {
                // Never without its member; released all the same.
                budget.give(len);
                continue;
            }
        };
        let path = rel(&m.path);
        let s = &mut sum.source;
        match m.entry.kind {
            _ if m.hardlink.is_some() => s.hardlinks += 1,
            FileKind::File => {
                s.files += 1;
                s.bytes += m.entry.size;
            }
            FileKind::Dir => s.dirs += 1,
            FileKind::Symlink => s.symlinks += 1,
            _ => s.specials += 1,
        }
        let want = m.data_len();
        let mut fed = 0u64;
        let mut taken = 0usize;
        let mut bad: Option<String> = None;
        let r = w.add(&m, &mut |sink| {
            while taken < chunks {
                taken += 1;
                let Ok(Msg::Chunk(slot, len)) = rx.recv() else {
                    bad = Some("the snapshot walk stopped early".into());
                    return Ok(());
                };
                let blob = slot.recv();
                budget.give(len);
                match blob {
                    Ok(Ok(b)) if bad.is_none() => {
                        let n = (b.len() as u64).min(want - fed.min(want)) as usize;
                        if n > 0 {
                            sink(&b[..n])?;
                        }
                        if n < b.len() {
                            bad = Some("its chunks hold more data than its size".into());
                        }
                        fed += n as u64;
                        progress.bytes(n as u64);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        bad.get_or_insert_with(|| format!("reading data: {e}"));
                    }
                    Err(_) => {
                        bad.get_or_insert_with(|| "reading data: the loader stopped".into());
                    }
                }
                if bad.is_some() {
                    // The format writer pads the member; the rest of its
                    // slots are drained below.
                    return Ok(());
                }
            }
            Ok(())
        });
        // Slots not taken (the member ended early) are drained, so the
        // next message is the next member.
        while taken < chunks {
            taken += 1;
            if let Ok(Msg::Chunk(_, len)) = rx.recv() {
                budget.give(len);
            }
        }
        sum.bytes_in += fed;
        if bad.is_none() && fed < want {
            bad = Some("its chunks hold less data than its size".into());
        }
        match (r, bad) {
            (Ok(()), None) => {}
            (_, Some(why)) => failed.push(&path, format!("{why}; archived padded with zeros")),
            (Err(e), None) if e.kind() == io::ErrorKind::UnexpectedEof => {
                failed.push(&path, e.to_string())
            }
            (Err(e), None) => return Err(Error::io("writing archive", &path, e)),
        }
        sum.entries += 1;
        progress.entry_done();
    }
    sum.bytes_out = w
        .finish()
        .map_err(|e| Error::io("writing archive", Path::new("-"), e))?;
    let (failed, failed_not_listed) = failed.into_sorted();
    let (notices, notices_not_listed) = notices.into_sorted();
    Ok(ArchiveSummary {
        failed,
        failed_not_listed,
        notices,
        notices_not_listed,
        ..sum
    })
}
