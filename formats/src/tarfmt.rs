//! Tar streams: PAX (POSIX.1-2001) as GNU tar writes it with `--xattrs
//! --acls -S`, read and written one member at a time.
//!
//! The `tar` crate's [`tar::Header`] encodes and decodes the 512-byte
//! headers (numbers, checksums, the ustar prefix); the stream around them is
//! framed here, because an archive comes from another host and its reader
//! must bound what it allocates. tar-rs reads a PAX or GNU long-name record
//! of any declared size into memory; here such records are capped
//! ([`MAX_EXTENSION`]), as are sparse maps ([`MAX_SPARSE_REGIONS`]).
//!
//! Where the crate has no writer (GNU sparse 1.0's map, written at the start
//! of a member's data) the codec is here, pinned by golden vectors.
//!
//! Parser differentials (a PAX `size` against the ustar one, a PAX `path`
//! against the header's) are settled as GNU tar settles them: the PAX
//! record wins, and the next header is looked for where the PAX size ends.
use std::io::{self, Read, Write};

use tar::{EntryType, Header};

/// The tar block size.
pub const BLOCK: usize = 512;
/// The largest PAX extended header or GNU long name/link record read.
/// xattrs travel in PAX records; Linux caps one value at 64 KiB and a
/// file's list at 64 KiB of names, so a few MiB is ample.
pub const MAX_EXTENSION: u64 = 8 << 20;
/// The most data regions a sparse member may declare.
pub const MAX_SPARSE_REGIONS: u64 = 1 << 20;

/// Errors reading or writing a tar stream. Each names the member (or the
/// byte offset where no member is known yet).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The underlying reader or writer failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a header or a member's data.
    #[error("truncated archive: the stream ends inside {0}")]
    Truncated(String),
    /// A header block whose checksum does not match.
    #[error("damaged header at byte {0}: checksum mismatch (not a tar archive, or corrupt)")]
    BadChecksum(u64),
    /// A header field that does not parse.
    #[error("damaged header at byte {offset}: {what}")]
    BadHeader {
        /// Offset of the header block.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A record larger than this reader accepts.
    #[error("{what} of {size} bytes at byte {offset} is over the {max} bytes accepted")]
    TooLarge {
        /// The record kind.
        what: &'static str,
        /// Its declared size.
        size: u64,
        /// The limit.
        max: u64,
        /// Offset of its header.
        offset: u64,
    },
}

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarKind {
    /// A regular file (with `data` bytes, or a sparse map and its regions).
    File,
    /// A directory.
    Dir,
    /// A symbolic link to `link`.
    Symlink,
    /// Another name of the earlier member `link`.
    Hardlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
}

/// One member's metadata, as read from (or to be written to) a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarMember {
    /// The path as stored (bytes; no checks here: the destination writer
    /// refuses what would escape).
    pub path: Vec<u8>,
    /// The member kind.
    pub kind: TarKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// The file's apparent size (for a sparse file, its real size).
    pub size: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Access time, when the archive has one.
    pub atime: Option<(i64, u32)>,
    /// A symlink's target or a hardlink's earlier member.
    pub link: Vec<u8>,
    /// Device numbers.
    pub dev: (u32, u32),
    /// Extended attributes (`SCHILY.xattr.*`), ACLs included as
    /// `system.posix_acl_*`.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a sparse file: its data regions (offset, length), in order. The
    /// data stream holds only these bytes.
    pub sparse: Option<Vec<(u64, u64)>>,
}

impl TarMember {
    /// Bytes of data the stream carries for this member.
    pub fn data_len(&self) -> u64 {
        match (&self.sparse, self.kind) {
            (Some(r), _) => r.iter().map(|&(_, l)| l).sum(),
            (None, TarKind::File) => self.size,
            _ => 0,
        }
    }
}

/// Reads members from a tar stream, one at a time: [`TarReader::next_member`],
/// then the member's data through [`TarReader::read_data`] (what is not read
/// is skipped by the next call).
pub struct TarReader<R> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
    /// Stored bytes of the current member not yet consumed (data, then its
    /// padding).
    left: u64,
    pad: u64,
    /// The current member's path, for messages.
    cur: Vec<u8>,
    done: bool,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// Parses a PAX time: `secs[.frac]`, possibly negative.
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.25 is 1.25 s before the epoch: (-2, 0.75 s).
        if ns == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - ns))
        }
    } else {
        Some((secs, ns))
    }
}

fn pax_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The extension records that apply to the next member.
#[derive(Default)]
struct Pending {
    pax: PaxRecords,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// PAX records: (key, value) pairs in order.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits PAX records (`LEN key=value\n`), refusing malformed ones.
pub fn parse_pax(data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record length that is not a number")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a PAX record whose length does not match".into());
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Encodes one PAX record, `LEN key=value\n`, whose LEN counts itself.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(len.to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(key);
    v.push(b'=');
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

/// Encodes a GNU sparse 1.0 map: decimal numbers, one per line, the region
/// count and then each region's offset and length, padded with NULs to a
/// whole block. It precedes the regions' bytes in the member's data.
pub fn encode_sparse_map(regions: &[(u64, u64)]) -> Vec<u8> {
    let mut v = format!("{}\n", regions.len()).into_bytes();
    for (o, l) in regions {
        v.extend_from_slice(format!("{o}\n{l}\n").as_bytes());
    }
    let pad = padding(v.len() as u64) as usize;
    v.resize(v.len() + pad, 0);
    v
}

impl<R: Read> TarReader<R> {
    /// A reader of the stream `r`.
    pub fn new(r: R) -> TarReader<R> {
        TarReader {
            r,
            pos: 0,
            left: 0,
            pad: 0,
            cur: Vec::new(),
            done: false,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader (to read what follows the archive's end).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    fn truncated(&self, inside: &str) -> TarError {
        TarError::Truncated(inside.to_string())
    }

    fn fill(&mut self, buf: &mut [u8], inside: &str) -> Result<(), TarError> {
        let n = read_exact_or(&mut self.r, buf)?;
        self.pos += n as u64;
        if n < buf.len() {
            return Err(self.truncated(inside));
        }
        Ok(())
    }

    fn member_name(&self) -> String {
        format!("member {:?}", String::from_utf8_lossy(&self.cur))
    }

    /// Skips what is left of the current member.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.left + self.pad;
        if n == 0 {
            return Ok(());
        }
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            let what = self.member_name();
            return Err(self.truncated(&format!("the data of {what}")));
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    /// Reads a record of `size` bytes (and its padding) into memory.
    fn read_record(&mut self, size: u64, what: &'static str, at: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENSION {
            return Err(TarError::TooLarge {
                what,
                size,
                max: MAX_EXTENSION,
                offset: at,
            });
        }
        let mut v = vec![0; size as usize];
        self.fill(&mut v, what)?;
        let pad = padding(size);
        let mut p = vec![0; pad as usize];
        self.fill(&mut p, what)?;
        Ok(v)
    }

    /// The next member, or `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<TarMember>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK];
            let n = read_exact_or(&mut self.r, &mut block)?;
            self.pos += n as u64;
            if n == 0 && pending.pax.is_empty() && pending.long_name.is_none() {
                // The end without the two zero blocks: GNU tar accepts it.
                self.done = true;
                return Ok(None);
            }
            if n < BLOCK {
                return Err(self.truncated("a header"));
            }
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let h = Header::from_byte_slice(&block);
            let sum = h.cksum().map_err(|_| TarError::BadChecksum(at))?;
            if sum != checksum(&block) {
                return Err(TarError::BadChecksum(at));
            }
            let bad = |what: &str| TarError::BadHeader {
                offset: at,
                what: what.to_string(),
            };
            let hsize = h.entry_size().map_err(|_| bad("unreadable size field"))?;
            match h.entry_type() {
                EntryType::XHeader => {
                    if !pending.pax.is_empty() {
                        return Err(bad("two PAX headers for one member"));
                    }
                    let data = self.read_record(hsize, "a PAX header", at)?;
                    pending.pax = parse_pax(&data).map_err(|e| bad(&e))?;
                    continue;
                }
                EntryType::XGlobalHeader => {
                    // Global records (comments, mostly) are read and set
                    // aside: haul's members carry every field themselves.
                    self.read_record(hsize, "a PAX global header", at)?;
                    continue;
                }
                EntryType::GNULongName => {
                    let data = self.read_record(hsize, "a GNU long name", at)?;
                    pending.long_name = Some(trim_nul(data));
                    continue;
                }
                EntryType::GNULongLink => {
                    let data = self.read_record(hsize, "a GNU long link", at)?;
                    pending.long_link = Some(trim_nul(data));
                    continue;
                }
                _ => {}
            }
            return self.member(h, at, hsize, pending).map(Some);
        }
    }

    fn member(
        &mut self,
        h: &Header,
        at: u64,
        hsize: u64,
        p: Pending,
    ) -> Result<TarMember, TarError> {
        let bad = |what: &str| TarError::BadHeader {
            offset: at,
            what: what.to_string(),
        };
        let kind = match h.entry_type() {
            EntryType::Regular | EntryType::Continuous => TarKind::File,
            EntryType::Directory => TarKind::Dir,
            EntryType::Symlink => TarKind::Symlink,
            EntryType::Link => TarKind::Hardlink,
            EntryType::Char => TarKind::CharDev,
            EntryType::Block => TarKind::BlockDev,
            EntryType::Fifo => TarKind::Fifo,
            EntryType::GNUSparse => {
                return Err(bad(
                    "an old GNU sparse member (type 'S'): write the archive with \
                     --format=posix (PAX sparse 1.0)",
                ))
            }
            other => {
                return Err(bad(&format!(
                    "unsupported member type {:?}",
                    char::from(other.as_byte())
                )))
            }
        };
        let mut m = TarMember {
            path: p.long_name.unwrap_or_else(|| h.path_bytes().into_owned()),
            kind,
            mode: h.mode().map_err(|_| bad("unreadable mode"))? & 0o7777,
            uid: h.uid().map_err(|_| bad("unreadable uid"))?,
            gid: h.gid().map_err(|_| bad("unreadable gid"))?,
            size: hsize,
            mtime: (h.mtime().map_err(|_| bad("unreadable mtime"))? as i64, 0),
            atime: None,
            link: p
                .long_link
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default(),
            dev: (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            xattrs: Vec::new(),
            sparse: None,
        };
        // The data the stream holds for this member: the header's size,
        // unless a PAX record says otherwise (then PAX wins, as in GNU tar).
        let mut stored = hsize;
        let (mut sparse_major, mut sparse_name, mut real_size) = (None, None, None);
        for (k, v) in &p.pax {
            match &k[..] {
                b"path" => m.path = v.clone(),
                b"linkpath" => m.link = v.clone(),
                b"size" => stored = pax_u64(v).ok_or_else(|| bad("bad PAX size"))?,
                b"uid" => m.uid = pax_u64(v).ok_or_else(|| bad("bad PAX uid"))?,
                b"gid" => m.gid = pax_u64(v).ok_or_else(|| bad("bad PAX gid"))?,
                b"mtime" => m.mtime = pax_time(v).ok_or_else(|| bad("bad PAX mtime"))?,
                b"atime" => m.atime = Some(pax_time(v).ok_or_else(|| bad("bad PAX atime"))?),
                b"GNU.sparse.major" => sparse_major = pax_u64(v),
                b"GNU.sparse.name" => sparse_name = Some(v.clone()),
                b"GNU.sparse.realsize" => real_size = pax_u64(v),
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        m.xattrs.push((name.to_vec(), v.clone()));
                    }
                }
            }
        }
        if !matches!(kind, TarKind::File) {
            // Only regular members carry data; a size on a link or a
            // directory is data to skip (GNU tar does the same).
            m.size = 0;
        } else {
            m.size = stored;
        }
        self.cur = m.path.clone();
        self.left = stored;
        self.pad = padding(stored);
        if kind == TarKind::File {
            match sparse_major {
                Some(1) => {
                    m.path = sparse_name.ok_or_else(|| bad("sparse 1.0 member without a name"))?;
                    self.cur = m.path.clone();
                    m.size = real_size.ok_or_else(|| bad("sparse 1.0 member without realsize"))?;
                    let map = self.read_sparse_map(at)?;
                    // Empty regions (GNU tar's marker of a trailing hole)
                    // carry nothing.
                    m.sparse = Some(map.into_iter().filter(|r| r.1 > 0).collect());
                }
                Some(_) => return Err(bad("GNU sparse 0.x members are not supported")),
                None => {}
            }
        }
        if let Some(map) = &m.sparse {
            // The map must fit both the real size and the stored bytes.
            let mut end = 0u64;
            let mut total = 0u64;
            for &(o, l) in map {
                let e = o
                    .checked_add(l)
                    .ok_or_else(|| bad("sparse region overflows"))?;
                if o < end || e > m.size {
                    return Err(bad("sparse regions out of order or past the file's size"));
                }
                end = e;
                total += l;
            }
            if total != self.left {
                return Err(bad("sparse regions do not add up to the stored data"));
            }
        }
        Ok(m)
    }

    /// Reads a GNU sparse 1.0 map from the start of the member's data.
    fn read_sparse_map(&mut self, at: u64) -> Result<Vec<(u64, u64)>, TarError> {
        let bad = |what: &str| TarError::BadHeader {
            offset: at,
            what: what.to_string(),
        };
        let mut buf = Vec::new();
        let mut nums = Vec::new();
        let mut line = Vec::new();
        let mut want: Option<u64> = None;
        loop {
            if self.left < BLOCK as u64 {
                return Err(bad("sparse map runs past the member's data"));
            }
            buf.resize(BLOCK, 0);
            let what = self.member_name();
            self.fill(&mut buf, &format!("the sparse map of {what}"))?;
            self.left -= BLOCK as u64;
            for &b in &buf {
                if b == b'\n' {
                    let n = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| bad("sparse map entry is not a number"))?;
                    line.clear();
                    match want {
                        None => {
                            if n > MAX_SPARSE_REGIONS {
                                return Err(bad("sparse map declares too many regions"));
                            }
                            want = Some(n);
                        }
                        Some(_) => nums.push(n),
                    }
                    if want.is_some_and(|w| nums.len() as u64 == w * 2) {
                        let map = nums.chunks(2).map(|c| (c[0], c[1])).collect();
                        return Ok(map);
                    }
                } else if line.len() > 20 {
                    return Err(bad("sparse map entry too long"));
                } else {
                    line.push(b);
                }
            }
        }
    }

    /// Reads the current member's data into `buf`; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            let what = self.member_name();
            return Err(self.truncated(&format!("the data of {what}")));
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Whether `block` (512 bytes) is a tar header whose checksum field holds
/// its checksum: how a tar without the ustar magic (v7) is told apart.
pub fn is_header(block: &[u8]) -> bool {
    let Ok(b) = <&[u8; BLOCK]>::try_from(block) else {
        return false;
    };
    let field = std::str::from_utf8(&b[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    field == Some(checksum(b)) && b.iter().any(|&x| x != 0)
}

/// The header checksum: the sum of its bytes, the checksum field counted
/// as spaces.
fn checksum(block: &[u8; BLOCK]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum()
}

/// Writes members as a PAX stream that GNU tar reads with `--xattrs
/// --xattrs-include='*' --acls`.
pub struct TarWriter<W> {
    w: W,
    written: u64,
}

/// Renders a binary `system.posix_acl_*` value as the text GNU tar stores
/// in `SCHILY.acl.*` (numeric ids), or `None` if it does not parse.
pub fn acl_text(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != [2, 0, 0, 0] {
        return None;
    }
    let mut out = String::new();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let who = match tag {
            0x01 => "user::".to_string(),
            0x02 => format!("user:{id}:"),
            0x04 => "group::".to_string(),
            0x08 => format!("group:{id}:"),
            0x10 => "mask::".to_string(),
            0x20 => "other::".to_string(),
            _ => return None,
        };
        out.push_str(&who);
        out.push(if perm & 4 != 0 { 'r' } else { '-' });
        out.push(if perm & 2 != 0 { 'w' } else { '-' });
        out.push(if perm & 1 != 0 { 'x' } else { '-' });
        out.push('\n');
    }
    Some(out.into_bytes())
}

fn pax_time_str((s, ns): (i64, u32)) -> String {
    if s < 0 && ns > 0 {
        // (-2, 0.75 s) is -1.25.
        let rest = 1_000_000_000 - ns;
        format!("-{}.{:09}", -(s + 1), rest)
    } else {
        format!("{s}.{ns:09}")
    }
}

impl<W: Write> TarWriter<W> {
    /// A writer into `w`.
    pub fn new(w: W) -> TarWriter<W> {
        TarWriter { w, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, n: u64) -> io::Result<()> {
        let p = padding(n) as usize;
        self.put(&[0u8; BLOCK][..p])
    }

    /// Writes `m`'s headers; the caller then writes exactly
    /// [`TarMember::data_len`] bytes with [`TarWriter::data`] and ends the
    /// member with [`TarWriter::end_member`].
    pub fn begin_member(&mut self, m: &TarMember) -> io::Result<()> {
        let mut pax = Vec::new();
        let mut h = Header::new_ustar();
        let ty = match m.kind {
            TarKind::File => EntryType::Regular,
            TarKind::Dir => EntryType::Directory,
            TarKind::Symlink => EntryType::Symlink,
            TarKind::Hardlink => EntryType::Link,
            TarKind::CharDev => EntryType::Char,
            TarKind::BlockDev => EntryType::Block,
            TarKind::Fifo => EntryType::Fifo,
        };
        h.set_entry_type(ty);
        let mut path = m.path.clone();
        if m.kind == TarKind::Dir && !path.ends_with(b"/") {
            path.push(b'/');
        }
        // GNU tar sizes a sparse file by its last region's end: a trailing
        // hole is an empty region at the real size, as GNU tar writes it.
        let sparse = m.sparse.as_ref().map(|map| {
            let mut map = map.clone();
            if map.last().is_none_or(|&(o, l)| o + l < m.size) {
                map.push((m.size, 0));
            }
            map
        });
        let stored = match &sparse {
            Some(map) => {
                pax.extend(pax_record(b"GNU.sparse.major", b"1"));
                pax.extend(pax_record(b"GNU.sparse.minor", b"0"));
                pax.extend(pax_record(b"GNU.sparse.name", &path));
                pax.extend(pax_record(
                    b"GNU.sparse.realsize",
                    m.size.to_string().as_bytes(),
                ));
                // What GNU tar puts in the header's name field.
                let base = path.rsplit(|&b| b == b'/').next().unwrap_or(&path);
                let mut p = b"GNUSparseFile.0/".to_vec();
                p.extend_from_slice(base);
                path = p;
                encode_sparse_map(map).len() as u64 + m.data_len()
            }
            None => m.data_len(),
        };
        // Name and link: in the header when they fit and are plain ASCII,
        // else a PAX record (and a truncated header field).
        let fits = |p: &[u8], max: usize| p.len() <= max && p.is_ascii() && !p.contains(&0);
        if set_header_path(&mut h, &path).is_err() || !path.is_ascii() {
            pax.extend(pax_record(b"path", &path));
            let short: Vec<u8> = path.iter().copied().filter(u8::is_ascii).take(99).collect();
            let _ = set_header_path(&mut h, &short);
        }
        if matches!(m.kind, TarKind::Symlink | TarKind::Hardlink) {
            if fits(&m.link, 100) {
                h.set_link_name_literal(&m.link)?;
            } else {
                pax.extend(pax_record(b"linkpath", &m.link));
            }
        }
        h.set_mode(m.mode);
        for (key, v, max) in [(&b"uid"[..], m.uid, 0o7777777), (b"gid", m.gid, 0o7777777)] {
            if v > max {
                pax.extend(pax_record(key, v.to_string().as_bytes()));
            }
        }
        h.set_uid(m.uid.min(0o7777777));
        h.set_gid(m.gid.min(0o7777777));
        h.set_mtime(m.mtime.0.clamp(0, 0o77777777777) as u64);
        pax.extend(pax_record(b"mtime", pax_time_str(m.mtime).as_bytes()));
        if let Some(a) = m.atime {
            pax.extend(pax_record(b"atime", pax_time_str(a).as_bytes()));
        }
        if stored > 0o77777777777 {
            pax.extend(pax_record(b"size", stored.to_string().as_bytes()));
            h.set_size(0);
        } else {
            h.set_size(stored);
        }
        if matches!(m.kind, TarKind::CharDev | TarKind::BlockDev) {
            h.set_device_major(m.dev.0)?;
            h.set_device_minor(m.dev.1)?;
        }
        for (k, v) in &m.xattrs {
            // GNU tar restores ACLs from the text form; both are written,
            // as GNU tar writes them.
            let text = match &k[..] {
                b"system.posix_acl_access" => Some(b"SCHILY.acl.access".as_slice()),
                b"system.posix_acl_default" => Some(b"SCHILY.acl.default".as_slice()),
                _ => None,
            };
            if let (Some(key), Some(t)) = (text, acl_text(v)) {
                pax.extend(pax_record(key, &t));
            }
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.extend(pax_record(&key, v));
        }
        if !pax.is_empty() {
            let mut x = Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            let mut xp = b"./PaxHeaders/".to_vec();
            let base = path.rsplit(|&b| b == b'/').find(|s| !s.is_empty());
            xp.extend(
                base.unwrap_or(b"x")
                    .iter()
                    .copied()
                    .filter(u8::is_ascii)
                    .take(80),
            );
            let _ = set_header_path(&mut x, &xp);
            x.set_mode(0o644);
            x.set_size(pax.len() as u64);
            x.set_mtime(h.mtime().unwrap_or(0));
            x.set_cksum();
            self.put(x.as_bytes())?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        h.set_cksum();
        self.put(h.as_bytes())?;
        if let Some(map) = &sparse {
            self.put(&encode_sparse_map(map))?;
        }
        Ok(())
    }

    /// Writes member data.
    pub fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Pads the member's data, `data_len` bytes, to a whole block.
    pub fn end_member(&mut self, m: &TarMember) -> io::Result<()> {
        self.pad(m.data_len())
    }

    /// Writes the end-of-archive blocks and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; BLOCK * 2])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Puts a path in the header's name (and ustar prefix) fields, or fails if
/// it does not fit.
fn set_header_path(h: &mut Header, p: &[u8]) -> Result<(), ()> {
    if p.contains(&0) {
        return Err(());
    }
    let ustar = h.as_ustar_mut().ok_or(())?;
    if p.len() <= 100 {
        ustar.name = [0; 100];
        ustar.name[..p.len()].copy_from_slice(p);
        ustar.prefix = [0; 155];
        return Ok(());
    }
    // Split at a '/' so the prefix takes at most 155 bytes and the name 100.
    let split = p
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && p.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| i)
        .next()
        .ok_or(())?;
    let (pre, name) = (&p[..split], &p[split + 1..]);
    if name.is_empty() {
        return Err(());
    }
    ustar.name = [0; 100];
    ustar.name[..name.len()].copy_from_slice(name);
    ustar.prefix = [0; 155];
    ustar.prefix[..pre.len()].copy_from_slice(pre);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, kind: TarKind) -> TarMember {
        TarMember {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 0,
            mtime: (1_700_000_000, 123_456_789),
            atime: None,
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
            sparse: None,
        }
    }

    fn round_trip(members: &[(TarMember, Vec<u8>)]) -> Vec<(TarMember, Vec<u8>)> {
        let mut w = TarWriter::new(Vec::new());
        for (m, d) in members {
            w.begin_member(m).unwrap();
            w.data(d).unwrap();
            w.end_member(m).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..]);
        let mut out = Vec::new();
        while let Some(m) = r.next_member().unwrap() {
            let mut d = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = r.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                d.extend_from_slice(&buf[..n]);
            }
            out.push((m, d));
        }
        out
    }

    #[test]
    fn members_round_trip() {
        let mut f = member("dir/file", TarKind::File);
        f.size = 5;
        f.xattrs = vec![(b"user.k".to_vec(), vec![0, 1, 2, b'\n', 255])];
        f.atime = Some((-2, 750_000_000));
        let mut long = member(&"x/".repeat(200), TarKind::Dir);
        long.path.extend_from_slice("é".as_bytes());
        let mut l = member("l", TarKind::Symlink);
        l.link = "t".repeat(300).into_bytes();
        let mut sp = member("sparse", TarKind::File);
        sp.size = 1 << 40;
        sp.sparse = Some(vec![(4096, 3), ((1 << 40) - 2, 2)]);
        let mut dev = member("dev", TarKind::CharDev);
        dev.dev = (1, 3);
        let mut big = member("big-uid", TarKind::Fifo);
        big.uid = 4_000_000_000;
        let ms = vec![
            (member("dir", TarKind::Dir), vec![]),
            (f, b"hello".to_vec()),
            (long, vec![]),
            (l, vec![]),
            (sp, b"abcde".to_vec()),
            (dev, vec![]),
            (big, vec![]),
        ];
        let got = round_trip(&ms);
        assert_eq!(got.len(), ms.len());
        for ((a, ad), (b, bd)) in ms.iter().zip(&got) {
            let mut a = a.clone();
            if a.kind == TarKind::Dir {
                a.path.push(b'/');
            }
            assert_eq!(&a, b);
            assert_eq!(ad, bd);
        }
    }

    #[test]
    fn pax_records() {
        assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n");
        // 9 + 1 digit would be 10: the length counts its own digits.
        assert_eq!(pax_record(b"ab", b"cdef"), b"11 ab=cdef\n");
        assert_eq!(
            parse_pax(b"11 ab=cdef\n6 a=b\n").unwrap(),
            vec![
                (b"ab".to_vec(), b"cdef".to_vec()),
                (b"a".to_vec(), b"b".to_vec())
            ]
        );
        assert!(parse_pax(b"99 a=b\n").is_err());
        assert!(parse_pax(b"x a=b\n").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time(b"7"), Some((7, 0)));
        assert_eq!(pax_time(b"1.x"), None);
        assert_eq!(pax_time_str((-2, 750_000_000)), "-1.250000000");
    }

    #[test]
    fn truncation_and_bad_checksums_are_errors() {
        let mut w = TarWriter::new(Vec::new());
        let mut f = member("f", TarKind::File);
        f.size = 1000;
        w.begin_member(&f).unwrap();
        w.data(&[7; 1000]).unwrap();
        w.end_member(&f).unwrap();
        let bytes = w.finish().unwrap();
        for cut in [100, 600, 1500, 2000] {
            let mut r = TarReader::new(&bytes[..cut]);
            let mut res = r.next_member().map(|_| ());
            if res.is_ok() {
                let mut buf = [0; 4096];
                res = (|| {
                    while r.read_data(&mut buf)? > 0 {}
                    r.next_member().map(drop)
                })();
            }
            assert!(res.is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(matches!(
            TarReader::new(&bad[..]).next_member(),
            Err(TarError::BadChecksum(_))
        ));
    }

    #[test]
    fn oversized_extension_is_refused_before_allocating() {
        let mut x = Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        x.set_size(1 << 40);
        x.set_cksum();
        let r = TarReader::new(&x.as_bytes()[..]).next_member();
        assert!(matches!(r, Err(TarError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn acl_text_matches_gnu_tar() {
        // A file ACL u::rw-,u:99:r-x,g::r-x,m::r--,o::r-- as the kernel stores it.
        let mut v = vec![2, 0, 0, 0];
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 5, 99),
            (4, 5, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        assert_eq!(
            acl_text(&v).unwrap(),
            b"user::rw-\nuser:99:r-x\ngroup::r-x\nmask::r--\nother::r--\n"
        );
    }
}
