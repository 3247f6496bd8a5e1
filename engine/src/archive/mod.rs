//! Archives: `.tar`, `.tar.zst` and `.zip` files that standard tools read and
//! haul restores exactly.
//!
//! Every format is read into, and written from, one member model
//! ([`Member`]): an [`Entry`] (kind, mode, owner, times, size), its
//! attributes, a symlink target or hardlink's earlier path, and a sparse
//! file's data regions. Readers hand out members in stream order
//! ([`MemberRead`]); extraction (extract.rs) puts each through the
//! destination writer's by-path mode, which owns every safety rule (no
//! write outside DST, nothing half-written under a final name). Creation
//! (create.rs) takes the ordered walk's entries and hands each to a format
//! writer ([`MemberWrite`]).
//!
//! The crates `tar` and `zip` are used only to encode and decode headers;
//! their `unpack`/`extract` are never called: those resolve paths
//! themselves and stop at the first error.
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dest::entry::Entry;
use crate::dest::{EntryIssue, SourceCounts, WriteOptions};
use crate::error::Error;
use crate::meta::{FileKind, Xattrs};

mod create;
pub(crate) mod extract;
pub(crate) mod frames;
mod tar;
mod zip;

// For snapshot download (repo/), which writes members of its own.
pub use create::create_archive;
#[allow(unused_imports)]
pub(crate) use create::sink as member_writer;
pub use extract::{extract_archive, list_archive};

/// The archive formats haul reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    /// A PAX tar stream.
    Tar,
    /// A PAX tar stream in zstd frames.
    #[serde(rename = "tar.zst")]
    TarZst,
    /// A zip file.
    Zip,
}

impl ArchiveFormat {
    /// The format a file name asks for: `.zip`, `.tar`, `.tar.zst`, `.tzst`.
    pub fn from_name(p: &Path) -> Option<ArchiveFormat> {
        let n = p.file_name()?.to_string_lossy().to_ascii_lowercase();
        if n.ends_with(".tar.zst") || n.ends_with(".tzst") {
            Some(ArchiveFormat::TarZst)
        } else if n.ends_with(".tar") {
            Some(ArchiveFormat::Tar)
        } else if n.ends_with(".zip") {
            Some(ArchiveFormat::Zip)
        } else {
            None
        }
    }

    /// The format of a `--format` value.
    pub fn parse(s: &str) -> Option<ArchiveFormat> {
        match s {
            "tar" => Some(ArchiveFormat::Tar),
            "tar.zst" | "tzst" | "zst" => Some(ArchiveFormat::TarZst),
            "zip" => Some(ArchiveFormat::Zip),
            _ => None,
        }
    }

    /// The format the first bytes of a file show, if any.
    fn detect(head: &[u8]) -> Option<ArchiveFormat> {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(ArchiveFormat::TarZst)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(ArchiveFormat::Zip)
        } else if head.len() >= 262 && (&head[257..262] == b"ustar") {
            Some(ArchiveFormat::Tar)
        } else if head.len() >= 512 && haul_formats::tarfmt::is_header(&head[..512]) {
            // A pre-POSIX (v7) tar header.
            Some(ArchiveFormat::Tar)
        } else {
            None
        }
    }

    /// Its usual name, as `--format` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }
}

/// How a zip member's data is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZipCompression {
    /// Deflate (method 8): what every zip tool reads.
    #[default]
    Deflate,
    /// zstd (method 93): faster; read by Python 3.14 and libarchive, not by
    /// Info-ZIP unzip 6.0.
    Zstd,
    /// No compression (method 0).
    Store,
}

/// Options of [`create_archive`].
#[derive(Debug, Default)]
pub struct ArchiveOptions {
    /// The format to write.
    pub format: Option<ArchiveFormat>,
    /// Compression level; `None` picks the format's default (zstd 3,
    /// deflate 6).
    pub level: Option<i32>,
    /// How zip members are compressed.
    pub zip_compression: ZipCompression,
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// Entries left out.
    pub filter: crate::Filter,
    /// The archive being written, as (device, inode): left out with a
    /// notice if a source holds it (`haul archive create . -o a.tar`).
    pub output_inode: Option<(u64, u64)>,
}

/// Options of [`extract_archive`].
#[derive(Debug, Default)]
pub struct ExtractOptions {
    /// Members to extract (a path and everything below it); empty: all.
    pub paths: Vec<PathBuf>,
    /// Worker threads; 0 picks one per CPU.
    pub jobs: usize,
    /// Remove what DST holds beyond the archive (entries the filter
    /// excludes are kept), and let a non-directory replace a directory.
    pub delete: bool,
    /// Members skipped, and entries of DST never removed.
    pub filter: crate::Filter,
    /// Report every change through [`crate::Progress::change`].
    pub record_changes: bool,
    /// Clear setuid, setgid and sticky bits and create no device nodes,
    /// even as root (see the policy in README.md). Always so when not root.
    pub no_same_permissions: bool,
    /// What the destination writer keeps, and whether it writes at all.
    pub write: WriteOptions,
}

/// Where an archive is read from.
#[derive(Debug)]
pub enum ArchiveInput {
    /// A file.
    Path(PathBuf),
    /// Standard input (tar and tar.zst only).
    Stdin,
}

impl ArchiveInput {
    /// The name messages give it.
    pub fn display(&self) -> PathBuf {
        match self {
            ArchiveInput::Path(p) => p.clone(),
            ArchiveInput::Stdin => PathBuf::from("-"),
        }
    }
}

/// The outcome of [`create_archive`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveSummary {
    /// The format written.
    pub format: &'static str,
    /// Wall time.
    pub seconds: f64,
    /// What the sources held.
    pub source: SourceCounts,
    /// Members written.
    pub entries: u64,
    /// Bytes of file data read.
    pub bytes_in: u64,
    /// Bytes of archive written.
    pub bytes_out: u64,
    /// Entries that could not be archived, with the reason.
    pub failed: Vec<EntryIssue>,
    /// Failed entries beyond the list.
    pub failed_not_listed: u64,
    /// Entries archived with something the format cannot carry left out.
    pub notices: Vec<EntryIssue>,
    /// Notices beyond the list.
    pub notices_not_listed: u64,
}

impl ArchiveSummary {
    /// Total failed entries.
    pub fn failed_count(&self) -> u64 {
        self.failed.len() as u64 + self.failed_not_listed
    }
}

/// One member as `haul archive list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListedMember {
    /// The path as stored.
    pub path: String,
    /// Its kind.
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Apparent size.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The earlier member a hardlink names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<String>,
}

/// One member in any format.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    /// The path as stored (bytes, unchecked: the writer refuses escapes).
    pub(crate) path: Vec<u8>,
    pub(crate) entry: Entry,
    pub(crate) xattrs: Xattrs,
    /// A symlink's target.
    pub(crate) target: Vec<u8>,
    /// Set when this member is another name of the earlier member at this
    /// path; `entry` then carries no data.
    pub(crate) hardlink: Option<Vec<u8>>,
    /// A sparse file's data regions; the data stream holds only these.
    pub(crate) sparse: Option<Vec<(u64, u64)>>,
}

impl Member {
    pub(crate) fn listed(&self) -> ListedMember {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        ListedMember {
            path: s(&self.path),
            kind: self.entry.kind,
            mode: self.entry.perm,
            uid: self.entry.uid,
            gid: self.entry.gid,
            size: self.entry.size,
            mtime: self.entry.mtime.0,
            mtime_nsec: self.entry.mtime.1 as u32,
            target: (self.entry.kind == FileKind::Symlink).then(|| s(&self.target)),
            hardlink: self.hardlink.as_deref().map(s),
        }
    }

    /// Bytes of data the archive holds for it.
    pub(crate) fn data_len(&self) -> u64 {
        if self.hardlink.is_some() || self.entry.kind != FileKind::File {
            return 0;
        }
        match &self.sparse {
            Some(r) => r.iter().map(|&(_, l)| l).sum(),
            None => self.entry.size,
        }
    }
}

/// Why a member or an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The archive as a whole is unreadable from here on.
    #[error("{0}")]
    Archive(String),
    /// One member is bad; the next may be read.
    #[error("{0}")]
    Member(String),
    /// The member at this path (as stored) is bad; the next may be read.
    #[error("{path}: {msg}")]
    Named {
        /// The member's path as the archive names it.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
}

impl ReadError {
    /// The error for the member `name`.
    pub(crate) fn named(name: &str, msg: impl std::fmt::Display) -> ReadError {
        ReadError::Named {
            path: name.to_string(),
            msg: msg.to_string(),
        }
    }
}

/// A reader of members in stream order.
pub(crate) trait MemberRead {
    /// The next member; `None` at the end.
    fn next_member(&mut self) -> Result<Option<Member>, ReadError>;
    /// The current member's data, in order (a sparse member's regions
    /// concatenated); 0 at its end. A data error (a bad CRC, a size that
    /// lies) is reported here, at the latest when the end is reached.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, ReadError>;
}

/// Where a member's data goes: called with its pieces in order.
pub(crate) type PieceSink<'s> = dyn FnMut(&[u8]) -> io::Result<()> + 's;
/// What fills in a member's data: called once with the sink.
pub(crate) type DataFill<'s> = dyn FnMut(&mut PieceSink<'_>) -> io::Result<()> + 's;

/// A writer of members.
pub(crate) trait MemberWrite {
    /// Writes `m`; `data` fills in its data (a sparse member's regions,
    /// concatenated) by calling the sink with pieces in order.
    fn add(&mut self, m: &Member, data: &mut DataFill<'_>) -> io::Result<()>;
    /// Ends the archive; returns the bytes written.
    fn finish(self: Box<Self>) -> io::Result<u64>;
}

/// Opens an archive for reading as a stream of members.
pub(crate) fn open_reader(
    input: &ArchiveInput,
    jobs: usize,
) -> Result<(ArchiveFormat, Box<dyn MemberRead>), Error> {
    let name = input.display();
    let src: Box<dyn Read + Send> = match input {
        ArchiveInput::Path(p) => {
            Box::new(File::open(p).map_err(|e| Error::io("opening archive", p, e))?)
        }
        ArchiveInput::Stdin => Box::new(io::stdin()),
    };
    let mut src = BufReader::with_capacity(1 << 20, src);
    let head = peek(&mut src, 512).map_err(|e| Error::io("reading archive", &name, e))?;
    let format = ArchiveFormat::detect(&head)
        .ok_or_else(|| Error::invalid(&name, "not a tar, tar.zst or zip archive"))?;
    let head = io::Cursor::new(head);
    let reader: Box<dyn MemberRead> =
        match format {
            ArchiveFormat::Tar => Box::new(tar::TarMembers::new(Box::new(head.chain(src)))),
            ArchiveFormat::TarZst => Box::new(tar::TarMembers::new(Box::new(
                frames::FrameReader::new(head.chain(src), jobs),
            ))),
            ArchiveFormat::Zip => match input {
                ArchiveInput::Path(p) => zip::open(p, jobs)?,
                ArchiveInput::Stdin => return Err(Error::invalid(
                    &name,
                    "a zip archive cannot be read from a stream (its directory is at its end): \
                     give its path",
                )),
            },
        };
    Ok((format, reader))
}

/// Reads up to `n` bytes from the start of `r`.
fn peek(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut v[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    v.truncate(got);
    Ok(v)
}
