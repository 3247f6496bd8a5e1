//! The one error type of this crate.
//!
//! Every decoder here reads bytes that may come from a damaged disk or a
//! hostile server, so each variant says what was being read and, where it
//! helps, what was expected against what was found. Variants carry no
//! borrowed data so the error can travel across threads and be boxed into an
//! `io::Error` (what the tar and zip crates do, and what callers that speak
//! `io::Result` want).

use std::io;

use crate::id::Id;

/// Everything that can go wrong while encoding or decoding haul's formats.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start (or end) with the magic of the expected structure.
    #[error("{what}: bad magic: expected {expected:?}, got {got:?}")]
    BadMagic {
        /// The structure being read.
        what: &'static str,
        /// The magic bytes this version writes, shown as ASCII.
        expected: String,
        /// The bytes found instead, shown as (lossy) ASCII.
        got: String,
    },

    /// The structure was written by a format version this code does not read.
    #[error("{what}: unsupported format version {got} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The structure being read.
        what: &'static str,
        /// The version found.
        got: u64,
        /// The version this build reads and writes.
        supported: u64,
    },

    /// The input ended before the structure did.
    #[error("{what}: truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// How many bytes the structure needs.
        need: u64,
        /// How many bytes were given.
        have: u64,
    },

    /// A length or count is over the cap the caller or the format allows.
    #[error("{what}: {len} is over the limit of {max}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// The claimed or actual size.
        len: u64,
        /// The largest size accepted.
        max: u64,
    },

    /// A stored checksum does not match the bytes it covers.
    #[error("{what}: checksum mismatch: stored {expected}, computed {got}")]
    ChecksumMismatch {
        /// The structure being read.
        what: &'static str,
        /// The checksum stored in the structure.
        expected: Id,
        /// The checksum of the bytes actually present.
        got: Id,
    },

    /// Content hashed to another id than the one it was looked up by.
    #[error("{what}: id mismatch: expected {expected}, content hashes to {got}")]
    IdMismatch {
        /// What was hashed (blob, snapshot, pack, index...).
        what: &'static str,
        /// The id the caller asked for.
        expected: Id,
        /// The blake3 hash of the content found.
        got: Id,
    },

    /// A blob starts with an encoding byte this build does not know.
    #[error("blob: unknown encoding byte {0:#04x}")]
    UnknownEncoding(u8),

    /// A blob is encrypted; this build has no keys support yet.
    #[error("blob: encoding {0:#04x} is encrypted, which this build cannot read")]
    Encrypted(u8),

    /// A blob-kind byte is not one this build knows.
    #[error("{what}: unknown blob kind {got}")]
    UnknownKind {
        /// The structure being read.
        what: &'static str,
        /// The byte found.
        got: u8,
    },

    /// A blob was found, but of another kind than the caller expected.
    #[error("blob {id}: expected a {expected} blob, found a {got} blob")]
    KindMismatch {
        /// The blob's id.
        id: Id,
        /// The kind asked for.
        expected: crate::blob::BlobKind,
        /// The kind stored.
        got: crate::blob::BlobKind,
    },

    /// A string is not a valid id (or id prefix).
    #[error("invalid id {input:?}: {reason}")]
    InvalidId {
        /// The text given, possibly shortened.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An id prefix matched no id at all.
    #[error("no id starts with {0:?}")]
    PrefixNotFound(String),

    /// An id prefix matched more than one id.
    #[error("id prefix {prefix:?} is ambiguous: it matches {first} and {second}")]
    AmbiguousPrefix {
        /// The prefix given.
        prefix: String,
        /// One matching id.
        first: Id,
        /// Another matching id.
        second: Id,
    },

    /// The bytes are structurally readable but break an invariant of the format.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure being read.
        what: &'static str,
        /// What is wrong, in words.
        reason: String,
    },

    /// A value cannot be encoded (too large for its field, out of range...).
    #[error("cannot encode {what}: {reason}")]
    Unencodable {
        /// The structure being written.
        what: &'static str,
        /// Why not.
        reason: String,
    },

    /// The binary (postcard) encoding of a tree could not be read or written.
    #[error("{what}: {source}")]
    Postcard {
        /// The structure being read or written.
        what: &'static str,
        /// The decoder's own message.
        #[source]
        source: postcard::Error,
    },

    /// A JSON record could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// The record being read or written.
        what: &'static str,
        /// serde_json's own message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// zstd refused to compress or decompress.
    #[error("zstd: {0}")]
    Zstd(#[source] io::Error),

    /// The underlying reader or writer failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn truncated(what: &'static str, need: usize, have: usize) -> Self {
        FormatError::Truncated {
            what,
            need: need as u64,
            have: have as u64,
        }
    }

    pub(crate) fn too_large(what: &'static str, len: u64, max: u64) -> Self {
        FormatError::TooLarge { what, len, max }
    }

    pub(crate) fn bad_magic(what: &'static str, expected: &[u8], got: &[u8]) -> Self {
        FormatError::BadMagic {
            what,
            expected: String::from_utf8_lossy(expected).into_owned(),
            got: String::from_utf8_lossy(got).into_owned(),
        }
    }
}

impl From<FormatError> for io::Error {
    /// I/O failures come back out unchanged; a value that cannot be encoded
    /// becomes [`io::ErrorKind::InvalidInput`]; everything else is malformed
    /// input, [`io::ErrorKind::InvalidData`].
    fn from(err: FormatError) -> Self {
        match err {
            FormatError::Io(e) => e,
            e @ FormatError::Unencodable { .. } => io::Error::new(io::ErrorKind::InvalidInput, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_conversions() {
        let e: io::Error = FormatError::truncated("pack trailer", 56, 3).into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "pack trailer: truncated: need 56 bytes, have 3"
        );
        let inner = io::Error::new(io::ErrorKind::NotFound, "gone");
        let e: io::Error = FormatError::from(inner).into();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e: io::Error = FormatError::Unencodable {
            what: "pack",
            reason: "full".into(),
        }
        .into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // The original error is still reachable for callers that downcast.
        let e: io::Error = FormatError::UnknownEncoding(7).into();
        let back = e.into_inner().unwrap().downcast::<FormatError>().unwrap();
        assert!(matches!(*back, FormatError::UnknownEncoding(7)));
    }
}
