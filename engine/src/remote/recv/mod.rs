//! The receiving side of a session: each Entry through the destination
//! writer's by-path mode (which resolves every path beneath DST's handle
//! without following a symlink, and names nothing until it is complete),
//! and for each file a decision: Skip (the quick check, as local copy
//! makes it) or Need, with the content-defined chunks of the old version
//! so that only what changed crosses the wire.
//!
//! The peer is untrusted: every index must name an announced entry and be
//! the file whose content is due (content comes in the order of the
//! Needs); every piece must lie within the file, after the previous one;
//! every chunk reference must be one this side listed, and the bytes it
//! reads back must hash to its id; the whole content must hash to the
//! FileDone digest. A break of the protocol ends the session; a content
//! mismatch fails the entry, and nothing is named with it.
//!
//! Small files are assembled in memory and written on the pool; a large
//! one is written as its pieces arrive, on this thread (messages for other
//! entries that arrive meanwhile wait in a backlog).
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use haul_formats::wire::{self, checked_rel_path, EntryKind, Indexes, Message, OldChunk};
use haul_formats::ChunkerParams;

use super::conn::{Conn, ConnError};
use super::send::data_len;
use super::PeerSummary;
use crate::archive::extract::{filter_xattrs, path_hash, remove_unseen, InFlight};
use crate::chunk::{chunk_region, read_full_at, ChunkError};
use crate::dest::bypath::{put_leaf_at, Dir, PathWriter};
use crate::dest::entry::{Entry, LinkKey};
use crate::dest::{
    open_or_create_root, CopySummary, DestWriter, EntryIssue, Outcome, WriteOptions,
};
use crate::error::Error;
use crate::filter::Filter;
use crate::meta::{FileKind, Xattrs};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::worker_pool;

mod content;

use content::{Assembly, Body, Inbox, PieceError, StreamLeaf, WireLeaf};

/// Files up to this size are assembled in memory and written on the pool.
const SMALL: u64 = 1 << 20;
/// A changed file at least this large gets a delta (smaller ones are one
/// chunk: only `--checksum` asks for theirs, to learn they are the same).
const DELTA_MIN: u64 = 256 << 10;

/// The most old chunks one Need lists: each takes at most 52 bytes (an
/// id and two varints), and a frame at most 16 MiB.
const MAX_OLD_CHUNKS: usize = wire::MAX_FRAME / 52 - 1;

/// What the receiving side is asked to do.
pub(crate) struct RecvOptions<'a> {
    pub(crate) write: &'a WriteOptions,
    pub(crate) delete: bool,
    pub(crate) filter: &'a Filter,
    pub(crate) checksum: bool,
    pub(crate) verify: bool,
    pub(crate) record_changes: bool,
    pub(crate) jobs: usize,
}

/// How a receive ended.
pub(crate) enum RecvError {
    /// DST could not be opened or created.
    Local(Error),
    /// The session broke.
    Conn(ConnError),
}

impl From<ConnError> for RecvError {
    fn from(e: ConnError) -> RecvError {
        RecvError::Conn(e)
    }
}

fn wire_err(e: wire::WireError) -> ConnError {
    ConnError::Wire(e.to_string())
}

/// The old version's chunks by id: where each is and how long.
type ChunkMap = HashMap<[u8; 32], (u64, u64)>;
/// The old version of a file, open, and its chunks.
type Old = (File, ChunkMap);

/// A file whose content was asked for, in the order of the Needs.
struct Awaiting {
    index: u64,
    rel: PathBuf,
    dir: Dir,
    name: CString,
    entry: Entry,
    xattrs: Xattrs,
    /// The data regions of a sparse file.
    regions: Option<Vec<(u64, u64)>>,
    want: u64,
    /// The old version and its chunks by id, for Chunk references.
    old: Option<Old>,
}

/// The dest entry for a wire entry.
fn dest_entry(e: &wire::Entry) -> Entry {
    let kind = match e.kind {
        EntryKind::File => FileKind::File,
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::CharDev => FileKind::CharDev,
        EntryKind::BlockDev => FileKind::BlockDev,
        EntryKind::Fifo => FileKind::Fifo,
        EntryKind::Socket => FileKind::Socket,
    };
    let group = e.hardlink_of.or(e.link_leader.then_some(e.index));
    Entry {
        kind,
        perm: e.perm,
        uid: e.uid,
        gid: e.gid,
        size: if kind == FileKind::File { e.size } else { 0 },
        rdev: e.rdev,
        atime: (e.atime.secs, i64::from(e.atime.nanos)),
        mtime: (e.mtime.secs, i64::from(e.mtime.nanos)),
        attrs: e.attrs,
        link: group.map(LinkKey::Group),
    }
}

fn xattrs_of(e: &mut wire::Entry) -> Xattrs {
    std::mem::take(&mut e.xattrs)
        .into_iter()
        .map(|(k, v)| (OsString::from_vec(k), v))
        .collect()
}

/// The old version's chunks, for a Need.
fn old_chunks(f: &File, size: u64) -> Result<(Vec<OldChunk>, ChunkMap), String> {
    let mut list = Vec::new();
    let mut pos = 0u64;
    let params = ChunkerParams::DEFAULT;
    chunk_region(f, 0, size, &params, |c: &[u8]| -> Result<(), ()> {
        let id = *blake3::hash(c).as_bytes();
        list.push(OldChunk {
            id,
            offset: pos,
            len: c.len() as u64,
        });
        pos += c.len() as u64;
        Ok(())
    })
    .map_err(|e| match e {
        ChunkError::Read(m) => m,
        ChunkError::Params(e) => e.to_string(),
        ChunkError::Consumer(()) => String::new(),
    })?;
    let map = list.iter().map(|c| (c.id, (c.offset, c.len))).collect();
    Ok((list, map))
}

/// The blake3 of a file's data as the sender hashed it: its regions'
/// bytes in order (all of it if not sparse).
fn hash_written(f: &File, size: u64, regions: Option<&[(u64, u64)]>) -> std::io::Result<[u8; 32]> {
    let all = [(0, size)];
    let regions = regions.unwrap_or(&all);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in regions {
        let mut done = 0;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let n = read_full_at(f, &mut buf[..want], off + done)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// Receives a tree into `dst` until the sender's Done. Returns this
/// side's summary and the sender's.
pub(crate) fn receive_tree(
    conn: &Conn,
    dst: &Path,
    opts: &RecvOptions<'_>,
    progress: &dyn Progress,
) -> Result<(CopySummary, Option<CopySummary>), RecvError> {
    let start = Instant::now();
    sys::raise_nofile_limit();
    let mut w = DestWriter::new(
        opts.write,
        opts.delete,
        opts.filter,
        opts.record_changes,
        progress,
    );
    let (root, existed) = open_or_create_root(dst, opts.write.dry_run).map_err(RecvError::Local)?;
    let clone = |f: &File| {
        f.try_clone()
            .map_err(|e| RecvError::Local(Error::io("opening destination", dst, e)))
    };
    w.dst_root = root.as_ref().map(clone).transpose()?;
    if !existed {
        w.record(Outcome::Created, Path::new(""));
    }
    let pw = match &root {
        Some(r) => Some(PathWriter::new(&w, clone(r)?)),
        None => None,
    };
    let pool = worker_pool(opts.jobs, "receive")
        .map_err(|e| RecvError::Local(Error::io("starting workers", dst, e)))?;
    let shared = Shared::default();
    let mut r = Receiver {
        w: &w,
        opts,
        pw,
        inbox: Inbox {
            conn,
            backlog: RefCell::new(VecDeque::new()),
            fatal: RefCell::new(None),
        },
        indexes: Indexes::new(),
        awaiting: VecDeque::new(),
        asm: None,
        pieces: Vec::new(),
        leaders: HashMap::new(),
        shared: &shared,
        followers: Vec::new(),
        seen: HashSet::new(),
        end_of_list: false,
        peer: None,
    };
    let result = pool.in_place_scope(|scope| {
        let mut flight = InFlight::new();
        let r = r.run(scope, &mut flight);
        flight.drain();
        r
    });
    result?;
    // Further names of hardlinked inodes, once their first names are in
    // place; then removal (before the directories' metadata, whose mtimes
    // it changes); then the directories' metadata.
    let followers = std::mem::take(&mut r.followers);
    let failed_leaders = std::mem::take(
        &mut *shared
            .failed_leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    if let Some(pw) = r.pw.as_mut() {
        for (rel, h) in followers {
            let Some(target) = r.leaders.get(&h) else {
                continue;
            };
            if failed_leaders.contains(&h) {
                w.fail(&rel, "not linked: its first name failed");
                continue;
            }
            if let Err(e) = pw.put_link(&rel, target) {
                w.fail(&rel, e);
            }
        }
    }
    if opts.delete {
        if let Some(root) = &root {
            remove_unseen(&w, root, &r.seen);
        }
    }
    if let Some(pw) = r.pw.take() {
        pw.finish();
    }
    let mut summary = w.summary(start);
    let peer = r.peer.take();
    drop(r);
    summary.verify_mismatches = shared
        .mismatches
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    Ok((summary, peer))
}

/// What the pool's writes report back.
#[derive(Default)]
struct Shared {
    failed_leaders: Mutex<HashSet<u64>>,
    mismatches: Mutex<Vec<EntryIssue>>,
}

struct Receiver<'w, 'a, 'o, 'c> {
    w: &'w DestWriter<'a>,
    opts: &'o RecvOptions<'o>,
    pw: Option<PathWriter<'w, 'a>>,
    inbox: Inbox<'c>,
    indexes: Indexes,
    awaiting: VecDeque<Awaiting>,
    /// The small file being assembled (the front of `awaiting`).
    asm: Option<Assembly>,
    pieces: Vec<(u64, Vec<u8>)>,
    /// Paths of link leaders, by index.
    leaders: HashMap<u64, PathBuf>,
    shared: &'w Shared,
    followers: Vec<(PathBuf, u64)>,
    seen: HashSet<u128>,
    end_of_list: bool,
    peer: Option<CopySummary>,
}

impl<'w, 'a, 'o, 'c> Receiver<'w, 'a, 'o, 'c> {
    fn run<'s>(&mut self, scope: &rayon::Scope<'s>, flight: &mut InFlight) -> Result<(), ConnError>
    where
        'w: 's,
        'o: 's,
        'a: 's,
    {
        loop {
            if let Some(e) = self.inbox.fatal.borrow_mut().take() {
                return Err(e);
            }
            let m = self.inbox.next()?;
            self.indexes.observe(&m).map_err(wire_err)?;
            match m {
                Message::Entry(e) => {
                    if self.end_of_list {
                        return Err(ConnError::Wire("an Entry after EndOfList".into()));
                    }
                    self.entry(*e, flight)?
                }
                Message::QueryReply { json } => self.names(&json)?,
                Message::Skip { index } => {
                    let a = self.front("Skip", index)?;
                    if self.asm.is_some() {
                        return Err(ConnError::Wire(format!(
                            "a Skip for entry {index} after some of its content"
                        )));
                    }
                    let leaf = self.leaf(&a, Body::Same);
                    self.put(&a, &leaf, None);
                }
                m @ (Message::Data { .. } | Message::Chunk { .. }) => {
                    let index = m.index().unwrap_or(0);
                    let a = self.peek("content", index)?;
                    if self.asm.is_none() && a.want > SMALL {
                        let a = self.awaiting.pop_front().expect("peeked");
                        self.stream(a, m)?;
                        continue;
                    }
                    if self.asm.is_none() {
                        self.asm = Some(Assembly::new(a));
                    }
                    let a = self.awaiting.front().expect("peeked");
                    let asm = self.asm.as_mut().expect("just set");
                    match asm.piece(m, &a.old) {
                        Ok(p) => self.pieces.push(p),
                        Err(PieceError::Protocol(e)) => return Err(ConnError::Wire(e)),
                        Err(PieceError::Entry(e)) => {
                            // Skip the rest of its content, then fail it.
                            let a = self.awaiting.pop_front().expect("peeked");
                            self.asm = None;
                            self.pieces.clear();
                            self.fail_leader(&a);
                            self.w.fail(&a.rel, e);
                            self.skip_content(index)?;
                        }
                    }
                }
                Message::FileDone { index, blake3 } => {
                    let a = self.front("FileDone", index)?;
                    let asm = self.asm.take().unwrap_or_else(|| Assembly::new(&a));
                    let pieces = std::mem::take(&mut self.pieces);
                    if self.opts.write.dry_run {
                        let leaf = self.leaf(&a, Body::Changed);
                        self.put(&a, &leaf, None);
                        continue;
                    }
                    match asm.done(&blake3) {
                        Ok(h) => self.spawn(scope, flight, a, pieces, h),
                        Err(PieceError::Entry(e) | PieceError::Protocol(e)) => {
                            self.fail_leader(&a);
                            self.w.fail(&a.rel, e)
                        }
                    }
                }
                Message::Error {
                    index: Some(index),
                    message,
                } => {
                    let a = self.front("Error", index)?;
                    self.asm = None;
                    self.pieces.clear();
                    self.fail_leader(&a);
                    self.w
                        .fail(&a.rel, format!("on the sending side: {message}"));
                }
                Message::Error {
                    index: None,
                    message,
                } => return Err(ConnError::Peer(message)),
                Message::EndOfList => self.end_of_list = true,
                Message::Summary { json } => {
                    let s: PeerSummary = serde_json::from_slice(&json)
                        .map_err(|e| ConnError::Wire(format!("the sender's summary: {e}")))?;
                    self.peer = Some(s.summary);
                }
                Message::Done => {
                    if !self.end_of_list || !self.awaiting.is_empty() {
                        return Err(ConnError::Wire(format!(
                            "Done with {} files' content not sent{}",
                            self.awaiting.len(),
                            if self.end_of_list {
                                ""
                            } else {
                                " and no EndOfList"
                            }
                        )));
                    }
                    return Ok(());
                }
                m => {
                    return Err(ConnError::Wire(format!(
                        "unexpected {} message from the sender",
                        m.name()
                    )))
                }
            }
        }
    }

    /// Reads past the rest of `index`'s content (after its entry failed).
    fn skip_content(&mut self, index: u64) -> Result<(), ConnError> {
        self.inbox.skip_content(index)
    }

    fn peek(&self, what: &str, index: u64) -> Result<&Awaiting, ConnError> {
        match self.awaiting.front() {
            Some(a) if a.index == index => Ok(a),
            _ => Err(ConnError::Wire(format!(
                "{what} for entry {index}, whose content is not the one due"
            ))),
        }
    }

    fn front(&mut self, what: &str, index: u64) -> Result<Awaiting, ConnError> {
        self.peek(what, index)?;
        Ok(self.awaiting.pop_front().expect("peeked"))
    }

    fn fail_leader(&self, a: &Awaiting) {
        if self.leaders.contains_key(&a.index) {
            self.shared
                .failed_leaders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(a.index);
        }
    }

    fn leaf(&self, a: &Awaiting, body: Body) -> WireLeaf {
        WireLeaf {
            entry: a.entry.clone(),
            xattrs: a.xattrs.clone(),
            target: Vec::new(),
            sparse: a.regions.is_some(),
            body,
            written: Default::default(),
        }
    }

    /// Puts a leaf whose content is decided, on this thread; `seen`: what
    /// this side found at its name just now, if it looked.
    fn put(&self, a: &Awaiting, leaf: &WireLeaf, seen: Option<Option<Stat>>) {
        if let Err(e) = put_leaf_at(self.w, Some(&a.dir), &a.name, &a.rel, leaf, seen) {
            self.fail_leader(a);
            self.w.fail(&a.rel, e);
        }
    }

    /// Writes an assembled small file on the pool.
    fn spawn<'s>(
        &self,
        scope: &rayon::Scope<'s>,
        flight: &mut InFlight,
        a: Awaiting,
        pieces: Vec<(u64, Vec<u8>)>,
        digest: [u8; 32],
    ) where
        'w: 's,
        'o: 's,
        'a: 's,
    {
        let n = pieces.iter().map(|(_, b)| b.len()).sum::<usize>();
        if flight.conflicts(&a.rel, true, None) {
            flight.drain();
        }
        flight.wait_for_room(n);
        flight.add(&a.rel, n);
        let tx = flight.tx.clone();
        let leaf = self.leaf(&a, Body::Pieces(pieces));
        let w = self.w;
        let verify = self.opts.verify;
        let shared = self.shared;
        let is_leader = self.leaders.contains_key(&a.index);
        scope.spawn(move |_| {
            match put_leaf_at(w, Some(&a.dir), &a.name, &a.rel, &leaf, None) {
                Ok(()) => {
                    w.copied(leaf.written.load(std::sync::atomic::Ordering::Relaxed));
                    if verify {
                        check_written(&a, &digest, &shared.mismatches);
                    }
                }
                Err(e) => {
                    if is_leader {
                        shared
                            .failed_leaders
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(a.index);
                    }
                    w.fail(&a.rel, e);
                }
            }
            let _ = tx.send((a.rel, n));
        });
    }

    /// Writes a large file as its pieces arrive.
    fn stream(&mut self, a: Awaiting, first: Message) -> Result<(), ConnError> {
        let leaf = StreamLeaf {
            entry: a.entry.clone(),
            xattrs: a.xattrs.clone(),
            sparse: a.regions.is_some(),
            inbox: &self.inbox,
            asm: RefCell::new(Assembly::new(&a)),
            first: RefCell::new(Some(first)),
            old: a
                .old
                .as_ref()
                .and_then(|(f, m)| f.try_clone().ok().map(|f| (f, m.clone()))),
            digest: RefCell::new(None),
            written: RefCell::new(0),
            consumed: std::cell::Cell::new(false),
        };
        let r = put_leaf_at(self.w, Some(&a.dir), &a.name, &a.rel, &leaf, None);
        self.w.copied(*leaf.written.borrow());
        let digest = *leaf.digest.borrow();
        let consumed = leaf.consumed.get();
        drop(leaf);
        if let Some(e) = self.inbox.fatal.borrow_mut().take() {
            return Err(e);
        }
        match r {
            Ok(()) => {
                if let (true, Some(d)) = (self.opts.verify, digest) {
                    check_written(&a, &d, &self.shared.mismatches);
                }
            }
            Err(e) => {
                self.fail_leader(&a);
                self.w.fail(&a.rel, e);
                // Content the write did not take (it failed before the
                // end): read past it.
                if !consumed {
                    self.skip_content(a.index)?;
                }
            }
        }
        Ok(())
    }

    /// The sender's names for owners and groups.
    fn names(&self, json: &[u8]) -> Result<(), ConnError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| ConnError::Wire(format!("a names message: {e}")))?;
        for (key, user) in [("users", true), ("groups", false)] {
            if let Some(list) = v["names"][key].as_array() {
                for pair in list {
                    if let (Some(id), Some(name)) = (pair[0].as_u64(), pair[1].as_str()) {
                        if let Ok(id) = u32::try_from(id) {
                            self.opts
                                .write
                                .ids
                                .add_source_name(user, id, name.to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, mut e: wire::Entry, flight: &mut InFlight) -> Result<(), ConnError> {
        let comps = checked_rel_path(&e.path).map_err(wire_err)?;
        let rel: PathBuf = comps.iter().map(|c| OsStr::from_bytes(c)).collect();
        let is_dir = e.kind == EntryKind::Dir;
        if rel.as_os_str().is_empty() {
            if e.index != 0 || !is_dir {
                return Err(ConnError::Wire(
                    "only the first entry may be the root, and it must be a directory".into(),
                ));
            }
            let entry = dest_entry(&e);
            self.w.count_source(&entry, false);
            let x = filter_xattrs(xattrs_of(&mut e), self.opts.write);
            if let Some(pw) = self.pw.as_mut() {
                pw.put_root(entry, x);
            }
            return Ok(());
        }
        if e.index == 0 {
            return Err(ConnError::Wire(
                "the first entry must be the root `.`".into(),
            ));
        }
        if let Some(h) = e.hardlink_of {
            if !self.leaders.contains_key(&h) {
                return Err(ConnError::Wire(format!(
                    "entry {} links to entry {h}, which is not the first name of a link",
                    e.index
                )));
            }
        }
        let excluded = self.opts.filter.excluded(&rel, is_dir);
        let want = data_len(&e);
        if excluded {
            self.skip(want, e.index)?;
            return Ok(());
        }
        if self.opts.delete {
            let mut a = PathBuf::new();
            for c in rel.components() {
                a.push(c);
                self.seen.insert(path_hash(&a));
            }
        }
        let entry = dest_entry(&e);
        self.w.count_source(&entry, e.hardlink_of.is_some());
        self.w.check_owner_map(&entry, &rel);
        if e.link_leader {
            self.leaders.insert(e.index, rel.clone());
        }
        if let Some(h) = e.hardlink_of {
            self.followers.push((rel, h));
            return Ok(());
        }
        let xattrs = filter_xattrs(xattrs_of(&mut e), self.opts.write);
        let Some(pw) = self.pw.as_mut() else {
            // A dry run into a DST that does not exist: all would be new.
            self.w.record(Outcome::Created, &rel);
            self.skip(want, e.index)?;
            return Ok(());
        };
        // A path a leaf still being written on the pool touches waits for
        // the pool (a hostile stream naming a path twice, or a file and
        // then something below it).
        if flight.conflicts(&rel, !is_dir, None) {
            flight.drain();
        }
        match e.kind {
            EntryKind::Dir => {
                if let Err(err) = pw.put_dir(&rel, entry, xattrs) {
                    self.w.fail(&rel, err);
                }
                return Ok(());
            }
            EntryKind::File => {}
            _ => {
                let leaf = WireLeaf {
                    entry,
                    xattrs,
                    target: e.symlink_target.take().unwrap_or_default(),
                    sparse: false,
                    body: Body::Pieces(Vec::new()),
                    written: Default::default(),
                };
                if let Err(err) = pw.put_leaf(&rel, &leaf) {
                    self.fail_index(e.index, &rel, err);
                }
                return Ok(());
            }
        }
        let (dir, name) = match pw.leaf_dir(&rel) {
            Ok((Some(d), n)) => (d, n),
            Ok((None, _)) => {
                // A dry run below a directory that does not exist yet.
                self.w.record(Outcome::Created, &rel);
                self.skip(want, e.index)?;
                return Ok(());
            }
            Err(err) => {
                self.fail_index(e.index, &rel, err);
                self.skip(want, e.index)?;
                return Ok(());
            }
        };
        let a = Awaiting {
            index: e.index,
            rel,
            dir,
            name,
            entry,
            xattrs,
            regions: e.regions.take(),
            want,
            old: None,
        };
        let cur = match sys::stat_at_opt(&a.dir.0, &a.name) {
            Ok(c) => c,
            Err(err) => {
                self.fail_index(a.index, &a.rel, format!("stat destination: {err}"));
                self.skip(want, a.index)?;
                return Ok(());
            }
        };
        let same_size = cur.as_ref().is_some_and(|c| {
            c.kind() == FileKind::File
                && c.size == a.entry.size
                && (c.nlink == 1 || a.entry.link.is_some())
        });
        // The first name of a hardlinked inode whose old version stands
        // alone: the tree's links changed, and size and mtime say nothing
        // of which file's content is there (a name re-linked to another
        // file of the same size and mtime would keep the wrong one, and
        // its further names would follow it). Its content is compared
        // by chunks instead, as with --checksum.
        let relinked = a.entry.link.is_some() && cur.as_ref().is_some_and(|c| c.nlink == 1);
        let doubt = self.opts.checksum || relinked;
        if same_size && !doubt && cur.as_ref().is_some_and(|c| c.mtime == a.entry.mtime) {
            // The quick check: the same size and mtime.
            let leaf = self.leaf(&a, Body::Same);
            self.put(&a, &leaf, Some(cur));
            self.skip(want, a.index)?;
            return Ok(());
        }
        if want == 0 {
            // Nothing to ask for: an empty file, or one that is all hole.
            let leaf = self.leaf(&a, Body::Pieces(Vec::new()));
            self.put(&a, &leaf, Some(cur));
            return Ok(());
        }
        let with_delta = cur.as_ref().is_some_and(|c| {
            c.kind() == FileKind::File
                && a.regions_plain()
                && (c.size >= DELTA_MIN || (doubt && same_size))
        });
        if self.opts.write.dry_run && !(doubt && same_size) {
            let leaf = self.leaf(&a, Body::Changed);
            self.put(&a, &leaf, Some(cur));
            self.skip(a.want, a.index)?;
            return Ok(());
        }
        let mut a = a;
        let mut need = None;
        if with_delta {
            let old = sys::open_read_at(&a.dir.0, &a.name)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    let size = sys::stat_fd(&f).map_err(|e| e.to_string())?.size;
                    old_chunks(&f, size).map(|(l, m)| (f, l, m))
                });
            // An old version that cannot be read is no reason to fail:
            // the whole content is asked for instead; so is one with more
            // chunks than one Need frame holds (about 400 GiB).
            if let Ok((f, list, map)) = old {
                if list.len() <= MAX_OLD_CHUNKS {
                    need = Some(list);
                    a.old = Some((f, map));
                }
            }
        }
        self.inbox.conn.out.send(&Message::Need {
            index: a.index,
            old_chunks: need,
        })?;
        self.awaiting.push_back(a);
        Ok(())
    }

    /// Tells the sender not to send a file's content (if it has any).
    fn skip(&self, want: u64, index: u64) -> Result<(), ConnError> {
        if want > 0 {
            self.inbox.conn.out.send(&Message::Skip { index })?;
        }
        Ok(())
    }

    fn fail_index(&self, index: u64, rel: &Path, e: impl std::fmt::Display) {
        if self.leaders.contains_key(&index) {
            self.shared
                .failed_leaders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index);
        }
        self.w.fail(rel, e);
    }
}

impl Awaiting {
    /// Whether the file has no holes to keep (deltas are for plain files).
    fn regions_plain(&self) -> bool {
        self.regions.is_none()
    }
}

/// `--verify`: the file as written reads back to the sender's digest.
fn check_written(a: &Awaiting, digest: &[u8; 32], mismatches: &Mutex<Vec<EntryIssue>>) {
    let r = sys::open_read_at(&a.dir.0, &a.name)
        .and_then(|f| hash_written(&f, a.entry.size, a.regions.as_deref()));
    let reason = match r {
        Ok(h) if &h == digest => return,
        Ok(_) => "content differs from the source after writing".to_string(),
        Err(e) => format!("reading back: {e}"),
    };
    mismatches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(EntryIssue {
            path: a.rel.clone(),
            reason,
        });
}
