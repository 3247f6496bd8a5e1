//! Pack files: many blobs in one object, with their own index at the end.
//!
//! ```text
//! header   16 B   "HAULPACK" | version u32 LE | flags u32 LE (0)
//! blobs           blob 0 | blob 1 | ... (each as in blob.rs), back to back
//! index  52 B×n   id [32] | offset u32 | stored_len u32 | raw_len u32 |
//!                 inner u32 | kind u8 | 3 zero bytes   (in blob order)
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
//!
//! The members of a bundle (see `blob.rs`) share one stored range: their
//! entries are consecutive, with the same `offset` and `stored_len`, and
//! `inner` (the member's offset within the bundle's plaintext) ascending from
//! 0 without gaps. A blob stored alone has `inner` 0 and is its whole range.

use std::io::Write;
use std::ops::Range;

use crate::blob::{
    bundle_member, decode_blob_unverified, encode_blob, BlobKind, EncodedBlob, EncodedBundle,
    BLOB_HEADER_LEN,
};
use crate::codec::{id_at, u32_at, HashingWriter};
use crate::error::FormatError;
use crate::id::Id;

/// Magic at the start of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"HAULPACK";
/// Magic at the very end of a pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"HAULPEND";
/// Pack format version this build reads and writes.
pub const PACK_VERSION: u32 = 2;
/// Length of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Length of one entry of a pack's own index.
pub const PACK_ENTRY_LEN: usize = 52;
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
    /// Length of the blob as stored (header and payload); for a bundle
    /// member, of the whole bundle.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// Offset of the plaintext within the stored blob's plaintext (0 but for
    /// the second and later members of a bundle).
    pub inner: u32,
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
        out.extend_from_slice(&self.inner.to_le_bytes());
        out.push(self.kind.as_u8());
        out.extend_from_slice(&[0, 0, 0]);
    }

    fn parse(b: &[u8]) -> Result<Self, FormatError> {
        if b[49..52] != [0, 0, 0] {
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
            inner: u32_at(b, 44),
            kind: BlobKind::from_u8(WHAT_TRAILER, b[48])?,
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
        let offset = self.room_for(blob.bytes.len(), 1)?;
        let entry = PackEntry {
            id: blob.id,
            kind: blob.kind,
            offset,
            stored_len: blob.bytes.len() as u32,
            raw_len: blob.raw_len,
            inner: 0,
        };
        self.out.put(&blob.bytes)?;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Appends a bundle encoded earlier: one stored range, one entry per
    /// member. Fails, leaving the pack as it was, if the bundle is empty or
    /// its members do not tile its plaintext, or if the pack would pass 4 GiB.
    pub fn add_bundle(&mut self, bundle: &EncodedBundle) -> Result<&[PackEntry], FormatError> {
        let mut next = 0u32;
        for m in &bundle.members {
            if m.inner != next {
                return Err(FormatError::Unencodable {
                    what: "pack",
                    reason: format!("bundle member {} is not at offset {next}", m.id),
                });
            }
            next = next
                .checked_add(m.raw_len)
                .ok_or(FormatError::Unencodable {
                    what: "pack",
                    reason: "bundle over 4 GiB".into(),
                })?;
        }
        if bundle.members.is_empty() {
            return Err(FormatError::Unencodable {
                what: "pack",
                reason: "empty bundle".into(),
            });
        }
        let offset = self.room_for(bundle.bytes.len(), bundle.members.len())?;
        let first = self.entries.len();
        self.entries
            .extend(bundle.members.iter().map(|m| PackEntry {
                id: m.id,
                kind: bundle.kind,
                offset,
                stored_len: bundle.bytes.len() as u32,
                raw_len: m.raw_len,
                inner: m.inner,
            }));
        if let Err(e) = self.out.put(&bundle.bytes) {
            self.entries.truncate(first);
            return Err(e.into());
        }
        Ok(&self.entries[first..])
    }

    /// The offset a stored blob of `len` bytes with `entries` index entries
    /// would get, if the pack has room for it.
    fn room_for(&self, len: usize, entries: usize) -> Result<u32, FormatError> {
        let room = u64::from(u32::MAX).saturating_sub(
            (PACK_FOOTER_LEN + PACK_ENTRY_LEN * (self.entries.len() + entries)) as u64,
        );
        let end = self.out.written + len as u64;
        if end > room || len < BLOB_HEADER_LEN {
            return Err(FormatError::Unencodable {
                what: "pack",
                reason: format!(
                    "a {len}-byte blob does not fit in a pack of {} bytes",
                    self.out.written
                ),
            });
        }
        Ok(self.out.written as u32)
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
    let mut entries: Vec<PackEntry> = Vec::with_capacity(count);
    let mut expect_offset = PACK_HEADER_LEN as u64;
    for raw in trailer[..count * PACK_ENTRY_LEN].chunks_exact(PACK_ENTRY_LEN) {
        let e = PackEntry::parse(raw)?;
        if let Some(prev) = entries.last().filter(|p| p.offset == e.offset) {
            // A later member of the same bundle.
            let want = prev.inner.checked_add(prev.raw_len);
            if e.stored_len != prev.stored_len || e.kind != prev.kind || Some(e.inner) != want {
                return Err(FormatError::invalid(
                    WHAT_TRAILER,
                    format!(
                        "bundle member {} does not follow {} (offset {}, inner {})",
                        e.id, prev.id, e.offset, e.inner
                    ),
                ));
            }
            entries.push(e);
            continue;
        }
        if e.inner != 0 {
            return Err(FormatError::invalid(
                WHAT_TRAILER,
                format!(
                    "blob {} starts a stored blob at inner offset {}",
                    e.id, e.inner
                ),
            ));
        }
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

    /// The entries grouped by stored blob: one group per single blob, one
    /// per bundle (its members, in order).
    pub fn stored_blobs(&self) -> impl Iterator<Item = &[PackEntry]> + '_ {
        self.entries.chunk_by(|a, b| a.offset == b.offset)
    }

    /// Decodes one stored blob, given all of its entries (a group from
    /// [`PackReader::stored_blobs`]), and checks that its kind and length
    /// match them. Returns the plaintext; check each member with
    /// [`bundle_member`].
    pub fn read_stored(&self, group: &[PackEntry], max_len: usize) -> Result<Vec<u8>, FormatError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return Err(FormatError::invalid("pack", "no entries for a stored blob"));
        };
        let len = u64::from(last.inner) + u64::from(last.raw_len);
        let max = (max_len as u64).min(len) as usize;
        let (kind, data) = decode_blob_unverified(self.stored(first)?, max)?;
        if kind != first.kind {
            return Err(FormatError::KindMismatch {
                id: first.id,
                expected: first.kind,
                got: kind,
            });
        }
        if data.len() as u64 != len {
            return Err(FormatError::invalid(
                "pack",
                format!(
                    "stored blob at offset {} has {} bytes, its entries say {len}",
                    first.offset,
                    data.len(),
                ),
            ));
        }
        Ok(data)
    }

    /// Decodes one blob (alone, or from its bundle) and checks its id, kind
    /// and length against `entry`.
    pub fn read_blob(&self, entry: &PackEntry, max_len: usize) -> Result<Vec<u8>, FormatError> {
        let group = self
            .stored_blobs()
            .find(|g| g[0].offset == entry.offset)
            .filter(|g| g.contains(entry))
            .ok_or_else(|| {
                FormatError::invalid("pack", format!("blob {} is not in this pack", entry.id))
            })?;
        let plain = self.read_stored(group, max_len)?;
        Ok(bundle_member(&plain, entry.inner, entry.raw_len, &entry.id)?.to_vec())
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
    use crate::blob::{decode_blob, BundleBuilder};
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
        assert_eq!(need, 3 * 52 + 56);
        let tail = &p.writer[p.writer.len() - need as usize..];
        let t = parse_pack_trailer(tail).unwrap();
        assert_eq!(t.entries, p.entries);
        assert_eq!(t.pack_len, p.len);
        match parse_pack_trailer(&tail[1..]) {
            Err(FormatError::Truncated { need: n, .. }) => assert_eq!(n, need),
            other => panic!("{other:?}"),
        }
    }

    fn bundled() -> (FinishedPack<Vec<u8>>, Vec<Vec<u8>>) {
        let blobs: Vec<Vec<u8>> = vec![
            b"alone".to_vec(),
            b"first member ".repeat(20),
            b"second member".to_vec(),
            Vec::new(),
            b"last member".repeat(30),
        ];
        let mut w = PackWriter::new(Vec::new(), 3).unwrap();
        w.add(BlobKind::Data, &blobs[0]).unwrap();
        let mut b = BundleBuilder::new(BlobKind::Data);
        for m in &blobs[1..] {
            b.push(Id::hash(m), m).unwrap();
        }
        let enc = b.finish(3).unwrap();
        assert!(b.is_empty());
        let es = w.add_bundle(&enc).unwrap().to_vec();
        assert_eq!(es.len(), 4);
        assert!(es
            .iter()
            .all(|e| e.offset == es[0].offset && e.stored_len == es[0].stored_len));
        assert_eq!(
            es.iter().map(|e| e.inner).collect::<Vec<_>>(),
            [0, 260, 273, 273]
        );
        (w.finish().unwrap(), blobs)
    }

    #[test]
    fn bundle_round_trip() {
        let (p, blobs) = bundled();
        let r = PackReader::new(&p.writer).unwrap();
        r.verify(&p.id).unwrap();
        assert_eq!(r.entries(), &p.entries[..]);
        let groups: Vec<usize> = r.stored_blobs().map(|g| g.len()).collect();
        assert_eq!(groups, [1, 4]);
        for (e, b) in r.entries().iter().zip(&blobs) {
            assert_eq!(&r.read_blob(e, 1 << 20).unwrap(), b);
            // A ranged read of the stored range, then the member.
            let stored = &p.writer[e.range().start as usize..e.range().end as usize];
            let (_, plain) = decode_blob_unverified(stored, 1 << 20).unwrap();
            assert_eq!(
                bundle_member(&plain, e.inner, e.raw_len, &e.id).unwrap(),
                &b[..]
            );
        }
        // A member's id is checked on its own bytes.
        let e = &r.entries()[2];
        let group = r.stored_blobs().nth(1).unwrap();
        let plain = r.read_stored(group, 1 << 20).unwrap();
        assert!(matches!(
            bundle_member(&plain, e.inner, e.raw_len, &r.entries()[1].id),
            Err(FormatError::IdMismatch { .. })
        ));
        assert!(bundle_member(&plain, e.inner, u32::MAX, &e.id).is_err());
        // The cap applies to the whole bundle.
        assert!(r.read_stored(group, 100).is_err());
    }

    /// Rewrites entry `i` of the trailer with `f` and fixes the checksum, so
    /// only the structural rules can object.
    fn with_entry(p: &FinishedPack<Vec<u8>>, i: usize, f: impl Fn(&mut PackEntry)) -> Vec<u8> {
        let mut es = p.entries.clone();
        f(&mut es[i]);
        let mut b = p.writer.clone();
        let start = b.len() - PACK_FOOTER_LEN - es.len() * PACK_ENTRY_LEN;
        let mut t = Vec::new();
        for e in &es {
            e.write(&mut t);
        }
        b[start..start + t.len()].copy_from_slice(&t);
        let n = b.len();
        let sum = blake3::hash(&b[start..n - 40]);
        b[n - 40..n - 8].copy_from_slice(sum.as_bytes());
        b
    }

    #[test]
    fn bundle_rules_are_enforced() {
        let (p, _) = bundled();
        assert!(PackReader::new(&with_entry(&p, 2, |_| {})).is_ok());
        // A member out of place inside its bundle.
        assert!(PackReader::new(&with_entry(&p, 2, |e| e.inner += 1)).is_err());
        // A member claiming another kind or length of bundle.
        assert!(PackReader::new(&with_entry(&p, 3, |e| e.kind = BlobKind::Tree)).is_err());
        assert!(PackReader::new(&with_entry(&p, 3, |e| e.stored_len += 1)).is_err());
        // A stored blob that starts inside its plaintext.
        assert!(PackReader::new(&with_entry(&p, 0, |e| e.inner = 1)).is_err());
        assert!(PackReader::new(&with_entry(&p, 1, |e| e.inner = 1)).is_err());
        // Members claiming more plaintext than the bundle holds.
        let b = with_entry(&p, 4, |e| e.raw_len += 1);
        let r = PackReader::new(&b).unwrap();
        let g = r.stored_blobs().nth(1).unwrap();
        assert!(r.read_stored(g, 1 << 20).is_err());
        // An empty or ill-tiled bundle is refused by the writer.
        let mut w = PackWriter::new(Vec::new(), 3).unwrap();
        let mut enc = BundleBuilder::new(BlobKind::Data).finish(3).unwrap();
        assert!(w.add_bundle(&enc).is_err());
        enc.members.push(crate::blob::BundleMember {
            id: Id::default(),
            inner: 1,
            raw_len: 0,
        });
        assert!(w.add_bundle(&enc).is_err());
        assert!(w.is_empty());
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
