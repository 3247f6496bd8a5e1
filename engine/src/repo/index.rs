//! The repository index as one lookup structure: every `index/<id>` file,
//! memory-mapped (so RAM does not grow with the repository; only the pages a
//! lookup touches are read), plus the packs no index names yet, which an
//! interrupted run left behind.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use haul_formats::{
    pack_trailer_len, parse_pack_trailer, FormatError, Id, IndexEntry, IndexLayout, IndexReader,
    RepoFile, PACK_FOOTER_LEN,
};

use super::Repository;
use crate::error::Error;

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One index file.
pub(crate) struct IndexFile {
    pub id: Id,
    bytes: Bytes,
    layout: IndexLayout,
    /// The first and last blob id it holds (none: empty). The files prune
    /// writes hold consecutive ranges of ids, so a lookup passes over all
    /// but one of them with two comparisons.
    range: Option<(Id, Id)>,
}

impl IndexFile {
    /// Checks the whole file once (its name is the hash of its bytes; the
    /// checksum; records sorted and well-formed): a damaged index must stop
    /// a command with its name, not make blobs look absent.
    fn new(id: Id, bytes: Bytes) -> Result<IndexFile, haul_formats::FormatError> {
        let r = IndexReader::new(bytes.as_slice())?;
        r.verify_id(&id)?;
        r.verify()?;
        let layout = r.layout().clone();
        let range = match r.len() {
            0 => None,
            n => Some((r.entry(0)?.id, r.entry(n - 1)?.id)),
        };
        Ok(IndexFile {
            id,
            bytes,
            layout,
            range,
        })
    }

    /// The first and last blob id it holds (none: it is empty).
    pub(crate) fn range(&self) -> Option<(Id, Id)> {
        self.range
    }

    /// The entry for blob `id`, if this file holds one.
    fn lookup(&self, id: &Id) -> Option<IndexEntry> {
        let (first, last) = self.range.as_ref()?;
        if id < first || id > last {
            return None;
        }
        self.reader().lookup(id).ok().flatten()
    }

    pub(crate) fn reader(&self) -> IndexReader<'_> {
        // The layout was read from these very bytes at load, so this is O(1).
        IndexReader::with_layout(self.bytes.as_slice(), self.layout.clone())
            .expect("layout of these bytes")
    }
}

/// An index file loaded, or why it could not be.
pub(crate) type Loaded = Result<IndexFile, Error>;

/// All index files of a repository, plus those a running create wrote.
pub(crate) struct MasterIndex {
    pub files: Vec<IndexFile>,
    /// The files that answered the last lookups, asked first, most recent
    /// first: blobs looked up one after another (a snapshot's, a
    /// directory's) were mostly indexed together, or by a few runs (a
    /// directory's unchanged files by an old one, its changed ones by a new
    /// one), and a repository may have many index files. See [`Recent`].
    recent: std::sync::atomic::AtomicU64,
    /// Index files written during this run (see `SnapshotWriter::flush_index`).
    added: std::sync::RwLock<Vec<IndexFile>>,
    /// Packs the index names that the repository no longer has: a lookup
    /// passes over their entries to another copy, or finds the blob absent,
    /// so that a create stores it again instead of naming lost data.
    gone: HashSet<Id>,
}

/// Up to four file numbers, most recent first, 16 bits each (`u16::MAX`:
/// none), in one word that lookups on every thread read and replace
/// without a lock. Files numbered past 65,534 are just never remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recent(u64);

impl Recent {
    const EMPTY: Recent = Recent(u64::MAX);
    const SLOTS: usize = 4;

    fn files(self) -> impl Iterator<Item = usize> {
        (0..Self::SLOTS)
            .map(move |k| (self.0 >> (16 * k)) as u16)
            .take_while(|&f| f != u16::MAX)
            .map(usize::from)
    }

    fn holds(self, file: usize) -> bool {
        self.files().any(|f| f == file)
    }

    /// `file` first, then the others in their order (the oldest dropped).
    fn with_first(self, file: usize) -> Recent {
        let Ok(f) = u16::try_from(file) else {
            return self;
        };
        if f == u16::MAX {
            return self;
        }
        let mut word = u64::from(f);
        let mut k = 1;
        for other in self.files().filter(|&o| o != file).take(Self::SLOTS - 1) {
            word |= (other as u64) << (16 * k);
            k += 1;
        }
        for k in k..Self::SLOTS {
            word |= 0xffff << (16 * k);
        }
        Recent(word)
    }
}

impl MasterIndex {
    /// An index over files already loaded.
    pub(crate) fn from_files(files: Vec<IndexFile>) -> MasterIndex {
        MasterIndex {
            files,
            recent: std::sync::atomic::AtomicU64::new(Recent::EMPTY.0),
            added: Default::default(),
            gone: HashSet::new(),
        }
    }

    /// The entry of blob `id` in a pack the repository has (as far as this
    /// index knows: see `gone`).
    pub(crate) fn lookup(&self, id: &Id) -> Option<IndexEntry> {
        let e = self.lookup_first(id)?;
        if self.gone.is_empty() || !self.gone.contains(&e.pack) {
            return Some(e);
        }
        self.lookup_all(id)
            .into_iter()
            .find(|e| !self.gone.contains(&e.pack))
    }

    /// Every entry of blob `id`, in every index file: the copies a reader
    /// falls back on when the first cannot be read.
    pub(crate) fn lookup_all(&self, id: &Id) -> Vec<IndexEntry> {
        let mut all: Vec<IndexEntry> = self.files.iter().filter_map(|f| f.lookup(id)).collect();
        let added = self.added.read().unwrap_or_else(|e| e.into_inner());
        all.extend(added.iter().filter_map(|f| f.lookup(id)));
        all.dedup();
        all
    }

    /// Marks packs as lost (see `gone`).
    pub(crate) fn set_gone(&mut self, gone: HashSet<Id>) {
        self.gone = gone;
    }

    /// Whether any pack the index names is gone.
    pub(crate) fn has_gone(&self) -> bool {
        !self.gone.is_empty()
    }

    fn lookup_first(&self, id: &Id) -> Option<IndexEntry> {
        use std::sync::atomic::Ordering::Relaxed;
        let find = |i: usize| self.files[i].lookup(id);
        let recent = Recent(self.recent.load(Relaxed));
        let found = recent
            .files()
            .filter(|&i| i < self.files.len())
            .find_map(|i| Some((i, find(i)?)))
            .or_else(|| {
                (0..self.files.len())
                    .filter(|&i| !recent.holds(i))
                    .find_map(|i| Some((i, find(i)?)))
            });
        if let Some((i, e)) = found {
            // Racing threads may each store their own: any order will do.
            let now = recent.with_first(i);
            if now != recent {
                self.recent.store(now.0, Relaxed);
            }
            return Some(e);
        }
        let added = self.added.read().unwrap_or_else(|e| e.into_inner());
        added.iter().find_map(|f| f.lookup(id))
    }

    /// Makes a freshly written index file part of the lookups.
    pub(crate) fn add(&self, f: IndexFile) {
        self.added
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    pub(crate) fn contains(&self, id: &Id) -> bool {
        self.lookup(id).is_some()
    }

    /// Calls `each` with every entry of every index file (not those added
    /// during the run), in file order, with the file's place in `files` and
    /// the record's number in it.
    pub(crate) fn each_entry(
        &self,
        mut each: impl FnMut(usize, u64, IndexEntry),
    ) -> Result<(), FormatError> {
        for (i, f) in self.files.iter().enumerate() {
            for (record, e) in (0u64..).zip(f.reader().iter()) {
                each(i, record, e?);
            }
        }
        Ok(())
    }

    /// How many index entries name each pack (memory in the number of
    /// packs, not of blobs).
    pub(crate) fn blobs_per_pack(&self) -> Result<BTreeMap<Id, u64>, FormatError> {
        let mut per_pack = BTreeMap::new();
        self.each_entry(|_, _, e| *per_pack.entry(e.pack).or_default() += 1)?;
        Ok(per_pack)
    }

    /// Every pack id any index names.
    pub(crate) fn packs(&self) -> BTreeSet<Id> {
        self.files
            .iter()
            .flat_map(|f| f.reader().packs().collect::<Vec<_>>())
            .collect()
    }
}

/// Index entries of one pack, grouped by stored blob (one group per blob
/// stored alone, one per bundle), in pack order, each group by `inner`.
pub(crate) fn by_stored_blob<'a>(
    entries: impl IntoIterator<Item = &'a IndexEntry>,
) -> Vec<Vec<&'a IndexEntry>> {
    let mut sorted: Vec<&IndexEntry> = entries.into_iter().collect();
    sorted.sort_by_key(|e| (e.offset, e.inner));
    sorted
        .chunk_by(|a, b| a.offset == b.offset)
        .map(<[&IndexEntry]>::to_vec)
        .collect()
}

impl Repository {
    /// Loads every sound index file. A damaged or unreadable one is
    /// treated as absent, with a warning, and the packs no other file names
    /// are read from their own trailers, in memory, as for an interrupted
    /// run: one flipped byte in one index file costs a few reads, not the
    /// repository.
    pub(crate) fn load_index(&self) -> Result<MasterIndex, Error> {
        let (files, damaged) = self.index_files()?;
        let mut index = MasterIndex::from_files(files);
        if damaged > 0 {
            self.recover_in_memory(&mut index)?;
        }
        Ok(index)
    }

    /// Adds to `index`, in memory only, the entries of the packs in `data/`
    /// that it does not name, read from their trailers (a reader must not
    /// write). Returns how many entries that is.
    pub(crate) fn recover_in_memory(&self, index: &mut MasterIndex) -> Result<usize, Error> {
        let (entries, _) = self.unindexed_entries(index)?;
        let n = entries.len();
        if n > 0 {
            let (written, bytes) = haul_formats::IndexWriter::from(entries)
                .finish()
                .map_err(|e| Error::corrupt("recovering index", self.location(), e))?;
            let f = IndexFile::new(written.id, Bytes::Owned(bytes))
                .map_err(|e| Error::corrupt("recovering index", self.location(), e))?;
            index.files.push(f);
        }
        Ok(n)
    }

    /// The sound index files, and how many others there are (each named
    /// in a warning).
    pub(crate) fn index_files(&self) -> Result<(Vec<IndexFile>, usize), Error> {
        let mut files = Vec::new();
        let mut damaged = 0;
        for (name, r) in self.each_index_file()? {
            match r {
                Ok(f) => files.push(f),
                Err(e) => {
                    damaged += 1;
                    self.warn(&format!(
                        "ignoring index file {}: {e}; its packs are read from their own trailers (`haul snapshot repair` rewrites the index)",
                        self.file_path(&name).display()
                    ));
                }
            }
        }
        Ok((files, damaged))
    }

    /// Every index file's name, and the file loaded, or why not.
    pub(crate) fn each_index_file(&self) -> Result<Vec<(String, Loaded)>, Error> {
        let names = self
            .backend()
            .list(RepoFile::Index.dir())
            .map_err(|e| Error::io("listing indexes", self.file_path(RepoFile::Index.dir()), e))?;
        Ok(names
            .into_iter()
            .filter_map(|name| match RepoFile::parse_path(&name) {
                Some((RepoFile::Index, id)) => {
                    let f = self.load_index_file(&name, id);
                    Some((name, f))
                }
                _ => None,
            })
            .collect())
    }

    /// Loads (memory-maps, where the backend is local) and verifies one index file.
    pub(crate) fn load_index_file(&self, name: &str, id: Id) -> Result<IndexFile, Error> {
        let path = self.file_path(name);
        let bytes = match self.backend().map(name) {
            Some(m) => Bytes::Mapped(m.map_err(|e| Error::io("mapping index", &path, e))?),
            None => Bytes::Owned(
                self.backend()
                    .get(name, u64::MAX)
                    .map_err(|e| Error::io("reading index", &path, e))?,
            ),
        };
        IndexFile::new(id, bytes).map_err(|e| Error::corrupt("reading index", &path, e))
    }

    /// The index of a run that writes (create, prune): [`Repository::load_index`]
    /// whose recovered entries are written to a new index file, and whose
    /// lookups pass over packs the index names but the repository lacks
    /// (each warned about), so that their blobs are stored again.
    pub(crate) fn load_index_for_writing(&self) -> Result<MasterIndex, Error> {
        let (files, _) = self.index_files()?;
        let mut index = MasterIndex::from_files(files);
        self.recover_unindexed(&mut index)?;
        Ok(index)
    }

    /// Index entries for the packs in `data/` that no file of `index`
    /// names (read from their trailers; a pack whose trailer cannot be read
    /// is skipped, for check and repair to report), and the packs `index`
    /// names that `data/` lacks.
    fn unindexed_entries(
        &self,
        index: &MasterIndex,
    ) -> Result<(Vec<IndexEntry>, HashSet<Id>), Error> {
        let mut known = index.packs();
        let names = self
            .backend()
            .list(RepoFile::Pack.dir())
            .map_err(|e| Error::io("listing packs", self.file_path(RepoFile::Pack.dir()), e))?;
        let mut recovered = Vec::new();
        for name in names {
            let Some((RepoFile::Pack, id)) = RepoFile::parse_path(&name) else {
                continue;
            };
            if known.remove(&id) {
                continue;
            }
            if let Ok(entries) = self.read_pack_entries(&name) {
                recovered.extend(entries.iter().map(|e| IndexEntry::new(id, e)));
            }
        }
        Ok((recovered, known.into_iter().collect()))
    }

    /// Packs in `data/` that no index names: left by a run that was
    /// interrupted before writing its index, or named only by a damaged
    /// index file. Their trailers describe them, so an index is written for
    /// them and their blobs are reused. Packs the index names that are gone
    /// are warned about and passed over by lookups.
    pub(crate) fn recover_unindexed(&self, index: &mut MasterIndex) -> Result<(), Error> {
        let (recovered, gone) = self.unindexed_entries(index)?;
        if let Some((name, id)) = self.write_index(recovered)? {
            index.files.push(self.load_index_file(&name, id)?);
        }
        if !gone.is_empty() {
            self.warn(&format!(
                "{} pack(s) the index names are missing from {}; their data is stored again where needed (run `haul snapshot repair`)",
                gone.len(),
                self.file_path(RepoFile::Pack.dir()).display()
            ));
            index.set_gone(gone);
        }
        Ok(())
    }

    /// Reads a pack's own index from its tail.
    pub(crate) fn read_pack_entries(
        &self,
        name: &str,
    ) -> Result<Vec<haul_formats::PackEntry>, Error> {
        let path = self.file_path(name);
        let size = self
            .backend()
            .size(name)
            .map_err(|e| Error::io("reading pack", &path, e))?;
        let foot = PACK_FOOTER_LEN as u64;
        if size < foot {
            return Err(Error::corrupt(
                "reading pack",
                &path,
                super::bad("pack", format!("{size} bytes is too short")),
            ));
        }
        let tail = self
            .backend()
            .get_range(name, size - foot, foot)
            .map_err(|e| Error::io("reading pack", &path, e))?;
        let tlen = pack_trailer_len(&tail).map_err(|e| Error::corrupt("reading pack", &path, e))?;
        if tlen > size {
            return Err(Error::corrupt(
                "reading pack",
                &path,
                super::bad("pack", "trailer longer than the file"),
            ));
        }
        let tail = self
            .backend()
            .get_range(name, size - tlen, tlen)
            .map_err(|e| Error::io("reading pack", &path, e))?;
        let t = parse_pack_trailer(&tail).map_err(|e| Error::corrupt("reading pack", &path, e))?;
        Ok(t.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_files_most_recent_first_four_at_most() {
        let r = Recent::EMPTY;
        assert_eq!(r.files().count(), 0);
        let r = r.with_first(3).with_first(7).with_first(3);
        assert_eq!(r.files().collect::<Vec<_>>(), [3, 7]);
        let r = r.with_first(1).with_first(2).with_first(9);
        assert_eq!(r.files().collect::<Vec<_>>(), [9, 2, 1, 3]);
        assert!(r.holds(1) && !r.holds(7));
        assert_eq!(r.with_first(1).files().collect::<Vec<_>>(), [1, 9, 2, 3]);
        // Past what 16 bits hold: not remembered, nothing else lost.
        assert_eq!(r.with_first(65_535), r);
        assert_eq!(r.with_first(1 << 20), r);
        assert_eq!(Recent::EMPTY.with_first(0).files().collect::<Vec<_>>(), [0]);
    }
}
