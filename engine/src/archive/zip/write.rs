//! The zip writer: pieces compressed on the pool, written in order.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use flate2::{Compress, Compression, FlushCompress, Status};
use haul_formats::zipfmt::{
    data_descriptor, dos_datetime, encode_timestamp, encode_unix_ids, end_records, EntryHeader,
    HaulExtra, HaulKind, FLAG_DESCRIPTOR, FLAG_UTF8,
};

use super::PIECE;
use crate::archive::{ArchiveOptions, DataFill, Member, MemberWrite, ZipCompression};
use crate::meta::FileKind;

const STORE: u16 = 0;
const DEFLATE: u16 = 8;
const ZSTD: u16 = 93;

/// Raw bytes handed to the pool and not yet written: the bound on what
/// compression holds in memory.
const IN_FLIGHT: usize = 24 << 20;
/// Members queued behind a piece still being compressed.
const QUEUED: usize = 4096;
/// Members this big or bigger get zip64 sizes in their descriptor: a
/// deflate stream may grow a little past its input.
const ZIP64_AT: u64 = 0xF000_0000;

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// One compressed piece.
struct Piece {
    data: Vec<u8>,
    crc: crc32fast::Hasher,
    raw_len: u64,
    method: u16,
}

/// Compresses `raw` as one piece; `last` ends the stream (else a deflate
/// sync flush ends it on a byte boundary, so pieces concatenate).
fn compress(raw: &[u8], method: u16, level: i32, last: bool, may_store: bool) -> io::Result<Piece> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(raw);
    let data = match method {
        DEFLATE => {
            let mut c = Compress::new(Compression::new(level.clamp(0, 9) as u32), false);
            let mut out = Vec::with_capacity(raw.len() / 2 + 128);
            let flush = if last {
                FlushCompress::Finish
            } else {
                FlushCompress::Sync
            };
            loop {
                if out.capacity() - out.len() < 64 {
                    out.reserve(out.capacity().max(4096));
                }
                let at = c.total_in() as usize;
                let st = c
                    .compress_vec(&raw[at..], &mut out, flush)
                    .map_err(io::Error::other)?;
                let all_in = c.total_in() as usize == raw.len();
                // Done when the stream ended, or (sync) when all input is in
                // and the compressor left room: it had nothing more to say.
                if st == Status::StreamEnd || (!last && all_in && out.len() < out.capacity()) {
                    break;
                }
            }
            out
        }
        ZSTD => zstd::bulk::compress(raw, level)?,
        _ => raw.to_vec(),
    };
    if may_store && method != STORE && data.len() >= raw.len() {
        return Ok(Piece {
            data: raw.to_vec(),
            crc,
            raw_len: raw.len() as u64,
            method: STORE,
        });
    }
    Ok(Piece {
        data,
        crc,
        raw_len: raw.len() as u64,
        method,
    })
}

/// A member's headers, but for its sizes, CRC and offset.
struct Head {
    hdr: EntryHeader,
    external: u32,
    local_extra: Vec<u8>,
    central_extra: Vec<u8>,
    /// Big member: data descriptor, zip64 sizes in it if `zip64`.
    zip64: bool,
}

enum Data {
    Ready(Piece),
    Job(Receiver<io::Result<Piece>>),
}

/// What is queued to be written, in archive order.
enum Pending {
    /// A member written whole: header (sizes from the piece) and data.
    Whole(Box<Head>, Data),
    /// A big member's local header (data descriptor follows).
    Start(Box<Head>),
    /// One of its pieces.
    Piece(Data),
    /// Its data descriptor and central record.
    End,
}

/// The big member being written.
struct Open {
    head: Box<Head>,
    offset: u64,
    crc: crc32fast::Hasher,
    csize: u64,
    usize: u64,
}

/// Writes members as a zip file.
pub(crate) struct ZipSink<W: Write> {
    w: W,
    /// Bytes written so far: the next local header's offset.
    offset: u64,
    method: u16,
    level: i32,
    /// The central directory, spooled.
    cd: Option<BufWriter<File>>,
    cd_len: u64,
    entries: u64,
    queue: VecDeque<Pending>,
    in_flight: usize,
    open: Option<Open>,
}

impl<W: Write> ZipSink<W> {
    pub(crate) fn new(w: W, opts: &ArchiveOptions) -> ZipSink<W> {
        let (method, level) = match opts.zip_compression {
            ZipCompression::Deflate => (DEFLATE, opts.level.unwrap_or(6)),
            ZipCompression::Zstd => (ZSTD, opts.level.unwrap_or(3)),
            ZipCompression::Store => (STORE, 0),
        };
        ZipSink {
            w,
            offset: 0,
            method,
            level,
            cd: None,
            cd_len: 0,
            entries: 0,
            queue: VecDeque::new(),
            in_flight: 0,
            open: None,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn central(&mut self, head: &Head, offset: u64) -> io::Result<()> {
        let rec = head.hdr.central(head.external, offset, &head.central_extra);
        if self.cd.is_none() {
            self.cd = Some(BufWriter::with_capacity(1 << 16, tempfile::tempfile()?));
        }
        self.cd.as_mut().expect("spool").write_all(&rec)?;
        self.cd_len += rec.len() as u64;
        self.entries += 1;
        Ok(())
    }

    /// Waits for a piece, helping the pool meanwhile: this thread is one
    /// of the pool's, and with one worker nobody else would run the job.
    fn wait(rx: &Receiver<io::Result<Piece>>) -> io::Result<Piece> {
        loop {
            match rx.try_recv() {
                Ok(p) => return p,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("a compression job ended without a result"))
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                match rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(p) => return p,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(_) => {
                        return Err(io::Error::other("a compression job ended without a result"))
                    }
                }
            }
        }
    }

    /// Writes the front of the queue; waits for it if `block`. Returns
    /// whether something was written.
    fn write_front(&mut self, block: bool) -> io::Result<bool> {
        let ready = match self.queue.front() {
            None => return Ok(false),
            Some(Pending::Whole(_, Data::Job(rx)) | Pending::Piece(Data::Job(rx))) => {
                !rx.is_empty()
            }
            Some(_) => true,
        };
        if !ready && !block {
            return Ok(false);
        }
        let take = |d: Data| match d {
            Data::Ready(p) => Ok(p),
            Data::Job(rx) => Self::wait(&rx),
        };
        match self.queue.pop_front().expect("front") {
            Pending::Whole(mut head, d) => {
                let p = take(d)?;
                self.in_flight -= p.raw_len as usize;
                head.hdr.method = p.method;
                head.hdr.crc = p.crc.finalize();
                head.hdr.csize = p.data.len() as u64;
                head.hdr.usize = p.raw_len;
                let offset = self.offset;
                self.put(&head.hdr.local(false, &head.local_extra))?;
                self.put(&p.data)?;
                self.central(&head, offset)?;
            }
            Pending::Start(head) => {
                let offset = self.offset;
                self.put(&head.hdr.local(head.zip64, &head.local_extra))?;
                self.open = Some(Open {
                    head,
                    offset,
                    crc: crc32fast::Hasher::new(),
                    csize: 0,
                    usize: 0,
                });
            }
            Pending::Piece(d) => {
                let p = take(d)?;
                self.in_flight -= p.raw_len as usize;
                self.put(&p.data)?;
                let o = self.open.as_mut().expect("a piece follows its start");
                o.crc.combine(&p.crc);
                o.csize += p.data.len() as u64;
                o.usize += p.raw_len;
            }
            Pending::End => {
                let mut o = self.open.take().expect("an end follows its start");
                let crc = o.crc.finalize();
                self.put(&data_descriptor(crc, o.csize, o.usize, o.head.zip64))?;
                o.head.hdr.crc = crc;
                o.head.hdr.csize = o.csize;
                o.head.hdr.usize = o.usize;
                self.central(&o.head, o.offset)?;
            }
        }
        Ok(true)
    }

    /// Queues `p`, first writing what is done and, past the bounds,
    /// waiting for the oldest work.
    fn push(&mut self, p: Pending, raw: usize) -> io::Result<()> {
        while self.write_front(false)? {}
        while !self.queue.is_empty()
            && (self.in_flight + raw > IN_FLIGHT || self.queue.len() >= QUEUED)
        {
            self.write_front(true)?;
        }
        self.in_flight += raw;
        self.queue.push_back(p);
        Ok(())
    }

    /// Queues the compression of `raw` (on the pool unless it is empty).
    fn piece(
        &mut self,
        raw: Vec<u8>,
        method: u16,
        last: bool,
        whole: Option<Box<Head>>,
    ) -> io::Result<()> {
        let len = raw.len();
        let level = self.level;
        let may_store = whole.is_some();
        let data = if raw.is_empty() || (method == STORE && whole.is_some()) {
            Data::Ready(compress(&raw, method, level, last, may_store)?)
        } else {
            let (tx, rx) = bounded(1);
            rayon::spawn(move || {
                let _ = tx.send(compress(&raw, method, level, last, may_store));
            });
            Data::Job(rx)
        };
        let p = match whole {
            Some(h) => Pending::Whole(h, data),
            None => Pending::Piece(data),
        };
        self.push(p, len)
    }

    fn head(&self, m: &Member, method: u16, big: bool, zip64: bool) -> io::Result<Box<Head>> {
        let e = &m.entry;
        let mut name = m.path.clone();
        let kind = if m.hardlink.is_some() {
            HaulKind::Hardlink
        } else {
            match e.kind {
                FileKind::CharDev => HaulKind::CharDev,
                FileKind::BlockDev => HaulKind::BlockDev,
                FileKind::Fifo => HaulKind::Fifo,
                _ => HaulKind::Plain,
            }
        };
        let ifmt = match (e.kind, kind) {
            (FileKind::Dir, _) => S_IFDIR,
            (FileKind::Symlink, HaulKind::Plain) => S_IFLNK,
            _ => S_IFREG,
        };
        if ifmt == S_IFDIR && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let mut flags = if big { FLAG_DESCRIPTOR } else { 0 };
        if !name.is_ascii() && std::str::from_utf8(&name).is_ok() {
            flags |= FLAG_UTF8;
        }
        let (dos_time, dos_date) = dos_datetime(e.mtime.0);
        let ux = encode_unix_ids(e.uid, e.gid);
        let ut = encode_timestamp(e.mtime.0, None).unwrap_or_default();
        let haul = HaulExtra {
            kind,
            mtime: (e.mtime.0, e.mtime.1 as u32),
            atime: (e.atime.0, e.atime.1 as u32),
            rdev: e.rdev,
            link: m.hardlink.clone().unwrap_or_default(),
            regions: if kind == HaulKind::Plain && e.kind == FileKind::File {
                m.sparse.clone()
            } else {
                None
            },
            xattrs: m
                .xattrs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        }
        .encode()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let local_extra = [&ut[..], &ux[..]].concat();
        let central_extra = [&ut[..], &ux[..], &haul[..]].concat();
        if central_extra.len() > 0xFFFF - 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "its extended attributes or holes do not fit a zip extra field (64 KiB)",
            ));
        }
        Ok(Box::new(Head {
            hdr: EntryHeader {
                version_needed: if zip64 { 45 } else { 20 },
                flags,
                method,
                dos_time,
                dos_date,
                crc: 0,
                csize: 0,
                usize: 0,
                name,
            },
            external: (ifmt | (e.perm & 0o7777)) << 16 | if ifmt == S_IFDIR { 0x10 } else { 0 },
            local_extra,
            central_extra,
            zip64,
        }))
    }
}

/// Turns the data stream of a sparse member (its regions, concatenated)
/// into the whole file, holes as zeros.
struct Expand<'a> {
    regions: &'a [(u64, u64)],
    /// Index of the region being filled, and bytes of it done.
    at: usize,
    done: u64,
    /// Position in the whole file.
    pos: u64,
}

impl Expand<'_> {
    /// Feeds `b` (region bytes) and emits the file's bytes to `out`,
    /// zeros for each hole before a region.
    fn feed(
        &mut self,
        mut b: &[u8],
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        while !b.is_empty() && self.at < self.regions.len() {
            let (off, len) = self.regions[self.at];
            if self.pos < off {
                zeros(off - self.pos, out)?;
                self.pos = off;
            }
            let n = (len - self.done).min(b.len() as u64) as usize;
            out(&b[..n])?;
            b = &b[n..];
            self.done += n as u64;
            self.pos += n as u64;
            if self.done == len {
                self.at += 1;
                self.done = 0;
            }
        }
        Ok(())
    }
}

fn zeros(mut n: u64, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    static Z: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(Z.len() as u64) as usize;
        out(&Z[..k])?;
        n -= k as u64;
    }
    Ok(())
}

impl<W: Write> MemberWrite for ZipSink<W> {
    fn add(&mut self, m: &Member, data: &mut DataFill<'_>) -> io::Result<()> {
        let e = &m.entry;
        let has_data = m.hardlink.is_none() && matches!(e.kind, FileKind::File | FileKind::Symlink);
        // The bytes the member will hold: a sparse file's whole size.
        let want = match e.kind {
            _ if !has_data => 0,
            FileKind::Symlink => m.target.len() as u64,
            _ => e.size,
        };
        let mut method = if want == 0 { STORE } else { self.method };
        if method == STORE && m.sparse.is_some() && want > 0 {
            method = DEFLATE;
        }
        if e.kind == FileKind::Symlink && m.hardlink.is_none() {
            let h = self.head(m, STORE, false, false)?;
            let p = compress(&m.target, STORE, 0, true, false)?;
            return self.push(Pending::Whole(h, Data::Ready(p)), m.target.len());
        }
        let big = want > PIECE as u64;
        let head = self.head(m, method, big, big && want >= ZIP64_AT)?;
        if !has_data {
            let p = compress(&[], STORE, 0, true, false)?;
            return self.push(Pending::Whole(head, Data::Ready(p)), 0);
        }
        let mut whole = None;
        if big {
            self.push(Pending::Start(head), 0)?;
        } else {
            whole = Some(head);
        }
        let mut buf: Vec<u8> = Vec::with_capacity((want as usize).min(PIECE));
        let mut got = 0u64;
        let mut err: Option<io::Error> = None;
        {
            let mut emit = |b: &[u8]| -> io::Result<()> {
                let mut b = &b[..(want - got).min(b.len() as u64) as usize];
                while !b.is_empty() {
                    if buf.len() == PIECE {
                        // More follows: this piece is not the last.
                        let full = std::mem::replace(&mut buf, Vec::with_capacity(PIECE));
                        self.piece(full, method, false, None)?;
                    }
                    let n = (PIECE - buf.len()).min(b.len());
                    buf.extend_from_slice(&b[..n]);
                    got += n as u64;
                    b = &b[n..];
                }
                Ok(())
            };
            let r = match &m.sparse {
                Some(regions) => {
                    let mut x = Expand {
                        regions,
                        at: 0,
                        done: 0,
                        pos: 0,
                    };
                    data(&mut |b| x.feed(b, &mut emit))
                }
                None => data(&mut |b| emit(b)),
            };
            if let Err(e) = r {
                err = Some(e);
            }
            // The trailing hole of a sparse file.
            if err.is_none() && m.sparse.is_some() {
                if let Err(e) = zeros(want, &mut emit) {
                    err = Some(e);
                }
            }
        }
        if let Some(e) = err {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return Err(e);
            }
        }
        self.piece(buf, method, true, whole.take())?;
        if big {
            self.push(Pending::End, 0)?;
        }
        if got < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file shrank while it was read: archived its first {got} of {want} bytes"),
            ));
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<u64> {
        let mut me = *self;
        while me.write_front(true)? {}
        let cd_offset = me.offset;
        let mut buf = vec![0u8; 1 << 16];
        if let Some(cd) = me.cd.take() {
            let mut cd = cd.into_inner().map_err(|e| e.into_error())?;
            cd.seek(SeekFrom::Start(0))?;
            loop {
                let n = cd.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                me.w.write_all(&buf[..n])?;
                me.offset += n as u64;
            }
        }
        let end = end_records(me.entries, cd_offset, me.cd_len);
        me.w.write_all(&end)?;
        me.offset += end.len() as u64;
        me.w.flush()?;
        Ok(me.offset)
    }
}
