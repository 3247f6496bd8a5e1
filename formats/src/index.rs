//! Index files: which pack holds each blob, as sorted fixed-size records.
//!
//! ```text
//! header   32 B     "HAULINDX" | version u32 | flags u32 (0) |
//!                   pack_count u32 | reserved u32 (0) | record_count u64
//! packs    32 B×p   pack ids, sorted ascending, unique
//! records  56 B×n   id [32] | kind u8 | 3 zero bytes | pack u32 (into the
//!                   pack table) | offset u32 | stored_len u32 | raw_len u32 |
//!                   inner u32         sorted by (id, kind), unique
//! footer   32 B     blake3 of everything before it
//! ```
//!
//! All integers are little-endian. The file's name is blake3 of all its
//! bytes. Fixed-size sorted records let a reader binary-search a
//! memory-mapped file, or a remote one with ranged reads, without loading it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::io::Write;
use std::ops::Range;

use crate::blob::BlobKind;
use crate::codec::{id_at, u32_at, u64_at, HashingWriter};
use crate::error::FormatError;
use crate::id::Id;
use crate::pack::PackEntry;

/// Magic at the start of an index file.
pub const INDEX_MAGIC: &[u8; 8] = b"HAULINDX";
/// Index format version this build reads and writes.
pub const INDEX_VERSION: u32 = 2;
/// Length of the index header.
pub const INDEX_HEADER_LEN: usize = 32;
/// Length of one record.
pub const INDEX_RECORD_LEN: usize = 56;
/// Length of the checksum at the end.
pub const INDEX_FOOTER_LEN: usize = 32;

const WHAT: &str = "index";

/// (blob id, kind, pack id, offset, inner): file order plus the duplicate
/// tie-break.
type OrderKey = (Id, BlobKind, Id, u32, u32);

/// Where one blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// blake3 of the blob's plaintext.
    pub id: Id,
    /// What the blob holds.
    pub kind: BlobKind,
    /// The pack holding it.
    pub pack: Id,
    /// Offset of the stored blob in the pack.
    pub offset: u32,
    /// Length of the stored blob (for a bundle member, of the bundle).
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// Offset of the plaintext within the stored blob's plaintext (see
    /// [`PackEntry::inner`]).
    pub inner: u32,
}

impl IndexEntry {
    /// The entry for a blob of pack `pack`.
    pub fn new(pack: Id, e: &PackEntry) -> Self {
        IndexEntry {
            id: e.id,
            kind: e.kind,
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            inner: e.inner,
        }
    }

    /// The byte range of the stored blob within its pack.
    pub fn range(&self) -> Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.stored_len)
    }

    // Sort order of the file, plus the tie-break that picks which copy of a
    // duplicated blob is kept: the one in the lowest pack id, then offset.
    fn order_key(&self) -> OrderKey {
        (self.id, self.kind, self.pack, self.offset, self.inner)
    }
}

/// Offsets of an index file's sections, from its header alone: enough to
/// binary-search it with ranged reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLayout {
    /// Number of pack ids in the pack table.
    pub pack_count: u32,
    /// Number of records.
    pub record_count: u64,
    /// Byte range of the pack table.
    pub packs: Range<u64>,
    /// Byte range of the records.
    pub records: Range<u64>,
    /// Length of the whole file.
    pub file_len: u64,
}

impl IndexLayout {
    /// Parses the header (the first [`INDEX_HEADER_LEN`] bytes of `bytes`).
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < INDEX_HEADER_LEN {
            return Err(FormatError::truncated(WHAT, INDEX_HEADER_LEN, bytes.len()));
        }
        if &bytes[..8] != INDEX_MAGIC {
            return Err(FormatError::bad_magic(WHAT, INDEX_MAGIC, &bytes[..8]));
        }
        let version = u32_at(bytes, 8);
        if version != INDEX_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                got: u64::from(version),
                supported: u64::from(INDEX_VERSION),
            });
        }
        if u32_at(bytes, 12) != 0 || u32_at(bytes, 20) != 0 {
            return Err(FormatError::invalid(WHAT, "unknown flags in header"));
        }
        let pack_count = u32_at(bytes, 16);
        let record_count = u64_at(bytes, 24);
        let packs_start = INDEX_HEADER_LEN as u64;
        let packs_end = packs_start + u64::from(pack_count) * Id::LEN as u64;
        let records_end = record_count
            .checked_mul(INDEX_RECORD_LEN as u64)
            .and_then(|n| n.checked_add(packs_end))
            .and_then(|n| n.checked_add(INDEX_FOOTER_LEN as u64))
            .ok_or_else(|| {
                FormatError::too_large("index record count", record_count, u64::MAX / 64)
            })?;
        Ok(IndexLayout {
            pack_count,
            record_count,
            packs: packs_start..packs_end,
            records: packs_end..records_end - INDEX_FOOTER_LEN as u64,
            file_len: records_end,
        })
    }

    /// The byte range of record `i`.
    pub fn record_range(&self, i: u64) -> Range<u64> {
        let start = self.records.start + i * INDEX_RECORD_LEN as u64;
        start..start + INDEX_RECORD_LEN as u64
    }
}

/// Collects index entries in any order and writes them as one sorted index
/// file. Holds every entry in memory, so flush a new index file every so
/// many entries and let [`merge_indexes`] combine them later.
#[derive(Debug, Default)]
pub struct IndexWriter {
    entries: Vec<IndexEntry>,
}

/// What writing an index produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenIndex {
    /// blake3 of the whole file: its name.
    pub id: Id,
    /// Length of the file.
    pub len: u64,
    /// Number of records written (duplicates dropped).
    pub records: u64,
    /// Number of packs in its pack table.
    pub packs: u32,
}

impl From<Vec<IndexEntry>> for IndexWriter {
    /// A writer holding `entries` (taken as they are, not copied).
    fn from(entries: Vec<IndexEntry>) -> Self {
        IndexWriter { entries }
    }
}

impl IndexWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one entry.
    pub fn add(&mut self, entry: IndexEntry) {
        self.entries.push(entry);
    }

    /// Adds every blob of a finished pack.
    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        self.entries
            .extend(entries.iter().map(|e| IndexEntry::new(pack, e)));
    }

    /// Entries added so far (duplicates included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sorts, drops duplicate `(id, kind)` entries (keeping the copy in the
    /// lowest pack id, then lowest offset) and writes the file to `out`.
    pub fn write_to<W: Write>(mut self, out: W) -> Result<WrittenIndex, FormatError> {
        self.entries.sort_unstable_by_key(IndexEntry::order_key);
        self.entries
            .dedup_by(|b, a| (a.id, a.kind) == (b.id, b.kind));
        let packs: BTreeSet<Id> = self.entries.iter().map(|e| e.pack).collect();
        let packs: Vec<Id> = packs.into_iter().collect();
        write_index(
            out,
            &packs,
            self.entries.len() as u64,
            self.entries.into_iter().map(Ok),
        )
    }

    /// [`IndexWriter::write_to`] into a new `Vec`.
    pub fn finish(self) -> Result<(WrittenIndex, Vec<u8>), FormatError> {
        let mut out = Vec::new();
        let w = self.write_to(&mut out)?;
        Ok((w, out))
    }
}

fn write_index<W: Write>(
    out: W,
    packs: &[Id],
    record_count: u64,
    records: impl Iterator<Item = Result<IndexEntry, FormatError>>,
) -> Result<WrittenIndex, FormatError> {
    let pack_count = u32::try_from(packs.len()).map_err(|_| FormatError::Unencodable {
        what: WHAT,
        reason: format!("{} packs do not fit a u32 pack table", packs.len()),
    })?;
    let mut out = HashingWriter::new(std::io::BufWriter::new(out));
    let mut header = Vec::with_capacity(INDEX_HEADER_LEN);
    header.extend_from_slice(INDEX_MAGIC);
    header.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&pack_count.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&record_count.to_le_bytes());
    out.put(&header)?;
    for p in packs {
        out.put(p.as_bytes())?;
    }
    let mut written = 0u64;
    let mut rec = [0u8; INDEX_RECORD_LEN];
    for entry in records {
        let e = entry?;
        let pack = packs
            .binary_search(&e.pack)
            .map_err(|_| FormatError::Unencodable {
                what: WHAT,
                reason: format!("pack {} of blob {} is not in the pack table", e.pack, e.id),
            })?;
        rec[..32].copy_from_slice(e.id.as_bytes());
        rec[32] = e.kind.as_u8();
        rec[33..36].copy_from_slice(&[0, 0, 0]);
        rec[36..40].copy_from_slice(&(pack as u32).to_le_bytes());
        rec[40..44].copy_from_slice(&e.offset.to_le_bytes());
        rec[44..48].copy_from_slice(&e.stored_len.to_le_bytes());
        rec[48..52].copy_from_slice(&e.raw_len.to_le_bytes());
        rec[52..56].copy_from_slice(&e.inner.to_le_bytes());
        out.put(&rec)?;
        written += 1;
    }
    if written != record_count {
        return Err(FormatError::Unencodable {
            what: WHAT,
            reason: format!("announced {record_count} records but produced {written}"),
        });
    }
    let checksum = out.hasher.finalize();
    out.put(checksum.as_bytes())?;
    out.inner.flush()?;
    Ok(WrittenIndex {
        id: out.hasher.finalize().into(),
        len: out.written,
        records: record_count,
        packs: pack_count,
    })
}

/// Reads an index file from a byte slice (a memory map, typically) without
/// copying or parsing it whole: [`IndexReader::lookup`] binary-searches.
#[derive(Clone, Debug)]
pub struct IndexReader<'a> {
    bytes: &'a [u8],
    layout: IndexLayout,
}

impl<'a> IndexReader<'a> {
    /// Checks the header, that the length matches the counts exactly, and
    /// that the pack table is sorted. O(packs); records are checked lazily
    /// (each lookup validates what it returns) or all at once by
    /// [`IndexReader::verify`].
    pub fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let layout = IndexLayout::parse(bytes)?;
        if layout.file_len != bytes.len() as u64 {
            return Err(FormatError::Invalid {
                what: WHAT,
                reason: format!(
                    "header describes {} bytes ({} packs, {} records), file has {}",
                    layout.file_len,
                    layout.pack_count,
                    layout.record_count,
                    bytes.len()
                ),
            });
        }
        let r = IndexReader { bytes, layout };
        let table = r.pack_table();
        if table.windows(64).step_by(32).any(|w| w[..32] >= w[32..]) {
            return Err(FormatError::invalid(
                WHAT,
                "pack table is not sorted and unique",
            ));
        }
        Ok(r)
    }

    /// Rebuilds a reader from a layout already obtained from these bytes
    /// (via [`IndexReader::layout`]) in O(1), skipping the pack-table check
    /// [`IndexReader::new`] did the first time. Bytes of another length are
    /// refused, so a mismatched layout cannot index out of bounds.
    pub fn with_layout(bytes: &'a [u8], layout: IndexLayout) -> Result<Self, FormatError> {
        if layout.file_len != bytes.len() as u64 {
            return Err(FormatError::invalid(
                WHAT,
                "layout does not belong to these bytes",
            ));
        }
        Ok(IndexReader { bytes, layout })
    }

    fn pack_table(&self) -> &'a [u8] {
        &self.bytes[self.layout.packs.start as usize..self.layout.packs.end as usize]
    }

    fn raw_record(&self, i: u64) -> &'a [u8] {
        let r = self.layout.record_range(i);
        &self.bytes[r.start as usize..r.end as usize]
    }

    /// Section offsets and counts.
    pub fn layout(&self) -> &IndexLayout {
        &self.layout
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.layout.record_count
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.layout.record_count == 0
    }

    /// The pack ids referenced by this index, sorted.
    pub fn packs(&self) -> impl ExactSizeIterator<Item = Id> + 'a {
        self.pack_table().chunks_exact(32).map(|c| id_at(c, 0))
    }

    /// Record `i` (in sorted order), or an error if it is malformed.
    pub fn entry(&self, i: u64) -> Result<IndexEntry, FormatError> {
        if i >= self.layout.record_count {
            return Err(FormatError::invalid(
                WHAT,
                format!(
                    "record {i} is past the last of {}",
                    self.layout.record_count
                ),
            ));
        }
        let b = self.raw_record(i);
        if b[33..36] != [0, 0, 0] {
            return Err(FormatError::invalid(
                WHAT,
                format!("record {i}: reserved bytes are not zero"),
            ));
        }
        let pack = u32_at(b, 36);
        if pack >= self.layout.pack_count {
            return Err(FormatError::invalid(
                WHAT,
                format!(
                    "record {i}: pack {pack} is past the table of {}",
                    self.layout.pack_count
                ),
            ));
        }
        Ok(IndexEntry {
            id: id_at(b, 0),
            kind: BlobKind::from_u8(WHAT, b[32])?,
            pack: id_at(self.pack_table(), pack as usize * 32),
            offset: u32_at(b, 40),
            stored_len: u32_at(b, 44),
            raw_len: u32_at(b, 48),
            inner: u32_at(b, 52),
        })
    }

    /// All records in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = Result<IndexEntry, FormatError>> + 'a {
        let r = self.clone();
        (0..r.layout.record_count).map(move |i| r.entry(i))
    }

    // First record whose (id, kind) key is >= the given one.
    fn lower_bound(&self, key: &[u8]) -> u64 {
        // Ids are hashes, so their first 8 bytes almost always decide a
        // comparison: compare those as one integer, and the rest only on a tie.
        let head = u64::from_be_bytes(key[..8].try_into().expect("keys are ids"));
        let less = |r: &[u8]| {
            let h = u64::from_be_bytes(r[..8].try_into().expect("records hold ids"));
            h < head || (h == head && r[8..key.len()] < key[8..])
        };
        let n = self.layout.record_count;
        let (mut lo, mut hi) = (0u64, n);
        // Heads are spread evenly over the u64 range, so the key's own head
        // says about where it sits (within sqrt(n)/2 records, one standard
        // deviation): search a window of 4 of those either side, once it is
        // seen to bracket the key; else (a hostile index, say) everything.
        if n > 256 {
            let guess = ((u128::from(head) * u128::from(n)) >> 64) as u64;
            let w = 2 * (n as f64).sqrt() as u64;
            let (a, b) = (guess.saturating_sub(w), guess.saturating_add(w).min(n));
            if (a == 0 || less(self.raw_record(a - 1))) && (b == n || !less(self.raw_record(b))) {
                (lo, hi) = (a, b);
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if less(self.raw_record(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The blob with this id, of either kind (data first if both exist).
    pub fn lookup(&self, id: &Id) -> Result<Option<IndexEntry>, FormatError> {
        let i = self.lower_bound(id.as_bytes());
        if i < self.layout.record_count && self.raw_record(i)[..32] == id.as_bytes()[..] {
            return self.entry(i).map(Some);
        }
        Ok(None)
    }

    /// The blob with this id and kind.
    pub fn lookup_kind(&self, id: &Id, kind: BlobKind) -> Result<Option<IndexEntry>, FormatError> {
        let mut key = [0u8; 33];
        key[..32].copy_from_slice(id.as_bytes());
        key[32] = kind.as_u8();
        let i = self.lower_bound(&key);
        if i < self.layout.record_count && self.raw_record(i)[..33] == key[..] {
            return self.entry(i).map(Some);
        }
        Ok(None)
    }

    /// Checks the checksum, that every record is well-formed, that the
    /// records are sorted and unique (so lookups are exact), and that every
    /// pack in the table is used (so the file is the one canonical encoding
    /// of its records). O(n) time, O(packs) memory.
    pub fn verify(&self) -> Result<(), FormatError> {
        let body = &self.bytes[..self.bytes.len() - INDEX_FOOTER_LEN];
        let stored = id_at(self.bytes, body.len());
        let got = Id::hash(body);
        if got != stored {
            return Err(FormatError::ChecksumMismatch {
                what: WHAT,
                expected: stored,
                got,
            });
        }
        let mut used = vec![false; self.layout.pack_count as usize];
        for i in 0..self.layout.record_count {
            self.entry(i)?;
            used[u32_at(self.raw_record(i), 36) as usize] = true;
            if i > 0 && self.raw_record(i - 1)[..33] >= self.raw_record(i)[..33] {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("records {} and {i} are out of order or duplicated", i - 1),
                ));
            }
        }
        if let Some(p) = used.iter().position(|u| !u) {
            return Err(FormatError::invalid(
                WHAT,
                format!("pack {p} of the table is used by no record"),
            ));
        }
        Ok(())
    }

    /// Checks that the file hashes to `expected` (its name).
    pub fn verify_id(&self, expected: &Id) -> Result<(), FormatError> {
        let got = Id::hash(self.bytes);
        if got != *expected {
            return Err(FormatError::IdMismatch {
                what: WHAT,
                expected: *expected,
                got,
            });
        }
        Ok(())
    }
}

/// A streaming k-way merge of sorted indexes, dropping entries `keep`
/// rejects and then duplicates: every copy of an `(id, kind)` but the first
/// (`Dedup::Key`), or only entries equal in every field of the order
/// (`Dedup::Exact`, one index file naming what another does).
struct Merge<'a, F> {
    inputs: &'a [IndexReader<'a>],
    next: Vec<u64>,
    heap: BinaryHeap<Reverse<(OrderKey, usize)>>,
    last: Option<OrderKey>,
    dedup: Dedup,
    keep: F,
    failed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dedup {
    Key,
    Exact,
}

impl<'a, F: FnMut(&IndexEntry) -> bool> Merge<'a, F> {
    fn new(inputs: &'a [IndexReader<'a>], dedup: Dedup, keep: F) -> Result<Self, FormatError> {
        let mut m = Merge {
            inputs,
            next: vec![0; inputs.len()],
            heap: BinaryHeap::with_capacity(inputs.len()),
            last: None,
            dedup,
            keep,
            failed: false,
        };
        for i in 0..inputs.len() {
            m.refill(i, None)?;
        }
        Ok(m)
    }

    fn refill(&mut self, input: usize, prev: Option<(Id, BlobKind)>) -> Result<(), FormatError> {
        let r = &self.inputs[input];
        let pos = self.next[input];
        if pos < r.len() {
            let e = r.entry(pos)?;
            if prev.is_some_and(|p| p >= (e.id, e.kind)) {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("merge input {input}: record {pos} is out of order"),
                ));
            }
            self.next[input] = pos + 1;
            self.heap.push(Reverse((e.order_key(), input)));
        }
        Ok(())
    }

    fn duplicate(&self, e: &IndexEntry) -> bool {
        self.last.is_some_and(|l| match self.dedup {
            Dedup::Key => (l.0, l.1) == (e.id, e.kind),
            Dedup::Exact => l == e.order_key(),
        })
    }

    fn step(&mut self) -> Result<Option<MergedEntry>, FormatError> {
        while let Some(Reverse((_, input))) = self.heap.pop() {
            let record = self.next[input] - 1;
            let e = self.inputs[input].entry(record)?;
            self.refill(input, Some((e.id, e.kind)))?;
            if self.duplicate(&e) || !(self.keep)(&e) {
                continue;
            }
            self.last = Some(e.order_key());
            return Ok(Some(MergedEntry {
                input,
                record,
                entry: e,
            }));
        }
        Ok(None)
    }
}

/// An entry [`merged_entries`] yields, and where it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    /// Which input it came from.
    pub input: usize,
    /// Its record number in that input.
    pub record: u64,
    /// The entry.
    pub entry: IndexEntry,
}

impl<F: FnMut(&IndexEntry) -> bool> Iterator for Merge<'_, F> {
    type Item = Result<MergedEntry, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.step().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

/// Every entry of sorted index files, streaming, in the order of a file
/// (id, kind), the copies of a blob by pack id, then offset (so the first
/// is the one [`merge_indexes`] keeps). An entry that several files hold
/// comes once (from the first input that has it). Memory is O(inputs).
/// Unsorted inputs are an error.
pub fn merged_entries<'a>(
    inputs: &'a [IndexReader<'a>],
) -> Result<impl Iterator<Item = Result<MergedEntry, FormatError>> + 'a, FormatError> {
    Merge::new(inputs, Dedup::Exact, |_: &IndexEntry| true)
}

/// Merges sorted index files into one, streaming: memory is O(inputs +
/// packs), not O(records). Entries for which `keep` returns false are dropped
/// (for example, blobs of packs being deleted); of the remaining duplicates
/// the copy in the lowest pack id (then offset) is kept, as in
/// [`IndexWriter`]. The pack table holds only packs still referenced.
///
/// The inputs are read twice (to count, then to write), so `keep` must give
/// the same answer both times. Unsorted inputs are an error.
pub fn merge_indexes<W, F>(
    inputs: &[IndexReader<'_>],
    mut keep: F,
    out: W,
) -> Result<WrittenIndex, FormatError>
where
    W: Write,
    F: FnMut(&IndexEntry) -> bool,
{
    let mut count = 0u64;
    let mut packs = BTreeSet::new();
    for e in Merge::new(inputs, Dedup::Key, &mut keep)? {
        let e = e?.entry;
        count += 1;
        packs.insert(e.pack);
    }
    let packs: Vec<Id> = packs.into_iter().collect();
    let entries = Merge::new(inputs, Dedup::Key, &mut keep)?.map(|m| m.map(|m| m.entry));
    write_index(out, &packs, count, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: u8, kind: BlobKind, pack: u8, offset: u32) -> IndexEntry {
        IndexEntry {
            id: Id::from_bytes([id; 32]),
            kind,
            pack: Id::from_bytes([pack; 32]),
            offset,
            stored_len: 10 + u32::from(id),
            raw_len: 20 + u32::from(id),
            inner: u32::from(id) % 3,
        }
    }

    fn build(entries: &[IndexEntry]) -> Vec<u8> {
        let mut w = IndexWriter::new();
        for e in entries {
            w.add(*e);
        }
        w.finish().unwrap().1
    }

    /// Large indexes take the windowed search: every id is found, absent
    /// ones are not, and ids bunched where the window guesses wrong (all
    /// heads in a narrow range) are found through the full search.
    #[test]
    fn lookups_in_large_and_skewed_indexes() {
        for skew in [false, true] {
            let es: Vec<IndexEntry> = (0..5000u32)
                .map(|i| {
                    let mut id = *Id::hash(&i.to_le_bytes()).as_bytes();
                    if skew {
                        id[..6].fill(0x80);
                    }
                    IndexEntry {
                        id: Id::from_bytes(id),
                        ..entry(0, BlobKind::Data, (i % 3) as u8, i)
                    }
                })
                .collect();
            let bytes = build(&es);
            let r = IndexReader::new(&bytes).unwrap();
            for e in &es {
                assert_eq!(r.lookup(&e.id).unwrap().unwrap().offset, e.offset);
            }
            for i in 5000..6000u32 {
                let mut id = *Id::hash(&i.to_le_bytes()).as_bytes();
                if skew && i % 2 == 0 {
                    id[..6].fill(0x80);
                }
                assert_eq!(r.lookup(&Id::from_bytes(id)).unwrap(), None);
            }
        }
    }

    #[test]
    fn write_and_lookup() {
        let es = [
            entry(9, BlobKind::Data, 1, 100),
            entry(3, BlobKind::Tree, 2, 16),
            entry(3, BlobKind::Data, 1, 16),
            entry(3, BlobKind::Data, 0, 40), // duplicate: lower pack wins
            entry(7, BlobKind::Data, 2, 60),
        ];
        let bytes = build(&es);
        let r = IndexReader::new(&bytes).unwrap();
        r.verify().unwrap();
        r.verify_id(&Id::hash(&bytes)).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r.packs().count(), 3);
        assert_eq!(r.lookup(&es[0].id).unwrap(), Some(es[0]));
        assert_eq!(r.lookup(&es[1].id).unwrap(), Some(es[3]));
        assert_eq!(
            r.lookup_kind(&es[1].id, BlobKind::Tree).unwrap(),
            Some(es[1])
        );
        assert_eq!(r.lookup(&Id::from_bytes([5; 32])).unwrap(), None);
        assert_eq!(r.lookup(&Id::from_bytes([0xff; 32])).unwrap(), None);
        assert_eq!(r.lookup_kind(&es[4].id, BlobKind::Tree).unwrap(), None);
        let all: Vec<_> = r.iter().map(|e| e.unwrap()).collect();
        assert_eq!(all, vec![es[3], es[1], es[4], es[0]]);
    }

    #[test]
    fn empty_index() {
        let bytes = build(&[]);
        assert_eq!(bytes.len(), INDEX_HEADER_LEN + INDEX_FOOTER_LEN);
        let r = IndexReader::new(&bytes).unwrap();
        r.verify().unwrap();
        assert_eq!(r.lookup(&Id::default()).unwrap(), None);
    }

    #[test]
    fn corruption_is_detected() {
        let es: Vec<_> = (0..5)
            .map(|i| entry(i * 10, BlobKind::Data, i % 2, 16))
            .collect();
        let bytes = build(&es);
        for cut in 0..bytes.len() {
            assert!(IndexReader::new(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = IndexReader::new(&b).and_then(|r| r.verify()).is_ok();
            assert!(!ok, "flip at {i} went unnoticed");
        }
        // Claims of huge counts fail on length, without allocation.
        let mut b = bytes.clone();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(IndexReader::new(&b).is_err());
        let mut b = bytes.clone();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IndexReader::new(&b).is_err());
    }

    #[test]
    fn unused_pack_fails_verify() {
        let bytes = build(&[
            entry(1, BlobKind::Data, 1, 16),
            entry(2, BlobKind::Data, 2, 16),
        ]);
        let mut b = bytes.clone();
        // Point the second record at the first pack: pack 2 becomes unused.
        let at = INDEX_HEADER_LEN + 64 + INDEX_RECORD_LEN + 36;
        b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        let n = b.len();
        let sum = Id::hash(&b[..n - 32]);
        b[n - 32..].copy_from_slice(sum.as_bytes());
        let r = IndexReader::new(&b).unwrap();
        assert!(r
            .verify()
            .unwrap_err()
            .to_string()
            .contains("used by no record"));
    }

    #[test]
    fn bad_pack_number_errors_on_lookup() {
        let bytes = build(&[entry(1, BlobKind::Data, 1, 16)]);
        let mut b = bytes.clone();
        let at = INDEX_HEADER_LEN + 32 + 36;
        b[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
        let r = IndexReader::new(&b).unwrap();
        assert!(r.lookup(&Id::from_bytes([1; 32])).is_err());
        assert!(r.verify().is_err());
    }

    #[test]
    fn merge() {
        let a = build(&[
            entry(1, BlobKind::Data, 5, 16),
            entry(4, BlobKind::Data, 5, 30),
            entry(6, BlobKind::Tree, 6, 16),
        ]);
        let b = build(&[
            entry(1, BlobKind::Data, 2, 16), // duplicate in a lower pack
            entry(2, BlobKind::Data, 2, 40),
            entry(6, BlobKind::Tree, 9, 16), // in a pack being deleted
        ]);
        let c = build(&[]);
        let readers = [
            IndexReader::new(&a).unwrap(),
            IndexReader::new(&b).unwrap(),
            IndexReader::new(&c).unwrap(),
        ];
        let gone = Id::from_bytes([9; 32]);
        let mut out = Vec::new();
        let w = merge_indexes(&readers, |e| e.pack != gone, &mut out).unwrap();
        assert_eq!(w.id, Id::hash(&out));
        assert_eq!(w.records, 4);
        assert_eq!(w.packs, 3);
        let r = IndexReader::new(&out).unwrap();
        r.verify().unwrap();
        let all: Vec<_> = r.iter().map(|e| e.unwrap()).collect();
        assert_eq!(
            all,
            vec![
                entry(1, BlobKind::Data, 2, 16),
                entry(2, BlobKind::Data, 2, 40),
                entry(4, BlobKind::Data, 5, 30),
                entry(6, BlobKind::Tree, 6, 16),
            ]
        );
        // Merging equals writing everything through one IndexWriter.
        let mut w = IndexWriter::new();
        for r in &readers {
            for e in r.iter() {
                let e = e.unwrap();
                if e.pack != gone {
                    w.add(e);
                }
            }
        }
        assert_eq!(w.finish().unwrap().1, out);
        // Every entry, in order, the copies of a blob by pack; an index
        // file naming an entry another names gives it once.
        let again = [
            IndexReader::new(&a).unwrap(),
            IndexReader::new(&a).unwrap(),
            IndexReader::new(&b).unwrap(),
        ];
        let every: Vec<_> = merged_entries(&again)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        // Where each was read: a's records from the first copy of a.
        let at: Vec<_> = every.iter().map(|m| (m.input, m.record)).collect();
        assert_eq!(at, [(2, 0), (0, 0), (2, 1), (0, 1), (0, 2), (2, 2)]);
        let every: Vec<_> = every.into_iter().map(|m| m.entry).collect();
        assert_eq!(
            every,
            vec![
                entry(1, BlobKind::Data, 2, 16),
                entry(1, BlobKind::Data, 5, 16),
                entry(2, BlobKind::Data, 2, 40),
                entry(4, BlobKind::Data, 5, 30),
                entry(6, BlobKind::Tree, 6, 16),
                entry(6, BlobKind::Tree, 9, 16),
            ]
        );
    }

    #[test]
    fn merge_rejects_unsorted_input() {
        let mut bytes = build(&[
            entry(1, BlobKind::Data, 1, 16),
            entry(2, BlobKind::Data, 1, 40),
        ]);
        // Swap the two records' ids; the checksum goes stale, which merge
        // does not look at, but order is checked.
        let r0 = INDEX_HEADER_LEN + 32;
        let r1 = r0 + INDEX_RECORD_LEN;
        for k in 0..32 {
            bytes.swap(r0 + k, r1 + k);
        }
        let readers = [IndexReader::new(&bytes).unwrap()];
        assert!(merge_indexes(&readers, |_| true, Vec::new()).is_err());
        let every: Result<Vec<_>, _> = merged_entries(&readers).unwrap().collect();
        assert!(every.is_err());
    }

    fn arb_entry() -> impl Strategy<Value = IndexEntry> {
        (
            // Ids that share their first 8 bytes with others often, so
            // lookups must compare past them.
            (any::<[u8; 32]>(), 0u8..3).prop_map(|(mut id, shared)| {
                if shared > 0 {
                    id[..8].fill(shared);
                }
                id
            }),
            any::<bool>(),
            0u8..6,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(id, tree, pack, offset, stored_len, raw_len, inner)| IndexEntry {
                    id: Id::from_bytes(id),
                    kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                    pack: Id::from_bytes([pack; 32]),
                    offset,
                    stored_len,
                    raw_len,
                    inner,
                },
            )
    }

    proptest! {
        #[test]
        fn prop_lookup_finds_everything(es in proptest::collection::vec(arb_entry(), 0..100)) {
            let bytes = build(&es);
            let r = IndexReader::new(&bytes).unwrap();
            r.verify().unwrap();
            for e in &es {
                let found = r.lookup_kind(&e.id, e.kind).unwrap().unwrap();
                prop_assert_eq!((found.id, found.kind), (e.id, e.kind));
            }
            prop_assert_eq!(r.lookup(&Id::hash(b"absent")).unwrap(), None);
            let mut near = [1u8; 32];
            near[31] = 0x5a;
            if !es.iter().any(|e| e.id.as_bytes() == &near) {
                prop_assert_eq!(r.lookup(&Id::from_bytes(near)).unwrap(), None);
            }
        }

        #[test]
        fn prop_merge_equals_single_write(
            parts in proptest::collection::vec(proptest::collection::vec(arb_entry(), 0..30), 0..5)
        ) {
            let files: Vec<Vec<u8>> = parts.iter().map(|p| build(p)).collect();
            let readers: Vec<_> = files.iter().map(|f| IndexReader::new(f).unwrap()).collect();
            let mut merged = Vec::new();
            merge_indexes(&readers, |_| true, &mut merged).unwrap();
            let all: Vec<IndexEntry> = parts.concat();
            prop_assert_eq!(merged, build(&all));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = IndexReader::new(&data) {
                let _ = r.verify();
                let _ = r.lookup(&Id::default());
                let _ = r.iter().count();
            }
        }
    }
}
