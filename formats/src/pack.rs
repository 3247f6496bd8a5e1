//! Pack files: many blobs in one object, with their own index at the end.
//!
//! ```text
//! header   16 B   "HAULPACK" | version u32 LE | flags u32 LE (0)
//! blobs           blob 0 | blob 1 | ... (each as in blob.rs), back to back
//! index  48 B×n   id [32] | offset u32 | stored_len u32 | raw_len u32 |
//!                 kind u8 | 3 zero bytes            (in blob order)
//! footer   56 B   entry_count u32 | index_offset u32 | flags u32 (0) |
//!                 reserved u32 (0) | checksum [32] | "HAULPEND"
//! ```
//!
//! `checksum` is blake3 of the index entries followed by the first 16 footer
//! bytes. The pack's id (its file name) is blake3 of the whole file. A reader
//! on object storage fetches the last [`PACK_FOOTER_LEN`] bytes (or a larger
//! guess), learns the trailer length from [`pack_trailer_len`], fetches that
//! much from the end, and parses it with [`parse_pack_trailer`]; one blob is
//! then a ranged read of `offset..offset + stored_len`.

use std::io::Write;
use std::ops::Range;

use crate::blob::{decode_blob, encode_blob, BlobKind, EncodedBlob, BLOB_HEADER_LEN};
use crate::codec::{id_at, u32_at, HashingWriter};
use crate::error::FormatError;
use crate::id::Id;

/// Magic at the start of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"HAULPACK";
/// Magic at the very end of a pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"HAULPEND";
/// Pack format version this build reads and writes.
pub const PACK_VERSION: u32 = 1;
/// Length of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Length of one entry of a pack's own index.
pub const PACK_ENTRY_LEN: usize = 48;
/// Length of the fixed footer at the end of a pack.
pub const PACK_FOOTER_LEN: usize = 56;

const WHAT_HEADER: &str = "pack header";
const WHAT_TRAILER: &str = "pack trailer";

/// Where one blob lies in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// blake3 of the blob's plaintext.
    pub id: Id,
    /// What the blob holds.
    pub kind: BlobKind,
    /// Offset of the blob's first byte from the start of the pack.
    pub offset: u32,
    /// Length of the blob as stored (header and payload).
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

impl PackEntry {
    /// The byte range of the stored blob within its pack.
    pub fn range(&self) -> Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.stored_len)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind.as_u8());
        out.extend_from_slice(&[0, 0, 0]);
    }

    fn parse(b: &[u8]) -> Result<Self, FormatError> {
        if b[45..48] != [0, 0, 0] {
            return Err(FormatError::invalid(
                WHAT_TRAILER,
                "reserved entry bytes are not zero",
            ));
        }
        Ok(PackEntry {
            id: id_at(b, 0),
            offset: u32_at(b, 32),
            stored_len: u32_at(b, 36),
            raw_len: u32_at(b, 40),
            kind: BlobKind::from_u8(WHAT_TRAILER, b[44])?,
        })
    }
}

/// A pack's own index, as read from its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackTrailer {
    /// The blobs, in the order they are stored.
    pub entries: Vec<PackEntry>,
    /// Length of the whole pack file the trailer describes.
    pub pack_len: u64,
}

/// Writes a pack, blob by blob, to any `Write` (a `Vec<u8>` to keep it in
/// memory, a temp file, an upload stream).
///
/// The pack's id is computed while writing, so the finished file never has
/// to be read back.
pub struct PackWriter<W: Write> {
    out: HashingWriter<W>,
    entries: Vec<PackEntry>,
    level: i32,
}

/// What [`PackWriter::finish`] returns.
#[derive(Debug)]
pub struct FinishedPack<W> {
    /// blake3 of the whole pack: its file name.
    pub id: Id,
    /// Length of the pack in bytes.
    pub len: u64,
    /// The blobs it holds, in order.
    pub entries: Vec<PackEntry>,
    /// The writer given to [`PackWriter::new`], flushed.
    pub writer: W,
}

impl<W: Write> PackWriter<W> {
    /// Starts a pack whose blobs [`PackWriter::add`] compresses at zstd `level`.
    pub fn new(out: W, level: i32) -> Result<Self, FormatError> {
        let mut out = HashingWriter::new(out);
        let mut header = Vec::with_capacity(PACK_HEADER_LEN);
        header.extend_from_slice(PACK_MAGIC);
        header.extend_from_slice(&PACK_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        out.put(&header)?;
        Ok(PackWriter {
            out,
            entries: Vec::new(),
            level,
        })
    }

    /// Encodes and appends a blob.
    pub fn add(&mut self, kind: BlobKind, plaintext: &[u8]) -> Result<PackEntry, FormatError> {
        let blob = encode_blob(kind, plaintext, self.level)?;
        self.add_encoded(&blob)
    }

    /// Appends a blob encoded earlier (for example on another thread).
    ///
    /// Fails, leaving the pack as it was, if the pack would pass 4 GiB.
    pub fn add_encoded(&mut self, blob: &EncodedBlob) -> Result<PackEntry, FormatError> {
        let room = u64::from(u32::MAX)
            - (PACK_FOOTER_LEN + PACK_ENTRY_LEN * (self.entries.len() + 1)) as u64;
        let end = self.out.written + blob.bytes.len() as u64;
        if end > room || blob.bytes.len() < BLOB_HEADER_LEN {
            return Err(FormatError::Unencodable {
                what: "pack",
                reason: format!(
                    "a {}-byte blob does not fit in a pack of {} bytes",
                    blob.bytes.len(),
                    self.out.written
                ),
            });
        }
        let entry = PackEntry {
            id: blob.id,
            kind: blob.kind,
            offset: self.out.written as u32,
            stored_len: blob.bytes.len() as u32,
            raw_len: blob.raw_len,
        };
        self.out.put(&blob.bytes)?;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Bytes written so far; compare against the target pack size.
    pub fn len(&self) -> u64 {
        self.out.written
    }

    /// Whether no blob has been added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The blobs added so far.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Writes the index and footer, flushes, and returns the pack's id.
    pub fn finish(mut self) -> Result<FinishedPack<W>, FormatError> {
        let index_offset = self.out.written as u32;
        let mut trailer = Vec::with_capacity(self.entries.len() * PACK_ENTRY_LEN + PACK_FOOTER_LEN);
        for e in &self.entries {
            e.write(&mut trailer);
        }
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&index_offset.to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        let checksum = blake3::hash(&trailer);
        trailer.extend_from_slice(checksum.as_bytes());
        trailer.extend_from_slice(PACK_END_MAGIC);
        self.out.put(&trailer)?;
        self.out.inner.flush()?;
        Ok(FinishedPack {
            id: self.out.hasher.finalize().into(),
            len: self.out.written,
            entries: self.entries,
            writer: self.out.inner,
        })
    }
}

/// Checks the 16-byte header at the start of a pack.
pub fn parse_pack_header(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() < PACK_HEADER_LEN {
        return Err(FormatError::truncated(
            WHAT_HEADER,
            PACK_HEADER_LEN,
            bytes.len(),
        ));
    }
    if &bytes[..8] != PACK_MAGIC {
        return Err(FormatError::bad_magic(WHAT_HEADER, PACK_MAGIC, &bytes[..8]));
    }
    let version = u32_at(bytes, 8);
    if version != PACK_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what: WHAT_HEADER,
            got: u64::from(version),
            supported: u64::from(PACK_VERSION),
        });
    }
    let flags = u32_at(bytes, 12);
    if flags != 0 {
        return Err(FormatError::invalid(
            WHAT_HEADER,
            format!("unknown flags {flags:#x}"),
        ));
    }
    Ok(())
}

fn footer_of(tail: &[u8]) -> Result<&[u8], FormatError> {
    if tail.len() < PACK_FOOTER_LEN {
        return Err(FormatError::truncated(
            WHAT_TRAILER,
            PACK_FOOTER_LEN,
            tail.len(),
        ));
    }
    let footer = &tail[tail.len() - PACK_FOOTER_LEN..];
    if &footer[48..] != PACK_END_MAGIC {
        return Err(FormatError::bad_magic(
            WHAT_TRAILER,
            PACK_END_MAGIC,
            &footer[48..],
        ));
    }
    Ok(footer)
}

/// How many bytes from the end of a pack hold its trailer (index and footer),
/// read from `tail`: at least the last [`PACK_FOOTER_LEN`] bytes of the pack.
pub fn pack_trailer_len(tail: &[u8]) -> Result<u64, FormatError> {
    let footer = footer_of(tail)?;
    let count = u64::from(u32_at(footer, 0));
    Ok(count * PACK_ENTRY_LEN as u64 + PACK_FOOTER_LEN as u64)
}

/// Parses and checks a pack's trailer from `tail`, any suffix of the pack
/// that holds the whole trailer (the whole pack will do).
///
/// If `tail` is too short, fails with [`FormatError::Truncated`] whose `need`
/// says how many bytes to fetch. Nothing is allocated before the claimed
/// entry count is checked against the bytes present.
pub fn parse_pack_trailer(tail: &[u8]) -> Result<PackTrailer, FormatError> {
    let footer = footer_of(tail)?;
    let count = u32_at(footer, 0) as usize;
    let index_offset = u32_at(footer, 4);
    if u32_at(footer, 8) != 0 || u32_at(footer, 12) != 0 {
        return Err(FormatError::invalid(
            WHAT_TRAILER,
            "unknown flags in footer",
        ));
    }
    let trailer_len = count as u64 * PACK_ENTRY_LEN as u64 + PACK_FOOTER_LEN as u64;
    if trailer_len > tail.len() as u64 {
        return Err(FormatError::Truncated {
            what: WHAT_TRAILER,
            need: trailer_len,
            have: tail.len() as u64,
        });
    }
    let trailer = &tail[tail.len() - trailer_len as usize..];
    let covered = &trailer[..trailer.len() - 40];
    let stored = id_at(trailer, trailer.len() - 40);
    let got = Id::hash(covered);
    if got != stored {
        return Err(FormatError::ChecksumMismatch {
            what: WHAT_TRAILER,
            expected: stored,
            got,
        });
    }
    let mut entries = Vec::with_capacity(count);
    let mut expect_offset = PACK_HEADER_LEN as u64;
    for raw in trailer[..count * PACK_ENTRY_LEN].chunks_exact(PACK_ENTRY_LEN) {
        let e = PackEntry::parse(raw)?;
        if u64::from(e.offset) != expect_offset {
            return Err(FormatError::invalid(
                WHAT_TRAILER,
                format!(
                    "blob {} starts at {} but the previous one ends at {expect_offset}",
                    e.id, e.offset
                ),
            ));
        }
        if (e.stored_len as usize) < BLOB_HEADER_LEN {
            return Err(FormatError::invalid(
                WHAT_TRAILER,
                format!(
                    "blob {} is {} bytes, shorter than a blob header",
                    e.id, e.stored_len
                ),
            ));
        }
        expect_offset += u64::from(e.stored_len);
        entries.push(e);
    }
    if expect_offset != u64::from(index_offset) {
        return Err(FormatError::invalid(
            WHAT_TRAILER,
            format!("blobs end at {expect_offset} but the index starts at {index_offset}"),
        ));
    }
    Ok(PackTrailer {
        entries,
        pack_len: u64::from(index_offset) + trailer_len,
    })
}

/// A whole pack in memory (or memory-mapped), checked for structure.
#[derive(Debug)]
pub struct PackReader<'a> {
    bytes: &'a [u8],
    entries: Vec<PackEntry>,
}

impl<'a> PackReader<'a> {
    /// Checks the header and trailer, and that the trailer describes exactly
    /// these bytes. Does not hash the whole pack (see [`PackReader::verify`]).
    pub fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        parse_pack_header(bytes)?;
        let trailer = parse_pack_trailer(bytes)?;
        if trailer.pack_len != bytes.len() as u64 {
            return Err(FormatError::invalid(
                WHAT_TRAILER,
                format!(
                    "trailer describes a pack of {} bytes, file has {}",
                    trailer.pack_len,
                    bytes.len()
                ),
            ));
        }
        Ok(PackReader {
            bytes,
            entries: trailer.entries,
        })
    }

    /// The blobs, in stored order.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The stored bytes of one blob (its range was checked by `new`).
    pub fn stored(&self, entry: &PackEntry) -> Result<&'a [u8], FormatError> {
        let r = entry.range();
        self.bytes
            .get(r.start as usize..r.end as usize)
            .ok_or_else(|| {
                FormatError::invalid("pack", format!("blob {} is out of range", entry.id))
            })
    }

    /// Decodes one blob and checks its id, kind and length against `entry`.
    pub fn read_blob(&self, entry: &PackEntry, max_len: usize) -> Result<Vec<u8>, FormatError> {
        let max = max_len.min(entry.raw_len as usize);
        let (kind, data) = decode_blob(self.stored(entry)?, &entry.id, max)?;
        if kind != entry.kind {
            return Err(FormatError::KindMismatch {
                id: entry.id,
                expected: entry.kind,
                got: kind,
            });
        }
        if data.len() != entry.raw_len as usize {
            return Err(FormatError::invalid(
                "pack",
                format!(
                    "blob {} has {} bytes, index says {}",
                    entry.id,
                    data.len(),
                    entry.raw_len
                ),
            ));
        }
        Ok(data)
    }

    /// Checks that the pack hashes to `expected` (its file name).
    pub fn verify(&self, expected: &Id) -> Result<(), FormatError> {
        let got = Id::hash(self.bytes);
        if got != *expected {
            return Err(FormatError::IdMismatch {
                what: "pack",
                expected: *expected,
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (FinishedPack<Vec<u8>>, Vec<Vec<u8>>) {
        let blobs: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![0u8; 5000], b"tree".to_vec()];
        let mut w = PackWriter::new(Vec::new(), 3).unwrap();
        assert!(w.is_empty());
        w.add(BlobKind::Data, &blobs[0]).unwrap();
        w.add(BlobKind::Data, &blobs[1]).unwrap();
        w.add(BlobKind::Tree, &blobs[2]).unwrap();
        (w.finish().unwrap(), blobs)
    }

    #[test]
    fn round_trip() {
        let (p, blobs) = sample();
        assert_eq!(p.id, Id::hash(&p.writer));
        assert_eq!(p.len, p.writer.len() as u64);
        let r = PackReader::new(&p.writer).unwrap();
        r.verify(&p.id).unwrap();
        assert_eq!(r.entries(), &p.entries[..]);
        for (e, b) in r.entries().iter().zip(&blobs) {
            assert_eq!(&r.read_blob(e, 1 << 20).unwrap(), b);
            // A ranged read of just the blob decodes on its own.
            let stored = &p.writer[e.range().start as usize..e.range().end as usize];
            assert_eq!(&decode_blob(stored, &e.id, 1 << 20).unwrap().1, b);
        }
        assert_eq!(r.entries()[2].kind, BlobKind::Tree);
        // Trailer from a suffix only.
        let need = pack_trailer_len(&p.writer[p.writer.len() - PACK_FOOTER_LEN..]).unwrap();
        assert_eq!(need, 3 * 48 + 56);
        let tail = &p.writer[p.writer.len() - need as usize..];
        let t = parse_pack_trailer(tail).unwrap();
        assert_eq!(t.entries, p.entries);
        assert_eq!(t.pack_len, p.len);
        match parse_pack_trailer(&tail[1..]) {
            Err(FormatError::Truncated { need: n, .. }) => assert_eq!(n, need),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_pack() {
        let p = PackWriter::new(Vec::new(), 3).unwrap().finish().unwrap();
        assert_eq!(p.writer.len(), PACK_HEADER_LEN + PACK_FOOTER_LEN);
        assert!(PackReader::new(&p.writer).unwrap().entries().is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let (p, _) = sample();
        let bytes = &p.writer;
        for cut in 0..bytes.len() {
            assert!(
                PackReader::new(&bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let trailer_start = bytes.len() - (3 * PACK_ENTRY_LEN + PACK_FOOTER_LEN);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let r = PackReader::new(&b);
            if i < PACK_HEADER_LEN || i >= trailer_start {
                assert!(r.is_err(), "flip at {i} not detected by structure");
            } else {
                // A flip inside blob data is caught by the blob's id, and by
                // the pack id, never by a panic.
                let r = r.unwrap();
                assert!(r.verify(&p.id).is_err());
                let bad = r.entries().iter().any(|e| r.read_blob(e, 1 << 20).is_err());
                assert!(bad, "flip at {i} not detected by blob ids");
            }
        }
    }

    #[test]
    fn huge_count_does_not_allocate() {
        let (p, _) = sample();
        let mut b = p.writer.clone();
        let n = b.len();
        b[n - PACK_FOOTER_LEN..n - PACK_FOOTER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_pack_trailer(&b),
            Err(FormatError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn prop_round_trip(blobs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut w = PackWriter::new(Vec::new(), 1).unwrap();
            for (tree, data) in &blobs {
                let kind = if *tree { BlobKind::Tree } else { BlobKind::Data };
                w.add(kind, data).unwrap();
            }
            let p = w.finish().unwrap();
            let r = PackReader::new(&p.writer).unwrap();
            prop_assert_eq!(r.entries().len(), blobs.len());
            for (e, (_, data)) in r.entries().iter().zip(&blobs) {
                prop_assert_eq!(&r.read_blob(e, 1000).unwrap(), data);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = PackReader::new(&data);
            let _ = parse_pack_trailer(&data);
        }
    }
}
