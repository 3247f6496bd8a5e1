//! `snapshot prune`: frees data no snapshot references. Packs whose blobs
//! are all unused are deleted; packs that are partly used are rewritten with
//! just the used blobs (their stored bytes are copied, not recompressed).
//! Order for crash safety: new packs, then the new index, then the old
//! indexes, then the old packs: at every moment every snapshot is restorable.
use std::collections::{BTreeMap, HashSet};

use haul_formats::{EncodedBlob, FileKind as RepoFile, Id, IndexEntry, Node, NodeKind};
use serde::Serialize;

use super::index::MasterIndex;
use super::packer::Packer;
use super::Repository;
use crate::error::Error;

/// What prune did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneSummary {
    /// Packs deleted outright or after rewriting.
    pub packs_removed: u64,
    /// Packs whose used blobs were copied into new packs.
    pub packs_rewritten: u64,
    /// Blobs dropped.
    pub blobs_removed: u64,
    /// Bytes of pack files deleted, less the bytes of new packs.
    pub bytes_freed: i64,
    /// Messages about stale locks that were broken.
    pub notices: Vec<String>,
}

impl Repository {
    fn mark(&self, index: &MasterIndex, tree: &Id, used: &mut HashSet<Id>) -> Result<(), Error> {
        if !used.insert(*tree) {
            return Ok(());
        }
        let nodes: Vec<Node> = self.load_tree(index, tree)?;
        for n in nodes {
            match n.kind {
                NodeKind::Dir { subtree } => self.mark(index, &subtree, used)?,
                NodeKind::File { chunks, .. } => used.extend(chunks),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes unreferenced data; takes an exclusive lock. Refuses to run when
    /// a snapshot cannot be read completely, since its data would look unused.
    pub fn prune(&self) -> Result<PruneSummary, Error> {
        let lock = self.lock(true)?;
        let mut index = self.load_index()?;
        self.recover_unindexed(&mut index)?;
        let mut used = HashSet::new();
        for s in self.snapshots()? {
            self.mark(&index, &s.snapshot.tree, &mut used)?;
        }
        // Group every index entry by pack; the first copy of a blob wins.
        let mut by_pack: BTreeMap<Id, Vec<IndexEntry>> = BTreeMap::new();
        for f in &index.files {
            for e in f.reader().iter() {
                let e = e.map_err(|err| Error::corrupt("reading index", self.location(), err))?;
                by_pack.entry(e.pack).or_default().push(e);
            }
        }
        let mut kept_copy: HashSet<Id> = HashSet::new();
        let mut keep_entries = Vec::new();
        let mut remove_packs = Vec::new();
        let packer = Packer::new(self);
        let mut sum = PruneSummary {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };
        for (pack, entries) in &by_pack {
            let wanted: Vec<&IndexEntry> = entries
                .iter()
                .filter(|e| used.contains(&e.id) && !kept_copy.contains(&e.id))
                .collect();
            for e in &wanted {
                kept_copy.insert(e.id);
            }
            if wanted.len() == entries.len() {
                keep_entries.extend(entries.iter().copied());
                continue;
            }
            sum.blobs_removed += (entries.len() - wanted.len()) as u64;
            remove_packs.push(*pack);
            if wanted.is_empty() {
                continue;
            }
            sum.packs_rewritten += 1;
            let name = RepoFile::Pack.path(pack);
            for e in wanted {
                let bytes = self
                    .backend()
                    .get_range(&name, u64::from(e.offset), u64::from(e.stored_len))
                    .map_err(|err| Error::io("reading pack", self.file_path(&name), err))?;
                // The stored bytes are verified before they move: prune must
                // not carry corruption into a fresh pack under a good name.
                let max = haul_formats::MAX_TREE_BLOB_LEN;
                haul_formats::decode_blob(&bytes, &e.id, max)
                    .map_err(|err| Error::corrupt("verifying blob", self.file_path(&name), err))?;
                packer.add(&EncodedBlob {
                    id: e.id,
                    kind: e.kind,
                    raw_len: e.raw_len,
                    bytes,
                })?;
            }
        }
        let (new_entries, _, new_bytes) = packer.finish()?;
        keep_entries.extend(new_entries);
        if remove_packs.is_empty() {
            return Ok(sum);
        }
        let old_indexes: Vec<Id> = index.files.iter().map(|f| f.id).collect();
        drop(index);
        self.write_index(keep_entries)?;
        for id in old_indexes {
            let name = RepoFile::Index.path(&id);
            self.backend()
                .remove(&name)
                .map_err(|e| Error::io("removing index", self.file_path(&name), e))?;
        }
        let mut freed = 0i64;
        for p in remove_packs {
            let name = RepoFile::Pack.path(&p);
            freed += self.backend().size(&name).unwrap_or(0) as i64;
            self.backend()
                .remove(&name)
                .map_err(|e| Error::io("removing pack", self.file_path(&name), e))?;
            sum.packs_removed += 1;
        }
        sum.bytes_freed = freed - new_bytes as i64;
        Ok(sum)
    }
}
