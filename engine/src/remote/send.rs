//! The sending side of a session: the ordered walk's entries as Entry
//! messages, and each file's content when the receiver asks for it.
//!
//! One thread does it all, in turns: it announces entries (to one peer, or
//! to several in a fan-out, from one walk), and between them answers the
//! peers' Need and Skip messages, which their reader threads have queued.
//! A file is opened only when a peer asks for its content. The writer
//! threads write and the peers work at the same time, so the pipes stay
//! busy while either side stats files. At most [`WINDOW`] files (in at most
//! [`WINDOW_DIRS`] directories) wait for a peer's answer; past that the
//! walk waits.
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use haul_formats::wire::{self, EntryKind, Message, OldChunk, WireTime};
use haul_formats::ChunkerParams;

use super::conn::{Conn, ConnError, Out, DATA_PIECE};
use crate::chunk::{chunk_region, data_regions, is_sparse, read_full_at, ChunkError};
use crate::dest::{CopySummary, IssueTally};
use crate::filter::Filter;
use crate::meta::{read_xattrs, FileKind, XTarget, XattrPolicy};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::ordered::OrderedWalk;

/// Files announced and not yet answered, at most (per peer): the sender
/// runs this far ahead of the receiver, so neither waits on the other's
/// latency (2,048 left a re-run of the kernel corpus 30% slower).
pub(crate) const WINDOW: usize = 16384;
/// Directories holding files not yet answered, at most (each an open
/// handle, held until its files are answered).
const WINDOW_DIRS: usize = 1024;

/// What the sending side is asked to do.
pub(crate) struct SendOptions<'a> {
    pub(crate) filter: &'a Filter,
    pub(crate) policy: XattrPolicy,
    /// Send no content: the receiver only reports.
    pub(crate) dry_run: bool,
    /// Tell the receiver the name of each owner and group (for name-based
    /// id maps, resolved on the receiving host).
    pub(crate) names: bool,
}

/// A file announced and waiting for the receiver's answer: where it is
/// (opened only if the receiver asks for its content).
struct Waiting {
    dir: Arc<File>,
    name: CString,
    size: u64,
    regions: Option<Vec<(u64, u64)>>,
}

/// One receiver: its session and the files it has yet to answer. A peer
/// whose session fails is dropped; the others go on.
struct Peer<'a> {
    conn: &'a Conn,
    out: Out,
    waiting: HashMap<u64, Waiting>,
    /// The directories the waiting files are in (each an open handle,
    /// shared), with how many files each.
    dirs: HashMap<*const File, usize>,
    dead: Option<ConnError>,
}

/// The walk's side, shared by every peer: one walk of the source, each
/// entry read and described once.
struct Walker<'a> {
    opts: &'a SendOptions<'a>,
    progress: &'a dyn Progress,
    next: u64,
    links: HashMap<(u64, u64), u64>,
    named: HashSet<(bool, u32)>,
    failed: IssueTally,
    notices: IssueTally,
}

/// Sends the tree below `root` (its contents; `root` itself as `.`), then
/// answers until every file is answered, then sends this side's summary
/// and Done. Returns that summary (this side's failures and notices).
pub(crate) fn send_tree(
    conn: &Conn,
    root: File,
    opts: &SendOptions<'_>,
    progress: &dyn Progress,
) -> Result<CopySummary, ConnError> {
    send_to_all(&[conn], root, opts, progress)
        .pop()
        .expect("one result per peer")
}

/// [`send_tree`] to several receivers at once (fan-out): the source is
/// walked once and each entry is announced to every peer; each peer's
/// Needs are answered as they come. One result per peer, in order.
pub(crate) fn send_to_all(
    conns: &[&Conn],
    root: File,
    opts: &SendOptions<'_>,
    progress: &dyn Progress,
) -> Vec<Result<CopySummary, ConnError>> {
    let mut peers: Vec<Peer<'_>> = conns
        .iter()
        .map(|c| Peer {
            conn: c,
            out: c.out.clone(),
            waiting: HashMap::new(),
            dirs: HashMap::new(),
            dead: None,
        })
        .collect();
    let mut w = Walker {
        opts,
        progress,
        next: 0,
        links: HashMap::new(),
        named: HashSet::new(),
        failed: IssueTally::default(),
        notices: IssueTally::default(),
    };
    if let Err(e) = w.walk(&mut peers, root) {
        for p in &mut peers {
            p.dead.get_or_insert(e.clone());
        }
    }
    for p in &mut peers {
        if p.dead.is_none() {
            if let Err(e) = p.out.send(&Message::EndOfList) {
                p.dead = Some(e);
            }
        }
    }
    // Every file answered, on every peer.
    while peers
        .iter()
        .any(|p| p.dead.is_none() && !p.waiting.is_empty())
    {
        w.answer_any(&mut peers);
    }
    let (failed, failed_not_listed) = std::mem::take(&mut w.failed).into_sorted();
    let (notices, notices_not_listed) = std::mem::take(&mut w.notices).into_sorted();
    let mine = CopySummary {
        dry_run: opts.dry_run,
        failed,
        failed_not_listed,
        notices,
        notices_not_listed,
        ..CopySummary::default()
    };
    let end = super::PeerSummary {
        summary: mine,
        changes: Vec::new(),
    };
    peers
        .into_iter()
        .map(|p| match p.dead {
            Some(e) => Err(e),
            None => end.send(&p.out).map(|()| end.summary.clone()),
        })
        .collect()
}

fn wire_time(t: (i64, i64)) -> WireTime {
    WireTime {
        secs: t.0,
        nanos: t.1.clamp(0, 999_999_999) as u32,
    }
}

fn wire_kind(k: FileKind) -> EntryKind {
    match k {
        FileKind::File => EntryKind::File,
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink => EntryKind::Symlink,
        FileKind::CharDev => EntryKind::CharDev,
        FileKind::BlockDev => EntryKind::BlockDev,
        FileKind::Fifo => EntryKind::Fifo,
        FileKind::Socket => EntryKind::Socket,
    }
}

fn base_entry(index: u64, path: Vec<u8>, st: &Stat) -> wire::Entry {
    wire::Entry {
        index,
        path,
        kind: wire_kind(st.kind()),
        perm: st.perm() & 0o7777,
        uid: st.uid,
        gid: st.gid,
        size: if st.kind() == FileKind::File {
            st.size
        } else {
            0
        },
        rdev: if matches!(st.kind(), FileKind::CharDev | FileKind::BlockDev) {
            st.rdev
        } else {
            0
        },
        atime: wire_time(st.atime),
        mtime: wire_time(st.mtime),
        xattrs: Vec::new(),
        symlink_target: None,
        hardlink_of: None,
        link_leader: false,
        regions: None,
        attrs: st.attrs & (sys::ATTR_IMMUTABLE | sys::ATTR_APPEND),
    }
}

/// How many bytes of content an entry carries (what the receiver needs).
pub(crate) fn data_len(e: &wire::Entry) -> u64 {
    if e.kind != EntryKind::File || e.hardlink_of.is_some() {
        return 0;
    }
    match &e.regions {
        Some(r) => r.iter().map(|&(_, l)| l).sum(),
        None => e.size,
    }
}

impl Walker<'_> {
    fn walk(&mut self, peers: &mut [Peer<'_>], root: File) -> Result<(), ConnError> {
        let st = sys::stat_fd(&root).map_err(|e| ConnError::Io(format!("stat source: {e}")))?;
        let mut e = base_entry(0, b".".to_vec(), &st);
        match read_xattrs(&XTarget::Fd(&root), self.opts.policy) {
            Ok(x) => e.xattrs = to_wire_xattrs(x),
            Err(err) => self
                .notices
                .push(Path::new(""), format!("attributes not read: {err}")),
        }
        self.announce(peers, e, None);
        let walk = OrderedWalk::new(
            root.try_clone()
                .map_err(|e| ConnError::Io(format!("opening source: {e}")))?,
            self.opts.filter,
        )
        .names_only();
        for e in walk {
            match e {
                Ok(e) => {
                    if let Some(entry) = self.describe(&e.rel, &e.st, &e.dir, &e.name) {
                        self.announce(peers, entry, Some((&e.dir, &e.name, e.st.size)));
                    }
                }
                Err((rel, err)) => self.failed.push(&rel, err.to_string()),
            }
            // Answer what is there already, without waiting.
            for p in peers.iter_mut() {
                while p.dead.is_none() {
                    match p.conn.try_recv() {
                        Ok(Some(m)) => self.answer(p, m),
                        Ok(None) => break,
                        Err(e) => p.dead = Some(e),
                    }
                }
            }
            if peers.iter().all(|p| p.dead.is_some()) {
                break;
            }
        }
        Ok(())
    }

    /// Announces `e` to every live peer; a file with content waits for
    /// each one's answer (the walk first waits for room in its window).
    fn announce(
        &mut self,
        peers: &mut [Peer<'_>],
        e: wire::Entry,
        at: Option<(&Arc<File>, &CString, u64)>,
    ) {
        let want = data_len(&e);
        let names = self.new_names(&e);
        for i in 0..peers.len() {
            while peers[i].dead.is_none()
                && (peers[i].waiting.len() >= WINDOW || peers[i].dirs.len() >= WINDOW_DIRS)
            {
                self.answer_any(peers);
            }
            let p = &mut peers[i];
            if p.dead.is_some() {
                continue;
            }
            if want > 0 {
                let Some((dir, name, size)) = at else {
                    continue;
                };
                *p.dirs.entry(Arc::as_ptr(dir)).or_default() += 1;
                p.waiting.insert(
                    e.index,
                    Waiting {
                        dir: dir.clone(),
                        name: name.clone(),
                        size,
                        regions: e.regions.clone(),
                    },
                );
            }
            let r = match &names {
                Some(n) => p.out.send(n),
                None => Ok(()),
            };
            if let Err(err) = r.and_then(|()| p.out.send(&Message::Entry(Box::new(e.clone())))) {
                p.dead = Some(err);
            }
        }
        self.next += 1;
        if want == 0 {
            self.progress.entry_done();
        }
    }

    /// The names of `e`'s owner and group not told yet (when names are
    /// asked for), as the message that tells them. Every peer gets every
    /// entry in the same order, so this is the first entry using them for
    /// each peer.
    fn new_names(&mut self, e: &wire::Entry) -> Option<Message> {
        if !self.opts.names {
            return None;
        }
        let mut names = serde_json::Map::new();
        for (user, id) in [(true, e.uid), (false, e.gid)] {
            if self.named.insert((user, id)) {
                if let Some(n) = crate::idmap::local_name(user, id) {
                    let key = if user { "users" } else { "groups" };
                    names.insert(key.into(), serde_json::json!([[id, n]]));
                }
            }
        }
        (!names.is_empty()).then(|| Message::QueryReply {
            json: serde_json::json!({ "names": names })
                .to_string()
                .into_bytes(),
        })
    }

    /// Waits for one answer from any live peer with files waiting, and
    /// handles it.
    fn answer_any(&mut self, peers: &mut [Peer<'_>]) {
        let live: Vec<usize> = (0..peers.len())
            .filter(|&i| peers[i].dead.is_none() && !peers[i].waiting.is_empty())
            .collect();
        if live.is_empty() {
            return;
        }
        let mut sel = crossbeam_channel::Select::new();
        for &i in &live {
            sel.recv(peers[i].conn.inbound());
        }
        let Ok(op) = sel.select_timeout(Duration::from_secs(1)) else {
            // Nothing for a second: a peer silent for too long is dropped.
            for &i in &live {
                if let Err(e) = peers[i].conn.silent() {
                    peers[i].dead = Some(e);
                }
            }
            return;
        };
        let i = live[op.index()];
        let r = op.recv(peers[i].conn.inbound());
        match r.map_err(|_| ConnError::Closed).and_then(Conn::message) {
            Ok(m) => self.answer(&mut peers[i], m),
            Err(e) => peers[i].dead = Some(e),
        }
    }

    /// Describes one entry of the walk, reading what it needs once; `None`
    /// if it failed (recorded).
    fn describe(&mut self, rel: &Path, st: &Stat, dir: &File, name: &CStr) -> Option<wire::Entry> {
        let kind = st.kind();
        let mut e = base_entry(self.next, rel.as_os_str().as_bytes().to_vec(), st);
        if e.path.len() > wire::MAX_PATH {
            self.failed
                .push(rel, "path longer than 4096 bytes: not sent".into());
            return None;
        }
        let x = match kind {
            FileKind::Dir => sys::open_dir_at(dir, name)
                .and_then(|d| read_xattrs(&XTarget::Fd(&d), self.opts.policy)),
            _ => read_xattrs(&XTarget::At(dir, name), self.opts.policy),
        };
        match x {
            Ok(x) => e.xattrs = to_wire_xattrs(x),
            Err(err) => self
                .notices
                .push(rel, format!("attributes not read: {err}")),
        }
        if kind == FileKind::Symlink {
            match sys::readlink_at(dir, name) {
                Ok(t) => {
                    e.size = t.len() as u64;
                    e.symlink_target = Some(t);
                }
                Err(err) => {
                    self.failed.push(rel, format!("readlink: {err}"));
                    return None;
                }
            }
        }
        if kind != FileKind::Dir && st.nlink > 1 {
            match self.links.get(&(st.dev, st.ino)) {
                Some(&first) => {
                    e.hardlink_of = Some(first);
                    return Some(e);
                }
                None => {
                    e.link_leader = true;
                    self.links.insert((st.dev, st.ino), e.index);
                }
            }
        }
        if kind == FileKind::File && is_sparse(st) {
            {
                let regions = sys::open_read_at(dir, name).and_then(|f| data_regions(&f, st.size));
                match regions {
                    Ok(r) if r.iter().map(|&(_, l)| l).sum::<u64>() < st.size => {
                        e.regions = Some(r)
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if e.link_leader {
                            self.links.remove(&(st.dev, st.ino));
                        }
                        self.failed.push(rel, format!("finding holes: {err}"));
                        return None;
                    }
                }
            }
        }
        Some(e)
    }

    fn answer(&mut self, p: &mut Peer<'_>, m: Message) {
        let r = match m {
            Message::Skip { index } => take(p, "Skip", index).map(|_| ()),
            Message::Need { index, old_chunks } => take(p, "Need", index)
                .and_then(|w| send_file(p, self.opts, self.progress, index, w, old_chunks)),
            Message::Error {
                index: None,
                message,
            } => Err(ConnError::Peer(message)),
            m => Err(ConnError::Wire(format!(
                "unexpected {} message from the receiver",
                m.name()
            ))),
        };
        match r {
            Ok(()) => self.progress.entry_done(),
            Err(e) => p.dead = Some(e),
        }
    }
}

fn take(p: &mut Peer<'_>, kind: &str, index: u64) -> Result<Waiting, ConnError> {
    let w = p.waiting.remove(&index).ok_or_else(|| {
        ConnError::Wire(format!(
            "{kind} for entry {index}, which is not a file waiting for an answer"
        ))
    })?;
    let key = Arc::as_ptr(&w.dir);
    if let Some(n) = p.dirs.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            p.dirs.remove(&key);
        }
    }
    Ok(w)
}

/// Sends one file's content: as Data, or with `old` (the receiver's
/// chunks of its old version) as Chunk references where it has them.
fn send_file(
    p: &Peer<'_>,
    opts: &SendOptions<'_>,
    progress: &dyn Progress,
    index: u64,
    w: Waiting,
    old: Option<Vec<OldChunk>>,
) -> Result<(), ConnError> {
    let s = Content {
        out: &p.out,
        opts,
        progress,
    };
    let mut hasher = blake3::Hasher::new();
    let r = match sys::open_read_at(&w.dir, &w.name) {
        Err(e) => Err(Failed::Source(format!("open: {e}"))),
        Ok(f) => match old {
            Some(old) if w.regions.is_none() => s.send_delta(index, &f, &w, &old, &mut hasher),
            _ => s.send_plain(index, &f, &w, &mut hasher),
        },
    };
    match r {
        Ok(Sent::Same) => p.out.send(&Message::Skip { index }),
        Ok(Sent::Content) => p.out.send(&Message::FileDone {
            index,
            blake3: *hasher.finalize().as_bytes(),
        }),
        Err(Failed::Conn(e)) => Err(e),
        // The receiver records the failure under the entry's path.
        Err(Failed::Source(msg)) => p.out.send(&Message::Error {
            index: Some(index),
            message: msg,
        }),
    }
}

/// What sending one file's content needs.
struct Content<'a> {
    out: &'a Out,
    opts: &'a SendOptions<'a>,
    progress: &'a dyn Progress,
}

impl Content<'_> {
    /// Sends `b`, the content at `offset`, as Data pieces (not in a dry
    /// run); the caller hashes it.
    fn data(&self, index: u64, offset: u64, b: &[u8]) -> Result<(), ConnError> {
        self.progress.bytes(b.len() as u64);
        if self.opts.dry_run {
            return Ok(());
        }
        for (i, piece) in b.chunks(DATA_PIECE).enumerate() {
            self.out.send(&Message::Data {
                index,
                offset: offset + (i * DATA_PIECE) as u64,
                bytes: piece.to_vec(),
            })?;
        }
        Ok(())
    }

    fn send_plain(
        &self,
        index: u64,
        file: &File,
        w: &Waiting,
        hasher: &mut blake3::Hasher,
    ) -> Result<Sent, Failed> {
        let regions = w.regions.clone().unwrap_or_else(|| vec![(0, w.size)]);
        let mut buf = vec![0u8; DATA_PIECE.min(w.size as usize).max(1)];
        for (off, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = read_full_at(file, &mut buf[..want], off + done)
                    .map_err(|e| Failed::Source(format!("read: {e}")))?;
                if n < want {
                    return Err(changed());
                }
                hasher.update(&buf[..n]);
                self.data(index, off + done, &buf[..n])?;
                done += n as u64;
            }
        }
        Ok(Sent::Content)
    }

    fn send_delta(
        &self,
        index: u64,
        file: &File,
        w: &Waiting,
        old: &[OldChunk],
        hasher: &mut blake3::Hasher,
    ) -> Result<Sent, Failed> {
        let have: HashSet<[u8; 32]> = old.iter().map(|c| c.id).collect();
        // While every chunk so far is the old file's chunk at the same
        // place, the references are held back: if the whole file turns
        // out the same, the answer is a Skip (for --checksum).
        let mut same = true;
        let mut held: Vec<(u64, [u8; 32])> = Vec::new();
        let mut pos = 0u64;
        let params = ChunkerParams::DEFAULT;
        let r = chunk_region(
            file,
            0,
            w.size,
            &params,
            |c: &[u8]| -> Result<(), ConnError> {
                let id = *blake3::hash(c).as_bytes();
                let off = pos;
                pos += c.len() as u64;
                hasher.update(c);
                if same {
                    if let Some(o) = old.get(held.len()) {
                        if o.id == id && o.offset == off && o.len == c.len() as u64 {
                            held.push((off, id));
                            return Ok(());
                        }
                    }
                    same = false;
                    for (o, id) in held.drain(..) {
                        self.chunk_ref(index, o, id)?;
                    }
                }
                if have.contains(&id) {
                    self.chunk_ref(index, off, id)
                } else {
                    self.data(index, off, c)
                }
            },
        );
        match r {
            Ok(n) if n != w.size => return Err(changed()),
            Ok(_) => {}
            Err(ChunkError::Consumer(e)) => return Err(Failed::Conn(e)),
            Err(ChunkError::Read(e)) => return Err(Failed::Source(format!("read: {e}"))),
            Err(ChunkError::Params(e)) => return Err(Failed::Source(e.to_string())),
        }
        if same && held.len() == old.len() {
            return Ok(Sent::Same);
        }
        for (o, id) in held {
            self.chunk_ref(index, o, id)?;
        }
        Ok(Sent::Content)
    }

    fn chunk_ref(&self, index: u64, offset: u64, id: [u8; 32]) -> Result<(), ConnError> {
        if self.opts.dry_run {
            return Ok(());
        }
        self.out.send(&Message::Chunk { index, offset, id })
    }
}

enum Sent {
    /// The receiver's old version is this content.
    Same,
    /// Content was sent.
    Content,
}

enum Failed {
    Conn(ConnError),
    /// Reading this file failed: the receiver fails the entry.
    Source(String),
}

impl From<ConnError> for Failed {
    fn from(e: ConnError) -> Failed {
        Failed::Conn(e)
    }
}

fn changed() -> Failed {
    Failed::Source("the file changed size while it was read".into())
}

fn to_wire_xattrs(x: crate::meta::Xattrs) -> Vec<(Vec<u8>, Vec<u8>)> {
    x.into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect()
}
