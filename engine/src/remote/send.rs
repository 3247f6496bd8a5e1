//! The sending side of a session: the ordered walk's entries as Entry
//! messages, and each file's content when the receiver asks for it.
//!
//! One thread does it all, in turns: it announces entries, and between
//! them answers the receiver's Need and Skip messages, which a reader
//! thread has queued. The walk prepares file data ahead on the pool, the
//! writer thread writes, and the peer works at the same time, so the
//! pipe stays busy while either side stats files. At most [`WINDOW`] files
//! (and [`HELD_BYTES`] of their prepared data) wait for an answer; past
//! that the walk waits.
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use haul_formats::wire::{self, EntryKind, Message, OldChunk, WireTime};
use haul_formats::ChunkerParams;

use super::conn::{Conn, ConnError, Out, DATA_PIECE};
use crate::chunk::{chunk_region, data_regions, is_sparse, read_full_at, ChunkError};
use crate::dest::{CopySummary, IssueTally};
use crate::filter::Filter;
use crate::meta::{read_xattrs, FileKind, XTarget, XattrPolicy};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::ordered::{OrderedWalk, Prepared};

/// Files announced and not yet answered, at most.
pub(crate) const WINDOW: usize = 2048;
/// Bytes of prepared (read-ahead) data held for files not yet answered.
const HELD_BYTES: usize = 48 << 20;

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

/// A file announced and waiting for the receiver's answer.
struct Waiting {
    rel: PathBuf,
    file: File,
    bytes: Option<Vec<u8>>,
    size: u64,
    regions: Option<Vec<(u64, u64)>>,
}

struct Sender<'a> {
    out: Out,
    conn: &'a Conn,
    opts: &'a SendOptions<'a>,
    progress: &'a dyn Progress,
    next: u64,
    waiting: HashMap<u64, Waiting>,
    held: usize,
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
    let mut s = Sender {
        out: conn.out.clone(),
        conn,
        opts,
        progress,
        next: 0,
        waiting: HashMap::new(),
        held: 0,
        links: HashMap::new(),
        named: HashSet::new(),
        failed: IssueTally::default(),
        notices: IssueTally::default(),
    };
    let st = sys::stat_fd(&root).map_err(|e| ConnError::Io(format!("stat source: {e}")))?;
    let x = read_xattrs(&XTarget::Fd(&root), opts.policy);
    s.announce_root(&st, x)?;
    let walk = OrderedWalk::new(
        root.try_clone()
            .map_err(|e| ConnError::Io(format!("opening source: {e}")))?,
        opts.filter,
    );
    for e in walk {
        match e {
            Ok(e) => s.add(&e.rel, &e.st, &e.dir, &e.name, e.data)?,
            Err((rel, err)) => s.failed.push(&rel, err.to_string()),
        }
        s.answer_ready()?;
    }
    s.out.send(&Message::EndOfList)?;
    while !s.waiting.is_empty() {
        let m = s.conn.recv()?;
        s.answer(m)?;
    }
    let (failed, failed_not_listed) = std::mem::take(&mut s.failed).into_sorted();
    let (notices, notices_not_listed) = std::mem::take(&mut s.notices).into_sorted();
    let mine = CopySummary {
        dry_run: opts.dry_run,
        failed,
        failed_not_listed,
        notices,
        notices_not_listed,
        ..CopySummary::default()
    };
    let json = serde_json::to_vec(&super::PeerSummary {
        summary: mine.clone(),
        changes: Vec::new(),
    })
    .map_err(|e| ConnError::Io(format!("encoding the summary: {e}")))?;
    s.out.send(&Message::Summary { json })?;
    s.out.send(&Message::Done)?;
    Ok(mine)
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

impl Sender<'_> {
    fn announce_root(
        &mut self,
        st: &Stat,
        x: io::Result<crate::meta::Xattrs>,
    ) -> Result<(), ConnError> {
        let mut e = base_entry(0, b".".to_vec(), st);
        match x {
            Ok(x) => e.xattrs = to_wire_xattrs(x),
            Err(err) => self
                .notices
                .push(Path::new(""), format!("attributes not read: {err}")),
        }
        self.send_entry(e)
    }

    fn send_entry(&mut self, e: wire::Entry) -> Result<(), ConnError> {
        if self.opts.names {
            for (user, id) in [(true, e.uid), (false, e.gid)] {
                if self.named.insert((user, id)) {
                    if let Some(n) = crate::idmap::local_name(user, id) {
                        let key = if user { "users" } else { "groups" };
                        let json = serde_json::json!({ "names": { key: [[id, n]] } });
                        self.out.send(&Message::QueryReply {
                            json: json.to_string().into_bytes(),
                        })?;
                    }
                }
            }
        }
        self.next += 1;
        self.out.send(&Message::Entry(Box::new(e)))
    }

    /// Announces one entry of the walk.
    fn add(
        &mut self,
        rel: &Path,
        st: &Stat,
        dir: &File,
        name: &CStr,
        data: Option<io::Result<Prepared>>,
    ) -> Result<(), ConnError> {
        let kind = st.kind();
        let mut e = base_entry(self.next, rel.as_os_str().as_bytes().to_vec(), st);
        if e.path.len() > wire::MAX_PATH {
            self.failed
                .push(rel, "path longer than 4096 bytes: not sent".into());
            return Ok(());
        }
        let prepared = match data {
            Some(Ok(p)) => Some(p),
            Some(Err(err)) => {
                self.failed.push(rel, format!("open: {err}"));
                return Ok(());
            }
            None => None,
        };
        let x = match (&prepared, kind) {
            (Some(p), _) => read_xattrs(&XTarget::Fd(&p.file), self.opts.policy),
            (None, FileKind::Dir) => sys::open_dir_at(dir, name)
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
                    return Ok(());
                }
            }
        }
        let mut leader = None;
        if kind != FileKind::Dir && st.nlink > 1 {
            match self.links.get(&(st.dev, st.ino)) {
                Some(&first) => {
                    e.hardlink_of = Some(first);
                    e.regions = None;
                    return self.send_entry(e);
                }
                None => {
                    e.link_leader = true;
                    leader = Some((st.dev, st.ino));
                }
            }
        }
        if let (Some(p), FileKind::File) = (&prepared, kind) {
            if is_sparse(st) {
                match data_regions(&p.file, st.size) {
                    Ok(r) if r.iter().map(|&(_, l)| l).sum::<u64>() < st.size => {
                        e.regions = Some(r)
                    }
                    Ok(_) => {}
                    Err(err) => {
                        self.failed.push(rel, format!("finding holes: {err}"));
                        return Ok(());
                    }
                }
            }
        }
        let index = e.index;
        let want = data_len(&e);
        let regions = e.regions.clone();
        if let Some(l) = leader {
            self.links.insert(l, index);
        }
        if want > 0 {
            let Some(p) = prepared else {
                self.failed.push(rel, "no data to send".into());
                return Ok(());
            };
            while self.waiting.len() >= WINDOW
                || (self.held > HELD_BYTES && !self.waiting.is_empty())
            {
                let m = self.conn.recv()?;
                self.answer(m)?;
            }
            self.held += p.bytes.as_ref().map_or(0, Vec::len);
            self.waiting.insert(
                index,
                Waiting {
                    rel: rel.to_path_buf(),
                    file: p.file,
                    bytes: p.bytes,
                    size: st.size,
                    regions,
                },
            );
        }
        self.send_entry(e)?;
        if want == 0 {
            self.progress.entry_done();
        }
        Ok(())
    }

    /// Answers every message already queued, without waiting.
    fn answer_ready(&mut self) -> Result<(), ConnError> {
        while let Some(m) = self.conn.try_recv()? {
            self.answer(m)?;
        }
        Ok(())
    }

    fn take(&mut self, kind: &str, index: u64) -> Result<Waiting, ConnError> {
        let w = self.waiting.remove(&index).ok_or_else(|| {
            ConnError::Wire(format!(
                "{kind} for entry {index}, which is not a file waiting for an answer"
            ))
        })?;
        self.held -= w.bytes.as_ref().map_or(0, Vec::len);
        Ok(w)
    }

    fn answer(&mut self, m: Message) -> Result<(), ConnError> {
        match m {
            Message::Skip { index } => {
                self.take("Skip", index)?;
                self.progress.entry_done();
            }
            Message::Need { index, old_chunks } => {
                let w = self.take("Need", index)?;
                self.send_file(index, w, old_chunks)?;
                self.progress.entry_done();
            }
            Message::Error {
                index: None,
                message,
            } => return Err(ConnError::Peer(message)),
            m => {
                return Err(ConnError::Wire(format!(
                    "unexpected {} message from the receiver",
                    m.name()
                )))
            }
        }
        Ok(())
    }

    /// Sends one file's content: as Data, or with `old` (the receiver's
    /// chunks of its old version) as Chunk references where it has them.
    fn send_file(
        &mut self,
        index: u64,
        w: Waiting,
        old: Option<Vec<OldChunk>>,
    ) -> Result<(), ConnError> {
        let mut hasher = blake3::Hasher::new();
        let r = match old {
            Some(old) if w.regions.is_none() => self.send_delta(index, &w, &old, &mut hasher),
            _ => self.send_plain(index, &w, &mut hasher),
        };
        match r {
            Ok(Sent::Same) => self.out.send(&Message::Skip { index }),
            Ok(Sent::Content) => self.out.send(&Message::FileDone {
                index,
                blake3: *hasher.finalize().as_bytes(),
            }),
            Err(Failed::Conn(e)) => Err(e),
            Err(Failed::Source(msg)) => {
                // The receiver records the failure under the entry's path.
                let _ = &w.rel;
                self.out.send(&Message::Error {
                    index: Some(index),
                    message: msg,
                })
            }
        }
    }

    fn data(
        &self,
        index: u64,
        offset: u64,
        b: &[u8],
        hasher: &mut blake3::Hasher,
    ) -> Result<(), ConnError> {
        hasher.update(b);
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
        w: &Waiting,
        hasher: &mut blake3::Hasher,
    ) -> Result<Sent, Failed> {
        if let (Some(b), None) = (&w.bytes, &w.regions) {
            if b.len() as u64 != w.size {
                return Err(changed());
            }
            self.data(index, 0, b, hasher)?;
            return Ok(Sent::Content);
        }
        let regions = w.regions.clone().unwrap_or_else(|| vec![(0, w.size)]);
        let mut buf = vec![0u8; DATA_PIECE.min(w.size as usize).max(1)];
        for (off, len) in regions {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = read_full_at(&w.file, &mut buf[..want], off + done)
                    .map_err(|e| Failed::Source(format!("read: {e}")))?;
                if n < want {
                    return Err(changed());
                }
                self.data(index, off + done, &buf[..n], hasher)?;
                done += n as u64;
            }
        }
        Ok(Sent::Content)
    }

    fn send_delta(
        &self,
        index: u64,
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
            &w.file,
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
                    // Hashed above: send the bytes without hashing again.
                    self.progress.bytes(c.len() as u64);
                    if self.opts.dry_run {
                        return Ok(());
                    }
                    for (i, piece) in c.chunks(DATA_PIECE).enumerate() {
                        self.out.send(&Message::Data {
                            index,
                            offset: off + (i * DATA_PIECE) as u64,
                            bytes: piece.to_vec(),
                        })?;
                    }
                    Ok(())
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
