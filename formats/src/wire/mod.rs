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
    /// `-n`/`-v`: the receiver lists each change in its summary.
    pub record_changes: bool,
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
    /// The first name of an inode the sender saw with further names
    /// (`nlink > 1`, not a directory): later entries may name it in
    /// `hardlink_of`. Never with `hardlink_of`.
    pub link_leader: bool,
    /// A sparse file's data regions (offset, length): in order, not
    /// overlapping, within `size`; files only. `None` means all data.
    pub regions: Option<Vec<(u64, u64)>>,
    /// `chattr` flags: bit 0 immutable (`+i`), bit 1 append-only (`+a`).
    pub attrs: u32,
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
    /// Kind 16: nothing; sent by a side that has sent nothing else for a
    /// while, so that its peer can tell a busy side from a dead one.
    KeepAlive,
}

/// The kind bytes, in [`Message`] order; index 0 is unused.
const KIND_NAMES: [&str; 17] = [
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
    "KeepAlive",
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
            Message::KeepAlive => 16,
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
    if e.attrs & !3 != 0 {
        return Err(("attrs", format!("unknown chattr bits {:#x}", e.attrs)));
    }
    if e.link_leader && (e.hardlink_of.is_some() || e.kind == EntryKind::Dir) {
        return Err((
            "hardlink_of",
            "a link leader is neither a further name nor a directory".into(),
        ));
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
                o.record_changes,
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
            // 0: no link; 1: a further name, with the first's index;
            // 2: the first name of an inode with more to come.
            match (en.hardlink_of, en.link_leader) {
                (Some(h), _) => {
                    out.push(1);
                    put_varint(out, h);
                }
                (None, false) => out.push(0),
                (None, true) => out.push(2),
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
            put_varint(out, u64::from(en.attrs));
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
        Message::EndOfList | Message::Done | Message::KeepAlive => {}
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
            if flags >> 9 != 0 {
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
                    record_changes: bit(8),
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
        16 => Message::KeepAlive,
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
    let (hardlink_of, link_leader) = match r.u8("hardlink_of")? {
        0 => (None, false),
        1 => (Some(r.varint("hardlink_of")?), false),
        2 => (None, true),
        b => {
            r.pos -= 1;
            return Err(r.bad("hardlink_of", format!("link tag {b} is not 0, 1 or 2")));
        }
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
    let attrs = r.u32("attrs")?;
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
        link_leader,
        regions,
        attrs,
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
mod tests;
