//! The index entries of a set of packs, grouped by pack, a batch of packs
//! at a time: what check and prune walk the repository's packs with.
//!
//! Memory holds one batch (about [`BATCH_BLOBS`] entries). Index files are
//! sorted by blob id, not by pack, so a batch's entries are spread over
//! all of them. With one batch, one pass over the index gathers it. With
//! more, one pass writes where each entry is (its record number across all
//! index files, as a delta from the one before: a byte or two) to its
//! batch's unnamed temporary file in `$TMPDIR`, and each batch then reads
//! just its own records back: linear in the number of entries, where a
//! pass over the whole index per batch would grow with its square.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};

use haul_formats::{Id, IndexEntry};

use super::index::MasterIndex;
use super::Repository;
use crate::error::Error;

/// Index entries a command gathers at a time (about 44 MiB of them): packs
/// are handled in batches of about this many blobs, so memory does not grow
/// with the repository.
pub(crate) const BATCH_BLOBS: u64 = 1 << 19;

/// Temporary files one grouping writes at most; past this many batches,
/// neighbouring batches share a file, which is then read once for each.
pub(crate) const SPILL_FILES: usize = 64;

/// How packs are grouped: blobs per batch, and temporary files at most.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    pub blobs: u64,
    pub files: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            blobs: BATCH_BLOBS,
            files: SPILL_FILES,
        }
    }
}

/// Consecutive runs of `packs` (pack, blob count) of at most `max` blobs
/// each, or of one pack where it alone holds more.
pub(crate) fn batches(packs: &[(Id, u64)], max: u64) -> Vec<&[(Id, u64)]> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, (_, n)) in packs.iter().enumerate() {
        if i > start && sum + n > max {
            out.push(&packs[start..i]);
            (start, sum) = (i, 0);
        }
        sum += n;
    }
    if start < packs.len() {
        out.push(&packs[start..]);
    }
    out
}

/// Ascending record numbers, delta-coded (LEB128) into an unnamed
/// temporary file.
struct Spill {
    out: BufWriter<File>,
    last: u64,
}

fn damaged() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a temporary file of index positions reads back damaged",
    )
}

/// An error reading the positions back, naming where they were.
fn reading(e: io::Error) -> Error {
    Error::io("reading index positions", std::env::temp_dir(), e)
}

impl Spill {
    fn new() -> io::Result<Spill> {
        Ok(Spill {
            out: BufWriter::with_capacity(1 << 16, tempfile::tempfile()?),
            last: 0,
        })
    }

    fn push(&mut self, pos: u64) -> io::Result<()> {
        let mut d = pos - self.last;
        self.last = pos;
        let mut buf = [0u8; 10];
        let mut n = 0;
        loop {
            let b = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                buf[n] = b;
                n += 1;
                break;
            }
            buf[n] = b | 0x80;
            n += 1;
        }
        self.out.write_all(&buf[..n])
    }

    /// Calls `each` with every record number, in the order pushed (after
    /// the last push; it may be read again).
    fn read(&mut self, mut each: impl FnMut(u64) -> Result<(), Error>) -> Result<(), Error> {
        self.out.flush().map_err(reading)?;
        let f = self.out.get_mut();
        f.rewind().map_err(reading)?;
        let mut r = BufReader::with_capacity(1 << 16, &*f);
        let (mut pos, mut d, mut shift) = (0u64, 0u64, 0u32);
        loop {
            let buf = r.fill_buf().map_err(reading)?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            for &b in buf {
                // Our own file, but read as if it might be damaged (the
                // disk under $TMPDIR): an error, not a panic.
                if shift > 63 {
                    return Err(reading(damaged()));
                }
                d |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    pos = pos.checked_add(d).ok_or_else(|| reading(damaged()))?;
                    each(pos)?;
                    (d, shift) = (0, 0);
                } else {
                    shift += 7;
                }
            }
            r.consume(n);
        }
        Ok(())
    }
}

impl Repository {
    /// Hands `each` the index entries of `packs` (pack, blob count), by
    /// pack, a batch of at most `how.blobs` blobs at a time (or one pack
    /// holding more), in the order of `packs`; each entry is
    /// `map(index file, record, entry)`, and a pack's entries are in index
    /// file order. See the module comment for the cost.
    pub(crate) fn each_pack_batch<T>(
        &self,
        index: &MasterIndex,
        packs: &[(Id, u64)],
        how: Batching,
        mut map: impl FnMut(usize, u64, IndexEntry) -> T,
        mut each: impl FnMut(BTreeMap<Id, Vec<T>>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let corrupt = |e| Error::corrupt("reading index", self.location(), e);
        let tmp = |e| Error::io("writing index positions", std::env::temp_dir(), e);
        let groups = batches(packs, how.blobs);
        let empty = |g: &[(Id, u64)]| -> BTreeMap<Id, Vec<T>> {
            g.iter()
                .map(|(p, n)| (*p, Vec::with_capacity(*n as usize)))
                .collect()
        };
        if groups.len() <= 1 {
            for g in groups {
                let mut out = empty(g);
                index
                    .each_entry(|file, record, e| {
                        if let Some(v) = out.get_mut(&e.pack) {
                            v.push(map(file, record, e));
                        }
                    })
                    .map_err(corrupt)?;
                each(out)?;
            }
            return Ok(());
        }
        // Sorted, searched: fewer instructions than hashing 32-byte ids.
        let mut batch_of: Vec<(Id, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(b, g)| g.iter().map(move |(p, _)| (*p, b)))
            .collect();
        batch_of.sort_unstable();
        let batch_of = |pack: &Id| {
            batch_of
                .binary_search_by(|(p, _)| p.cmp(pack))
                .ok()
                .map(|i| batch_of[i].1)
        };
        let files = how.files.clamp(1, groups.len());
        // Batch b's file: neighbours share one when there are more batches.
        let file_of = |b: usize| b * files / groups.len();
        let mut spills = (0..files)
            .map(|_| Spill::new())
            .collect::<io::Result<Vec<_>>>()
            .map_err(tmp)?;
        // Record numbers across all index files: file i's start at base[i].
        let readers: Vec<_> = index.files.iter().map(|f| f.reader()).collect();
        let mut base = Vec::with_capacity(readers.len() + 1);
        base.push(0u64);
        for r in &readers {
            base.push(base.last().expect("pushed") + r.len());
        }
        let mut failed = None;
        index
            .each_entry(|file, record, e| {
                if let (None, Some(b)) = (&failed, batch_of(&e.pack)) {
                    if let Err(err) = spills[file_of(b)].push(base[file] + record) {
                        failed = Some(err);
                    }
                }
            })
            .map_err(corrupt)?;
        if let Some(e) = failed {
            return Err(tmp(e));
        }
        for (b, g) in groups.iter().enumerate() {
            let mut out = empty(g);
            let mut file = 0;
            let total = *base.last().expect("pushed");
            spills[file_of(b)].read(|pos| {
                if pos >= total {
                    return Err(reading(damaged()));
                }
                while pos >= base[file + 1] {
                    file += 1;
                }
                let record = pos - base[file];
                let e = readers[file].entry(record).map_err(corrupt)?;
                if batch_of(&e.pack) == Some(b) {
                    let v = out.get_mut(&e.pack).expect("a pack of this batch");
                    v.push(map(file, record, e));
                }
                Ok(())
            })?;
            each(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_max_blobs_or_one_pack() {
        let p = |n: u64| (Id::hash(&n.to_le_bytes()), n);
        let packs = [p(3), p(4), p(2), p(9), p(1), p(1)];
        let sizes: Vec<Vec<u64>> = batches(&packs, 7)
            .iter()
            .map(|b| b.iter().map(|(_, n)| *n).collect())
            .collect();
        assert_eq!(sizes, [vec![3, 4], vec![2], vec![9], vec![1, 1]]);
        assert!(batches(&[], 7).is_empty());
        assert_eq!(batches(&packs, u64::MAX).len(), 1);
    }

    #[test]
    fn spilled_positions_read_back_in_order() {
        let mut s = Spill::new().unwrap();
        let want: Vec<u64> = [0u64, 1, 2, 127, 128, 300, 16_383, 16_384, 1 << 40, u64::MAX]
            .into_iter()
            .collect();
        for p in &want {
            s.push(*p).unwrap();
        }
        for _ in 0..2 {
            let mut got = Vec::new();
            s.read(|p| {
                got.push(p);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_damaged_spill_is_an_error_not_a_panic() {
        // A delta of more than 64 bits.
        let mut s = Spill::new().unwrap();
        s.out.write_all(&[0xff; 11]).unwrap();
        assert!(s.read(|_| Ok(())).is_err());
        // Positions past u64::MAX.
        let mut s = Spill::new().unwrap();
        s.push(u64::MAX - 1).unwrap();
        s.out.write_all(&[5]).unwrap();
        let mut seen = Vec::new();
        let r = s.read(|p| {
            seen.push(p);
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(seen, [u64::MAX - 1]);
    }
}
