//! Sets of ids whose memory is bounded: [`IdSorter`], a set of blob ids
//! that need not fit in memory, read back in sorted order; and
//! [`CappedIds`], a memo of ids already handled that forgets past a cap.
//!
//! The sorter gathers ids in a buffer of fixed size; when it is full it is sorted,
//! deduplicated and written as a run to an unnamed temporary file (in
//! `$TMPDIR`, as sort(1) does), so memory holds at most one buffer however
//! many ids there are. The set is read back by walking every run at once
//! (see [`Cursor`]): prune and check join it against the index, which is
//! also sorted.
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use haul_formats::Id;

/// Ids kept in memory before a run is written: 32 MiB of them.
pub(crate) const RUN_IDS: usize = 1 << 20;

/// Gathers ids in any order, with duplicates.
pub(crate) struct IdSorter {
    buf: Vec<Id>,
    cap: usize,
    runs: Vec<Run>,
}

struct Run {
    file: File,
    len: u64,
}

impl IdSorter {
    /// A sorter that holds at most `cap` ids in memory.
    pub(crate) fn new(cap: usize) -> IdSorter {
        let cap = cap.max(1);
        IdSorter {
            // Reserved whole, so it is never copied to grow; pages nobody
            // writes to take no memory.
            buf: Vec::with_capacity(cap),
            cap,
            runs: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, id: Id) -> io::Result<()> {
        if self.buf.len() == self.cap {
            self.spill()?;
        }
        self.buf.push(id);
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let file = tempfile::tempfile()?;
        let mut w = BufWriter::with_capacity(1 << 16, &file);
        for id in &self.buf {
            w.write_all(id.as_bytes())?;
        }
        w.flush()?;
        drop(w);
        self.runs.push(Run {
            file,
            len: self.buf.len() as u64,
        });
        self.buf.clear();
        Ok(())
    }

    /// The sorted set: the last buffer stays in memory, sorted.
    pub(crate) fn finish(mut self) -> SortedIds {
        self.buf.sort_unstable();
        self.buf.dedup();
        self.buf.shrink_to_fit();
        SortedIds {
            mem: self.buf,
            runs: self.runs,
        }
    }
}

/// The ids an [`IdSorter`] gathered, sorted runs on disk and one in memory.
pub(crate) struct SortedIds {
    mem: Vec<Id>,
    runs: Vec<Run>,
}

impl SortedIds {
    /// How many runs went to temporary files.
    #[cfg(test)]
    pub(crate) fn spilled(&self) -> usize {
        self.runs.len()
    }

    /// A membership test for ids asked in ascending order, from the start;
    /// or, as an iterator, the ids themselves.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        Cursor {
            mem: &self.mem,
            at: 0,
            runs: self
                .runs
                .iter()
                .map(|r| RunReader {
                    run: r,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                })
                .collect(),
        }
    }
}

/// Every id once, in ascending order (the runs merged, a duplicate given
/// once), from where the cursor is.
impl Iterator for Cursor<'_> {
    type Item = io::Result<Id>;

    fn next(&mut self) -> Option<io::Result<Id>> {
        self.step().transpose()
    }
}

/// Reads one run a block at a time.
struct RunReader<'a> {
    run: &'a Run,
    /// Index of the first id not yet read into `buf`.
    next: u64,
    buf: Vec<Id>,
    pos: usize,
}

/// Ids per read from a run (64 KiB).
const READ_IDS: u64 = 2048;

impl RunReader<'_> {
    fn head(&mut self) -> io::Result<Option<Id>> {
        if self.pos == self.buf.len() {
            let n = READ_IDS.min(self.run.len - self.next);
            if n == 0 {
                return Ok(None);
            }
            let mut bytes = vec![0u8; n as usize * Id::LEN];
            self.run
                .file
                .read_exact_at(&mut bytes, self.next * Id::LEN as u64)?;
            self.buf = bytes
                .chunks_exact(Id::LEN)
                .map(|c| Id::from_bytes(c.try_into().expect("chunks of Id::LEN")))
                .collect();
            self.next += n;
            self.pos = 0;
        }
        Ok(Some(self.buf[self.pos]))
    }
}

/// See [`SortedIds::cursor`].
pub(crate) struct Cursor<'a> {
    mem: &'a [Id],
    at: usize,
    runs: Vec<RunReader<'a>>,
}

impl Cursor<'_> {
    /// Whether the set holds `id`; every call must ask for an id no smaller
    /// than the one before.
    pub(crate) fn contains(&mut self, id: &Id) -> io::Result<bool> {
        while self.at < self.mem.len() && self.mem[self.at] < *id {
            self.at += 1;
        }
        let mut found = self.mem.get(self.at) == Some(id);
        for r in &mut self.runs {
            while let Some(h) = r.head()? {
                if h >= *id {
                    found |= h == *id;
                    break;
                }
                r.pos += 1;
            }
        }
        Ok(found)
    }

    /// The least id not yet given, if any, and past it.
    fn step(&mut self) -> io::Result<Option<Id>> {
        let mut min = self.mem.get(self.at).copied();
        for r in &mut self.runs {
            if let Some(h) = r.head()? {
                min = Some(min.map_or(h, |m| m.min(h)));
            }
        }
        let Some(min) = min else {
            return Ok(None);
        };
        if self.mem.get(self.at) == Some(&min) {
            self.at += 1;
        }
        for r in &mut self.runs {
            if r.head()? == Some(min) {
                r.pos += 1;
            }
        }
        Ok(Some(min))
    }
}

/// Trees remembered as walked by default, at most (about 40 MiB of them).
pub(crate) const WALKED_TREES: usize = 1 << 20;

/// Ids already handled (trees walked), at most `cap` of them: when full it
/// starts afresh, so a walk that asks it may repeat work, never skip any.
pub(crate) struct CappedIds {
    set: HashSet<Id>,
    cap: usize,
}

impl CappedIds {
    pub(crate) fn new(cap: usize) -> CappedIds {
        CappedIds {
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    pub(crate) fn contains(&self, id: &Id) -> bool {
        self.set.contains(id)
    }

    /// Remembers `id`; whether it was not remembered already.
    pub(crate) fn insert(&mut self, id: Id) -> bool {
        if self.set.len() >= self.cap {
            self.set.clear();
        }
        self.set.insert(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn spilled_runs_read_back_as_the_set() {
        let ids: Vec<Id> = (0..10_000u32)
            .map(|i| Id::hash(&(i % 3_001).to_le_bytes()))
            .collect();
        let want: BTreeSet<Id> = ids.iter().copied().collect();
        for cap in [7, 1000, 3_001, 1 << 20] {
            let mut s = IdSorter::new(cap);
            for id in &ids {
                s.push(*id).unwrap();
            }
            let set = s.finish();
            assert_eq!(set.spilled() > 0, cap < ids.len(), "cap {cap}");
            // Every member found, and every id between two members not.
            let mut c = set.cursor();
            for id in &want {
                let mut below = *id.as_bytes();
                let last = below.len() - 1;
                if below[last] > 0 {
                    below[last] -= 1;
                    let below = Id::from_bytes(below);
                    assert_eq!(c.contains(&below).unwrap(), want.contains(&below));
                }
                assert!(c.contains(id).unwrap(), "cap {cap}");
                assert!(c.contains(id).unwrap(), "asked twice");
            }
            assert!(!c.contains(&Id::from_bytes([0xff; 32])).unwrap());
            // And read back in order, each id once.
            let got: Vec<Id> = set.cursor().map(Result::unwrap).collect();
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "cap {cap}");
        }
    }

    #[test]
    fn capped_ids_forget_when_full_never_hold_more() {
        let id = |i: u32| Id::hash(&i.to_le_bytes());
        let mut s = CappedIds::new(3);
        assert!(s.insert(id(1)) && s.insert(id(2)) && !s.insert(id(1)));
        assert!(s.insert(id(3)) && s.contains(&id(1)));
        // Full: the fourth starts afresh.
        assert!(s.insert(id(4)));
        assert!(!s.contains(&id(1)) && s.contains(&id(4)));
        assert!(s.set.len() <= 3);
    }
}
