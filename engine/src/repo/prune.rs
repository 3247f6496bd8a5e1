//! `snapshot prune`: frees data no snapshot references. Packs whose blobs
//! are all unused are deleted; packs that are partly used are rewritten with
//! just the used blobs: a stored blob (or bundle) still wholly used is copied
//! as it is, not recompressed; the used members of a partly used bundle are
//! bundled anew.
//!
//! Memory grows with the number of blobs by one bit each: the ids the
//! snapshots use are sorted out of memory ([`IdSorter`]) and joined, in one
//! pass, against the index entries merged in id order, which are sorted
//! too; that pass leaves a few counts per pack and one bit per index entry
//! ([`Kept`]); packs are then rewritten a batch at a time (see
//! `batch.rs`: one more pass sorts their entries out to temporary files).
//! The set of trees already walked (so that a subtree many snapshots share
//! is walked once) is capped: past [`WALKED_TREES`] it starts afresh, which
//! costs walks, never correctness.
//!
//! Order for crash safety: new packs, then the new indexes, then the old
//! indexes, then the old packs: at every moment every snapshot is restorable.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, encode_blob_with_id, merged_entries, BundleMember,
    EncodedBlob, EncodedBundle, Id, IndexEntry, Node, NodeKind, RepoFile, INDEX_RECORD_LEN,
    MAX_TREE_BLOB_LEN,
};
use serde::Serialize;

use super::batch::Batching;
use super::create::DEFAULT_INDEX_FLUSH;
use super::idset::{CappedIds, IdSorter, SortedIds, RUN_IDS, WALKED_TREES};
use super::index::{by_stored_blob, IndexFile, MasterIndex};
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
    /// Index files before.
    pub index_files_before: u64,
    /// Index files after (the same, when prune had nothing to do).
    pub index_files_after: u64,
    /// Messages about stale locks that were broken.
    pub notices: Vec<String>,
}

/// Index files whose id ranges overlap another's that a prune with nothing
/// to remove leaves as they are; past this many it writes the index anew.
const LOOSE_INDEX_FILES: usize = 16;

/// How many index files hold an id range that overlaps another file's. A
/// lookup the recent files miss binary-searches each of them; the files
/// prune writes overlap none.
fn overlapping(index: &MasterIndex) -> usize {
    overlapping_ranges(index.files.iter().filter_map(|f| f.range()).collect())
}

/// How many of `ranges` (first, last) overlap another.
fn overlapping_ranges(mut ranges: Vec<(Id, Id)>) -> usize {
    ranges.sort_unstable();
    // Files in groups whose ranges chain into each other, groups of one
    // not counted.
    let (mut n, mut size, mut end) = (0, 0, None);
    for (first, last) in ranges {
        match end {
            Some(e) if first <= e => {
                size += 1;
                end = Some(e.max(last));
            }
            _ => {
                if size > 1 {
                    n += size;
                }
                (size, end) = (1, Some(last));
            }
        }
    }
    if size > 1 {
        n += size;
    }
    n
}

/// One bit per record of every index file: whether prune keeps that entry.
/// An eighth of a byte per blob, the one thing prune holds that grows with
/// the repository (12.5 MB at 100M blobs).
struct Kept(Vec<Vec<u64>>);

impl Kept {
    fn set(&mut self, file: usize, record: u64) {
        self.0[file][(record / 64) as usize] |= 1 << (record % 64);
    }

    fn get(&self, file: usize, record: u64) -> bool {
        self.0[file][(record / 64) as usize] >> (record % 64) & 1 == 1
    }
}

/// What prune holds in memory at most.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Used blob ids before they are sorted out to a temporary file.
    run_ids: usize,
    /// Trees remembered as walked.
    seen_trees: usize,
    /// Index entries of packs to rewrite, a batch at a time.
    batching: Batching,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            run_ids: RUN_IDS,
            seen_trees: WALKED_TREES,
            batching: Batching::default(),
        }
    }
}

/// Index entries (56 B each) an index file prune writes holds at most.
const INDEX_PART: usize = 1 << 18;

/// Bytes of old index records merged between progress reports.
const PROGRESS_STEP: u64 = 1 << 20;

/// Of one pack: index entries, how many of them are kept, and the bytes of
/// its stored blobs.
#[derive(Clone, Copy, Default)]
struct Counts {
    entries: u64,
    kept: u64,
    stored: u64,
}

impl Repository {
    /// Feeds `used` every blob the tree `tree` uses, itself included;
    /// `trees` holds trees already walked (not necessarily all of them).
    /// The order does not matter, so the walk is a stack of tree ids: no
    /// recursion, so any depth.
    fn mark(
        &self,
        index: &MasterIndex,
        tree: &Id,
        trees: &mut CappedIds,
        used: &mut IdSorter,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let sorting = |e| Error::io("sorting used blob ids", std::env::temp_dir(), e);
        let mut todo = vec![*tree];
        while let Some(tree) = todo.pop() {
            if !trees.insert(tree) {
                continue;
            }
            used.push(tree).map_err(sorting)?;
            let nodes: Vec<Node> = self.load_tree(index, &tree)?;
            progress.discovered(1, 0);
            progress.entry_done();
            for n in nodes {
                match n.kind {
                    NodeKind::Dir { subtree } => todo.push(subtree),
                    NodeKind::File { chunks, .. } => {
                        for c in chunks {
                            used.push(c).map_err(sorting)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Decides which index entries prune keeps: the first copy (in the
    /// merged order: data before tree, then by pack id and offset) of each
    /// blob that `used` holds. An entry several index files hold is decided
    /// once, at the record [`merged_entries`] reads it from. One streaming
    /// pass over every index file; gives the decisions and the counts per
    /// pack.
    fn classify(
        &self,
        index: &MasterIndex,
        used: &SortedIds,
    ) -> Result<(Kept, BTreeMap<Id, Counts>), Error> {
        let corrupt = |e| Error::corrupt("reading index", self.location(), e);
        let readers: Vec<_> = index.files.iter().map(|f| f.reader()).collect();
        let mut kept = Kept(
            readers
                .iter()
                .map(|r| vec![0; r.len().div_ceil(64) as usize])
                .collect(),
        );
        let mut counts: BTreeMap<Id, Counts> = BTreeMap::new();
        let mut cursor = used.cursor();
        let mut last = None;
        for m in merged_entries(&readers).map_err(corrupt)? {
            let m = m.map_err(corrupt)?;
            let e = &m.entry;
            let first = last != Some(e.id);
            last = Some(e.id);
            let keep = first
                && cursor
                    .contains(&e.id)
                    .map_err(|err| Error::io("reading used blob ids", std::env::temp_dir(), err))?;
            if keep {
                kept.set(m.input, m.record);
            }
            let c = counts.entry(e.pack).or_default();
            c.entries += 1;
            c.kept += u64::from(keep);
            // A stored blob's first (or only) member starts at 0.
            if e.inner == 0 {
                c.stored += u64::from(e.stored_len);
            }
        }
        Ok((kept, counts))
    }

    /// Removes unreferenced data; takes an exclusive lock. Refuses to run when
    /// a snapshot cannot be read completely, since its data would look unused.
    ///
    /// Progress: while the snapshots' trees are walked, one entry per tree
    /// (no total yet); then one entry per pack to rewrite or delete, and
    /// the bytes of the stored blobs read from the packs being rewritten,
    /// then those of the old index records merged into the new index.
    pub fn prune(&self, progress: &dyn Progress) -> Result<PruneSummary, Error> {
        self.prune_with(progress, Limits::default())
    }

    /// [`Repository::prune`] within `limits`.
    fn prune_with(&self, progress: &dyn Progress, limits: Limits) -> Result<PruneSummary, Error> {
        let lock = self.lock(true)?;
        let index = self.load_index_for_writing()?;
        if index.has_gone() {
            // Their blobs would look absent, and the snapshots using them
            // unreadable: what is lost must be dropped from the index first.
            return Err(Error::invalid(
                self.file_path(RepoFile::Pack.dir()),
                "packs the index names are missing; run `haul snapshot repair` first",
            ));
        }
        let mut used = IdSorter::new(limits.run_ids);
        let mut trees = CappedIds::new(limits.seen_trees);
        let (snapshots, damaged) = self.snapshot_records()?;
        for d in &damaged {
            // A record that cannot be read just now (a permission) may be
            // sound: its data must not look unused. One whose bytes are
            // damaged names no tree any more, and is passed over.
            if !d.corrupt {
                return Err(Error::invalid(
                    self.file_path(&RepoFile::Snapshot.path(&d.id)),
                    format!(
                        "cannot read this snapshot ({}); prune would remove its data",
                        d.error
                    ),
                ));
            }
            self.warn(&format!(
                "skipping damaged snapshot {}: {}; data only it used is removed",
                d.id.to_hex(),
                d.error
            ));
        }
        for s in snapshots {
            self.mark(&index, &s.snapshot.tree, &mut trees, &mut used, progress)?;
        }
        drop(trees);
        // The trees' bundles decoded for the walk are not read again.
        self.blocks.clear();
        // What happens to each pack follows from its counts.
        let (kept, counts) = self.classify(&index, &used.finish())?;
        let corrupt = |e| Error::corrupt("reading index", self.location(), e);
        let mut sum = PruneSummary {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };
        let mut keep_packs = BTreeSet::new();
        let mut remove_packs = Vec::new();
        let mut rewrite: Vec<(Id, u64)> = Vec::new();
        let mut rewrite_bytes = 0;
        for (pack, c) in &counts {
            if c.kept == c.entries {
                keep_packs.insert(*pack);
                continue;
            }
            sum.blobs_removed += c.entries - c.kept;
            remove_packs.push(*pack);
            if c.kept > 0 {
                rewrite.push((*pack, c.entries));
                rewrite_bytes += c.stored;
            }
        }
        drop(counts);
        sum.index_files_before = index.files.len() as u64;
        sum.index_files_after = sum.index_files_before;
        if remove_packs.is_empty() && overlapping(&index) <= LOOSE_INDEX_FILES {
            return Ok(sum);
        }
        // The index rewrite at the end counts as the bytes of the old
        // index's records: at 100M blobs it is minutes of merging.
        let index_bytes: u64 = index
            .files
            .iter()
            .map(|f| f.reader().len() * INDEX_RECORD_LEN as u64)
            .sum();
        progress.discovered(remove_packs.len() as u64, rewrite_bytes + index_bytes);
        progress.discovery_done();
        // The packs to rewrite, a batch at a time: their kept blobs move
        // into new packs, indexed every so many blobs as create does.
        let mut new_indexes = BTreeSet::new();
        let mut new_packs = BTreeSet::new();
        let packer = Packer::new(self);
        self.each_pack_batch(
            &index,
            &rewrite,
            limits.batching,
            |file, record, e| (e, kept.get(file, record)),
            |batch| {
                for (pack, all) in &batch {
                    sum.packs_rewritten += 1;
                    let keep: HashSet<(u32, u32)> = all
                        .iter()
                        .filter(|(_, k)| *k)
                        .map(|(e, _)| (e.offset, e.inner))
                        .collect();
                    for mut members in by_stored_blob(all.iter().map(|(e, _)| e)) {
                        // Two index files may name the same pack entry.
                        members.dedup_by_key(|e| e.inner);
                        self.repack(&packer, pack, &members, &keep)?;
                        progress.bytes(u64::from(members[0].stored_len));
                    }
                    progress.entry_done();
                    if packer.written_len() >= DEFAULT_INDEX_FLUSH {
                        let written = packer.take_written();
                        new_packs.extend(written.iter().map(|e| e.pack));
                        new_indexes.extend(self.write_index(written)?.map(|(_, id)| id));
                    }
                }
                Ok(())
            },
        )?;
        let (written, _, new_bytes) = packer.finish()?;
        new_packs.extend(written.iter().map(|e| e.pack));
        new_indexes.extend(self.write_index(written)?.map(|(_, id)| id));
        // The whole index written anew, merged in id order, in files of at
        // most INDEX_PART entries, so that their id ranges do not overlap
        // (a lookup passes over all but one of them): the entries kept of
        // the packs kept whole, and every entry of the files just written.
        // (A file written now may have the name, and so the content, of an
        // old one: that one is read as one of the new.) The new files come
        // first: an entry several files hold is read from the first that
        // has it, and an old file may hold, not kept, an entry of a pack
        // this prune wrote again (left by an interrupted prune).
        let old: BTreeSet<Id> = index.files.iter().map(|f| f.id).collect();
        let mut fresh = Vec::new();
        for id in new_indexes.iter().filter(|id| !old.contains(id)) {
            fresh.push(self.load_index_file(&RepoFile::Index.path(id), *id)?);
        }
        // Each input, and for an old one read through the kept bits, its
        // place among the old files.
        let (new_old, rest): (Vec<_>, Vec<_>) = index
            .files
            .iter()
            .enumerate()
            .partition(|(_, f)| new_indexes.contains(&f.id));
        let inputs: Vec<(&IndexFile, Option<usize>)> = fresh
            .iter()
            .map(|f| (f, None))
            .chain(new_old.into_iter().map(|(_, f)| (f, None)))
            .chain(rest.into_iter().map(|(i, f)| (f, Some(i))))
            .collect();
        let readers: Vec<_> = inputs.iter().map(|(f, _)| f.reader()).collect();
        let mut parts = BTreeSet::new();
        let mut part: Vec<IndexEntry> = Vec::new();
        let (mut merged, mut shown) = (0u64, 0u64);
        for m in merged_entries(&readers).map_err(corrupt)? {
            let m = m.map_err(corrupt)?;
            let e = m.entry;
            let keep = match inputs[m.input].1 {
                None => true,
                Some(file) => {
                    merged += INDEX_RECORD_LEN as u64;
                    if merged - shown >= PROGRESS_STEP {
                        progress.bytes(merged - shown);
                        shown = merged;
                    }
                    kept.get(file, m.record) && keep_packs.contains(&e.pack)
                }
            };
            if !keep {
                continue;
            }
            part.push(e);
            if part.len() >= INDEX_PART {
                let full = std::mem::take(&mut part);
                parts.extend(self.write_index(full)?.map(|(_, id)| id));
            }
        }
        parts.extend(self.write_index(part)?.map(|(_, id)| id));
        // (Records several old files hold are merged once.)
        progress.bytes(index_bytes.saturating_sub(shown));
        drop(readers);
        drop(inputs);
        drop(index);
        sum.index_files_after = parts.len() as u64;
        // Then every other index file: the old ones, and those written for
        // the new packs on the way (their entries are in the parts now).
        for id in old.iter().chain(fresh.iter().map(|f| &f.id)) {
            if parts.contains(id) {
                continue;
            }
            let name = RepoFile::Index.path(id);
            self.backend()
                .remove(&name)
                .map_err(|e| Error::io("removing index", self.file_path(&name), e))?;
        }
        drop(fresh);
        let mut freed = 0i64;
        for p in remove_packs {
            let name = RepoFile::Pack.path(&p);
            freed += self.backend().size(&name).unwrap_or(0) as i64;
            // A pack written now may have the name, and so the content, of
            // one being removed (left by an interrupted prune, it lost its
            // blobs to the pack they were copied from): that one stays.
            if !new_packs.contains(&p) {
                self.backend()
                    .remove(&name)
                    .map_err(|e| Error::io("removing pack", self.file_path(&name), e))?;
                sum.packs_removed += 1;
            }
            if rewrite.binary_search_by(|(r, _)| r.cmp(&p)).is_err() {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::progress::NoProgress;
    use crate::repo::{CheckOptions, CreateOptions, InitOptions};

    fn write_tree(root: &Path, round: u32) {
        for i in 0..400u32 {
            // A quarter of the files change each round; one in ten is large
            // enough to be cut into chunks stored alone.
            let v = if i % 4 == 0 { round } else { 0 };
            let len = if i % 10 == 0 {
                300_000
            } else {
                200 + 37 * i as usize
            };
            let mut data = Vec::with_capacity(len);
            let mut x = blake3::Hasher::new();
            x.update(&[i.to_le_bytes(), v.to_le_bytes()].concat());
            x.finalize_xof().fill({
                data.resize(len, 0);
                &mut data
            });
            let dir = root.join(format!("d{}", i % 7));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i}")), data).unwrap();
        }
        // A subtree every snapshot shares.
        let fixed = root.join("fixed/deeper");
        std::fs::create_dir_all(&fixed).unwrap();
        for j in 0..20u32 {
            std::fs::write(fixed.join(format!("g{j}")), j.to_le_bytes().repeat(50)).unwrap();
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["data", "index", "snapshots"] {
            let mut stack = vec![root.join(sub)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        out.push(p.strip_prefix(root).unwrap().display().to_string());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// A repository (1 MiB packs, an index file every `flush` blobs) under
    /// `dir` with three snapshots of a changing tree, the first forgotten.
    fn forgotten_first(dir: &Path, flush: usize) -> std::path::PathBuf {
        let (src, base) = (dir.join("src"), dir.join("base"));
        let opts = InitOptions {
            pack_size: Some(1 << 20),
            ..Default::default()
        };
        let repo = Repository::init(&base, &opts).unwrap();
        let mut first = None;
        for round in 1..=3 {
            write_tree(&src, round);
            let s = repo
                .create_snapshot(
                    &CreateOptions {
                        paths: vec![src.clone()],
                        index_flush_every: flush,
                        ..Default::default()
                    },
                    &NoProgress,
                )
                .unwrap();
            first.get_or_insert(s.id);
        }
        repo.forget(&[first.unwrap()]).unwrap();
        base
    }

    /// Used ids sorted through temporary files, a walk that forgets the
    /// trees it saw, and packs rewritten in batches of a few blobs (their
    /// entries sorted out through temporary files, one per batch or shared)
    /// give the very repository that in-memory ones give.
    #[test]
    fn prune_with_small_memory_limits_equals_prune_without() {
        let t = tempfile::tempdir().unwrap();
        // Several index files, so that the merges have inputs to merge.
        let base = forgotten_first(t.path(), 50);
        let mem = t.path().join("mem");
        copy_dir(&base, &mem);
        let a = Repository::open(&mem)
            .unwrap()
            .prune_with(&NoProgress, Limits::default())
            .unwrap();
        assert!(a.blobs_removed > 0 && a.packs_rewritten > 1, "{a:?}");
        for (i, files) in [1000, 2].into_iter().enumerate() {
            let disk = t.path().join(format!("disk{i}"));
            copy_dir(&base, &disk);
            let disk_repo = Repository::open(&disk).unwrap();
            // (And with at most 2 trees remembered: shared subtrees walked
            // again change nothing.)
            let small = Limits {
                run_ids: 5,
                seen_trees: 2,
                batching: Batching { blobs: 7, files },
            };
            let b = disk_repo.prune_with(&NoProgress, small).unwrap();
            assert_eq!(
                (
                    a.packs_removed,
                    a.packs_rewritten,
                    a.blobs_removed,
                    a.bytes_freed
                ),
                (
                    b.packs_removed,
                    b.packs_rewritten,
                    b.blobs_removed,
                    b.bytes_freed
                ),
                "spill files {files}"
            );
            assert_eq!(listing(&mem), listing(&disk), "spill files {files}");
            // The index written anew: no two files' id ranges overlap.
            assert_eq!(overlapping(&disk_repo.load_index().unwrap()), 0);
            assert_ne!(listing(&base), listing(&disk));
            let report = disk_repo
                .check(CheckOptions { read_data: true }, &NoProgress)
                .unwrap();
            assert!(report.ok, "{:?}", report.errors);
        }
    }

    /// check and prune see each pack's index entries alike however packs
    /// are batched: in one pass, or sorted out through temporary files,
    /// one per batch or shared by neighbouring batches.
    #[test]
    fn pack_batches_give_every_entry_once_however_batched() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repository::open(&forgotten_first(t.path(), 50)).unwrap();
        let index = repo.load_index().unwrap();
        assert!(index.files.len() > 2);
        let packs: Vec<(Id, u64)> = index.blobs_per_pack().unwrap().into_iter().collect();
        let gather = |how: Batching| {
            let mut all = Vec::new();
            let mut sizes = Vec::new();
            repo.each_pack_batch(
                &index,
                &packs,
                how,
                |file, record, e| (file, record, e),
                |batch| {
                    sizes.push(batch.values().map(Vec::len).sum::<usize>());
                    all.extend(batch);
                    Ok(())
                },
            )
            .unwrap();
            (all, sizes)
        };
        let (whole, sizes) = gather(Batching::default());
        assert_eq!(sizes.len(), 1);
        assert_eq!(whole.len(), packs.len());
        let total: u64 = packs.iter().map(|(_, n)| n).sum();
        assert_eq!(sizes[0] as u64, total);
        for (_, entries) in &whole {
            // Each entry is where it says it is.
            for (file, record, e) in entries {
                assert_eq!(index.files[*file].reader().entry(*record).unwrap(), *e);
            }
        }
        for files in [1, 3, 1000] {
            let (parts, sizes) = gather(Batching { blobs: 40, files });
            assert!(sizes.len() > 3, "{sizes:?}");
            assert_eq!(parts, whole, "spill files {files}");
        }
    }

    #[test]
    fn overlapping_ranges_counts_files_in_chains() {
        let id = |b: u8| Id::from_bytes([b; 32]);
        let r = |a: u8, b: u8| (id(a), id(b));
        assert_eq!(overlapping_ranges(vec![]), 0);
        assert_eq!(overlapping_ranges(vec![r(0, 9)]), 0);
        // Disjoint, in any order.
        assert_eq!(overlapping_ranges(vec![r(20, 29), r(0, 9), r(10, 19)]), 0);
        // Two chains: 0-9/5-12/11-15, and 30-40/40-41; 20-25 alone.
        let v = vec![
            r(11, 15),
            r(30, 40),
            r(0, 9),
            r(20, 25),
            r(5, 12),
            r(40, 41),
        ];
        assert_eq!(overlapping_ranges(v), 5);
        // One range holding the others.
        assert_eq!(overlapping_ranges(vec![r(0, 255), r(3, 4), r(7, 8)]), 3);
    }

    /// A repository whose index is many files from many creates, each over
    /// every id: a prune with nothing to remove writes it anew in files of
    /// disjoint id ranges and touches no pack; the next prune does nothing.
    #[test]
    fn prune_compacts_an_index_of_many_overlapping_files() {
        let t = tempfile::tempdir().unwrap();
        let (src, base) = (t.path().join("src"), t.path().join("repo"));
        let opts = InitOptions {
            pack_size: Some(1 << 20),
            ..Default::default()
        };
        let repo = Repository::init(&base, &opts).unwrap();
        for round in 1..=10 {
            write_tree(&src, round);
            repo.create_snapshot(
                &CreateOptions {
                    paths: vec![src.clone()],
                    index_flush_every: 20,
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
        }
        let before = repo.load_index().unwrap();
        assert!(
            overlapping(&before) > LOOSE_INDEX_FILES,
            "{} files, {} overlapping",
            before.files.len(),
            overlapping(&before)
        );
        let entries: u64 = before.files.iter().map(|f| f.reader().len()).sum();
        drop(before);
        let packs = |root: &Path| -> Vec<String> {
            listing(root)
                .into_iter()
                .filter(|p| p.starts_with("data"))
                .collect()
        };
        let data = packs(&base);
        let p = Counted::default();
        let s = repo.prune(&p).unwrap();
        assert_eq!((s.packs_removed, s.blobs_removed), (0, 0), "{s:?}");
        // Its progress: the old index's records, merged.
        let total = entries * INDEX_RECORD_LEN as u64;
        assert_eq!((p.total.into_inner(), p.done.into_inner()), (total, total));
        assert_eq!(s.index_files_after, 1, "{s:?}");
        let after = repo.load_index().unwrap();
        assert_eq!(after.files.len(), 1);
        assert_eq!(after.files[0].reader().len(), entries);
        drop(after);
        assert_eq!(packs(&base), data);
        let report = repo
            .check(CheckOptions { read_data: true }, &NoProgress)
            .unwrap();
        assert!(report.ok, "{:?}", report.errors);
        let files = listing(&base);
        let s = repo.prune(&NoProgress).unwrap();
        assert_eq!((s.index_files_before, s.index_files_after), (1, 1));
        assert_eq!(listing(&base), files);
    }

    /// A prune interrupted after writing its new packs and indexes, before
    /// removing the old ones, leaves two copies of the blobs it moved; the
    /// next prune may rewrite an old pack into the very pack (same content,
    /// same name) the first one wrote, and must not then remove it as a
    /// losing copy.
    #[test]
    fn prune_after_an_interrupted_prune_keeps_what_it_writes_again() {
        let t = tempfile::tempdir().unwrap();
        let base = forgotten_first(t.path(), 0);
        let (done, crashed) = (t.path().join("done"), t.path().join("crashed"));
        copy_dir(&base, &done);
        copy_dir(&base, &crashed);
        Repository::open(&done).unwrap().prune(&NoProgress).unwrap();
        // The interrupted state: the old files plus everything prune wrote.
        for sub in ["data", "index"] {
            copy_dir(&done.join(sub), &crashed.join(sub));
        }
        let crashed = Repository::open(&crashed).unwrap();
        crashed.prune(&NoProgress).unwrap();
        let report = crashed
            .check(CheckOptions { read_data: true }, &NoProgress)
            .unwrap();
        assert!(report.ok, "{:?}", report.errors);
    }

    /// Counts what prune reports.
    #[derive(Default)]
    struct Counted {
        total: std::sync::atomic::AtomicU64,
        done: std::sync::atomic::AtomicU64,
    }

    impl Progress for Counted {
        fn discovered(&self, _files: u64, bytes: u64) {
            self.total
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        fn bytes(&self, n: u64) {
            self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The bytes prune reports reach the total it announced, no further:
    /// those of the packs it rewrites, then those of the index it merges.
    #[test]
    fn prune_progress_ends_at_its_total() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repository::open(&forgotten_first(t.path(), 50)).unwrap();
        let p = Counted::default();
        let s = repo.prune(&p).unwrap();
        assert!(s.packs_rewritten > 0, "{s:?}");
        assert_eq!(p.done.into_inner(), p.total.into_inner());
    }
}
