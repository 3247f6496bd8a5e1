//! haul's protocol over an ssh pipe: a preamble, then length-prefixed
//! frames each holding one [`Message`]. Pure encoding and decoding; who
//! sends what when is the engine's business.
//!
//! The peer is untrusted in both directions (a hostile `haul serve`, or a
//! hostile client of one). rsync's 2024 CVEs came from trusting a peer's
//! lengths, counts and indexes (CVE-2024-12084: a checksum length larger
//! than the buffer; CVE-2024-12085: an uninitialised stack read through a
//! short checksum; CVE-2024-12087: a file index the peer never announced;
//! CVE-2024-12088: `--safe-links` bypass through paths). So here:
//!
//! - a frame's length is checked against [`MAX_FRAME`] before anything is
//!   allocated for it, and a zstd payload must declare a content size within
//!   the same cap (its actual size is checked too);
//! - every length and count inside a payload is checked against the bytes
//!   present (a count never sizes an allocation beyond what the remaining
//!   bytes could hold) and against the caps below;
//! - digests are exactly 32 bytes, by construction of the encoding;
//! - indexes are checked against what was announced by [`Indexes`];
//! - paths come back raw; the receiver turns them into components with
//!   [`checked_rel_path`], which refuses anything that could leave its root.
//!
//! Everything the decoder refuses, the encoder refuses too, so what one
//! side encodes the other decodes.
//!
//! ```
//! use haul_formats::wire::{encode_frame, encode_preamble, Decoder, Message, Received};
//!
//! # fn main() -> Result<(), haul_formats::wire::WireError> {
//! let mut bytes = encode_preamble("0.1.0")?;
//! encode_frame(&Message::Skip { index: 0 }, None, &mut bytes)?;
//! encode_frame(&Message::Done, Some(3), &mut bytes)?;
//!
//! // Bytes arrive in pieces; the decoder says "need more" with `None`.
//! let mut d = Decoder::new();
//! let mut got = Vec::new();
//! for piece in bytes.chunks(5) {
//!     d.feed(piece);
//!     while let Some(r) = d.next()? {
//!         got.push(r);
//!     }
//! }
//! d.finish()?;
//! assert!(matches!(&got[0], Received::Preamble(p) if p.haul_version == "0.1.0"));
//! assert_eq!(got[1], Received::Message(Message::Skip { index: 0 }));
//! assert_eq!(got[2], Received::Message(Message::Done));
//! # Ok(())
//! # }
//! ```

use std::{cell::RefCell, fmt, io};

/// The first bytes either side sends. The NUL and the ^Z make it something
/// no shell start-up file or login banner prints by accident; `\r\n`
/// catches a pipe that rewrites line ends.
pub const MAGIC: [u8; 8] = *b"\0HAUL\x1a\r\n";
/// The protocol version this build speaks (in the preamble and in
/// [`Message::Hello`]).
pub const PROTOCOL_VERSION: u16 = 1;
/// The longest haul version string a preamble may carry.
pub const MAX_VERSION_LEN: usize = 64;
/// Bytes in a frame header: `u32` length, kind, flags.
pub const FRAME_HEADER_LEN: usize = 6;
/// The largest frame payload, compressed or not, and the largest a zstd
/// payload may decompress to.
pub const MAX_FRAME: usize = 16 << 20;
/// Frame flag bit 0: the payload is one zstd frame.
pub const FLAG_ZSTD: u8 = 1;
/// The longest path (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest xattr name (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// The longest xattr value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// The most xattrs one entry may carry.
pub const MAX_XATTRS: usize = 4096;
/// The most bytes of xattr names and values one entry may carry.
pub const MAX_XATTRS_TOTAL: usize = 1 << 20;
/// The most data regions one entry may carry.
pub const MAX_REGIONS: usize = 1 << 20;
/// The most old chunks one [`Message::Need`] may list (the frame size
/// bounds it well below this: each takes at least 34 bytes).
pub const MAX_CHUNKS: usize = 16 << 20;
/// The longest text field: an error message, an option string.
pub const MAX_TEXT: usize = 64 << 10;
/// The most strings in one option list (`--exclude`, `--usermap`...).
pub const MAX_STRINGS: usize = 4096;
/// How much of a stream that is not haul's is shown in
/// [`WireError::NotHaul`], and how much the decoder waits for before
/// saying so (unless a newline or the end of the stream comes first).
pub const PREVIEW_LEN: usize = 64;

/// zstd window cap for payloads: a payload is at most [`MAX_FRAME`] =
/// 2^24 bytes, so no frame needs a larger window.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Payloads shorter than this are sent plain: zstd's frame overhead would
/// eat what it saves.
const MIN_COMPRESS: usize = 64;

/// Errors of the wire codec. Each names the message kind, the field and
/// where in the stream, as far as they are known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream does not start with [`MAGIC`].
    #[error(
        "the peer did not answer with haul's protocol preamble; it sent {got} \
         (does a login banner or shell start-up file print to stdout?)"
    )]
    NotHaul {
        /// The first bytes read, escaped and quoted.
        got: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "the peer (haul {peer_version}) speaks protocol version {got}; \
         this haul speaks version {supported}"
    )]
    Protocol {
        /// The peer's protocol version.
        got: u16,
        /// The peer's haul version string, as it sent it.
        peer_version: String,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// The preamble's version string is not printable ASCII.
    #[error("protocol preamble: the version string {got} is not printable ASCII")]
    BadVersion {
        /// The bytes, escaped and quoted.
        got: String,
    },
    /// A frame declares a payload over [`MAX_FRAME`].
    #[error("frame at byte {offset}: payload length {len} is over the limit of {max}")]
    FrameTooLarge {
        /// Stream offset of the frame header.
        offset: u64,
        /// The declared length.
        len: u64,
        /// [`MAX_FRAME`].
        max: u64,
    },
    /// A frame's kind byte names no message.
    #[error("frame at byte {offset}: unknown message kind {kind}")]
    UnknownKind {
        /// Stream offset of the frame header.
        offset: u64,
        /// The kind byte.
        kind: u8,
    },
    /// A frame sets flag bits this version does not know.
    #[error("{kind} frame at byte {offset}: unknown flags {flags:#04x}")]
    Flags {
        /// The message kind.
        kind: &'static str,
        /// Stream offset of the frame header.
        offset: u64,
        /// The flags byte.
        flags: u8,
    },
    /// A zstd payload that is damaged, not exactly one frame, or too large.
    #[error("{kind} frame at byte {offset}: zstd payload: {reason}")]
    Zstd {
        /// The message kind.
        kind: &'static str,
        /// Stream offset of the frame header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A field of a payload is malformed or over its cap.
    #[error("{kind} frame at byte {offset}: {field} (payload byte {at}): {reason}")]
    Field {
        /// The message kind.
        kind: &'static str,
        /// Stream offset of the frame header.
        offset: u64,
        /// The field.
        field: &'static str,
        /// Offset of the field in the (decompressed) payload.
        at: u64,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside the preamble or a frame.
    #[error("the stream ends inside the {what} at byte {offset}: {have} of {need} bytes")]
    Truncated {
        /// "preamble" or the message kind.
        what: &'static str,
        /// Stream offset where it started.
        offset: u64,
        /// Bytes present.
        have: u64,
        /// Bytes needed (at least).
        need: u64,
    },
    /// A message names an index that was not announced, or announces one
    /// out of order.
    #[error("{kind}: entry index {index}: {reason}")]
    Index {
        /// The message kind.
        kind: &'static str,
        /// The index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A message this codec would refuse to decode.
    #[error("cannot encode {kind}: {field}: {reason}")]
    Unencodable {
        /// The message kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A path a receiver must not use (see [`checked_rel_path`]).
    #[error("path {path}: {reason}")]
    Path {
        /// The path, escaped and quoted.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl From<WireError> for io::Error {
    /// A message that cannot be encoded is [`io::ErrorKind::InvalidInput`];
    /// everything else is bad bytes from the peer,
    /// [`io::ErrorKind::InvalidData`].
    fn from(e: WireError) -> Self {
        let kind = match e {
            WireError::Unencodable { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Bytes for an error message: quoted, non-printable bytes escaped, cut
/// at [`PREVIEW_LEN`].
fn escape(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b.iter().take(PREVIEW_LEN) {
        s.extend(std::ascii::escape_default(c).map(char::from));
    }
    s.push('"');
    if b.len() > PREVIEW_LEN {
        s.push_str("...");
    }
    s
}

// ---------------------------------------------------------------------
// Messages

/// What the client asks the serving side to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The client sends a tree; the server receives it under its root.
    Push = 0,
    /// The server sends the tree under its root; the client receives it.
    Pull = 1,
    /// The client only asks [`Message::Query`] questions.
    Query = 2,
}

/// The copy flags that travel in [`Message::Hello`]: everything either
/// side needs to know of the user's command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `--delete`.
    pub delete: bool,
    /// `--checksum`.
    pub checksum: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--verify`.
    pub verify: bool,
    /// `--no-owner`: owners stay numeric and are not applied.
    pub no_owner: bool,
    /// `--no-xattrs`.
    pub no_xattrs: bool,
    /// `--no-acls`.
    pub no_acls: bool,
    /// `--map-by-name`: resolved with the receiving host's databases.
    pub map_by_name: bool,
    /// `--exclude` globs, in order.
    pub exclude: Vec<String>,
    /// `--usermap` specs, in order.
    pub usermap: Vec<String>,
    /// `--groupmap` specs, in order.
    pub groupmap: Vec<String>,
    /// `--chown` spec.
    pub chown: Option<String>,
    /// zstd level for frames; `None` is `--no-compress`.
    pub compress_level: Option<i32>,
}

/// A file type on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File = 0,
    /// A directory.
    Dir = 1,
    /// A symbolic link.
    Symlink = 2,
    /// A character device.
    CharDev = 3,
    /// A block device.
    BlockDev = 4,
    /// A named pipe.
    Fifo = 5,
    /// A socket.
    Socket = 6,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<EntryKind> {
        use EntryKind::*;
        Some(match b {
            0 => File,
            1 => Dir,
            2 => Symlink,
            3 => CharDev,
            4 => BlockDev,
            5 => Fifo,
            6 => Socket,
            _ => return None,
        })
    }
}

/// A timestamp: seconds since the epoch and nanoseconds (below 10^9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireTime {
    /// Seconds since 1970-01-01 UTC; negative before.
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

/// One entry of the sender's tree, announced before anything refers to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its index: 0 for the first entry, then one more for each.
    pub index: u64,
    /// Its path under the root, raw (see [`checked_rel_path`]).
    pub path: Vec<u8>,
    /// Its type.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (a file's length, a symlink's target length).
    pub size: u64,
    /// Device number of a device node, else 0.
    pub rdev: u64,
    /// Access time.
    pub atime: WireTime,
    /// Modification time.
    pub mtime: WireTime,
    /// Extended attributes (ACLs included): name, value.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A symlink's target: present exactly for symlinks.
    pub symlink_target: Option<Vec<u8>>,
    /// For a further name of a hardlinked inode: the index of the entry
    /// that first named it (not a directory).
    pub hardlink_of: Option<u64>,
    /// A sparse file's data regions (offset, length): in order, not
    /// overlapping, within `size`; files only. `None` means all data.
    pub regions: Option<Vec<(u64, u64)>>,
}

/// One content-defined chunk of the receiver's old version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldChunk {
    /// The chunk's blake3.
    pub id: [u8; 32],
    /// Where it starts in the old file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// What a [`Message::Query`] asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryKind {
    /// The host's user database.
    Users,
    /// The host's group database.
    Groups,
    /// Whether anything uses a path: pid files, processes, ports.
    PathInUse(Vec<u8>),
}

/// One message of the protocol. The frame kind byte is given with each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Kind 1: the client's opening: who it is and what it wants.
    Hello {
        /// The client's protocol version.
        protocol: u16,
        /// The client's haul version.
        haul_version: String,
        /// What the client asks for.
        role: Role,
        /// The server-side root, raw (may be absolute; empty is home).
        root: Vec<u8>,
        /// The copy flags.
        options: Box<Options>,
    },
    /// Kind 2: the server's acceptance of a Hello.
    HelloOk {
        /// The server's protocol version.
        protocol: u16,
        /// The server's haul version.
        haul_version: String,
    },
    /// Kind 3: an entry of the sender's tree.
    Entry(Box<Entry>),
    /// Kind 4: the receiver asks for a file's content, with the chunks of its
    /// old version it could reuse.
    Need {
        /// The entry.
        index: u64,
        /// The old version's chunks, for a delta; `None` for none.
        old_chunks: Option<Vec<OldChunk>>,
    },
    /// Kind 5: the receiver has this entry already: nothing to send.
    Skip {
        /// The entry.
        index: u64,
    },
    /// Kind 6: literal bytes of a file at an offset.
    Data {
        /// The entry.
        index: u64,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Kind 7: reuse of a chunk the receiver listed in its Need, at an offset.
    Chunk {
        /// The entry.
        index: u64,
        /// Where the chunk goes.
        offset: u64,
        /// The chunk's id, as the receiver listed it.
        id: [u8; 32],
    },
    /// Kind 8: a file's content is complete.
    FileDone {
        /// The entry.
        index: u64,
        /// blake3 of the whole content, for the receiver to check.
        blake3: [u8; 32],
    },
    /// Kind 9: remove a path under the receiver's root (`--delete`).
    Delete {
        /// The path, raw.
        path: Vec<u8>,
    },
    /// Kind 10: the sender announced its last entry.
    EndOfList,
    /// Kind 11: this side has nothing more to send.
    Done,
    /// Kind 12: the summary of a run, JSON.
    Summary {
        /// The JSON bytes (not checked here).
        json: Vec<u8>,
    },
    /// Kind 13: something failed: one entry, or the whole session.
    Error {
        /// The entry, or `None` for the session.
        index: Option<u64>,
        /// What went wrong.
        message: String,
    },
    /// Kind 14: a question about the serving host.
    Query {
        /// What is asked.
        kind: QueryKind,
    },
    /// Kind 15: the answer to a Query, JSON.
    QueryReply {
        /// The JSON bytes (not checked here).
        json: Vec<u8>,
    },
}

/// The kind bytes, in [`Message`] order; index 0 is unused.
const KIND_NAMES: [&str; 16] = [
    "",
    "Hello",
    "HelloOk",
    "Entry",
    "Need",
    "Skip",
    "Data",
    "Chunk",
    "FileDone",
    "Delete",
    "EndOfList",
    "Done",
    "Summary",
    "Error",
    "Query",
    "QueryReply",
];

impl Message {
    /// The frame kind byte.
    pub fn kind_byte(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::HelloOk { .. } => 2,
            Message::Entry(_) => 3,
            Message::Need { .. } => 4,
            Message::Skip { .. } => 5,
            Message::Data { .. } => 6,
            Message::Chunk { .. } => 7,
            Message::FileDone { .. } => 8,
            Message::Delete { .. } => 9,
            Message::EndOfList => 10,
            Message::Done => 11,
            Message::Summary { .. } => 12,
            Message::Error { .. } => 13,
            Message::Query { .. } => 14,
            Message::QueryReply { .. } => 15,
        }
    }

    /// The message kind's name, as errors show it.
    pub fn name(&self) -> &'static str {
        KIND_NAMES[usize::from(self.kind_byte())]
    }

    /// The entry index the message refers to, if any (an Entry's own index
    /// included).
    pub fn index(&self) -> Option<u64> {
        match self {
            Message::Entry(e) => Some(e.index),
            Message::Need { index, .. }
            | Message::Skip { index }
            | Message::Data { index, .. }
            | Message::Chunk { index, .. }
            | Message::FileDone { index, .. } => Some(*index),
            Message::Error { index, .. } => *index,
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Push => "push",
            Role::Pull => "pull",
            Role::Query => "query",
        })
    }
}

// ---------------------------------------------------------------------
// Checks shared by the encoder and the decoder, so that both refuse the
// same values. Each returns the reason in words.

type Check = Result<(), String>;

fn cap(len: usize, max: usize) -> Check {
    if len > max {
        return Err(format!("{len} bytes is over the limit of {max}"));
    }
    Ok(())
}

fn raw_path(p: &[u8]) -> Check {
    cap(p.len(), MAX_PATH)?;
    if p.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    Ok(())
}

fn nanos(n: u32) -> Check {
    if n >= 1_000_000_000 {
        return Err(format!("{n} nanoseconds is not below 10^9"));
    }
    Ok(())
}

fn xattr_name(n: &[u8]) -> Check {
    if n.is_empty() {
        return Err("empty name".into());
    }
    cap(n.len(), MAX_XATTR_NAME)?;
    if n.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    Ok(())
}

fn count(n: u64, max: usize) -> Check {
    if n > max as u64 {
        return Err(format!("count {n} is over the limit of {max}"));
    }
    Ok(())
}

/// Checks of an entry as a whole, after its fields.
fn entry_checks(e: &Entry) -> Result<(), (&'static str, String)> {
    if e.perm > 0o7777 {
        return Err(("perm", format!("{:#o} has bits above 0o7777", e.perm)));
    }
    if (e.kind == EntryKind::Symlink) != e.symlink_target.is_some() {
        return Err((
            "symlink_target",
            "present exactly for symlinks, but not here".into(),
        ));
    }
    if let Some(h) = e.hardlink_of {
        if h >= e.index {
            return Err((
                "hardlink_of",
                format!("{h} is not an earlier entry than {}", e.index),
            ));
        }
        if e.kind == EntryKind::Dir {
            return Err(("hardlink_of", "a directory cannot be a hardlink".into()));
        }
    }
    if let Some(r) = &e.regions {
        if e.kind != EntryKind::File {
            return Err(("regions", "only files have data regions".into()));
        }
        let mut end = 0u64;
        for &(off, len) in r {
            let stop = off
                .checked_add(len)
                .ok_or(("regions", "overflow".to_string()))?;
            if off < end || stop > e.size {
                return Err((
                    "regions",
                    format!(
                        "region ({off}, {len}) overlaps the previous or passes the size {}",
                        e.size
                    ),
                ));
            }
            end = stop;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_strings(out: &mut Vec<u8>, v: &[String]) {
    put_varint(out, v.len() as u64);
    for s in v {
        put_bytes(out, s.as_bytes());
    }
}

fn put_time(out: &mut Vec<u8>, t: WireTime) {
    put_varint(out, zigzag(t.secs));
    put_varint(out, u64::from(t.nanos));
}

/// Encoder-side checks: what the decoder would refuse. Tests turn them
/// off to build the bytes a hostile peer would send.
struct Enc {
    kind: &'static str,
    checked: bool,
}

impl Enc {
    fn check(&self, field: &'static str, r: Check) -> Result<(), WireError> {
        if !self.checked {
            return Ok(());
        }
        r.map_err(|reason| WireError::Unencodable {
            kind: self.kind,
            field,
            reason,
        })
    }
}

impl Enc {
    fn check_entry(&self, en: &Entry) -> Result<(), WireError> {
        if !self.checked {
            return Ok(());
        }
        entry_checks(en).map_err(|(field, reason)| WireError::Unencodable {
            kind: "Entry",
            field,
            reason,
        })
    }
}

fn check_strings(e: &Enc, field: &'static str, v: &[String]) -> Result<(), WireError> {
    e.check(field, count(v.len() as u64, MAX_STRINGS))?;
    for s in v {
        e.check(field, cap(s.len(), MAX_TEXT))?;
    }
    Ok(())
}

/// The payload of `msg`, uncompressed; with `checked`, refusing what the
/// decoder would refuse.
fn encode_payload(msg: &Message, out: &mut Vec<u8>, checked: bool) -> Result<(), WireError> {
    let e = Enc {
        kind: msg.name(),
        checked,
    };
    match msg {
        Message::Hello {
            protocol,
            haul_version,
            role,
            root,
            options: o,
        } => {
            e.check("haul_version", cap(haul_version.len(), MAX_VERSION_LEN))?;
            e.check("root", raw_path(root))?;
            check_strings(&e, "exclude", &o.exclude)?;
            check_strings(&e, "usermap", &o.usermap)?;
            check_strings(&e, "groupmap", &o.groupmap)?;
            if let Some(c) = &o.chown {
                e.check("chown", cap(c.len(), MAX_TEXT))?;
            }
            put_varint(out, u64::from(*protocol));
            put_bytes(out, haul_version.as_bytes());
            out.push(*role as u8);
            put_bytes(out, root);
            let flags = [
                o.delete,
                o.checksum,
                o.dry_run,
                o.verify,
                o.no_owner,
                o.no_xattrs,
                o.no_acls,
                o.map_by_name,
            ]
            .iter()
            .enumerate()
            .fold(0u64, |acc, (bit, &on)| acc | (u64::from(on) << bit));
            put_varint(out, flags);
            put_strings(out, &o.exclude);
            put_strings(out, &o.usermap);
            put_strings(out, &o.groupmap);
            match &o.chown {
                None => out.push(0),
                Some(c) => {
                    out.push(1);
                    put_bytes(out, c.as_bytes());
                }
            }
            match o.compress_level {
                None => out.push(0),
                Some(l) => {
                    out.push(1);
                    put_varint(out, zigzag(i64::from(l)));
                }
            }
        }
        Message::HelloOk {
            protocol,
            haul_version,
        } => {
            e.check("haul_version", cap(haul_version.len(), MAX_VERSION_LEN))?;
            put_varint(out, u64::from(*protocol));
            put_bytes(out, haul_version.as_bytes());
        }
        Message::Entry(en) => {
            e.check("path", raw_path(&en.path))?;
            e.check("atime", nanos(en.atime.nanos))?;
            e.check("mtime", nanos(en.mtime.nanos))?;
            e.check("xattrs", count(en.xattrs.len() as u64, MAX_XATTRS))?;
            let mut total = 0usize;
            for (n, v) in &en.xattrs {
                e.check("xattr name", xattr_name(n))?;
                e.check("xattr value", cap(v.len(), MAX_XATTR_VALUE))?;
                total += n.len() + v.len();
            }
            e.check("xattrs", cap(total, MAX_XATTRS_TOTAL))?;
            if let Some(t) = &en.symlink_target {
                e.check("symlink_target", raw_path(t))?;
            }
            if let Some(r) = &en.regions {
                e.check("regions", count(r.len() as u64, MAX_REGIONS))?;
            }
            e.check_entry(en)?;
            put_varint(out, en.index);
            put_bytes(out, &en.path);
            out.push(en.kind as u8);
            put_varint(out, u64::from(en.perm));
            put_varint(out, u64::from(en.uid));
            put_varint(out, u64::from(en.gid));
            put_varint(out, en.size);
            put_varint(out, en.rdev);
            put_time(out, en.atime);
            put_time(out, en.mtime);
            put_varint(out, en.xattrs.len() as u64);
            for (n, v) in &en.xattrs {
                put_bytes(out, n);
                put_bytes(out, v);
            }
            match &en.symlink_target {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    put_bytes(out, t);
                }
            }
            match en.hardlink_of {
                None => out.push(0),
                Some(h) => {
                    out.push(1);
                    put_varint(out, h);
                }
            }
            match &en.regions {
                None => out.push(0),
                Some(r) => {
                    out.push(1);
                    put_varint(out, r.len() as u64);
                    for &(off, len) in r {
                        put_varint(out, off);
                        put_varint(out, len);
                    }
                }
            }
        }
        Message::Need { index, old_chunks } => {
            put_varint(out, *index);
            match old_chunks {
                None => out.push(0),
                Some(c) => {
                    e.check("old_chunks", count(c.len() as u64, MAX_CHUNKS))?;
                    out.push(1);
                    put_varint(out, c.len() as u64);
                    for ch in c {
                        let sum = ch.offset.checked_add(ch.len);
                        e.check(
                            "old_chunks",
                            sum.map(drop).ok_or("offset + len overflows".into()),
                        )?;
                        out.extend_from_slice(&ch.id);
                        put_varint(out, ch.offset);
                        put_varint(out, ch.len);
                    }
                }
            }
        }
        Message::Skip { index } => put_varint(out, *index),
        Message::Data {
            index,
            offset,
            bytes,
        } => {
            let sum = offset.checked_add(bytes.len() as u64);
            e.check(
                "offset",
                sum.map(drop).ok_or("offset + length overflows".into()),
            )?;
            put_varint(out, *index);
            put_varint(out, *offset);
            out.extend_from_slice(bytes);
        }
        Message::Chunk { index, offset, id } => {
            put_varint(out, *index);
            put_varint(out, *offset);
            out.extend_from_slice(id);
        }
        Message::FileDone { index, blake3 } => {
            put_varint(out, *index);
            out.extend_from_slice(blake3);
        }
        Message::Delete { path } => {
            e.check("path", raw_path(path))?;
            put_bytes(out, path);
        }
        Message::EndOfList | Message::Done => {}
        Message::Summary { json } | Message::QueryReply { json } => out.extend_from_slice(json),
        Message::Error { index, message } => {
            e.check("message", cap(message.len(), MAX_TEXT))?;
            match index {
                None => out.push(0),
                Some(i) => {
                    out.push(1);
                    put_varint(out, *i);
                }
            }
            put_bytes(out, message.as_bytes());
        }
        Message::Query { kind } => match kind {
            QueryKind::Users => out.push(0),
            QueryKind::Groups => out.push(1),
            QueryKind::PathInUse(p) => {
                e.check("path", raw_path(p))?;
                out.push(2);
                put_bytes(out, p);
            }
        },
    }
    Ok(())
}

/// The preamble this side sends first: [`MAGIC`], [`PROTOCOL_VERSION`]
/// (u16 LE), then `haul_version` (u8 length, printable ASCII, at most
/// [`MAX_VERSION_LEN`] bytes).
pub fn encode_preamble(haul_version: &str) -> Result<Vec<u8>, WireError> {
    let v = haul_version.as_bytes();
    if v.len() > MAX_VERSION_LEN || !v.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(WireError::Unencodable {
            kind: "preamble",
            field: "haul_version",
            reason: format!(
                "{} is not printable ASCII of at most {MAX_VERSION_LEN} bytes",
                escape(v)
            ),
        });
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(v.len() as u8);
    out.extend_from_slice(v);
    Ok(out)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, comp) = c.as_mut().expect("just set");
        // The bulk compressor writes the content size into the frame
        // header, which the decoder requires.
        comp.compress(data)
    })
}

/// Appends one frame holding `msg` to `out`. With `compress` set to a zstd
/// level, a payload of 64 bytes or more is compressed, and sent that way
/// if that makes it smaller. Fails, with nothing appended, on a message the
/// decoder would refuse (a field over its cap, a payload over
/// [`MAX_FRAME`]).
pub fn encode_frame(
    msg: &Message,
    compress: Option<i32>,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = encode_payload(msg, out, true) {
        out.truncate(start);
        return Err(e);
    }
    let plain_len = out.len() - start - FRAME_HEADER_LEN;
    if plain_len > MAX_FRAME {
        out.truncate(start);
        return Err(WireError::Unencodable {
            kind: msg.name(),
            field: "payload",
            reason: format!("{plain_len} bytes is over the frame limit of {MAX_FRAME}"),
        });
    }
    let mut flags = 0;
    if let Some(level) = compress.filter(|_| plain_len >= MIN_COMPRESS) {
        let z = match zstd_compress(&out[start + FRAME_HEADER_LEN..], level) {
            Ok(z) => z,
            Err(e) => {
                out.truncate(start);
                return Err(WireError::Unencodable {
                    kind: msg.name(),
                    field: "payload",
                    reason: format!("zstd: {e}"),
                });
            }
        };
        if z.len() < plain_len {
            out.truncate(start + FRAME_HEADER_LEN);
            out.extend_from_slice(&z);
            flags |= FLAG_ZSTD;
        }
    }
    let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4] = msg.kind_byte();
    out[start + 5] = flags;
    Ok(())
}

// ---------------------------------------------------------------------
// Decoding

/// What the peer said in its preamble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Its protocol version (always [`PROTOCOL_VERSION`] once decoded: the
    /// decoder refuses others).
    pub protocol: u16,
    /// Its haul version.
    pub haul_version: String,
}

/// Decodes a preamble at the start of `buf`: `Ok(None)` if more bytes are
/// needed, else the preamble and its length. Bytes that are not a
/// preamble are reported once a newline or [`PREVIEW_LEN`] bytes have
/// arrived, so the error shows the whole line a banner printed.
pub fn decode_preamble(buf: &[u8]) -> Result<Option<(Preamble, usize)>, WireError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        if buf.len() >= PREVIEW_LEN || buf.contains(&b'\n') {
            return Err(WireError::NotHaul { got: escape(buf) });
        }
        return Ok(None);
    }
    let head = MAGIC.len() + 3;
    if buf.len() < head {
        return Ok(None);
    }
    let protocol = u16::from_le_bytes([buf[8], buf[9]]);
    let len = usize::from(buf[10]);
    let Some(v) = buf.get(head..head + len) else {
        return Ok(None);
    };
    if len > MAX_VERSION_LEN || !v.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(WireError::BadVersion { got: escape(v) });
    }
    let haul_version = String::from_utf8(v.to_vec()).expect("ASCII");
    if protocol != PROTOCOL_VERSION {
        return Err(WireError::Protocol {
            got: protocol,
            peer_version: haul_version,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(Some((
        Preamble {
            protocol,
            haul_version,
        },
        head + len,
    )))
}

/// A field that failed: which, where in the payload, why.
struct Bad {
    field: &'static str,
    at: usize,
    reason: String,
}

/// A cursor over a payload.
struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn bad(&self, field: &'static str, reason: impl Into<String>) -> Bad {
        Bad {
            field,
            at: self.pos,
            reason: reason.into(),
        }
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.left() {
            return Err(self.bad(
                field,
                format!("needs {n} bytes, the payload has {} left", self.left()),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Bad> {
        Ok(self.take(field, 1)?[0])
    }

    /// LEB128, at most 10 bytes, canonical (no trailing zero groups), so
    /// that a decoded message re-encodes to the same bytes.
    fn varint(&mut self, field: &'static str) -> Result<u64, Bad> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&c) = self.b.get(self.pos) else {
                self.pos = start;
                return Err(self.bad(field, "the payload ends inside a varint"));
            };
            self.pos += 1;
            if i == 9 && c > 1 {
                self.pos = start;
                return Err(self.bad(field, "varint overflows 64 bits"));
            }
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                if c == 0 && i > 0 {
                    self.pos = start;
                    return Err(self.bad(field, "overlong varint"));
                }
                return Ok(v);
            }
        }
        unreachable!("the 10th byte ends the loop")
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Bad> {
        let at = self.pos;
        let v = self.varint(field)?;
        u32::try_from(v).map_err(|_| Bad {
            field,
            at,
            reason: format!("{v} does not fit 32 bits"),
        })
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, Bad> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => {
                self.pos -= 1;
                Err(self.bad(field, format!("option tag {b} is neither 0 nor 1")))
            }
        }
    }

    /// A length-prefixed byte string, the length checked against `max`
    /// and the bytes present before anything is copied.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], Bad> {
        let at = self.pos;
        let n = self.varint(field)?;
        if n > max as u64 {
            self.pos = at;
            return Err(self.bad(field, format!("{n} bytes is over the limit of {max}")));
        }
        self.take(field, n as usize)
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, Bad> {
        let at = self.pos;
        let b = self.bytes(field, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| Bad {
            field,
            at,
            reason: "not UTF-8".into(),
        })
    }

    fn path(&mut self, field: &'static str) -> Result<Vec<u8>, Bad> {
        let at = self.pos;
        let p = self.bytes(field, MAX_PATH)?;
        raw_path(p).map_err(|reason| Bad { field, at, reason })?;
        Ok(p.to_vec())
    }

    fn digest(&mut self, field: &'static str) -> Result<[u8; 32], Bad> {
        Ok(self.take(field, 32)?.try_into().expect("32 bytes"))
    }

    /// A count, checked against `max` and against what the remaining
    /// bytes could hold at `min_item` bytes each; returns it with a
    /// capacity safe to allocate.
    fn count(&mut self, field: &'static str, max: usize, min_item: usize) -> Result<usize, Bad> {
        let at = self.pos;
        let n = self.varint(field)?;
        let r = count(n, max).and_then(|()| {
            if n > (self.left() / min_item) as u64 {
                Err(format!(
                    "count {n} cannot fit in the {} bytes left",
                    self.left()
                ))
            } else {
                Ok(())
            }
        });
        r.map_err(|reason| Bad { field, at, reason })?;
        Ok(n as usize)
    }

    fn strings(&mut self, field: &'static str) -> Result<Vec<String>, Bad> {
        let n = self.count(field, MAX_STRINGS, 1)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.text(field, MAX_TEXT)?);
        }
        Ok(v)
    }

    fn time(&mut self, field: &'static str) -> Result<WireTime, Bad> {
        let secs = unzigzag(self.varint(field)?);
        let at = self.pos;
        let n = self.u32(field)?;
        nanos(n).map_err(|reason| Bad { field, at, reason })?;
        Ok(WireTime { secs, nanos: n })
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }
}

fn decode_payload(kind: u8, p: &[u8]) -> Result<Message, Bad> {
    let mut r = Rd { b: p, pos: 0 };
    let msg = match kind {
        1 => {
            let protocol = r.varint("protocol")?;
            let protocol = u16::try_from(protocol).map_err(|_| Bad {
                field: "protocol",
                at: 0,
                reason: format!("{protocol} does not fit 16 bits"),
            })?;
            let haul_version = r.text("haul_version", MAX_VERSION_LEN)?;
            let role = match r.u8("role")? {
                0 => Role::Push,
                1 => Role::Pull,
                2 => Role::Query,
                b => {
                    r.pos -= 1;
                    return Err(r.bad("role", format!("unknown role {b}")));
                }
            };
            let root = r.path("root")?;
            let at = r.pos;
            let flags = r.varint("flags")?;
            if flags >> 8 != 0 {
                return Err(Bad {
                    field: "flags",
                    at,
                    reason: format!("unknown option bits {flags:#x}"),
                });
            }
            let bit = |i: u32| flags & (1 << i) != 0;
            let exclude = r.strings("exclude")?;
            let usermap = r.strings("usermap")?;
            let groupmap = r.strings("groupmap")?;
            let chown = if r.flag("chown")? {
                Some(r.text("chown", MAX_TEXT)?)
            } else {
                None
            };
            let compress_level = if r.flag("compress_level")? {
                let at = r.pos;
                let l = unzigzag(r.varint("compress_level")?);
                Some(i32::try_from(l).map_err(|_| Bad {
                    field: "compress_level",
                    at,
                    reason: format!("{l} does not fit 32 bits"),
                })?)
            } else {
                None
            };
            Message::Hello {
                protocol,
                haul_version,
                role,
                root,
                options: Box::new(Options {
                    delete: bit(0),
                    checksum: bit(1),
                    dry_run: bit(2),
                    verify: bit(3),
                    no_owner: bit(4),
                    no_xattrs: bit(5),
                    no_acls: bit(6),
                    map_by_name: bit(7),
                    exclude,
                    usermap,
                    groupmap,
                    chown,
                    compress_level,
                }),
            }
        }
        2 => {
            let protocol = r.varint("protocol")?;
            let protocol = u16::try_from(protocol).map_err(|_| Bad {
                field: "protocol",
                at: 0,
                reason: format!("{protocol} does not fit 16 bits"),
            })?;
            Message::HelloOk {
                protocol,
                haul_version: r.text("haul_version", MAX_VERSION_LEN)?,
            }
        }
        3 => Message::Entry(Box::new(decode_entry(&mut r)?)),
        4 => {
            let index = r.varint("index")?;
            let old_chunks = if r.flag("old_chunks")? {
                let n = r.count("old_chunks", MAX_CHUNKS, 34)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.digest("old_chunks")?;
                    let offset = r.varint("old_chunks")?;
                    let at = r.pos;
                    let len = r.varint("old_chunks")?;
                    if offset.checked_add(len).is_none() {
                        return Err(Bad {
                            field: "old_chunks",
                            at,
                            reason: "offset + len overflows".into(),
                        });
                    }
                    v.push(OldChunk { id, offset, len });
                }
                Some(v)
            } else {
                None
            };
            Message::Need { index, old_chunks }
        }
        5 => Message::Skip {
            index: r.varint("index")?,
        },
        6 => {
            let index = r.varint("index")?;
            let offset = r.varint("offset")?;
            let at = r.pos;
            let bytes = r.rest().to_vec();
            if offset.checked_add(bytes.len() as u64).is_none() {
                return Err(Bad {
                    field: "offset",
                    at,
                    reason: "offset + length overflows".into(),
                });
            }
            Message::Data {
                index,
                offset,
                bytes,
            }
        }
        7 => Message::Chunk {
            index: r.varint("index")?,
            offset: r.varint("offset")?,
            id: r.digest("id")?,
        },
        8 => Message::FileDone {
            index: r.varint("index")?,
            blake3: r.digest("blake3")?,
        },
        9 => Message::Delete {
            path: r.path("path")?,
        },
        10 => Message::EndOfList,
        11 => Message::Done,
        12 => Message::Summary {
            json: r.rest().to_vec(),
        },
        13 => {
            let index = if r.flag("index")? {
                Some(r.varint("index")?)
            } else {
                None
            };
            Message::Error {
                index,
                message: r.text("message", MAX_TEXT)?,
            }
        }
        14 => {
            let kind = match r.u8("kind")? {
                0 => QueryKind::Users,
                1 => QueryKind::Groups,
                2 => QueryKind::PathInUse(r.path("path")?),
                b => {
                    r.pos -= 1;
                    return Err(r.bad("kind", format!("unknown query kind {b}")));
                }
            };
            Message::Query { kind }
        }
        15 => Message::QueryReply {
            json: r.rest().to_vec(),
        },
        _ => unreachable!("kind checked by the caller"),
    };
    if r.left() != 0 {
        return Err(r.bad(
            "payload",
            format!("{} bytes follow the last field", r.left()),
        ));
    }
    Ok(msg)
}

fn decode_entry(r: &mut Rd<'_>) -> Result<Entry, Bad> {
    let index = r.varint("index")?;
    let path = r.path("path")?;
    let b = r.u8("kind")?;
    let Some(kind) = EntryKind::from_u8(b) else {
        r.pos -= 1;
        return Err(r.bad("kind", format!("unknown file type {b}")));
    };
    let perm = r.u32("perm")?;
    let uid = r.u32("uid")?;
    let gid = r.u32("gid")?;
    let size = r.varint("size")?;
    let rdev = r.varint("rdev")?;
    let atime = r.time("atime")?;
    let mtime = r.time("mtime")?;
    // Each xattr takes at least 3 bytes: two lengths and a name byte.
    let n = r.count("xattrs", MAX_XATTRS, 3)?;
    let mut xattrs = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        let at = r.pos;
        let name = r.bytes("xattr name", MAX_XATTR_NAME)?;
        xattr_name(name).map_err(|reason| Bad {
            field: "xattr name",
            at,
            reason,
        })?;
        let value = r.bytes("xattr value", MAX_XATTR_VALUE)?;
        total += name.len() + value.len();
        cap(total, MAX_XATTRS_TOTAL).map_err(|reason| Bad {
            field: "xattrs",
            at,
            reason,
        })?;
        xattrs.push((name.to_vec(), value.to_vec()));
    }
    let symlink_target = if r.flag("symlink_target")? {
        Some(r.path("symlink_target")?)
    } else {
        None
    };
    let hardlink_of = if r.flag("hardlink_of")? {
        Some(r.varint("hardlink_of")?)
    } else {
        None
    };
    let regions = if r.flag("regions")? {
        let n = r.count("regions", MAX_REGIONS, 2)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push((r.varint("regions")?, r.varint("regions")?));
        }
        Some(v)
    } else {
        None
    };
    let e = Entry {
        index,
        path,
        kind,
        perm,
        uid,
        gid,
        size,
        rdev,
        atime,
        mtime,
        xattrs,
        symlink_target,
        hardlink_of,
        regions,
    };
    let at = r.pos;
    entry_checks(&e).map_err(|(field, reason)| Bad { field, at, reason })?;
    Ok(e)
}

fn unzstd(p: &[u8]) -> Result<Vec<u8>, String> {
    let declared = match zstd::zstd_safe::get_frame_content_size(p) {
        Ok(Some(n)) => n,
        Ok(None) => return Err("the zstd frame does not declare its content size".into()),
        Err(_) => return Err("not a zstd frame".into()),
    };
    if declared > MAX_FRAME as u64 {
        return Err(format!(
            "declared content size {declared} is over the limit of {MAX_FRAME}"
        ));
    }
    match zstd::zstd_safe::find_frame_compressed_size(p) {
        Ok(n) if n == p.len() => {}
        Ok(n) => return Err(format!("{} bytes follow the zstd frame", p.len() - n)),
        Err(_) => return Err("damaged zstd frame".into()),
    }
    let out = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            let mut z = zstd::bulk::Decompressor::new()?;
            z.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                ZSTD_WINDOW_LOG_MAX,
            ))?;
            *d = Some(z);
        }
        // The output buffer is the declared size, and zstd refuses to
        // write past it: the actual size cannot exceed the cap either.
        d.as_mut()
            .expect("just set")
            .decompress(p, declared as usize)
    });
    let out = out.map_err(|e| format!("damaged zstd frame: {e}"))?;
    if out.len() as u64 != declared {
        return Err(format!(
            "the zstd frame declares {declared} bytes but holds {}",
            out.len()
        ));
    }
    Ok(out)
}

/// Decodes one frame at the start of `buf`, whose first byte is at
/// `offset` in the stream (for errors): `Ok(None)` if more bytes are
/// needed, else the message and the frame's length. The header is checked
/// (length cap, kind, flags) as soon as its 6 bytes are present, before
/// the payload has arrived.
pub fn decode_frame(buf: &[u8], offset: u64) -> Result<Option<(Message, usize)>, WireError> {
    let Some(h) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let (kind, flags) = (h[4], h[5]);
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            offset,
            len: len as u64,
            max: MAX_FRAME as u64,
        });
    }
    let Some(&name) = KIND_NAMES.get(usize::from(kind)).filter(|_| kind != 0) else {
        return Err(WireError::UnknownKind { offset, kind });
    };
    if flags & !FLAG_ZSTD != 0 {
        return Err(WireError::Flags {
            kind: name,
            offset,
            flags,
        });
    }
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let plain;
    let payload = if flags & FLAG_ZSTD != 0 {
        plain = unzstd(payload).map_err(|reason| WireError::Zstd {
            kind: name,
            offset,
            reason,
        })?;
        &plain[..]
    } else {
        payload
    };
    let msg = decode_payload(kind, payload).map_err(|b| WireError::Field {
        kind: name,
        offset,
        field: b.field,
        at: b.at as u64,
        reason: b.reason,
    })?;
    Ok(Some((msg, FRAME_HEADER_LEN + len)))
}

/// What [`Decoder::next`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The peer's preamble: always first.
    Preamble(Preamble),
    /// A message.
    Message(Message),
}

/// An incremental decoder of one direction of a session: give it bytes as
/// they arrive ([`feed`](Decoder::feed)), take what they complete
/// ([`next`](Decoder::next) until `None`), and at the end of the stream
/// ask whether it ended cleanly ([`finish`](Decoder::finish)).
///
/// It buffers at most one frame beyond what it was last fed, as long as
/// the caller drains [`next`](Decoder::next) after each feed. After an
/// error the stream is out of step: drop the decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    preamble_done: bool,
}

impl Decoder {
    /// A decoder that expects the peer's preamble first.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds bytes read from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Shift out what was consumed once it is at least half the buffer,
        // so each byte moves at most once on average.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next preamble or message the bytes fed so far complete, or
    /// `None` if more are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Received>, WireError> {
        let buf = &self.buf[self.start..];
        let (r, used) = if self.preamble_done {
            match decode_frame(buf, self.offset)? {
                None => return Ok(None),
                Some((m, used)) => (Received::Message(m), used),
            }
        } else {
            match decode_preamble(buf)? {
                None => return Ok(None),
                Some((p, used)) => {
                    self.preamble_done = true;
                    (Received::Preamble(p), used)
                }
            }
        };
        self.start += used;
        self.offset += used as u64;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(r))
    }

    /// At the end of the stream: an error if it stopped inside the
    /// preamble or a frame (or never sent one), else `Ok`.
    pub fn finish(&self) -> Result<(), WireError> {
        let buf = &self.buf[self.start..];
        if !self.preamble_done {
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                return Err(WireError::NotHaul { got: escape(buf) });
            }
            let need = match buf.get(MAGIC.len() + 2) {
                Some(&l) => MAGIC.len() + 3 + usize::from(l),
                None => MAGIC.len() + 3,
            };
            return Err(WireError::Truncated {
                what: "preamble",
                offset: self.offset,
                have: buf.len() as u64,
                need: need as u64,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (what, need) = match buf.get(..FRAME_HEADER_LEN) {
            None => ("frame header", FRAME_HEADER_LEN),
            Some(h) => (
                KIND_NAMES
                    .get(usize::from(h[4]))
                    .copied()
                    .unwrap_or("frame"),
                FRAME_HEADER_LEN + u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize,
            ),
        };
        Err(WireError::Truncated {
            what,
            offset: self.offset,
            have: buf.len() as u64,
            need: need as u64,
        })
    }
}

// ---------------------------------------------------------------------
// Indexes and paths

/// The entries announced so far in one session, so that a message naming
/// an index is checked against them (rsync's CVE-2024-12087 came from an
/// index it never announced). Entries are numbered 0, 1, 2... in the order
/// they are sent, so "announced" is "below the next index"; the sender and
/// the receiver each keep one and pass every Entry through it, sent or
/// received.
#[derive(Clone, Debug, Default)]
pub struct Indexes {
    next: u64,
}

impl Indexes {
    /// No entry announced yet.
    pub fn new() -> Self {
        Indexes::default()
    }

    /// How many entries were announced (the next index expected).
    pub fn announced(&self) -> u64 {
        self.next
    }

    /// Records an Entry: its index must be the next one, and a hardlink
    /// must name an entry already announced.
    pub fn announce(&mut self, entry: &Entry) -> Result<(), WireError> {
        if entry.index != self.next {
            return Err(WireError::Index {
                kind: "Entry",
                index: entry.index,
                reason: format!("entries must be numbered in order; expected {}", self.next),
            });
        }
        if let Some(h) = entry.hardlink_of {
            self.check("Entry", h)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Checks that `index` names an entry already announced.
    pub fn check(&self, kind: &'static str, index: u64) -> Result<(), WireError> {
        if index >= self.next {
            return Err(WireError::Index {
                kind,
                index,
                reason: format!("not announced ({} entries so far)", self.next),
            });
        }
        Ok(())
    }

    /// [`announce`](Indexes::announce) for an Entry, [`check`](Indexes::check)
    /// for any other message naming an index.
    pub fn observe(&mut self, msg: &Message) -> Result<(), WireError> {
        match msg {
            Message::Entry(e) => self.announce(e),
            m => match m.index() {
                Some(i) => self.check(m.name(), i),
                None => Ok(()),
            },
        }
    }
}

/// The components of a path the peer sent, for a receiver to resolve one
/// by one beneath its root without following symlinks. Refused: an empty
/// path, one over [`MAX_PATH`], a NUL, an absolute path, a `..` or `.`
/// component, an empty component (`a//b`, `a/`). A leading `./` is
/// allowed and dropped; `.` alone is the root itself (no components).
pub fn checked_rel_path(path: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let refuse = |reason| {
        Err(WireError::Path {
            path: escape(path),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty path");
    }
    if path.len() > MAX_PATH {
        return refuse("longer than 4096 bytes");
    }
    if path.contains(&0) {
        return refuse("contains a NUL byte");
    }
    if path[0] == b'/' {
        return refuse("absolute path");
    }
    if path == b"." {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix(b"./").unwrap_or(path);
    let mut out = Vec::new();
    for c in rest.split(|&b| b == b'/') {
        match c {
            b"" => return refuse("empty component"),
            b".." => return refuse("`..` component"),
            b"." => return refuse("`.` component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> Entry {
        Entry {
            index: 3,
            path: b"dir/file".to_vec(),
            kind: EntryKind::File,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            size: 10_000,
            rdev: 0,
            atime: WireTime {
                secs: -5,
                nanos: 999_999_999,
            },
            mtime: WireTime {
                secs: 1_700_000_000,
                nanos: 7,
            },
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
            symlink_target: None,
            hardlink_of: Some(1),
            regions: Some(vec![(0, 10), (4096, 100)]),
        }
    }

    /// One of each message, with every optional part present somewhere.
    pub(super) fn samples() -> Vec<Message> {
        let mut link = entry();
        link.kind = EntryKind::Symlink;
        link.symlink_target = Some(b"../t".to_vec());
        link.regions = None;
        link.hardlink_of = None;
        link.xattrs.clear();
        vec![
            Message::Hello {
                protocol: PROTOCOL_VERSION,
                haul_version: "0.1.0".into(),
                role: Role::Push,
                root: b"/srv/dst".to_vec(),
                options: Box::new(Options {
                    delete: true,
                    map_by_name: true,
                    exclude: vec!["*.o".into()],
                    usermap: vec!["1000:2000".into()],
                    groupmap: vec![],
                    chown: Some("root:".into()),
                    compress_level: Some(-3),
                    ..Default::default()
                }),
            },
            Message::Hello {
                protocol: 7,
                haul_version: String::new(),
                role: Role::Query,
                root: vec![],
                options: Box::default(),
            },
            Message::HelloOk {
                protocol: PROTOCOL_VERSION,
                haul_version: "0.1.0".into(),
            },
            Message::Entry(Box::new(entry())),
            Message::Entry(Box::new(link)),
            Message::Need {
                index: 3,
                old_chunks: Some(vec![OldChunk {
                    id: [7; 32],
                    offset: 0,
                    len: 65536,
                }]),
            },
            Message::Need {
                index: 0,
                old_chunks: None,
            },
            Message::Skip { index: 300 },
            Message::Data {
                index: 3,
                offset: 1 << 40,
                bytes: vec![b'x'; 1000],
            },
            Message::Chunk {
                index: 3,
                offset: 65536,
                id: [9; 32],
            },
            Message::FileDone {
                index: 3,
                blake3: [1; 32],
            },
            Message::Delete {
                path: b"old".to_vec(),
            },
            Message::EndOfList,
            Message::Done,
            Message::Summary {
                json: br#"{"files":1}"#.to_vec(),
            },
            Message::Error {
                index: Some(2),
                message: "permission denied".into(),
            },
            Message::Error {
                index: None,
                message: String::new(),
            },
            Message::Query {
                kind: QueryKind::Users,
            },
            Message::Query {
                kind: QueryKind::Groups,
            },
            Message::Query {
                kind: QueryKind::PathInUse(b"/opt/cycle_server".to_vec()),
            },
            Message::QueryReply { json: vec![] },
        ]
    }

    fn round_trip(m: &Message) {
        for level in [None, Some(1)] {
            let mut b = Vec::new();
            encode_frame(m, level, &mut b).unwrap();
            let (got, used) = decode_frame(&b, 0).unwrap().unwrap();
            assert_eq!(used, b.len());
            assert_eq!(&got, m);
            if b[5] == 0 {
                // Plain frames are canonical: decoding then encoding gives
                // back the same bytes.
                let mut again = Vec::new();
                encode_frame(&got, None, &mut again).unwrap();
                assert_eq!(again, b);
            }
        }
    }

    #[test]
    fn every_message_round_trips() {
        let s = samples();
        let kinds: std::collections::BTreeSet<u8> = s.iter().map(Message::kind_byte).collect();
        assert_eq!(kinds.len(), 15);
        for m in &s {
            round_trip(m);
        }
    }

    #[test]
    fn compressible_payloads_are_compressed() {
        let mut b = Vec::new();
        let m = &samples()[8];
        encode_frame(m, Some(3), &mut b).unwrap();
        assert_eq!(b[5], FLAG_ZSTD);
        assert!(b.len() < 100);
        assert_eq!(&decode_frame(&b, 0).unwrap().unwrap().0, m);
        // Small payloads stay plain.
        b.clear();
        encode_frame(&Message::Skip { index: 1 }, Some(3), &mut b).unwrap();
        assert_eq!(b, [1, 0, 0, 0, 5, 0, 1]);
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..40)
    }

    fn arb_time() -> impl Strategy<Value = WireTime> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| WireTime { secs, nanos })
    }

    prop_compose! {
        fn arb_entry()(
            index in 0u64..u64::MAX,
            path in arb_path(),
            kind in 0u8..7,
            perm in 0u32..=0o7777,
            uid in any::<u32>(),
            gid in any::<u32>(),
            size in any::<u64>(),
            rdev in any::<u64>(),
            atime in arb_time(),
            mtime in arb_time(),
            xattrs in proptest::collection::vec(
                (proptest::collection::vec(1u8..=255, 1..20), arb_bytes(50)), 0..4),
            target in proptest::collection::vec(1u8..=255, 0..30),
            link in any::<Option<u64>>(),
            regions in proptest::option::of(proptest::collection::vec((0u64..1000, 0u64..1000), 0..5)),
        ) -> Entry {
            let kind = EntryKind::from_u8(kind).unwrap();
            // Make the cross-field invariants hold: regions in order and
            // within size, a hardlink to an earlier index.
            let regions = regions.filter(|_| kind == EntryKind::File).map(|r| {
                let mut at = 0u64;
                r.into_iter().map(|(gap, len)| { let o = at + gap; at = o + len; (o, len) }).collect::<Vec<_>>()
            });
            let size = match &regions {
                Some(r) => r.last().map_or(0, |&(o, l)| o + l) + size % 1000,
                None => size,
            };
            Entry {
                index,
                path,
                kind,
                perm,
                uid,
                gid,
                size,
                rdev,
                atime,
                mtime,
                xattrs,
                symlink_target: (kind == EntryKind::Symlink).then_some(target),
                hardlink_of: link.filter(|_| kind != EntryKind::Dir).map(|h| h % (index.max(1))).filter(|&h| h < index),
                regions,
            }
        }
    }

    proptest! {
        #[test]
        fn entries_round_trip(e in arb_entry()) {
            round_trip(&Message::Entry(Box::new(e)));
        }

        #[test]
        fn needs_round_trip(
            index in any::<u64>(),
            chunks in proptest::option::of(proptest::collection::vec(
                (any::<[u8; 32]>(), 0u64..u64::MAX / 2, 0u64..u64::MAX / 2), 0..20)),
        ) {
            let old_chunks = chunks.map(|c| c.into_iter().map(|(id, offset, len)| OldChunk { id, offset, len }).collect());
            round_trip(&Message::Need { index, old_chunks });
        }

        #[test]
        fn garbage_frames_never_panic(b in arb_bytes(200)) {
            let _ = decode_frame(&b, 0);
            for kind in 1..16u8 {
                if let Ok(Some((m, _))) = decode_frame(&frame(kind, 0, &b), 0) {
                    round_trip(&m);
                }
            }
        }
    }

    fn stream() -> Vec<u8> {
        let mut b = encode_preamble("0.1.0").unwrap();
        for (i, m) in samples().iter().enumerate() {
            encode_frame(m, (i % 2 == 0).then_some(1), &mut b).unwrap();
        }
        b
    }

    fn drain(d: &mut Decoder) -> Result<usize, WireError> {
        let mut n = 0;
        while d.next()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn truncation_anywhere_is_need_more() {
        let b = stream();
        let total = samples().len() + 1;
        let mut boundaries = 0;
        for cut in 0..b.len() {
            let mut d = Decoder::new();
            d.feed(&b[..cut]);
            let n = drain(&mut d).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert!(n < total);
            if d.finish().is_ok() {
                boundaries += 1;
            }
            // The rest completes the stream.
            d.feed(&b[cut..]);
            assert_eq!(n + drain(&mut d).unwrap(), total);
            d.finish().unwrap();
        }
        // The cut falls on a frame boundary once per frame (not at 0:
        // an empty stream lacks its preamble).
        assert_eq!(boundaries, total - 1);
        // Byte by byte.
        let mut d = Decoder::new();
        let mut n = 0;
        for c in b.chunks(1) {
            d.feed(c);
            n += drain(&mut d).unwrap();
        }
        assert_eq!(n, total);
    }

    proptest! {
        /// A valid stream with a few bytes changed: whatever still decodes
        /// round-trips, and nothing panics.
        #[test]
        fn mutated_streams_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
            piece in 1usize..100,
        ) {
            let mut b = stream();
            for (at, v) in edits {
                let i = at.index(b.len());
                b[i] = v;
            }
            let mut d = Decoder::new();
            'feed: for c in b.chunks(piece) {
                d.feed(c);
                loop {
                    match d.next() {
                        Ok(Some(Received::Message(m))) => round_trip(&m),
                        Ok(Some(Received::Preamble(_))) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[test]
    fn finish_names_what_was_cut() {
        let b = stream();
        let mut d = Decoder::new();
        // The last frame (an empty QueryReply, 6 bytes) and one byte of
        // the Query before it.
        d.feed(&b[..b.len() - 7]);
        drain(&mut d).unwrap();
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains("ends inside the Query at byte"), "{e}");
        d.feed(&b[b.len() - 7..b.len() - 1]);
        drain(&mut d).unwrap();
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains("inside the frame header"), "{e}");
        let e = Decoder::new().finish().unwrap_err().to_string();
        assert!(e.contains("inside the preamble"), "{e}");
    }

    #[test]
    fn a_banner_before_the_preamble_is_named() {
        let mut b = b"Welcome to host.example!\r\nLast login: today\n".to_vec();
        b.extend(encode_preamble("0.1.0").unwrap());
        let mut d = Decoder::new();
        d.feed(&b);
        let e = d.next().unwrap_err();
        assert!(matches!(e, WireError::NotHaul { .. }));
        let e = e.to_string();
        assert!(
            e.contains(r#"it sent "Welcome to host.example!\r\nLast login: today\n\x00HAUL"#),
            "{e}"
        );
        assert!(e.contains("login banner"), "{e}");
        // A stray word with no newline yet: more is awaited, then the end
        // of the stream reports it.
        let mut d = Decoder::new();
        d.feed(b"bash: haul: ");
        assert!(d.next().unwrap().is_none());
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains(r#""bash: haul: ""#), "{e}");
        // A long line with no newline is reported after PREVIEW_LEN bytes.
        let mut d = Decoder::new();
        d.feed(&[b'x'; PREVIEW_LEN]);
        assert!(matches!(d.next(), Err(WireError::NotHaul { .. })));
    }

    #[test]
    fn preamble_versions() {
        let p = encode_preamble("0.1.0").unwrap();
        assert_eq!(&p[..8], b"\0HAUL\x1a\r\n");
        for cut in 0..p.len() {
            assert!(decode_preamble(&p[..cut]).unwrap().is_none());
        }
        let (got, used) = decode_preamble(&p).unwrap().unwrap();
        assert_eq!(used, p.len());
        assert_eq!(got.haul_version, "0.1.0");
        let mut other = p.clone();
        other[8] = 9;
        let e = decode_preamble(&other).unwrap_err().to_string();
        assert!(
            e.contains("haul 0.1.0") && e.contains("version 9") && e.contains("speaks version 1"),
            "{e}"
        );
        let mut bad = p.clone();
        bad[11] = 0x07;
        assert!(matches!(
            decode_preamble(&bad),
            Err(WireError::BadVersion { .. })
        ));
        assert!(encode_preamble("1.0\n").is_err());
        assert!(encode_preamble(&"9".repeat(65)).is_err());
    }

    /// The payload bytes of `m` without the encoder's checks: what a
    /// hostile peer could send.
    fn hostile(m: &Message) -> Vec<u8> {
        let mut p = Vec::new();
        encode_payload(m, &mut p, false).unwrap();
        frame(m.kind_byte(), 0, &p)
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_le_bytes().to_vec();
        b.extend([kind, flags]);
        b.extend_from_slice(payload);
        b
    }

    /// The message is refused by the encoder and, sent anyway, by the
    /// decoder, naming `field`.
    fn refused(m: Message, field: &str) {
        let e = encode_frame(&m, None, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&e, WireError::Unencodable { field: f, .. } if *f == field),
            "{m:?}: {e}"
        );
        let e = decode_frame(&hostile(&m), 100).unwrap_err();
        assert!(
            matches!(&e, WireError::Field { field: f, kind, offset: 100, .. }
                if *f == field && *kind == m.name()),
            "{e}"
        );
    }

    fn with(f: impl FnOnce(&mut Entry)) -> Message {
        let mut e = entry();
        f(&mut e);
        Message::Entry(Box::new(e))
    }

    #[test]
    fn every_cap_is_enforced() {
        let long = vec![b'a'; MAX_PATH + 1];
        refused(with(|e| e.path = long.clone()), "path");
        refused(with(|e| e.path = b"a\0b".to_vec()), "path");
        refused(Message::Delete { path: long.clone() }, "path");
        refused(
            Message::Query {
                kind: QueryKind::PathInUse(b"\0".to_vec()),
            },
            "path",
        );
        refused(
            with(|e| {
                e.kind = EntryKind::Symlink;
                e.regions = None;
                e.symlink_target = Some(long.clone());
            }),
            "symlink_target",
        );
        refused(
            with(|e| e.xattrs = vec![(vec![b'n'; MAX_XATTR_NAME + 1], vec![])]),
            "xattr name",
        );
        refused(with(|e| e.xattrs = vec![(vec![], vec![])]), "xattr name");
        refused(
            with(|e| e.xattrs = vec![(b"a".to_vec(), vec![0; MAX_XATTR_VALUE + 1])]),
            "xattr value",
        );
        refused(
            with(|e| e.xattrs = vec![(b"a".to_vec(), vec![]); MAX_XATTRS + 1]),
            "xattrs",
        );
        refused(
            with(|e| e.xattrs = vec![(b"a".to_vec(), vec![0; MAX_XATTR_VALUE]); 17]),
            "xattrs",
        );
        refused(
            with(|e| {
                e.size = u64::MAX;
                e.regions = Some(vec![(0, 0); MAX_REGIONS + 1]);
            }),
            "regions",
        );
        refused(
            with(|e| e.regions = Some(vec![(10, 5), (12, 1)])),
            "regions",
        );
        refused(with(|e| e.regions = Some(vec![(10_000, 1)])), "regions");
        refused(with(|e| e.regions = Some(vec![(u64::MAX, 2)])), "regions");
        refused(with(|e| e.mtime.nanos = 1_000_000_000), "mtime");
        refused(with(|e| e.atime.nanos = u32::MAX), "atime");
        refused(with(|e| e.perm = 0o10000), "perm");
        refused(with(|e| e.hardlink_of = Some(3)), "hardlink_of");
        refused(
            with(|e| {
                e.kind = EntryKind::Dir;
                e.regions = None;
            }),
            "hardlink_of",
        );
        refused(
            with(|e| e.symlink_target = Some(b"t".to_vec())),
            "symlink_target",
        );
        refused(
            Message::Error {
                index: None,
                message: "e".repeat(MAX_TEXT + 1),
            },
            "message",
        );
        refused(
            Message::Need {
                index: 0,
                old_chunks: Some(vec![OldChunk {
                    id: [0; 32],
                    offset: u64::MAX,
                    len: 1,
                }]),
            },
            "old_chunks",
        );
        refused(
            Message::Data {
                index: 0,
                offset: u64::MAX,
                bytes: vec![1],
            },
            "offset",
        );
        let hello = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            Message::Hello {
                protocol: 1,
                haul_version: "1".into(),
                role: Role::Pull,
                root: vec![],
                options: Box::new(o),
            }
        };
        refused(
            hello(|o| o.exclude = vec![String::new(); MAX_STRINGS + 1]),
            "exclude",
        );
        refused(
            hello(|o| o.usermap = vec!["u".repeat(MAX_TEXT + 1)]),
            "usermap",
        );
        refused(hello(|o| o.chown = Some("u".repeat(MAX_TEXT + 1))), "chown");
    }

    fn field_error(b: &[u8]) -> (&'static str, String) {
        match decode_frame(b, 0) {
            Err(WireError::Field { field, reason, .. }) => (field, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        // Counts larger than the bytes present are refused before any
        // allocation sized by them.
        let mut p = vec![0, 1];
        put_varint(&mut p, MAX_CHUNKS as u64);
        assert!(field_error(&frame(4, 0, &p)).1.contains("cannot fit"));
        let mut p = vec![0, 1];
        put_varint(&mut p, MAX_CHUNKS as u64 + 1);
        assert!(field_error(&frame(4, 0, &p)).1.contains("over the limit"));
        // Digests are exactly 32 bytes: short is truncated, long is
        // trailing bytes.
        let mut p = vec![0, 0];
        p.extend([0; 31]);
        assert_eq!(field_error(&frame(7, 0, &p)).0, "id");
        p.extend([0; 2]);
        assert_eq!(field_error(&frame(7, 0, &p)).0, "payload");
        // Varints: overlong, over 64 bits, cut.
        assert!(field_error(&frame(5, 0, &[0x80, 0])).1.contains("overlong"));
        assert!(field_error(&frame(5, 0, &[0xff; 10])).1.contains("64 bits"));
        assert!(field_error(&frame(5, 0, &[0x80])).1.contains("ends inside"));
        // Option tags are 0 or 1; text is UTF-8; roles and kinds known.
        assert!(field_error(&frame(13, 0, &[2])).1.contains("option tag"));
        assert!(field_error(&frame(13, 0, &[0, 1, 0xff]))
            .1
            .contains("UTF-8"));
        assert_eq!(field_error(&frame(14, 0, &[3])).0, "kind");
        let mut h = Vec::new();
        encode_payload(&samples()[1], &mut h, true).unwrap();
        let role_at = 2;
        h[role_at] = 3;
        assert_eq!(field_error(&frame(1, 0, &h)).0, "role");
        h[role_at] = 2;
        h[role_at + 2] = 0x80;
        h.insert(role_at + 3, 2);
        assert!(field_error(&frame(1, 0, &h)).1.contains("option bits"));
        // Entry: file type, uid width.
        let mut e = Vec::new();
        encode_payload(&samples()[3], &mut e, true).unwrap();
        let kind_at = 1 + 1 + 8;
        assert_eq!(e[kind_at], 0);
        e[kind_at] = 7;
        assert_eq!(field_error(&frame(3, 0, &e)).0, "kind");
        // Empty messages carry nothing.
        assert_eq!(field_error(&frame(11, 0, &[0])).0, "payload");
    }

    #[test]
    fn frame_headers_are_checked_before_the_payload() {
        let mut h = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        h.extend([6, 0]);
        let e = decode_frame(&h, 42).unwrap_err();
        assert!(
            matches!(e, WireError::FrameTooLarge { offset: 42, .. }),
            "{e}"
        );
        // MAX_FRAME itself is allowed, and waits for its payload.
        h[..4].copy_from_slice(&(MAX_FRAME as u32).to_le_bytes());
        assert!(decode_frame(&h, 0).unwrap().is_none());
        for kind in [0, 16, 255] {
            let e = decode_frame(&frame(kind, 0, &[]), 0).unwrap_err();
            assert!(matches!(e, WireError::UnknownKind { .. }), "{e}");
        }
        let e = decode_frame(&frame(11, 2, &[]), 0).unwrap_err();
        assert_eq!(e.to_string(), "Done frame at byte 0: unknown flags 0x02");
        let e = decode_frame(&frame(3, 0, &[]), 9).unwrap_err().to_string();
        assert_eq!(
            e,
            "Entry frame at byte 9: index (payload byte 0): the payload ends inside a varint"
        );
    }

    #[test]
    fn zstd_payloads_are_capped() {
        let zstd_err = |b: &[u8]| match decode_frame(b, 0) {
            Err(WireError::Zstd { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        // Declared over the cap: refused before decompressing.
        let big = zstd::bulk::compress(&vec![0; MAX_FRAME + 1], 1).unwrap();
        assert!(zstd_err(&frame(6, 1, &big)).contains("declared content size"));
        // No declared size (a streaming encoder's frame).
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut enc, &[0, 0, 1]).unwrap();
        let streamed = enc.finish().unwrap();
        assert!(zstd_err(&frame(6, 1, &streamed)).contains("does not declare"));
        // Two frames, or garbage.
        let one = zstd::bulk::compress(&[0, 0, 1], 1).unwrap();
        let two = [one.clone(), one.clone()].concat();
        assert!(zstd_err(&frame(6, 1, &two)).contains("follow the zstd frame"));
        assert!(zstd_err(&frame(6, 1, b"not zstd")).contains("not a zstd frame"));
        let mut cut = one.clone();
        cut.pop();
        assert!(zstd_err(&frame(6, 1, &cut)).contains("damaged"));
        // The decompressed payload is checked like a plain one.
        let (m, _) = decode_frame(&frame(6, 1, &one), 0).unwrap().unwrap();
        assert_eq!(
            m,
            Message::Data {
                index: 0,
                offset: 0,
                bytes: vec![1]
            }
        );
        let junk = zstd::bulk::compress(&[0x80], 1).unwrap();
        assert!(matches!(
            decode_frame(&frame(5, 1, &junk), 0),
            Err(WireError::Field { .. })
        ));
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let m = Message::Data {
            index: 0,
            offset: 0,
            bytes: vec![0; MAX_FRAME],
        };
        let mut out = vec![1, 2];
        let e = encode_frame(&m, None, &mut out).unwrap_err();
        assert!(matches!(
            e,
            WireError::Unencodable {
                field: "payload",
                ..
            }
        ));
        assert_eq!(out, [1, 2], "nothing appended on failure");
        // Compression does not lift the cap: the decoder caps the
        // decompressed size too.
        assert!(encode_frame(&m, Some(1), &mut out).is_err());
        // Just at the cap is fine.
        let m = Message::Data {
            index: 0,
            offset: 0,
            bytes: vec![0; MAX_FRAME - 2],
        };
        encode_frame(&m, Some(1), &mut out).unwrap();
        assert_eq!(decode_frame(&out[2..], 0).unwrap().unwrap().0, m);
    }

    #[test]
    fn indexes_must_be_announced() {
        let mut ix = Indexes::new();
        let mut e = entry();
        e.hardlink_of = None;
        e.index = 1;
        let err = ix.announce(&e).unwrap_err().to_string();
        assert_eq!(
            err,
            "Entry: entry index 1: entries must be numbered in order; expected 0"
        );
        let err = ix
            .observe(&Message::Skip { index: 0 })
            .unwrap_err()
            .to_string();
        assert_eq!(err, "Skip: entry index 0: not announced (0 entries so far)");
        e.index = 0;
        ix.observe(&Message::Entry(Box::new(e.clone()))).unwrap();
        ix.observe(&Message::Skip { index: 0 }).unwrap();
        assert!(ix
            .observe(&Message::FileDone {
                index: 1,
                blake3: [0; 32]
            })
            .is_err());
        assert!(ix
            .observe(&Message::Error {
                index: Some(5),
                message: String::new()
            })
            .is_err());
        ix.observe(&Message::Error {
            index: None,
            message: String::new(),
        })
        .unwrap();
        ix.observe(&Message::Done).unwrap();
        // A hardlink names an announced entry.
        e.index = 1;
        e.hardlink_of = Some(0);
        ix.announce(&e).unwrap();
        assert_eq!(ix.announced(), 2);
        e.index = 1;
        assert!(ix.announce(&e).is_err(), "an index announced twice");
    }

    #[test]
    fn relative_paths() {
        fn ok(p: &[u8]) -> Vec<&[u8]> {
            checked_rel_path(p).unwrap()
        }
        assert_eq!(ok(b"."), Vec::<&[u8]>::new());
        assert_eq!(ok(b"a"), vec![b"a".as_slice()]);
        assert_eq!(ok(b"./a/b"), vec![b"a".as_slice(), b"b"]);
        assert_eq!(ok(b"...").len(), 1);
        assert_eq!(ok(b"a/..b/c.").len(), 3);
        for (p, why) in [
            (&b""[..], "empty path"),
            (b"/etc/passwd", "absolute"),
            (b"..", "`..`"),
            (b"a/../../b", "`..`"),
            (b"a/..", "`..`"),
            (b"./../x", "`..`"),
            (b"a//b", "empty component"),
            (b"a/", "empty component"),
            (b"./", "empty component"),
            (b".//a", "empty component"),
            (b"a/./b", "`.` component"),
            (b"././a", "`.` component"),
            (b"a\0b", "NUL"),
        ] {
            let e = checked_rel_path(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
        }
        assert!(checked_rel_path(&[b'a'; MAX_PATH + 1]).is_err());
        assert!(checked_rel_path(&[b'a'; MAX_PATH]).is_ok());
    }
}
