//! Gathers encoded blobs into pack files of about the configured size and
//! writes each one durably as soon as it is full. Compression happens in the
//! callers' threads; only appending to the current pack is serialised.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use haul_formats::{EncodedBlob, FileKind as RepoFile, Id, IndexEntry, PackWriter};

use super::Repository;
use crate::error::Error;

pub(crate) struct Packer<'r> {
    repo: &'r Repository,
    target: u64,
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
            current: Mutex::new(None),
            written: Mutex::new(Vec::new()),
            packs: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
        }
    }

    fn writer(&self) -> Result<PackWriter<Vec<u8>>, Error> {
        PackWriter::new(
            Vec::with_capacity(self.target as usize + (1 << 20)),
            self.repo.config().zstd_level,
        )
        .map_err(|e| Error::corrupt("starting pack", self.repo.location(), e))
    }

    /// Adds one blob; writes the pack out if it is now full.
    pub(crate) fn add(&self, blob: &EncodedBlob) -> Result<(), Error> {
        let full = {
            let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if cur.is_none() {
                *cur = Some(self.writer()?);
            }
            let w = cur.as_mut().expect("just set");
            w.add_encoded(blob)
                .map_err(|e| Error::corrupt("adding blob", self.repo.location(), e))?;
            if w.len() >= self.target {
                cur.take()
            } else {
                None
            }
        };
        self.stored_bytes
            .fetch_add(blob.bytes.len() as u64, Relaxed);
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

    /// Writes the last, partial pack and returns where every blob went,
    /// with the number of packs and bytes written.
    pub(crate) fn finish(self) -> Result<(Vec<IndexEntry>, u64, u64), Error> {
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
        let mut w = haul_formats::IndexWriter::new();
        for e in entries {
            w.add(e);
        }
        let (written, bytes) = w
            .finish()
            .map_err(|e| Error::corrupt("writing index", self.location(), e))?;
        let name = RepoFile::Index.path(&written.id);
        self.backend()
            .put(&name, &bytes)
            .map_err(|e| Error::io("writing index", self.file_path(&name), e))?;
        Ok(Some((name, written.id)))
    }
}
