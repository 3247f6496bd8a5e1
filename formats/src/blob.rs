//! Blobs: one chunk of file data or one tree, as stored inside a pack.
//!
//! ```text
//! byte 0      encoding: 0x00 raw, 0x01 zstd, 0x02..=0x7f reserved,
//!             0x80..=0xff reserved for encrypted encodings
//! byte 1      kind: 0 data, 1 tree
//! byte 2..    payload: the plaintext (raw) or one zstd frame (zstd)
//! ```
//!
//! A blob's id is the blake3 hash of its plaintext, so it does not depend on
//! the compression level or, later, on the encryption key's nonce.
//!
//! A *bundle* is several small blobs of one kind stored as one: their
//! plaintexts back to back, encoded together exactly like a single blob.
//! Compressing a directory's worth of small files as one frame is what gets a
//! repository close to the size of a `tar.zst` of the same tree; each member
//! is found by its offset within the bundle's plaintext (`inner` in the pack
//! and index records) and still verified by its own id.

use std::fmt;
use std::io::Read;

use crate::error::FormatError;
use crate::id::Id;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// An encoded directory listing ([`crate::TreeWriter`]).
    Tree,
}

impl BlobKind {
    /// The byte stored for this kind in blobs, pack and index records.
    pub const fn as_u8(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    /// The kind stored as `b`, if it is one.
    pub fn from_u8(what: &'static str, b: u8) -> Result<Self, FormatError> {
        match b {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            got => Err(FormatError::UnknownKind { what, got }),
        }
    }
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        })
    }
}

/// Encoding byte: the payload is the plaintext.
pub const ENCODING_RAW: u8 = 0x00;
/// Encoding byte: the payload is one zstd frame of the plaintext.
pub const ENCODING_ZSTD: u8 = 0x01;
/// Encoding bytes reserved for encrypted blobs (a later format version).
pub const ENCODING_ENCRYPTED: std::ops::RangeInclusive<u8> = 0x80..=0xff;
/// Bytes of a blob before its payload.
pub const BLOB_HEADER_LEN: usize = 2;

/// Largest plaintext of a data blob a reader should accept: FastCDC's
/// largest possible chunk (16 MiB).
pub const MAX_DATA_BLOB_LEN: usize = 16 * 1024 * 1024;
/// Largest plaintext of a tree blob a reader should accept by default.
pub const MAX_TREE_BLOB_LEN: usize = 256 * 1024 * 1024;

/// A blob ready to be put into a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBlob {
    /// blake3 of the plaintext.
    pub id: Id,
    /// What the plaintext is.
    pub kind: BlobKind,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// The stored bytes: header and payload.
    pub bytes: Vec<u8>,
}

/// Several blobs of one kind, encoded as one stored blob ([`BundleBuilder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBundle {
    /// What every member holds.
    pub kind: BlobKind,
    /// The members, in plaintext order.
    pub members: Vec<BundleMember>,
    /// The stored bytes: header and payload, as for one blob.
    pub bytes: Vec<u8>,
}

/// One blob inside a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleMember {
    /// blake3 of the member's plaintext.
    pub id: Id,
    /// Offset of its plaintext within the bundle's plaintext.
    pub inner: u32,
    /// Length of its plaintext.
    pub raw_len: u32,
}

/// Collects small blobs of one kind into a bundle.
#[derive(Debug)]
pub struct BundleBuilder {
    kind: BlobKind,
    plain: Vec<u8>,
    members: Vec<BundleMember>,
}

impl BundleBuilder {
    /// An empty bundle of blobs of `kind`.
    pub fn new(kind: BlobKind) -> Self {
        BundleBuilder {
            kind,
            plain: Vec::new(),
            members: Vec::new(),
        }
    }

    /// Appends a blob; `id` must be the blake3 hash of `plaintext` (a wrong
    /// id is not detected here, readers reject the member later). Fails if
    /// the bundle would pass 4 GiB.
    pub fn push(&mut self, id: Id, plaintext: &[u8]) -> Result<(), FormatError> {
        let (inner, raw_len) = match (
            u32::try_from(self.plain.len()),
            u32::try_from(plaintext.len()),
        ) {
            (Ok(i), Ok(r)) if i.checked_add(r).is_some() => (i, r),
            _ => {
                return Err(FormatError::Unencodable {
                    what: "bundle",
                    reason: "over the 4 GiB limit".into(),
                })
            }
        };
        self.plain.extend_from_slice(plaintext);
        self.members.push(BundleMember { id, inner, raw_len });
        Ok(())
    }

    /// Plaintext bytes collected so far.
    pub fn len(&self) -> usize {
        self.plain.len()
    }

    /// Whether no blob was pushed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Compresses the bundle at zstd `level` (stored raw if that is not
    /// smaller) and starts over, keeping the buffer's capacity.
    pub fn finish(&mut self, level: i32) -> Result<EncodedBundle, FormatError> {
        let bytes = stored_bytes(self.kind, &self.plain, level)?;
        self.plain.clear();
        Ok(EncodedBundle {
            kind: self.kind,
            members: std::mem::take(&mut self.members),
            bytes,
        })
    }
}

/// The member `inner..inner + raw_len` of a decoded bundle (or the whole of a
/// single blob, `inner` 0), checked against its id.
pub fn bundle_member<'a>(
    plaintext: &'a [u8],
    inner: u32,
    raw_len: u32,
    expected_id: &Id,
) -> Result<&'a [u8], FormatError> {
    let start = inner as usize;
    let member = start
        .checked_add(raw_len as usize)
        .and_then(|end| plaintext.get(start..end))
        .ok_or_else(|| {
            FormatError::invalid(
                "blob",
                format!(
                    "member {} at {inner}+{raw_len} lies outside the {}-byte plaintext",
                    expected_id,
                    plaintext.len()
                ),
            )
        })?;
    let got = Id::hash(member);
    if got != *expected_id {
        return Err(FormatError::IdMismatch {
            what: "blob",
            expected: *expected_id,
            got,
        });
    }
    Ok(member)
}

thread_local! {
    // zstd contexts are costly to create (allocations sized for the level's
    // window) and a repository holds one blob per small file, so each thread
    // keeps one compressor (per level) and one decompressor.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd window (log2 bytes) the writer uses at levels whose own window is
/// larger (level 3 and up): 1 MiB. A restore decodes a whole repository's
/// worth of bundles and chunks; matches within 1 MiB stay in a core's cache,
/// which on the benchmark corpus saves about a tenth of restore CPU for
/// 0.13% more bytes than level 3's own 2 MiB window. Readers accept any
/// window a frame declares, up to their caps.
pub const ZSTD_WINDOW_LOG: u32 = 20;

fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>, FormatError> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).map_err(FormatError::Zstd)?;
    let mut set = |p| c.set_parameter(p).map_err(FormatError::Zstd);
    // Level 0 means zstd's default, 3; levels 1 and 2 and the negative ones
    // already use 1 MiB or less.
    if level == 0 || level >= 3 {
        set(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    }
    // haul's default level is zstd's 3 with matches of 6 bytes or more
    // (zstd's 3 takes 5) and a chain table twice as large. Fewer, longer
    // sequences decode faster and are found faster; the larger table wins
    // back the ratio. Measured on 2 MiB blocks (decode in instructions,
    // under callgrind; size; compression in best-of-7 wall time):
    // source-like text: decode -6.4%, size -0.4%, compression 3-5% faster;
    // binaries (/usr/lib): decode -6.0%, size +1.4%, compression 5% faster.
    if level == 0 || level == 3 {
        set(CParameter::MinMatch(6))?;
        set(CParameter::ChainLog(17))?;
    }
    Ok(c)
}

fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, compressor(level)?));
        }
        let (_, comp) = c.as_mut().expect("just set");
        comp.compress(data).map_err(FormatError::Zstd)
    })
}

/// Decompresses one frame of at most `capacity` bytes into `out` (empty).
fn decompress_into(data: &[u8], capacity: usize, out: &mut Vec<u8>) -> Result<(), FormatError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(FormatError::Zstd)?);
        }
        // zstd writes into the spare capacity and never past it.
        out.reserve_exact(capacity);
        d.as_mut()
            .expect("just set")
            .decompress_to_buffer(data, out)
            .map(drop)
            .map_err(FormatError::Zstd)
    })
}

/// The stored form of `plaintext` (one blob, or a bundle's members back to
/// back): header, then one zstd frame at `level`, or the plaintext itself
/// when compression does not make it smaller.
fn stored_bytes(kind: BlobKind, plaintext: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    let compressed = compress(plaintext, level)?;
    let (encoding, payload) = if compressed.len() < plaintext.len() {
        (ENCODING_ZSTD, &compressed[..])
    } else {
        (ENCODING_RAW, plaintext)
    };
    let mut bytes = Vec::with_capacity(BLOB_HEADER_LEN + payload.len());
    bytes.push(encoding);
    bytes.push(kind.as_u8());
    bytes.extend_from_slice(payload);
    Ok(bytes)
}

/// Encodes `plaintext` as a blob, compressed with zstd at `level` (0 means
/// zstd's default, 3) unless compression does not make it smaller, in which
/// case it is stored raw.
pub fn encode_blob(
    kind: BlobKind,
    plaintext: &[u8],
    level: i32,
) -> Result<EncodedBlob, FormatError> {
    encode_blob_with_id(kind, plaintext, Id::hash(plaintext), level)
}

/// [`encode_blob`] for a caller that has already hashed `plaintext` (to
/// look it up before deciding to store it): `id` must be its blake3 hash.
/// A wrong id is not detected here; [`decode_blob`] rejects the blob later.
pub fn encode_blob_with_id(
    kind: BlobKind,
    plaintext: &[u8],
    id: Id,
    level: i32,
) -> Result<EncodedBlob, FormatError> {
    let raw_len = u32::try_from(plaintext.len()).map_err(|_| FormatError::Unencodable {
        what: "blob",
        reason: format!("{} bytes is over the 4 GiB limit", plaintext.len()),
    })?;
    Ok(EncodedBlob {
        id,
        kind,
        raw_len,
        bytes: stored_bytes(kind, plaintext, level)?,
    })
}

/// Decodes a stored blob, refusing plaintext longer than `max_len`, and checks
/// that the plaintext hashes to `expected_id`. Returns the kind and plaintext.
///
/// Memory use is bounded by `max_len` whatever the input claims.
pub fn decode_blob(
    bytes: &[u8],
    expected_id: &Id,
    max_len: usize,
) -> Result<(BlobKind, Vec<u8>), FormatError> {
    let (kind, data) = decode_blob_unverified(bytes, max_len)?;
    let got = Id::hash(&data);
    if got != *expected_id {
        return Err(FormatError::IdMismatch {
            what: "blob",
            expected: *expected_id,
            got,
        });
    }
    Ok((kind, data))
}

/// [`decode_blob`] without the id check, for callers that do not know the id
/// (they must hash the result themselves before trusting it).
pub fn decode_blob_unverified(
    bytes: &[u8],
    max_len: usize,
) -> Result<(BlobKind, Vec<u8>), FormatError> {
    let mut data = Vec::new();
    let kind = decode_blob_into(bytes, max_len, &mut data)?;
    Ok((kind, data))
}

/// [`decode_blob_unverified`] into `out` (cleared first, then holding
/// exactly the plaintext): a caller that reuses `out` saves an allocation,
/// and the page faults of fresh memory, per blob. On an error `out`'s
/// contents are unspecified.
pub fn decode_blob_into(
    bytes: &[u8],
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<BlobKind, FormatError> {
    out.clear();
    if bytes.len() < BLOB_HEADER_LEN {
        return Err(FormatError::truncated("blob", BLOB_HEADER_LEN, bytes.len()));
    }
    let encoding = bytes[0];
    let kind = BlobKind::from_u8("blob", bytes[1])?;
    let payload = &bytes[BLOB_HEADER_LEN..];
    match encoding {
        ENCODING_RAW => {
            if payload.len() > max_len {
                return Err(FormatError::too_large(
                    "blob plaintext",
                    payload.len() as u64,
                    max_len as u64,
                ));
            }
            out.extend_from_slice(payload);
        }
        ENCODING_ZSTD => zstd_decompress(payload, max_len, out)?,
        e if ENCODING_ENCRYPTED.contains(&e) => return Err(FormatError::Encrypted(e)),
        e => return Err(FormatError::UnknownEncoding(e)),
    }
    Ok(kind)
}

fn zstd_decompress(payload: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), FormatError> {
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(claimed)) => {
            // Our writer always records the content size, so this is the
            // usual path: one exact allocation, and zstd itself refuses to
            // write past it.
            if claimed > max_len as u64 {
                return Err(FormatError::too_large(
                    "blob plaintext",
                    claimed,
                    max_len as u64,
                ));
            }
            decompress_into(payload, claimed as usize, out)?;
            if out.len() as u64 != claimed {
                return Err(FormatError::invalid(
                    "blob",
                    format!("zstd frame claims {claimed} bytes but holds {}", out.len()),
                ));
            }
            Ok(())
        }
        Ok(None) => {
            // Frames written by streaming encoders may omit the size: stream
            // with the output capped by max_len, and zstd's window (which it
            // allocates up front, sized by the frame header) capped by
            // max_len but never below 16 MiB, which covers the windows zstd
            // picks for levels up to 18 or so.
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(payload).map_err(FormatError::Zstd)?;
            let window_log =
                (usize::BITS - max_len.saturating_sub(1).leading_zeros()).clamp(24, 31);
            decoder
                .window_log_max(window_log)
                .map_err(FormatError::Zstd)?;
            decoder
                .take(max_len as u64 + 1)
                .read_to_end(out)
                .map_err(FormatError::Zstd)?;
            if out.len() > max_len {
                return Err(FormatError::too_large(
                    "blob plaintext",
                    out.len() as u64,
                    max_len as u64,
                ));
            }
            Ok(())
        }
        Err(_) => Err(FormatError::invalid("blob", "payload is not a zstd frame")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_and_not() {
        let text = vec![b'a'; 10_000];
        let b = encode_blob(BlobKind::Data, &text, 3).unwrap();
        assert_eq!(b.bytes[0], ENCODING_ZSTD);
        assert_eq!(b.bytes[1], 0);
        assert!(b.bytes.len() < 100);
        assert_eq!(b.raw_len, 10_000);
        assert_eq!(
            decode_blob(&b.bytes, &b.id, 10_000).unwrap(),
            (BlobKind::Data, text)
        );

        let tiny = b"xy";
        let b = encode_blob(BlobKind::Tree, tiny, 3).unwrap();
        assert_eq!(b.bytes, [ENCODING_RAW, 1, b'x', b'y']);
        assert_eq!(
            decode_blob(&b.bytes, &b.id, 2).unwrap(),
            (BlobKind::Tree, tiny.to_vec())
        );
        assert!(matches!(
            decode_blob(&b.bytes, &b.id, 1),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects() {
        let text = vec![b'a'; 10_000];
        let b = encode_blob(BlobKind::Data, &text, 3).unwrap();
        assert!(matches!(
            decode_blob(&b.bytes, &Id::hash(b"other"), 1 << 20),
            Err(FormatError::IdMismatch { .. })
        ));
        assert!(matches!(
            decode_blob(&b.bytes, &b.id, 9_999),
            Err(FormatError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_blob(&[], &b.id, 10),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            decode_blob(&[0x05, 0], &b.id, 10),
            Err(FormatError::UnknownEncoding(5))
        ));
        assert!(matches!(
            decode_blob(&[0x80, 0], &b.id, 10),
            Err(FormatError::Encrypted(0x80))
        ));
        assert!(matches!(
            decode_blob(&[0, 9], &b.id, 10),
            Err(FormatError::UnknownKind { got: 9, .. })
        ));
        // A frame claiming 4 GiB of output must not allocate it.
        let mut huge = b.bytes.clone();
        huge.truncate(BLOB_HEADER_LEN + 4);
        huge.extend_from_slice(&[0x20 | 0xc0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode_blob(&huge, &b.id, 1 << 20).is_err());
    }

    #[test]
    fn window_is_capped_at_1_mib() {
        // The frame header declares the window (RFC 8878 3.1.1.1): with the
        // single-segment flag clear, Window_Descriptor follows the frame
        // header descriptor, and its exponent plus 10 is the window's log2.
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for level in [0, 3, 9, 19] {
            let b = encode_blob(BlobKind::Data, &data, level).unwrap();
            assert_eq!(b.bytes[0], ENCODING_ZSTD, "level {level}");
            let frame = &b.bytes[BLOB_HEADER_LEN..];
            assert_eq!(frame[..4], [0x28, 0xb5, 0x2f, 0xfd]);
            let single_segment = frame[4] & 0x20 != 0;
            assert!(!single_segment, "level {level}: window is the whole input");
            let window_log = 10 + u32::from(frame[5] >> 3);
            assert!(
                window_log <= ZSTD_WINDOW_LOG,
                "level {level}: window 2^{window_log}"
            );
        }
    }

    #[test]
    fn frame_without_size_is_capped() {
        let text = vec![b'z'; 100_000];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &text).unwrap();
        let frame = enc.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            None
        );
        let mut bytes = vec![ENCODING_ZSTD, 0];
        bytes.extend_from_slice(&frame);
        let id = Id::hash(&text);
        assert_eq!(decode_blob(&bytes, &id, 100_000).unwrap().1, text);
        assert!(matches!(
            decode_blob(&bytes, &id, 99_999),
            Err(FormatError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), level in 0i32..=9, tree in any::<bool>()) {
            let kind = if tree { BlobKind::Tree } else { BlobKind::Data };
            let b = encode_blob(kind, &data, level).unwrap();
            prop_assert_eq!(b.id, Id::hash(&data));
            prop_assert!(b.bytes.len() <= data.len() + BLOB_HEADER_LEN);
            let (k, out) = decode_blob(&b.bytes, &b.id, data.len()).unwrap();
            prop_assert_eq!(k, kind);
            prop_assert_eq!(out, data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_blob(&data, &Id::default(), 1 << 16);
        }
    }
}
