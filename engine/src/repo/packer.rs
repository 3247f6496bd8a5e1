//! Gathers encoded blobs into pack files of about the configured size and
//! writes each one durably as soon as it is full. Compression happens in the
//! callers' threads; only appending to the current pack is serialised.
//!
//! Small blobs are bundled: each worker thread fills its own bundle (one per
//! blob kind) with the small files it reads, in the order it reads them, and
//! compresses it as one frame once it holds [`BUNDLE_TARGET`] bytes. So a
//! bundle is a run of files that are neighbours in the walk (a directory's
//! files by name, then those of the next directory the worker reads), which
//! is both what compresses best together and what a restore, walking the
//! same way, wants together.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use haul_formats::{
    BlobKind, BundleBuilder, EncodedBlob, EncodedBundle, Id, IndexEntry, PackWriter, RepoFile,
};

use super::Repository;
use crate::error::Error;

/// Plaintext a bundle collects before it is compressed and packed.
pub(crate) const BUNDLE_TARGET: usize = 2 << 20;
/// Blobs smaller than this go into bundles; larger ones are stored alone.
pub(crate) const BUNDLE_MEMBER_MAX: usize = BUNDLE_TARGET / 4;
/// Open bundles: one slot per worker thread (more threads share slots).
const BUNDLE_SLOTS: usize = 64;
/// Blobs one pack holds at most, however few bytes they are. Until a pack is
/// written and indexed, its blob list and the create's set of new ids are in
/// memory, so tiny files that compress to next to nothing would otherwise
/// let them grow with the number of files (a 32 MiB pack can hold millions).
/// 65,536 entries is 3.25 MiB of trailer; the kernel corpus has about 5,500
/// per pack.
pub(crate) const MAX_PACK_BLOBS: usize = 1 << 16;

/// A worker's open bundles, one per kind.
struct Open {
    data: BundleBuilder,
    tree: BundleBuilder,
}

impl Open {
    fn of(&mut self, kind: BlobKind) -> &mut BundleBuilder {
        match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Tree => &mut self.tree,
        }
    }
}

pub(crate) struct Packer<'r> {
    repo: &'r Repository,
    target: u64,
    level: i32,
    open: Vec<Mutex<Option<Open>>>,
    current: Mutex<Option<PackWriter<Vec<u8>>>>,
    written: Mutex<Vec<IndexEntry>>,
    packs: AtomicU64,
    stored_bytes: AtomicU64,
}

impl<'r> Packer<'r> {
    pub(crate) fn new(repo: &'r Repository) -> Packer<'r> {
        Packer {
            repo,
            target: u64::from(repo.config().pack_size),
            level: repo.config().zstd_level,
            open: (0..BUNDLE_SLOTS).map(|_| Mutex::new(None)).collect(),
            current: Mutex::new(None),
            written: Mutex::new(Vec::new()),
            packs: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
        }
    }

    fn writer(&self) -> Result<PackWriter<Vec<u8>>, Error> {
        PackWriter::new(
            Vec::with_capacity(self.target as usize + (1 << 20)),
            self.level,
        )
        .map_err(|e| Error::corrupt("starting pack", self.repo.location(), e))
    }

    /// Adds one blob stored alone; writes the pack out if it is now full.
    pub(crate) fn add(&self, blob: &EncodedBlob) -> Result<(), Error> {
        self.append(blob.bytes.len(), |w| w.add_encoded(blob).map(|_| ()))
    }

    /// Adds a small blob (plaintext `data`, hashing to `id`) to the calling
    /// thread's open bundle of its kind; packs the bundle once it is full.
    pub(crate) fn add_small(&self, kind: BlobKind, id: Id, data: &[u8]) -> Result<(), Error> {
        let slot = rayon::current_thread_index().unwrap_or(0) % self.open.len();
        let full = {
            let mut open = self.open[slot].lock().unwrap_or_else(|e| e.into_inner());
            let b = open
                .get_or_insert_with(|| Open {
                    data: BundleBuilder::new(BlobKind::Data),
                    tree: BundleBuilder::new(BlobKind::Tree),
                })
                .of(kind);
            b.push(id, data)
                .map_err(|e| Error::corrupt("bundling blob", self.repo.location(), e))?;
            if b.len() >= BUNDLE_TARGET {
                Some(self.seal(b)?)
            } else {
                None
            }
        };
        match full {
            Some(bundle) => self.add_bundle(&bundle),
            None => Ok(()),
        }
    }

    fn seal(&self, b: &mut BundleBuilder) -> Result<EncodedBundle, Error> {
        b.finish(self.level)
            .map_err(|e| Error::corrupt("compressing bundle", self.repo.location(), e))
    }

    /// Adds a bundle encoded earlier.
    pub(crate) fn add_bundle(&self, bundle: &EncodedBundle) -> Result<(), Error> {
        self.append(bundle.bytes.len(), |w| w.add_bundle(bundle).map(|_| ()))
    }

    /// Packs every open bundle, however full.
    fn seal_open(&self) -> Result<(), Error> {
        for slot in &self.open {
            let open = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(mut open) = open else { continue };
            for b in [&mut open.data, &mut open.tree] {
                if !b.is_empty() {
                    let bundle = self.seal(b)?;
                    self.add_bundle(&bundle)?;
                }
            }
        }
        Ok(())
    }

    /// Appends `len` stored bytes with `put`; writes the pack out if it is
    /// now full (of bytes, or of blobs).
    fn append(
        &self,
        len: usize,
        put: impl FnOnce(&mut PackWriter<Vec<u8>>) -> Result<(), haul_formats::FormatError>,
    ) -> Result<(), Error> {
        let full = {
            let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if cur.is_none() {
                *cur = Some(self.writer()?);
            }
            let w = cur.as_mut().expect("just set");
            put(w).map_err(|e| Error::corrupt("adding blob", self.repo.location(), e))?;
            if w.len() >= self.target || w.entries().len() >= MAX_PACK_BLOBS {
                cur.take()
            } else {
                None
            }
        };
        self.stored_bytes.fetch_add(len as u64, Relaxed);
        match full {
            Some(w) => self.write(w),
            None => Ok(()),
        }
    }

    fn write(&self, w: PackWriter<Vec<u8>>) -> Result<(), Error> {
        let fin = w
            .finish()
            .map_err(|e| Error::corrupt("finishing pack", self.repo.location(), e))?;
        let name = RepoFile::Pack.path(&fin.id);
        self.repo
            .backend()
            .put(&name, &fin.writer)
            .map_err(|e| Error::io("writing pack", self.repo.file_path(&name), e))?;
        self.packs.fetch_add(1, Relaxed);
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.extend(fin.entries.iter().map(|e| IndexEntry::new(fin.id, e)));
        Ok(())
    }

    /// Entries of the packs written since the last call (the current,
    /// unfinished pack is not among them).
    pub(crate) fn take_written(&self) -> Vec<IndexEntry> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many entries `take_written` would return.
    pub(crate) fn written_len(&self) -> usize {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Packs the open bundles, writes the last, partial pack and returns
    /// where every blob went, with the number of packs and bytes written.
    pub(crate) fn finish(self) -> Result<(Vec<IndexEntry>, u64, u64), Error> {
        self.seal_open()?;
        let last = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = last.filter(|w| !w.is_empty()) {
            self.write(w)?;
        }
        let (packs, stored) = (self.packs.load(Relaxed), self.stored_bytes.load(Relaxed));
        Ok((
            self.written.into_inner().unwrap_or_else(|e| e.into_inner()),
            packs,
            stored,
        ))
    }
}

impl Repository {
    /// Writes an index file naming `entries` and returns its repository
    /// name and id (nothing is written for no entries).
    pub(crate) fn write_index(
        &self,
        entries: Vec<IndexEntry>,
    ) -> Result<Option<(String, Id)>, Error> {
        if entries.is_empty() {
            return Ok(None);
        }
        let (written, bytes) = haul_formats::IndexWriter::from(entries)
            .finish()
            .map_err(|e| Error::corrupt("writing index", self.location(), e))?;
        let name = RepoFile::Index.path(&written.id);
        self.backend()
            .put(&name, &bytes)
            .map_err(|e| Error::io("writing index", self.file_path(&name), e))?;
        Ok(Some((name, written.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::InitOptions;

    #[test]
    fn a_pack_is_written_once_it_holds_max_blobs_however_small() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repository::init(&t.path().join("repo"), &InitOptions::default()).unwrap();
        let packer = Packer::new(&repo);
        // Tiny blobs stored alone: a few MiB in all, far below the pack size.
        for i in 0..MAX_PACK_BLOBS + 10 {
            let data = (i as u64).to_le_bytes();
            let blob = haul_formats::encode_blob(BlobKind::Data, &data, 3).unwrap();
            packer.add(&blob).unwrap();
        }
        assert_eq!(packer.packs.load(Relaxed), 1, "one full pack written");
        assert_eq!(packer.written_len(), MAX_PACK_BLOBS);
        let (rest, packs, _) = packer.finish().unwrap();
        assert_eq!(packs, 2);
        assert_eq!(rest.len(), MAX_PACK_BLOBS + 10);
    }
}
