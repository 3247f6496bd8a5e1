//! `snapshot prune`: frees data no snapshot references. Packs whose blobs
//! are all unused are deleted; packs that are partly used are rewritten with
//! just the used blobs: a stored blob (or bundle) still wholly used is copied
//! as it is, not recompressed; the used members of a partly used bundle are
//! bundled anew.
//! Order for crash safety: new packs, then the new index, then the old
//! indexes, then the old packs: at every moment every snapshot is restorable.
use std::collections::{BTreeSet, HashMap, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, encode_blob_with_id, merge_indexes, BundleMember,
    EncodedBlob, EncodedBundle, FileKind as RepoFile, Id, IndexEntry, Node, NodeKind,
    INDEX_FOOTER_LEN, INDEX_HEADER_LEN, INDEX_RECORD_LEN, MAX_TREE_BLOB_LEN,
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

/// Every blob a snapshot uses, with the ordinal (in pack order) of the pack
/// whose copy is kept, once one has claimed it.
type Used = HashMap<Id, u32>;
const UNCLAIMED: u32 = u32::MAX;

/// `pack`'s ordinal in `packs` (sorted by id).
fn ordinal(packs: &[(Id, u64)], pack: &Id) -> u32 {
    packs
        .binary_search_by(|(p, _)| p.cmp(pack))
        .map_or(UNCLAIMED, |i| i as u32)
}

/// The entries of pack `n` to keep: those of used blobs that no pack before
/// it claimed, each id once (the pack claims them). Asked again, it gives
/// the same answer.
fn wanted<'e>(entries: &'e [IndexEntry], n: u32, used: &mut Used) -> Vec<&'e IndexEntry> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .filter(|e| match used.get_mut(&e.id) {
            Some(c) if *c == UNCLAIMED || *c == n => {
                *c = n;
                seen.insert(e.id)
            }
            _ => false,
        })
        .collect()
}

/// Bytes of the stored blobs `entries` name.
fn stored(entries: &[IndexEntry]) -> u64 {
    by_stored_blob(entries)
        .iter()
        .map(|m| u64::from(m[0].stored_len))
        .sum()
}

impl Repository {
    fn mark(
        &self,
        index: &MasterIndex,
        tree: &Id,
        used: &mut Used,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        if used.insert(*tree, UNCLAIMED).is_some() {
            return Ok(());
        }
        let nodes: Vec<Node> = self.load_tree(index, tree)?;
        progress.discovered(1, 0);
        progress.entry_done();
        for n in nodes {
            match n.kind {
                NodeKind::Dir { subtree } => self.mark(index, &subtree, used, progress)?,
                NodeKind::File { chunks, .. } => {
                    used.extend(chunks.into_iter().map(|c| (c, UNCLAIMED)));
                }
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
        let corrupt = |e| Error::corrupt("reading index", self.location(), e);
        let packs: Vec<(Id, u64)> = index
            .blobs_per_pack()
            .map_err(corrupt)?
            .into_iter()
            .collect();
        // Sized once: growing a map of a million ids doubles it for a while.
        let mut used = Used::with_capacity(packs.iter().map(|(_, n)| *n as usize).sum());
        for s in self.snapshots()? {
            self.mark(&index, &s.snapshot.tree, &mut used, progress)?;
        }
        // What happens to each pack, a batch of packs at a time (memory in
        // the number of packs, not of blobs). The first copy of a blob, in
        // pack order, is the one kept: its pack claims it in `used`.
        let mut keep_packs = BTreeSet::new();
        let mut remove_packs = Vec::new();
        let mut rewrite = Vec::new();
        let mut rewrite_bytes = 0u64;
        let mut sum = PruneSummary {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };
        for by_pack in index.by_pack_batches(&packs) {
            for (pack, entries) in &by_pack.map_err(corrupt)? {
                let n = ordinal(&packs, pack);
                let wanted = wanted(entries, n, &mut used);
                if wanted.len() == entries.len() {
                    keep_packs.insert(*pack);
                    continue;
                }
                sum.blobs_removed += (entries.len() - wanted.len()) as u64;
                remove_packs.push(*pack);
                if !wanted.is_empty() {
                    rewrite.push(*pack);
                    rewrite_bytes += stored(entries);
                }
            }
        }
        progress.discovered(remove_packs.len() as u64, rewrite_bytes);
        progress.discovery_done();
        // The packs to rewrite, again a batch at a time: the members each
        // pack claimed move into new packs.
        let packer = Packer::new(self);
        let rewrite_counts: Vec<(Id, u64)> = packs
            .iter()
            .filter(|(p, _)| rewrite.binary_search(p).is_ok())
            .copied()
            .collect();
        for by_pack in index.by_pack_batches(&rewrite_counts) {
            for (pack, entries) in &by_pack.map_err(corrupt)? {
                let n = ordinal(&packs, pack);
                let keep: HashSet<(u32, u32)> = wanted(entries, n, &mut used)
                    .iter()
                    .map(|e| (e.offset, e.inner))
                    .collect();
                sum.packs_rewritten += 1;
                for mut members in by_stored_blob(entries) {
                    // Two index files may name the same pack entry.
                    members.dedup_by_key(|e| e.inner);
                    self.repack(&packer, pack, &members, &keep)?;
                    progress.bytes(u64::from(members[0].stored_len));
                }
                progress.entry_done();
            }
        }
        let (new_entries, _, new_bytes) = packer.finish()?;
        if remove_packs.is_empty() {
            return Ok(sum);
        }
        // The new index: the entries of the packs kept whole, merged from
        // the old index files as they are read, and the rewritten blobs.
        let readers: Vec<_> = index.files.iter().map(|f| f.reader()).collect();
        let kept_blobs: u64 = packs
            .iter()
            .filter(|(p, _)| keep_packs.contains(p))
            .map(|(_, n)| n)
            .sum();
        let mut merged = Vec::with_capacity(
            INDEX_HEADER_LEN
                + keep_packs.len() * 32
                + kept_blobs as usize * INDEX_RECORD_LEN
                + INDEX_FOOTER_LEN,
        );
        let written = merge_indexes(&readers, |e| keep_packs.contains(&e.pack), &mut merged)
            .map_err(|e| Error::corrupt("writing index", self.location(), e))?;
        drop(readers);
        // (An index written now may have the name, and so the content, of
        // an old one: that one stays.)
        let mut new_indexes = BTreeSet::new();
        if written.records > 0 {
            self.put_index(&written.id, &merged)?;
            new_indexes.insert(written.id);
        }
        drop(merged);
        new_indexes.extend(self.write_index(new_entries)?.map(|(_, id)| id));
        let old_indexes: Vec<Id> = index.files.iter().map(|f| f.id).collect();
        drop(index);
        for id in old_indexes.into_iter().filter(|i| !new_indexes.contains(i)) {
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
            if rewrite.binary_search(&p).is_err() {
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
