//! The zip reader: the central directory streamed on a thread of its own,
//! each member's data read by position and checked as it inflates.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use haul_formats::zipfmt::{
    decode_timestamp, decode_unix_ids, dos_to_unix, fields, parse_local, HaulExtra, HaulKind,
    HAUL_ID, TIMESTAMP_ID, UNIX_ID,
};

use crate::archive::{Member, MemberRead, ReadError};
use crate::dest::entry::Entry;
use crate::error::Error;
use crate::meta::FileKind;

const STORE: u16 = 0;
const DEFLATE: u16 = 8;
const ZSTD: u16 = 93;
/// Longest symlink target read (PATH_MAX).
const MAX_TARGET: u64 = 4096;

/// A member as the directory thread hands it over.
struct Record {
    member: Member,
    name: String,
    method: u16,
    crc: u32,
    body: u64,
    csize: u64,
    usize: u64,
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Opens a zip file as a stream of members.
pub(crate) fn open(p: &Path, _jobs: usize) -> Result<Box<dyn MemberRead>, Error> {
    let file = File::open(p).map_err(|e| Error::io("opening archive", p, e))?;
    let dup = |f: &File| {
        f.try_clone()
            .map_err(|e| Error::io("opening archive", p, e))
    };
    let mut buf = vec![0u8; rawzip::RECOMMENDED_BUFFER_SIZE];
    let archive = rawzip::ZipArchive::from_file(dup(&file)?, &mut buf).map_err(|e| {
        Error::io(
            "reading archive",
            p,
            bad(format!("not a readable zip: {e}")),
        )
    })?;
    let (tx, rx) = bounded(256);
    let local = dup(&file)?;
    std::thread::Builder::new()
        .name("zip-directory".into())
        .spawn(move || directory(&archive, &local, buf, &tx))
        .map_err(|e| Error::io("starting the zip reader", p, e))?;
    Ok(Box::new(ZipMembers {
        file: Arc::new(file),
        rx,
        cur: None,
    }))
}

/// Data ranges of the members handed out so far: to refuse one that
/// overlaps another. That is how Fifield's zip bomb ("A better zip bomb",
/// 2019) gets its ratio: many central records whose data overlap one
/// kernel. Members usually come in file order, kept in `sorted`; the rest
/// in a tree. Ranges kept never overlap, so the one starting last before
/// a range's end is the only candidate.
#[derive(Default)]
struct Ranges {
    sorted: Vec<(u64, u64)>,
    others: BTreeMap<u64, u64>,
}

impl Ranges {
    fn overlaps(&self, s: u64, e: u64) -> bool {
        let i = self.sorted.partition_point(|&(a, _)| a < e);
        (i > 0 && self.sorted[i - 1].1 > s)
            || self
                .others
                .range(..e)
                .next_back()
                .is_some_and(|(_, &end)| end > s)
    }

    fn insert(&mut self, s: u64, e: u64) {
        match self.sorted.last() {
            Some(&(a, _)) if a > s => {
                self.others.insert(s, e);
            }
            _ => self.sorted.push((s, e)),
        }
    }
}

/// Streams the central directory, checking each record against its local
/// header, and hands the members over in directory order.
fn directory(
    archive: &rawzip::ZipArchive<rawzip::FileReader>,
    file: &File,
    mut buf: Vec<u8>,
    tx: &Sender<Result<Record, ReadError>>,
) {
    let cd_start = archive.directory_offset();
    let mut ranges = Ranges::default();
    let mut entries = archive.entries(&mut buf);
    loop {
        let r = match entries.next_entry() {
            Ok(Some(h)) => record(&h, file, cd_start, &mut ranges),
            Ok(None) => return,
            Err(e) => Err(ReadError::Archive(format!(
                "damaged central directory: {e}"
            ))),
        };
        let end = matches!(r, Err(ReadError::Archive(_)));
        if tx.send(r).is_err() || end {
            return;
        }
    }
}

fn record(
    h: &rawzip::ZipFileHeaderRecord<'_>,
    file: &File,
    cd_start: u64,
    ranges: &mut Ranges,
) -> Result<Record, ReadError> {
    let path = h.file_path();
    let raw_name: &[u8] = path.as_ref();
    let name = String::from_utf8_lossy(raw_name).into_owned();
    let err = |what: String| ReadError::Member(format!("{name}: {what}"));
    let method = h.compression_method().as_u16();
    let flags = h.flags().bits();
    let (crc, csize, usize) = (
        h.crc32(),
        h.compressed_size_hint(),
        h.uncompressed_size_hint(),
    );
    let offset = h.local_header_offset();
    if flags & 1 != 0 {
        return Err(err("encrypted members are not supported".into()));
    }
    // Parser differential: the local header must say what the central
    // directory says (a reader that trusts the local one would see
    // another name or size than a reader that trusts the directory).
    let mut fixed = [0u8; 30];
    file.read_exact_at(&mut fixed, offset)
        .map_err(|e| err(format!("reading its local header at {offset}: {e}")))?;
    let l =
        parse_local(&fixed).ok_or_else(|| err(format!("no local header at offset {offset}")))?;
    let mut lname = vec![0u8; usize::from(l.name_len)];
    file.read_exact_at(&mut lname, offset + 30)
        .map_err(|e| err(format!("reading its local header: {e}")))?;
    if lname != raw_name {
        return Err(err(format!(
            "its local header names it {:?}: it disagrees with the central directory",
            String::from_utf8_lossy(&lname)
        )));
    }
    if l.method != method {
        return Err(err(format!(
            "its local header says compression method {}, the central directory {method}",
            l.method
        )));
    }
    if l.flags & 8 == 0 {
        let sizes_differ = (l.csize != u32::MAX && u64::from(l.csize) != csize)
            || (l.usize != u32::MAX && u64::from(l.usize) != usize);
        if sizes_differ || l.crc != crc {
            return Err(err(format!(
                "its local header says {} bytes ({} compressed, CRC {:08x}), the central \
                 directory {usize} ({csize}, {crc:08x})",
                l.usize, l.csize, l.crc
            )));
        }
    }
    let body = offset + 30 + u64::from(l.name_len) + u64::from(l.extra_len);
    let end = body
        .checked_add(csize)
        .filter(|&e| e <= cd_start)
        .ok_or_else(|| err("its data runs into the central directory".into()))?;
    if ranges.overlaps(offset, end) {
        return Err(err(
            "its data overlaps another member's (an overlapping-entry zip bomb)".into(),
        ));
    }
    ranges.insert(offset, end);

    // The member as zip says it.
    let made_by_unix = h.version_made_by().as_u16() >> 8 == 3;
    let external = h.external_attributes();
    let mode = external >> 16;
    let unix = made_by_unix && mode != 0;
    let ifmt = mode & 0o170_000;
    let is_dir =
        raw_name.ends_with(b"/") || (unix && ifmt == 0o040_000) || (!unix && external & 0x10 != 0);
    let kind = if is_dir {
        FileKind::Dir
    } else if unix && ifmt == 0o120_000 {
        FileKind::Symlink
    } else {
        FileKind::File
    };
    let perm = match (unix, is_dir) {
        (true, _) => mode & 0o7777,
        (false, true) => 0o755,
        (false, false) => 0o644,
    };
    let d = h.last_modified_dos();
    let dos = dos_to_unix(
        u16::from(d.hour()) << 11 | u16::from(d.minute()) << 5 | (u16::from(d.second()) / 2),
        d.year().saturating_sub(1980) << 9 | u16::from(d.month()) << 5 | u16::from(d.day()),
    );
    let mut entry = Entry {
        kind,
        perm,
        uid: 0,
        gid: 0,
        size: if kind == FileKind::File { usize } else { 0 },
        rdev: 0,
        atime: (dos, 0),
        mtime: (dos, 0),
        attrs: 0,
        link: None,
    };
    let mut member = Member {
        path: raw_name.to_vec(),
        entry: entry.clone(),
        xattrs: Vec::new(),
        target: Vec::new(),
        hardlink: None,
        sparse: None,
    };
    let mut haul = None;
    for (id, data) in fields(h.extra_fields().remaining_bytes()) {
        match id {
            UNIX_ID => {
                let (u, g) = decode_unix_ids(data).map_err(|e| err(e.to_string()))?;
                entry.uid =
                    u32::try_from(u).map_err(|_| err(format!("uid {u} is out of range")))?;
                entry.gid =
                    u32::try_from(g).map_err(|_| err(format!("gid {g} is out of range")))?;
            }
            TIMESTAMP_ID => {
                if let Ok((m, a)) = decode_timestamp(data) {
                    if let Some(m) = m {
                        entry.mtime = (m, 0);
                        entry.atime = (m, 0);
                    }
                    if let Some(a) = a {
                        entry.atime = (a, 0);
                    }
                }
            }
            HAUL_ID => haul = Some(HaulExtra::decode(data).map_err(|e| err(e.to_string()))?),
            _ => {}
        }
    }
    if let Some(x) = haul {
        entry.mtime = (x.mtime.0, i64::from(x.mtime.1));
        entry.atime = (x.atime.0, i64::from(x.atime.1));
        let special = |k| {
            if kind == FileKind::File {
                Ok(k)
            } else {
                Err(err(
                    "haul's field makes a directory or symlink a special file".into(),
                ))
            }
        };
        match x.kind {
            HaulKind::Plain => {}
            HaulKind::CharDev => entry.kind = special(FileKind::CharDev)?,
            HaulKind::BlockDev => entry.kind = special(FileKind::BlockDev)?,
            HaulKind::Fifo => entry.kind = special(FileKind::Fifo)?,
            HaulKind::Hardlink => {
                special(FileKind::File)?;
                member.hardlink = Some(x.link);
            }
        }
        if entry.kind != FileKind::File || member.hardlink.is_some() {
            entry.size = 0;
            entry.rdev = x.rdev;
        } else if let Some(r) = x.regions {
            if r.last().is_some_and(|&(o, l)| o + l > usize) {
                return Err(err("its data regions run past its size".into()));
            }
            member.sparse = Some(r);
        }
        member.xattrs = x
            .xattrs
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), v))
            .collect();
    }
    member.entry = entry;
    Ok(Record {
        member,
        name,
        method,
        crc,
        body,
        csize,
        usize,
    })
}

/// A member's compressed bytes, read by position.
struct RangeRead {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for RangeRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside the member's data",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The current member's data, checked as it is read.
struct Current {
    name: String,
    dec: Box<dyn Read + Send>,
    declared: u64,
    produced: u64,
    crc: crc32fast::Hasher,
    want_crc: u32,
    regions: Option<Vec<(u64, u64)>>,
}

impl Current {
    fn err(&self, what: impl std::fmt::Display) -> ReadError {
        ReadError::Member(format!("{}: {what}", self.name))
    }

    /// The inflated stream, never past the declared size (a bomb that
    /// lies about its size stops here), its CRC checked at the end.
    fn raw(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.declared - self.produced;
        let lim = (buf.len() as u64).min(room.saturating_add(1)) as usize;
        let n = loop {
            match self.dec.read(&mut buf[..lim]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(format!("inflating: {e}"))),
            }
        };
        if n as u64 > room {
            return Err(self.err(format!(
                "its data inflates past its declared size of {} bytes",
                self.declared
            )));
        }
        self.crc.update(&buf[..n]);
        self.produced += n as u64;
        if n == 0 {
            if self.produced < self.declared {
                return Err(self.err(format!(
                    "its data ends after {} of its {} bytes",
                    self.produced, self.declared
                )));
            }
            let got = self.crc.clone().finalize();
            if got != self.want_crc {
                return Err(self.err(format!(
                    "CRC mismatch: the data gives {got:08x}, the archive says {:08x}",
                    self.want_crc
                )));
            }
        }
        Ok(n)
    }

    /// Skips `n` bytes of a hole, which must be zeros.
    fn skip_hole(&mut self, mut n: u64) -> Result<bool, ReadError> {
        let mut scratch = vec![0u8; (64 << 10).min(n.max(1) as usize)];
        while n > 0 {
            let k = (scratch.len() as u64).min(n) as usize;
            let got = self.raw(&mut scratch[..k])?;
            if got == 0 {
                return Ok(false);
            }
            if scratch[..got].iter().any(|&b| b != 0) {
                return Err(self.err("data where haul's field says there is a hole"));
            }
            n -= got as u64;
        }
        Ok(true)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let Some(regions) = &self.regions else {
            return self.raw(buf);
        };
        let pos = self.produced;
        match regions.iter().find(|&&(o, l)| o + l > pos).copied() {
            Some((off, len)) => {
                if pos < off && !self.skip_hole(off - pos)? {
                    return Ok(0);
                }
                let k = (buf.len() as u64).min(off + len - self.produced) as usize;
                self.raw(&mut buf[..k])
            }
            None => {
                // The trailing hole, then the end checks.
                let rest = self.declared - pos;
                self.skip_hole(rest)?;
                self.raw(&mut [0u8; 1])
            }
        }
    }
}

/// Members of a zip file.
struct ZipMembers {
    file: Arc<File>,
    rx: Receiver<Result<Record, ReadError>>,
    cur: Option<Current>,
}

impl ZipMembers {
    fn start(&self, r: &Record) -> Result<Current, ReadError> {
        let range = RangeRead {
            file: self.file.clone(),
            pos: r.body,
            end: r.body + r.csize,
        };
        let src = BufReader::with_capacity(256 << 10, range);
        let dec: Box<dyn Read + Send> = match r.method {
            STORE => Box::new(src),
            DEFLATE => Box::new(flate2::bufread::DeflateDecoder::new(src)),
            ZSTD => {
                let mut d = zstd::stream::read::Decoder::with_buffer(src)
                    .map_err(|e| ReadError::Member(format!("{}: zstd: {e}", r.name)))?;
                // A frame may ask for a window this big, no bigger: memory
                // stays bounded whatever the archive says.
                d.window_log_max(25)
                    .map_err(|e| ReadError::Member(format!("{}: zstd: {e}", r.name)))?;
                Box::new(d)
            }
            m => {
                return Err(ReadError::Member(format!(
                    "{}: compression method {m} is not supported (haul reads store, deflate \
                     and zstd)",
                    r.name
                )))
            }
        };
        Ok(Current {
            name: r.name.clone(),
            dec,
            declared: r.usize,
            produced: 0,
            crc: crc32fast::Hasher::new(),
            want_crc: r.crc,
            regions: r.member.sparse.clone(),
        })
    }
}

impl MemberRead for ZipMembers {
    fn next_member(&mut self) -> Result<Option<Member>, ReadError> {
        self.cur = None;
        let r = match self.rx.recv() {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        let mut m = r.member.clone();
        if m.hardlink.is_some() || !matches!(m.entry.kind, FileKind::File | FileKind::Symlink) {
            return Ok(Some(m));
        }
        let mut cur = self.start(&r)?;
        if m.entry.kind == FileKind::Symlink {
            if r.usize > MAX_TARGET {
                return Err(cur.err("symlink target longer than PATH_MAX"));
            }
            let mut t = vec![0u8; r.usize as usize + 1];
            let mut got = 0;
            loop {
                let n = cur.raw(&mut t[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            t.truncate(got);
            m.target = t;
            return Ok(Some(m));
        }
        self.cur = Some(cur);
        Ok(Some(m))
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match &mut self.cur {
            Some(c) => c.read(buf),
            None => Ok(0),
        }
    }
}
