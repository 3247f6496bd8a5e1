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

mod decode;
mod encode;
mod paths;

pub use decode::{decode_frame, decode_preamble, Decoder, Preamble, Received};
pub use encode::{encode_frame, encode_preamble};
pub use paths::{checked_rel_path, Indexes};

#[cfg(test)]
mod tests;
