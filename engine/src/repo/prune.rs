//! `snapshot prune`: frees data no snapshot references. Packs whose blobs
//! are all unused are deleted; packs that are partly used are rewritten with
//! just the used blobs: a stored blob (or bundle) still wholly used is copied
//! as it is, not recompressed; the used members of a partly used bundle are
//! bundled anew.
//! Order for crash safety: new packs, then the new index, then the old
//! indexes, then the old packs: at every moment every snapshot is restorable.
use std::collections::{BTreeMap, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, encode_blob_with_id, BundleMember, EncodedBlob,
    EncodedBundle, FileKind as RepoFile, Id, IndexEntry, Node, NodeKind, MAX_TREE_BLOB_LEN,
};
use serde::Serialize;

use super::index::{by_stored_blob, MasterIndex};
use super::packer::{Packer, BUNDLE_MEMBER_MAX};
use super::Repository;
use crate::error::Error;
use crate::progress::Progress;

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
    fn mark(
        &self,
        index: &MasterIndex,
        tree: &Id,
        used: &mut HashSet<Id>,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        if !used.insert(*tree) {
            return Ok(());
        }
        let nodes: Vec<Node> = self.load_tree(index, tree)?;
        progress.discovered(1, 0);
        progress.entry_done();
        for n in nodes {
            match n.kind {
                NodeKind::Dir { subtree } => self.mark(index, &subtree, used, progress)?,
                NodeKind::File { chunks, .. } => used.extend(chunks),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes unreferenced data; takes an exclusive lock. Refuses to run when
    /// a snapshot cannot be read completely, since its data would look unused.
    ///
    /// Progress: while the snapshots' trees are walked, one entry per tree
    /// (no total yet); then one entry per pack to rewrite or delete, and
    /// the bytes of the stored blobs read from the packs being rewritten.
    pub fn prune(&self, progress: &dyn Progress) -> Result<PruneSummary, Error> {
        let lock = self.lock(true)?;
        let mut index = self.load_index()?;
        self.recover_unindexed(&mut index)?;
        let mut used = HashSet::new();
        for s in self.snapshots()? {
            self.mark(&index, &s.snapshot.tree, &mut used, progress)?;
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
        // First what happens to each pack, so the bar has its totals.
        let mut rewrite = Vec::new();
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
            if !wanted.is_empty() {
                let keep: HashSet<(u32, u32)> =
                    wanted.iter().map(|e| (e.offset, e.inner)).collect();
                rewrite.push((pack, entries, keep));
            }
        }
        let stored = |entries: &[IndexEntry]| -> u64 {
            by_stored_blob(entries)
                .iter()
                .map(|m| u64::from(m[0].stored_len))
                .sum()
        };
        progress.discovered(
            remove_packs.len() as u64,
            rewrite.iter().map(|(_, entries, _)| stored(entries)).sum(),
        );
        progress.discovery_done();
        for (pack, entries, keep) in &rewrite {
            sum.packs_rewritten += 1;
            for mut members in by_stored_blob(entries) {
                // Two index files may name the same pack entry.
                members.dedup_by_key(|e| e.inner);
                self.repack(&packer, pack, &members, keep)?;
                progress.bytes(u64::from(members[0].stored_len));
            }
            progress.entry_done();
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
        let rewritten: HashSet<Id> = rewrite.iter().map(|(p, _, _)| **p).collect();
        let mut freed = 0i64;
        for p in remove_packs {
            let name = RepoFile::Pack.path(&p);
            freed += self.backend().size(&name).unwrap_or(0) as i64;
            self.backend()
                .remove(&name)
                .map_err(|e| Error::io("removing pack", self.file_path(&name), e))?;
            sum.packs_removed += 1;
            if !rewritten.contains(&p) {
                progress.entry_done();
            }
        }
        sum.bytes_freed = freed - new_bytes as i64;
        Ok(sum)
    }

    /// Moves the members of one stored blob (all entries sharing an offset in
    /// `pack`, by inner offset) that `keep` names into `packer`.
    fn repack(
        &self,
        packer: &Packer<'_>,
        pack: &Id,
        members: &[&IndexEntry],
        keep: &HashSet<(u32, u32)>,
    ) -> Result<(), Error> {
        let kept: Vec<&IndexEntry> = members
            .iter()
            .copied()
            .filter(|e| keep.contains(&(e.offset, e.inner)))
            .collect();
        let Some(first) = kept.first() else {
            return Ok(());
        };
        let name = RepoFile::Pack.path(pack);
        let path = self.file_path(&name);
        let bytes = self
            .backend()
            .get_range(&name, u64::from(first.offset), u64::from(first.stored_len))
            .map_err(|err| Error::io("reading pack", &path, err))?;
        // Everything is verified before it moves: prune must not carry
        // corruption into a fresh pack under a good name.
        let (_, plain) = decode_blob_unverified(&bytes, MAX_TREE_BLOB_LEN)
            .map_err(|err| Error::corrupt("verifying blob", &path, err))?;
        let mut data = Vec::with_capacity(kept.len());
        for e in &kept {
            data.push(
                bundle_member(&plain, e.inner, e.raw_len, &e.id)
                    .map_err(|err| Error::corrupt("verifying blob", &path, err))?,
            );
        }
        // Copied as is only if every member is kept and they tile the whole
        // plaintext (an index that lost a member means re-bundling).
        let mut end = 0u64;
        let tiled = members.iter().all(|e| {
            let at = u64::from(e.inner) == end;
            end += u64::from(e.raw_len);
            at
        });
        let whole = kept.len() == members.len() && tiled && end == plain.len() as u64;
        if whole && kept.len() == 1 {
            return packer.add(&EncodedBlob {
                id: first.id,
                kind: first.kind,
                raw_len: first.raw_len,
                bytes,
            });
        }
        if whole {
            return packer.add_bundle(&EncodedBundle {
                kind: first.kind,
                members: kept
                    .iter()
                    .map(|e| BundleMember {
                        id: e.id,
                        inner: e.inner,
                        raw_len: e.raw_len,
                    })
                    .collect(),
                bytes,
            });
        }
        for (e, d) in kept.iter().zip(data) {
            if d.len() < BUNDLE_MEMBER_MAX {
                packer.add_small(e.kind, e.id, d)?;
            } else {
                let blob = encode_blob_with_id(e.kind, d, e.id, self.config().zstd_level)
                    .map_err(|err| Error::corrupt("encoding blob", self.location(), err))?;
                packer.add(&blob)?;
            }
        }
        Ok(())
    }
}
