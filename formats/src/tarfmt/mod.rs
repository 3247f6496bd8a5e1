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
use std::io;

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

pub(crate) fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// Parses a PAX time: `secs[.frac]`, possibly negative.
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
pub(crate) fn checksum(block: &[u8; BLOCK]) -> u32 {
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

mod read;
mod write;

pub use read::TarReader;
pub use write::{acl_text, TarWriter};

#[cfg(test)]
mod tests;
