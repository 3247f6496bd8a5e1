//! The content of one file as it arrives: its pieces checked
//! ([`Assembly`]), and the leaves the destination writer takes, with the
//! content in memory ([`WireLeaf`]) or streamed from the pipe as it
//! comes ([`StreamLeaf`]).
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;

use haul_formats::wire::Message;

use super::{Awaiting, Old};
use crate::chunk::read_full_at;
use crate::dest::entry::Entry;
use crate::dest::leaf::{DataSink, LeafSource};
use crate::error::StepError;
use crate::meta::Xattrs;
use crate::remote::conn::{Conn, ConnError};
use crate::sys::{self, Stat};

/// The pieces of one file's content as they arrive, checked.
pub(super) struct Assembly {
    index: u64,
    size: u64,
    want: u64,
    next: u64,
    got: u64,
    hasher: blake3::Hasher,
}

/// A piece refused: the session (`Protocol`) or only the entry (`Entry`).
pub(super) enum PieceError {
    Protocol(String),
    Entry(String),
}

impl Assembly {
    pub(super) fn new(a: &Awaiting) -> Assembly {
        Assembly {
            index: a.index,
            size: a.entry.size,
            want: a.want,
            next: 0,
            got: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Checks where a piece of `len` bytes at `offset` goes.
    fn place(&mut self, offset: u64, len: u64) -> Result<(), PieceError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                PieceError::Protocol(format!(
                    "a piece of entry {} at {offset}+{len} passes its size {}",
                    self.index, self.size
                ))
            })?;
        if offset < self.next {
            return Err(PieceError::Protocol(format!(
                "a piece of entry {} at {offset} overlaps the previous one",
                self.index
            )));
        }
        self.got = self.got.saturating_add(len);
        if self.got > self.want {
            return Err(PieceError::Protocol(format!(
                "entry {} got more than its {} bytes of content",
                self.index, self.want
            )));
        }
        self.next = end;
        Ok(())
    }

    /// A Data or Chunk message as (offset, bytes), checked; chunk bytes are
    /// read back from `old` and must hash to their id.
    pub(super) fn piece(
        &mut self,
        m: Message,
        old: &Option<Old>,
    ) -> Result<(u64, Vec<u8>), PieceError> {
        match m {
            Message::Data { offset, bytes, .. } => {
                self.place(offset, bytes.len() as u64)?;
                self.hasher.update(&bytes);
                Ok((offset, bytes))
            }
            Message::Chunk { offset, id, .. } => {
                let Some((f, ids)) = old else {
                    return Err(PieceError::Protocol(format!(
                        "a chunk reference for entry {}, which listed no chunks",
                        self.index
                    )));
                };
                let &(at, len) = ids.get(&id).ok_or_else(|| {
                    PieceError::Protocol(format!(
                        "a chunk reference for entry {} that this side did not list",
                        self.index
                    ))
                })?;
                self.place(offset, len)?;
                let mut b = vec![0u8; len as usize];
                let n = read_full_at(f, &mut b, at)
                    .map_err(|e| PieceError::Entry(format!("reading the old version: {e}")))?;
                if n as u64 != len || *blake3::hash(&b).as_bytes() != id {
                    return Err(PieceError::Entry(
                        "the old version changed while it was reused".into(),
                    ));
                }
                self.hasher.update(&b);
                Ok((offset, b))
            }
            m => Err(PieceError::Protocol(format!(
                "unexpected {} message inside entry {}'s content",
                m.name(),
                self.index
            ))),
        }
    }

    /// The end of the content: all of it came, and it hashes to `digest`.
    pub(super) fn done(&self, digest: &[u8; 32]) -> Result<[u8; 32], PieceError> {
        if self.got != self.want {
            return Err(PieceError::Entry(format!(
                "the content ended after {} of {} bytes",
                self.got, self.want
            )));
        }
        let h = *self.hasher.finalize().as_bytes();
        if &h != digest {
            return Err(PieceError::Entry(
                "the content does not match the sender's blake3".into(),
            ));
        }
        Ok(h)
    }
}

/// What a leaf of the wire writes.
pub(super) enum Body {
    /// The content in DST already is this entry's: only metadata is fixed.
    Same,
    /// A dry run: the content would change.
    Changed,
    /// The content, as (offset, bytes) pieces.
    Pieces(Vec<(u64, Vec<u8>)>),
}

/// A leaf from the wire whose content (if any) is here.
pub(super) struct WireLeaf {
    pub(super) entry: Entry,
    pub(super) xattrs: Xattrs,
    pub(super) target: Vec<u8>,
    pub(super) sparse: bool,
    pub(super) body: Body,
    pub(super) written: std::sync::atomic::AtomicU64,
}

pub(super) fn step(op: &'static str, msg: impl Into<String>) -> StepError {
    StepError {
        op,
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into()),
    }
}

impl LeafSource for WireLeaf {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn same_content(&self, _d: &File, _n: &std::ffi::CStr, _c: &Stat) -> Result<bool, StepError> {
        Ok(matches!(self.body, Body::Same))
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        Ok(self.target.clone())
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(self.xattrs.clone())
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        let Body::Pieces(p) = &self.body else {
            // Never an empty file in place of content: the destination
            // changed between the decision and the write.
            return Err(step(
                "receiving",
                "the destination changed while it was compared",
            ));
        };
        let mut n = 0u64;
        for (off, b) in p {
            out.write_all_at(b, *off).map_err(|e| StepError {
                op: "write",
                err: e,
            })?;
            n += b.len() as u64;
        }
        if self.sparse {
            sys::truncate_fd(out, self.entry.size).map_err(|e| StepError {
                op: "set size",
                err: e,
            })?;
        }
        self.written.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok((self.entry.clone(), self.xattrs.clone()))
    }

    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        if let Body::Pieces(p) = &self.body {
            for (off, b) in p {
                each(*off, b)?;
            }
        }
        Ok(())
    }
}

/// The receiver's state shared with a streamed leaf: the pipe and the
/// messages for other entries that came while it was being written.
pub(super) struct Inbox<'c> {
    pub(super) conn: &'c Conn,
    pub(super) backlog: RefCell<VecDeque<Message>>,
    pub(super) fatal: RefCell<Option<ConnError>>,
}

impl Inbox<'_> {
    pub(super) fn next(&self) -> Result<Message, ConnError> {
        if let Some(m) = self.backlog.borrow_mut().pop_front() {
            return Ok(m);
        }
        self.conn.recv()
    }

    /// Reads past the rest of entry `index`'s content, to its FileDone or
    /// Error, from the pipe (the backlog never holds content); other
    /// messages are kept in the backlog, in order.
    pub(super) fn skip_content(&self, index: u64) -> Result<(), ConnError> {
        loop {
            match self.conn.recv()? {
                Message::Data { index: i, .. } | Message::Chunk { index: i, .. } if i == index => {}
                Message::FileDone { index: i, .. } | Message::Error { index: Some(i), .. }
                    if i == index =>
                {
                    return Ok(())
                }
                m @ (Message::Entry(_) | Message::QueryReply { .. } | Message::EndOfList) => {
                    self.backlog.borrow_mut().push_back(m)
                }
                m => {
                    return Err(ConnError::Wire(format!(
                        "unexpected {} message inside entry {index}'s content",
                        m.name()
                    )))
                }
            }
        }
    }
}

/// A large file, written as its pieces arrive.
pub(super) struct StreamLeaf<'i, 'c> {
    pub(super) entry: Entry,
    pub(super) xattrs: Xattrs,
    pub(super) sparse: bool,
    pub(super) inbox: &'i Inbox<'c>,
    pub(super) asm: RefCell<Assembly>,
    pub(super) first: RefCell<Option<Message>>,
    pub(super) old: Option<Old>,
    /// The content's digest once complete.
    pub(super) digest: RefCell<Option<[u8; 32]>>,
    pub(super) written: RefCell<u64>,
    /// The content's last message (FileDone or Error) was read.
    pub(super) consumed: std::cell::Cell<bool>,
}

impl LeafSource for StreamLeaf<'_, '_> {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn same_content(&self, _d: &File, _n: &std::ffi::CStr, _c: &Stat) -> Result<bool, StepError> {
        Ok(false)
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        Ok(Vec::new())
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        Ok(self.xattrs.clone())
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        let index = self.asm.borrow().index;
        loop {
            let m = match self.first.borrow_mut().take() {
                Some(m) => m,
                None => match self.inbox.conn.recv() {
                    Ok(m) => m,
                    Err(e) => {
                        *self.inbox.fatal.borrow_mut() = Some(e);
                        return Err(step("receiving", "the session ended"));
                    }
                },
            };
            match &m {
                Message::Data { index: i, .. } | Message::Chunk { index: i, .. } if *i == index => {
                    let r = self.asm.borrow_mut().piece(m, &self.old);
                    match r {
                        Ok((off, b)) => {
                            out.write_all_at(&b, off).map_err(|e| StepError {
                                op: "write",
                                err: e,
                            })?;
                            *self.written.borrow_mut() += b.len() as u64;
                        }
                        Err(e) => return Err(self.refuse(e)),
                    }
                }
                Message::FileDone { index: i, blake3 } if *i == index => {
                    self.consumed.set(true);
                    match self.asm.borrow().done(blake3) {
                        Ok(h) => *self.digest.borrow_mut() = Some(h),
                        Err(e) => return Err(self.refuse(e)),
                    }
                    break;
                }
                Message::Error {
                    index: Some(i),
                    message,
                } if *i == index => {
                    self.consumed.set(true);
                    return Err(step("on the sending side", message.clone()));
                }
                Message::Entry(_) | Message::QueryReply { .. } | Message::EndOfList => {
                    self.inbox.backlog.borrow_mut().push_back(m)
                }
                m => {
                    return Err(self.refuse(PieceError::Protocol(format!(
                        "unexpected {} message inside entry {index}'s content",
                        m.name()
                    ))))
                }
            }
        }
        if self.sparse {
            sys::truncate_fd(out, self.entry.size).map_err(|e| StepError {
                op: "set size",
                err: e,
            })?;
        }
        Ok((self.entry.clone(), self.xattrs.clone()))
    }

    fn read_data(&self, _each: &mut DataSink<'_>) -> Result<(), StepError> {
        Err(step("receiving", "a streamed file is read once"))
    }
}

impl StreamLeaf<'_, '_> {
    fn refuse(&self, e: PieceError) -> StepError {
        match e {
            PieceError::Protocol(m) => {
                *self.inbox.fatal.borrow_mut() = Some(ConnError::Wire(m.clone()));
                step("receiving", m)
            }
            PieceError::Entry(m) => {
                // The rest of this entry's content may still be on its way.
                if !self.consumed.get() {
                    *self.inbox.fatal.borrow_mut() = self.skip_rest().err();
                }
                step("receiving", m)
            }
        }
    }

    /// Reads past the rest of this entry's pieces, to its FileDone.
    fn skip_rest(&self) -> Result<(), ConnError> {
        self.inbox.skip_content(self.asm.borrow().index)?;
        self.consumed.set(true);
        Ok(())
    }
}
