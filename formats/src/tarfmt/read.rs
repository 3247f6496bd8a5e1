//! The reading half: members and their data out of a stream, with every
//! record that says how much to read capped before it is allocated.
use std::io::{self, Read};

use tar::{EntryType, Header};

use super::{
    checksum, padding, parse_pax, PaxRecords, TarError, TarKind, TarMember, BLOCK, MAX_EXTENSION,
    MAX_SPARSE_REGIONS,
};

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

pub(super) fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
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
