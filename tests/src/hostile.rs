//! Hostile archives, crafted byte by byte, and the scene the `haul archive` hostile-input
//! tests (issue 16) run in.
//!
//! The writers here are deliberately naive: they put into the archive exactly the bytes
//! they are told to, so that a test can make what GNU tar, Python or the zip crate refuse to
//! make (`..` names, headers that disagree, entries that overlap, counts that lie). Nothing
//! here shares code with haul's own readers and writers.
//!
//! - [`Tar`]: ustar headers (with their checksum) and PAX extended headers.
//! - [`Zip`]: local headers, central-directory records and the (zip64) end record, with a
//!   hand-written [`crc32`] and stored-block deflate streams.
//! - [`Scene`]: a temporary directory with `dst/` (where haul extracts), a sibling
//!   `outside/` (a file and a subdirectory that must never change) and the archives; it
//!   runs haul with a deadline and checks the invariants every case shares.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::{tmp, NOBODY};
use crate::{
    assert_trees_equal, command_as, ctimes, fixture, haul_bin, list_entries, walk, CompareOpts,
    Kind, RunResult, Tree,
};

// ---------------------------------------------------------------------------------------
// tar
// ---------------------------------------------------------------------------------------

/// Tar type flags.
pub mod typeflag {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHARDEV: u8 = b'3';
    pub const DIR: u8 = b'5';
    pub const PAX: u8 = b'x';
}

/// One ustar header, field by field; [`TarHeader::encode`] writes it as given.
#[derive(Clone, Debug)]
pub struct TarHeader {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

/// The mtime every crafted member carries (2021-01-01T00:00:00Z).
pub const MTIME: u64 = 1_609_459_200;

impl TarHeader {
    /// A header for `name` of type `typeflag`, mode 0644 (0755 for directories), root-owned.
    pub fn new(name: impl AsRef<[u8]>, typeflag: u8) -> TarHeader {
        TarHeader {
            name: name.as_ref().to_vec(),
            mode: if typeflag == typeflag::DIR {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            size: 0,
            mtime: MTIME,
            typeflag,
            linkname: Vec::new(),
            devmajor: 0,
            devminor: 0,
        }
    }

    /// The 512-byte header block. Names and link names longer than the ustar fields are cut
    /// (callers that need them whole precede the header with a PAX header, as
    /// [`Tar::entry`] does).
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_bytes(&mut b[0..100], &self.name);
        put_octal(&mut b[100..108], self.mode as u64);
        put_octal(&mut b[108..116], self.uid as u64);
        put_octal(&mut b[116..124], self.gid as u64);
        put_octal(&mut b[124..136], self.size);
        put_octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], &self.linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        put_bytes(&mut b[265..297], b"root");
        put_bytes(&mut b[297..329], b"root");
        put_octal(&mut b[329..337], self.devmajor as u64);
        put_octal(&mut b[337..345], self.devminor as u64);
        set_tar_checksum(&mut b);
        b
    }
}

fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Octal, zero-padded, NUL-terminated; base-256 when it does not fit (GNU's extension).
fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        let n = field.len();
        field.fill(0);
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] = 0x80;
    }
}

/// Writes the checksum of a header block (the sum of its bytes, the checksum field counted
/// as spaces) into the block.
pub fn set_tar_checksum(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

/// One PAX record, `"<len> <key>=<value>\n"`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

/// A tar stream under construction.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Where the next header goes.
    pub fn offset(&self) -> usize {
        self.bytes.len()
    }

    /// A header block, exactly as given.
    pub fn header(&mut self, h: &TarHeader) -> &mut Tar {
        self.bytes.extend_from_slice(&h.encode());
        self
    }

    /// Data, padded to a whole block.
    pub fn data(&mut self, d: &[u8]) -> &mut Tar {
        self.bytes.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.bytes.resize(self.bytes.len() + pad, 0);
        self
    }

    /// A PAX extended header (`x`) carrying `records`, for the member that follows.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = TarHeader::new("PaxHeaders/entry", typeflag::PAX);
        h.size = body.len() as u64;
        self.header(&h).data(&body)
    }

    /// A member: a PAX header first if its name or link name does not fit ustar, then the
    /// header with `size = data.len()`, then the data.
    pub fn entry(&mut self, mut h: TarHeader, data: &[u8]) -> &mut Tar {
        let mut recs: Vec<(&str, &[u8])> = Vec::new();
        let (name, link) = (h.name.clone(), h.linkname.clone());
        if name.len() > 100 {
            recs.push(("path", &name));
        }
        if link.len() > 100 {
            recs.push(("linkpath", &link));
        }
        if !recs.is_empty() {
            self.pax(&recs);
        }
        h.size = data.len() as u64;
        self.header(&h).data(data)
    }

    pub fn file(&mut self, name: impl AsRef<[u8]>, data: &[u8]) -> &mut Tar {
        self.entry(TarHeader::new(name, typeflag::FILE), data)
    }

    pub fn file_mode(&mut self, name: impl AsRef<[u8]>, mode: u32, data: &[u8]) -> &mut Tar {
        let mut h = TarHeader::new(name, typeflag::FILE);
        h.mode = mode;
        self.entry(h, data)
    }

    pub fn dir(&mut self, name: impl AsRef<[u8]>, mode: u32) -> &mut Tar {
        let mut h = TarHeader::new(name, typeflag::DIR);
        h.mode = mode;
        self.entry(h, b"")
    }

    pub fn symlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Tar {
        let mut h = TarHeader::new(name, typeflag::SYMLINK);
        h.mode = 0o777;
        h.linkname = target.as_ref().to_vec();
        self.entry(h, b"")
    }

    pub fn hardlink(&mut self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Tar {
        let mut h = TarHeader::new(name, typeflag::HARDLINK);
        h.linkname = target.as_ref().to_vec();
        self.entry(h, b"")
    }

    pub fn chardev(&mut self, name: impl AsRef<[u8]>, mode: u32, major: u32, minor: u32) {
        let mut h = TarHeader::new(name, typeflag::CHARDEV);
        h.mode = mode;
        h.devmajor = major;
        h.devminor = minor;
        self.entry(h, b"");
    }

    /// The stream with its end-of-archive marker (two zero blocks).
    pub fn finish(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b.resize(b.len() + 1024, 0);
        b
    }
}

/// `data` as one zstd frame, with the content checksum so that damage is detectable.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Offset of the first block header of the zstd frame at the start of `z`.
pub fn zstd_first_block(z: &[u8]) -> usize {
    assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    let fhd = z[4];
    let single_segment = fhd & 0x20 != 0;
    let did = [0, 1, 2, 4][(fhd & 3) as usize];
    let fcs = match fhd >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    5 + usize::from(!single_segment) + did + fcs
}

// ---------------------------------------------------------------------------------------
// zip
// ---------------------------------------------------------------------------------------

/// CRC-32 (IEEE, reflected), as zip uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// CRC-32 of `n` zero bytes, table-driven (fast enough for a few hundred MiB).
pub fn crc32_zeros(n: u64) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xffff_ffffu32;
    for _ in 0..n {
        crc = table[(crc & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Bits packed least-significant first, as deflate wants them.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn bits(&mut self, v: u32, len: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: its most significant bit goes first.
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.bits(rev, len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// `n` zero bytes as one fixed-Huffman deflate block: a literal zero, then matches of
/// length 258 at distance 1 (13 bits per 258 bytes: about 1:1000, the classic zip-bomb
/// kernel), then literal zeros for the rest.
pub fn deflate_zeros(n: u64) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.bits(1, 1); // BFINAL
    w.bits(1, 2); // BTYPE = 01, fixed Huffman codes
    let literal_zero = |w: &mut BitWriter| w.code(0b0011_0000, 8);
    if n > 0 {
        literal_zero(&mut w);
        let rest = n - 1;
        for _ in 0..rest / 258 {
            w.code(0b1100_0101, 8); // length code 285: 258
            w.code(0, 5); // distance code 0: 1
        }
        for _ in 0..rest % 258 {
            literal_zero(&mut w);
        }
    }
    w.code(0, 7); // end of block (256)
    w.finish()
}

/// `data` as a deflate stream of stored (uncompressed) blocks: valid method 8 data
/// without needing a compressor.
pub fn deflate_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(u8::from(i + 1 == n)); // BFINAL, BTYPE=00
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Zip compression methods.
pub const STORE: u16 = 0;
pub const DEFLATE: u16 = 8;

/// One zip member as it goes into both the local header and the central directory; every
/// field can be changed before it is written (the two records may then disagree).
#[derive(Clone, Debug)]
pub struct ZipEntry {
    pub name: Vec<u8>,
    pub method: u16,
    /// The bytes stored after the local header (compressed data).
    pub payload: Vec<u8>,
    pub crc: u32,
    pub csize: u32,
    pub usize: u32,
    /// Unix `st_mode` (type and permission bits), written in the external attributes with
    /// "made by Unix"; `None` writes DOS attributes.
    pub mode: Option<u32>,
}

impl ZipEntry {
    /// A stored regular file, mode 0644.
    pub fn stored(name: impl AsRef<[u8]>, data: &[u8]) -> ZipEntry {
        ZipEntry {
            name: name.as_ref().to_vec(),
            method: STORE,
            payload: data.to_vec(),
            crc: crc32(data),
            csize: data.len() as u32,
            usize: data.len() as u32,
            mode: Some(0o100644),
        }
    }

    /// A deflated regular file (stored deflate blocks).
    pub fn deflated(name: impl AsRef<[u8]>, data: &[u8]) -> ZipEntry {
        let payload = deflate_stored(data);
        ZipEntry {
            csize: payload.len() as u32,
            payload,
            method: DEFLATE,
            ..ZipEntry::stored(name, data)
        }
    }

    /// A symlink (Unix mode 0120777, the target as data).
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> ZipEntry {
        ZipEntry::stored(name, target.as_ref()).mode(0o120777)
    }

    /// A directory (`name` should end in `/`).
    pub fn dir(name: impl AsRef<[u8]>, perm: u32) -> ZipEntry {
        ZipEntry::stored(name, b"").mode(0o040000 | perm)
    }

    /// The same entry with Unix mode `mode`.
    pub fn mode(mut self, mode: u32) -> ZipEntry {
        self.mode = Some(mode);
        self
    }
}

// 2021-01-01 00:00:00 in DOS format.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = ((2021 - 1980) << 9) | (1 << 5) | 1;

/// The local header of `e` (without its data).
pub fn local_header(e: &ZipEntry) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    b.extend_from_slice(&20u16.to_le_bytes()); // version needed
    b.extend_from_slice(&0x0800u16.to_le_bytes()); // flags: UTF-8 names
    b.extend_from_slice(&e.method.to_le_bytes());
    b.extend_from_slice(&DOS_TIME.to_le_bytes());
    b.extend_from_slice(&DOS_DATE.to_le_bytes());
    b.extend_from_slice(&e.crc.to_le_bytes());
    b.extend_from_slice(&e.csize.to_le_bytes());
    b.extend_from_slice(&e.usize.to_le_bytes());
    b.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // extra length
    b.extend_from_slice(&e.name);
    b
}

/// Fifield's "quoted overlap" zip bomb (2019): `n` members whose names match their local
/// headers, each one's deflate data a stored block quoting the next member's local header
/// followed by the next member's data, the last one `kernel` zero bytes. Every member is
/// well-formed on its own (right names, sizes and CRCs), but their data overlap, so the
/// output is about `n` times the kernel. Returns the file and each member's name and
/// content.
pub fn quoted_overlap_zip(n: usize, kernel: u64) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let names: Vec<String> = (0..n).map(|i| format!("overlap-{i:02}")).collect();
    let mut content = vec![0u8; kernel as usize];
    let mut data = deflate_zeros(kernel);
    let mut entries: Vec<ZipEntry> = Vec::new();
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    for i in (0..n).rev() {
        if let Some(next) = entries.last() {
            let lh = local_header(next);
            let mut quoted = vec![0u8]; // BFINAL 0, BTYPE 00: a stored block
            quoted.extend_from_slice(&(lh.len() as u16).to_le_bytes());
            quoted.extend_from_slice(&(!(lh.len() as u16)).to_le_bytes());
            quoted.extend_from_slice(&lh);
            quoted.extend_from_slice(&data);
            data = quoted;
            let mut c = lh;
            c.extend_from_slice(&content);
            content = c;
        }
        entries.push(ZipEntry {
            name: names[i].as_bytes().to_vec(),
            method: DEFLATE,
            payload: Vec::new(),
            crc: crc32(&content),
            csize: data.len() as u32,
            usize: content.len() as u32,
            mode: Some(0o100644),
        });
        contents.push((names[i].clone(), content.clone()));
    }
    entries.reverse();
    contents.reverse();
    // The file is the first member's local header and its data, which hold all the others.
    let mut z = Zip::new();
    z.bytes.extend_from_slice(&local_header(&entries[0]));
    z.bytes.extend_from_slice(&data);
    let mut off = 0u32;
    for e in &entries {
        z.central(e, off);
        off += local_header(e).len() as u32 + 5;
    }
    (z.finish(), contents)
}

/// A zip file under construction: local records in `bytes`, the central directory kept
/// apart until [`Zip::finish`].
#[derive(Default)]
pub struct Zip {
    pub bytes: Vec<u8>,
    central: Vec<u8>,
    count: u64,
}

impl Zip {
    pub fn new() -> Zip {
        Zip::default()
    }

    /// Writes the local header and data of `e`; returns the header's offset.
    pub fn local(&mut self, e: &ZipEntry) -> u32 {
        let off = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&local_header(e));
        self.bytes.extend_from_slice(&e.payload);
        off
    }

    /// Adds a central-directory record for `e` pointing at `offset`.
    pub fn central(&mut self, e: &ZipEntry, offset: u32) {
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        let made_by: u16 = if e.mode.is_some() { (3 << 8) | 20 } else { 20 };
        c.extend_from_slice(&made_by.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&0x0800u16.to_le_bytes());
        c.extend_from_slice(&e.method.to_le_bytes());
        c.extend_from_slice(&DOS_TIME.to_le_bytes());
        c.extend_from_slice(&DOS_DATE.to_le_bytes());
        c.extend_from_slice(&e.crc.to_le_bytes());
        c.extend_from_slice(&e.csize.to_le_bytes());
        c.extend_from_slice(&e.usize.to_le_bytes());
        c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes()); // extra
        c.extend_from_slice(&0u16.to_le_bytes()); // comment
        c.extend_from_slice(&0u16.to_le_bytes()); // disk
        c.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        let external = match e.mode {
            Some(m) => m << 16 | u32::from(m & 0o170000 == 0o040000) << 4,
            None => 0,
        };
        c.extend_from_slice(&external.to_le_bytes());
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(&e.name);
        self.count += 1;
    }

    /// Local record and central record of `e`.
    pub fn add(&mut self, e: &ZipEntry) -> &mut Zip {
        let off = self.local(e);
        self.central(e, off);
        self
    }

    /// The file: local records, central directory, end record (zip64 when the count needs
    /// it); the counts are the true ones.
    pub fn finish(&self) -> Vec<u8> {
        self.finish_claiming(self.count, self.count > 0xfffe)
    }

    /// The file, its end record(s) claiming `count` central-directory entries (true or
    /// not); `zip64` adds the zip64 end record and locator.
    pub fn finish_claiming(&self, count: u64, zip64: bool) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let cd_off = b.len() as u64;
        b.extend_from_slice(&self.central);
        let cd_size = self.central.len() as u64;
        if zip64 {
            let z64_off = b.len() as u64;
            b.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            b.extend_from_slice(&44u64.to_le_bytes());
            b.extend_from_slice(&((3u16 << 8) | 45).to_le_bytes());
            b.extend_from_slice(&45u16.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&cd_size.to_le_bytes());
            b.extend_from_slice(&cd_off.to_le_bytes());
            b.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&z64_off.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
        }
        let c16 = if zip64 { 0xffff } else { count as u16 };
        b.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&c16.to_le_bytes());
        b.extend_from_slice(&c16.to_le_bytes());
        b.extend_from_slice(&(cd_size as u32).to_le_bytes());
        b.extend_from_slice(&(cd_off as u32).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b
    }
}

// ---------------------------------------------------------------------------------------
// The scene
// ---------------------------------------------------------------------------------------

/// The archive formats of issue 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Tar,
    TarZst,
    Zip,
}

impl Fmt {
    /// The file name an archive of this format gets.
    pub fn file_name(self) -> &'static str {
        match self {
            Fmt::Tar => "in.tar",
            Fmt::TarZst => "in.tar.zst",
            Fmt::Zip => "in.zip",
        }
    }

    /// The tar formats: a tar stream becomes the archive's bytes.
    pub fn wrap_tar(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Fmt::Tar => tar.to_vec(),
            Fmt::TarZst => zstd(tar),
            Fmt::Zip => panic!("wrap_tar on zip"),
        }
    }
}

/// How long one hostile-input run may take: every case is small, so anything longer is a
/// hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One run of haul, and its peak memory when it was measured.
#[derive(Debug)]
pub struct Run {
    pub r: RunResult,
    /// Peak resident set size in KiB (from `/usr/bin/time -v`), when asked for.
    pub max_rss_kib: Option<u64>,
}

/// How to run haul: [`run_deadline`]'s options.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Run as this uid:gid (the caller must be root).
    pub as_user: Option<(u32, u32)>,
    /// Kill haul's whole process group when this passes (then the test fails).
    pub deadline: Duration,
    /// Run under `/usr/bin/time -v` for the peak RSS.
    pub measure: bool,
    /// Send stdout to /dev/null (for outputs of millions of lines).
    pub discard_stdout: bool,
    /// Bytes to feed on stdin (else stdin is /dev/null).
    pub stdin: Option<Vec<u8>>,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            as_user: None,
            deadline: DEADLINE,
            measure: false,
            discard_stdout: false,
            stdin: None,
        }
    }
}

/// Runs haul with `args` as `spec` says.
pub fn run_deadline(args: &[OsString], spec: &RunSpec) -> Run {
    let (as_user, deadline, measure) = (spec.as_user, spec.deadline, spec.measure);
    let mut cmd: Command = if measure {
        let mut c = command_as(Path::new("/usr/bin/time"), as_user);
        c.arg("-v").arg(haul_bin());
        c
    } else {
        command_as(&haul_bin(), as_user)
    };
    cmd.args(args).process_group(0);
    cmd.stdout(if spec.discard_stdout {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stderr(Stdio::piped());
    if spec.stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start haul {args:?}: {e}"));
    if let Some(bytes) = spec.stdin.clone() {
        let mut w = child.stdin.take().unwrap();
        // A writer of its own: haul may stop reading early (EPIPE is fine).
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(r) => r.expect("waiting for haul"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("haul {args:?} did not finish within {deadline:?} (a hang); killed it");
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = match out.status.code() {
        Some(c) => c,
        None => 128 + out.status.signal().unwrap_or(0),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let max_rss_kib = measure.then(|| {
        stderr
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes):")
                    .map(|v| v.trim().parse::<u64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no RSS from /usr/bin/time -v in:\n{stderr}"))
    });
    Run {
        r: RunResult {
            args: args.to_vec(),
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        },
        max_rss_kib,
    }
}

/// What the `outside` directory holds before every case.
pub const PRECIOUS: &[u8] = b"precious, must never change\n";

/// Everything a run must leave alone: the `outside/` and `arch/` trees (walker and
/// ctimes) and the top directory itself (its names, mode, mtime and ctime).
#[derive(Debug, PartialEq, Eq)]
struct Guarded {
    outside: Tree,
    outside_ctimes: BTreeMap<PathBuf, (i64, i64)>,
    arch: Tree,
    arch_ctimes: BTreeMap<PathBuf, (i64, i64)>,
    top_names: BTreeSet<OsString>,
    top_meta: (u32, i64, i64, i64, i64),
}

/// A temporary directory laid out as `dst/` (created empty: haul extracts there),
/// `outside/f` and `outside/sub/g` (a sibling of DST that must never change), and `arch/`
/// (the case's archives). [`Scene::arm`] records all but `dst/`; [`Scene::check`] compares.
pub struct Scene {
    pub tmp: tempfile::TempDir,
    pub dst: PathBuf,
    pub outside: PathBuf,
    pub arch: PathBuf,
    as_user: Option<(u32, u32)>,
    before: Option<Guarded>,
}

impl Scene {
    /// A scene haul runs in as the current user (root).
    pub fn new() -> Scene {
        let tmp = tmp();
        let dst = tmp.path().join("dst");
        let outside = tmp.path().join("outside");
        let arch = tmp.path().join("arch");
        fixture::write_file(&outside.join("f"), PRECIOUS);
        fixture::write_file(&outside.join("sub/g"), b"g\n");
        fixture::mkdir(&dst);
        fixture::mkdir(&arch);
        Scene {
            tmp,
            dst,
            outside,
            arch,
            as_user: None,
            before: None,
        }
    }

    /// A scene haul runs in as [`NOBODY`], who owns all of it (`outside` too, so that a
    /// write or chmod through a symlink would succeed and a missing check would show).
    pub fn for_nobody() -> Scene {
        let mut s = Scene::new();
        fixture::chown_tree(s.tmp.path(), NOBODY.0, NOBODY.1);
        s.as_user = Some(NOBODY);
        s
    }

    /// The top of the scene.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `outside/REL` as an absolute path string (for absolute names and link targets).
    pub fn outside_abs(&self, rel: &str) -> String {
        let p = if rel.is_empty() {
            self.outside.clone()
        } else {
            self.outside.join(rel)
        };
        p.to_str().unwrap().to_string()
    }

    /// Writes an archive into `arch/`; returns its path.
    pub fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.arch.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Records everything but `dst/`; call once the scene is set up, before haul runs.
    pub fn arm(&mut self) {
        self.before = Some(self.guarded());
    }

    fn guarded(&self) -> Guarded {
        let md = fs::symlink_metadata(self.root()).unwrap();
        Guarded {
            outside: walk(&self.outside),
            outside_ctimes: ctimes(&self.outside),
            arch: walk(&self.arch),
            arch_ctimes: ctimes(&self.arch),
            top_names: fs::read_dir(self.root())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect(),
            top_meta: (
                md.mode(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec(),
            ),
        }
    }

    /// `haul archive extract IN DST --json EXTRA...`, with the deadline.
    pub fn extract(&self, archive: &Path, extra: &[&str]) -> Run {
        let mut a: Vec<OsString> = vec!["archive".into(), "extract".into()];
        a.push(archive.into());
        a.push(self.dst.clone().into());
        a.push("--json".into());
        a.extend(extra.iter().map(OsString::from));
        run_deadline(&a, &self.spec())
    }

    /// `haul archive extract - DST --json EXTRA...`, the archive fed on stdin.
    pub fn extract_stdin(&self, bytes: &[u8], extra: &[&str]) -> Run {
        let mut a: Vec<OsString> = vec!["archive".into(), "extract".into(), "-".into()];
        a.push(self.dst.clone().into());
        a.push("--json".into());
        a.extend(extra.iter().map(OsString::from));
        let spec = RunSpec {
            stdin: Some(bytes.to_vec()),
            ..self.spec()
        };
        run_deadline(&a, &spec)
    }

    /// The run options of this scene's user.
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            as_user: self.as_user,
            ..RunSpec::default()
        }
    }

    /// `haul archive list IN --json`, with the deadline.
    pub fn list(&self, archive: &Path) -> Run {
        let a: Vec<OsString> = vec![
            "archive".into(),
            "list".into(),
            archive.into(),
            "--json".into(),
        ];
        run_deadline(&a, &self.spec())
    }

    /// The checks every case shares, `case` naming it in messages: [`check_run`],
    /// [`Scene::check_outside`] and [`Scene::check_dst`].
    pub fn check(&self, case: &str, run: &Run, codes: &[i32], files: &[(&str, &[u8])]) {
        // What haul did, for the captured output of a failing test (and --nocapture).
        eprintln!(
            "{case}: exit {}, failed {:?}, notices {:?}",
            run.r.code,
            failed(&run.r),
            notices(&run.r)
        );
        check_run(case, &run.r, codes);
        self.check_outside(case, &run.r);
        self.check_dst(case, &run.r, files);
    }

    /// Nothing outside `dst/` changed: `outside/` and `arch/` (walker and ctimes), and the
    /// top directory (no new name in it, same mode and times).
    pub fn check_outside(&self, case: &str, r: &RunResult) {
        let before = self.before.as_ref().expect("Scene::arm not called");
        let now = self.guarded();
        let ctx = format!("{case}: something outside DST changed\n{}\n", r.describe());
        assert_trees_equal(&before.outside, &now.outside, &CompareOpts::default(), &ctx);
        assert_trees_equal(&before.arch, &now.arch, &CompareOpts::default(), &ctx);
        assert_eq!(
            before.outside_ctimes, now.outside_ctimes,
            "{ctx}(ctime under outside/)"
        );
        assert_eq!(
            before.arch_ctimes, now.arch_ctimes,
            "{ctx}(ctime under arch/)"
        );
        assert_eq!(before.top_names, now.top_names, "{ctx}(names next to DST)");
        assert_eq!(
            before.top_meta, now.top_meta,
            "{ctx}(DST's parent directory)"
        );
    }

    /// No `.haul-tmp.` leftovers in `dst/`; every regular file there is one of `files`
    /// (relative path, exact content; the path `"*"` stands for any path) with exactly that
    /// content, so that a truncated or stray file fails; nothing in `dst/` is the same inode
    /// as something in `outside/`.
    pub fn check_dst(&self, case: &str, r: &RunResult, files: &[(&str, &[u8])]) {
        let allowed: BTreeMap<&str, &[u8]> = files.iter().copied().collect();
        let outside_inodes: BTreeSet<(u64, u64)> = list_entries(&self.outside)
            .into_iter()
            .map(|(_, md)| (md.dev(), md.ino()))
            .collect();
        for e in walk_at(&self.dst) {
            let name = e.rel.to_string_lossy();
            assert!(
                !name.contains(".haul-tmp"),
                "{case}: temporary file left in DST: {name}\n{}",
                r.describe()
            );
            assert!(
                !outside_inodes.contains(&(e.md.dev(), e.md.ino())),
                "{case}: DST/{name} is the same inode as something outside DST\n{}",
                r.describe()
            );
            if e.md.is_file() {
                let want = allowed.get(name.as_ref()).or_else(|| allowed.get("*"));
                let Some(want) = want else {
                    panic!(
                        "{case}: unexpected file DST/{name} ({} bytes)\n{}",
                        e.md.len(),
                        r.describe()
                    );
                };
                let got = e.content.as_deref().unwrap_or_else(|| {
                    panic!("{case}: DST/{name} is {} bytes, too big", e.md.len())
                });
                assert!(
                    got == *want,
                    "{case}: DST/{name} has wrong content ({} bytes, want {}): {:?}\n{}",
                    got.len(),
                    want.len(),
                    String::from_utf8_lossy(&got[..got.len().min(80)]),
                    r.describe()
                );
            }
        }
    }

    /// The kind of `DST/rel`, if it exists, `rel` resolved without following any symlink
    /// (a symlink on the way counts as "not there").
    pub fn kind(&self, rel: &str) -> Option<Kind> {
        walk_at(&self.dst)
            .into_iter()
            .find(|e| e.rel == Path::new(rel))
            .map(|e| crate::kind_of(&e.md.file_type()))
    }

    /// The content of the regular file `DST/rel` (no symlink followed on the way).
    pub fn content(&self, rel: &str) -> Option<Vec<u8>> {
        walk_at(&self.dst)
            .into_iter()
            .find(|e| e.rel == Path::new(rel))
            .and_then(|e| e.content)
    }
}

/// The checks every case shares about the process itself: the exit code is one
/// of `codes` and not 101, and stderr has no "panicked".
pub fn check_run(case: &str, r: &RunResult, codes: &[i32]) {
    assert_ne!(r.code, 101, "{case}: haul panicked:\n{}", r.describe());
    assert!(
        !r.stderr.contains("panicked"),
        "{case}: haul panicked:\n{}",
        r.describe()
    );
    assert!(
        codes.contains(&r.code),
        "{case}: exit code {} not one of {codes:?}:\n{}",
        r.code,
        r.describe()
    );
}

impl Default for Scene {
    fn default() -> Self {
        Scene::new()
    }
}

/// One entry found by [`walk_at`].
pub struct AtEntry {
    /// Path relative to the walked root.
    pub rel: PathBuf,
    /// Its `lstat`.
    pub md: fs::Metadata,
    /// The content of a regular file of at most 64 MiB.
    pub content: Option<Vec<u8>>,
}

/// Every entry under `root` (not `root` itself), found through open directory
/// descriptors (`/proc/self/fd/N/NAME`) rather than whole paths, so that trees deeper than
/// PATH_MAX can be walked; nothing is followed.
pub fn walk_at(root: &Path) -> Vec<AtEntry> {
    let mut out = Vec::new();
    let dir = open_dir_nofollow(root).unwrap_or_else(|e| panic!("open {}: {e}", root.display()));
    walk_fd(&dir, Path::new(""), &mut out);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn open_dir_nofollow(p: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(p)
}

fn walk_fd(dir: &fs::File, prefix: &Path, out: &mut Vec<AtEntry>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let mut names: Vec<OsString> = fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", prefix.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let p = base.join(&name);
        let rel = prefix.join(&name);
        let md =
            fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", rel.display()));
        let mut content = None;
        if md.is_dir() {
            let sub =
                open_dir_nofollow(&p).unwrap_or_else(|e| panic!("open {}: {e}", rel.display()));
            walk_fd(&sub, &rel, out);
        } else if md.is_file() && md.len() <= 64 << 20 {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", rel.display()));
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            content = Some(v);
        }
        out.push(AtEntry { rel, md, content });
    }
}

/// The JSON report of a run (`None` if stdout is not one JSON object).
pub fn report(r: &RunResult) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(r.stdout.trim())
        .ok()
        .filter(|v| v.is_object())
}

/// The `path`s of the report's `failed` list (empty without a report).
pub fn failed(r: &RunResult) -> Vec<String> {
    list_paths(r, "failed")
}

/// The `path`s of the report's `notices` list (empty without a report).
pub fn notices(r: &RunResult) -> Vec<String> {
    list_paths(r, "notices")
}

fn list_paths(r: &RunResult, key: &str) -> Vec<String> {
    report(r)
        .and_then(|v| v.get(key).and_then(|f| f.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("path").and_then(|p| p.as_str()).map(String::from))
        .collect()
}

/// `true` if the run names `what`: in a `failed` path, in the report's `error`, or on
/// stderr.
pub fn names(r: &RunResult, what: &str) -> bool {
    failed(r).iter().any(|p| p.contains(what))
        || r.stderr.contains(what)
        || report(r)
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .is_some_and(|e| e.contains(what))
}
