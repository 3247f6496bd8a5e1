//! `snapshot repair`: after a pack is lost (deleted, truncated, damaged or
//! unreadable) or an index file damaged, the index is rebuilt from the
//! packs that are really there and sound, so that nothing refers to lost
//! data any more and the next create stores that data again; with
//! `snapshots`, each damaged snapshot is written anew without the files
//! whose data is lost, tagged `repaired`.
//!
//! Every pack is read whole: a pack whose bytes hash to its name is sound
//! as written, and its own trailer is its index. The sound blobs of a
//! damaged pack (found through its trailer, or, when that is lost, through
//! the old index) are copied into a new pack, and the damaged one removed.
//! A pack that cannot be read at all is left in place, unindexed.
//!
//! Order for crash safety, as prune's: new packs, new index files, then
//! the old index files, then the damaged packs; new snapshot records, then
//! the old ones. At every moment what was restorable still is.
use std::collections::{BTreeSet, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, encode_blob_with_id, encode_tree, merged_entries,
    BlobKind, Id, IndexEntry, Node, NodeKind, PackReader, RepoFile, MAX_TREE_BLOB_LEN,
};
use rayon::prelude::*;
use serde::Serialize;

use super::create::DEFAULT_INDEX_FLUSH;
use super::idset::{CappedIds, WALKED_TREES};
use super::index::{by_stored_blob, MasterIndex};
use super::packer::{Packer, BUNDLE_MEMBER_MAX};
use super::{Repository, SnapshotInfo};
use crate::error::Error;
use crate::progress::Progress;

/// What to repair.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairOptions {
    /// Also rewrite damaged snapshots without their lost files, and remove
    /// snapshot records that are damaged themselves.
    pub snapshots: bool,
}

/// A snapshot `repair` rewrote or removed.
#[derive(Clone, Debug, Serialize)]
pub struct RepairedSnapshot {
    /// The damaged record's id.
    pub original: String,
    /// The new record's id (none: removed, nothing of it could be kept).
    pub id: Option<String>,
    /// Why it was removed, if it was.
    pub removed: Option<String>,
    /// Files and directories dropped because their data is lost, by the
    /// paths `snapshot ls` shows.
    pub dropped: Vec<String>,
}

/// What repair did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairSummary {
    /// Packs read.
    pub packs: u64,
    /// Packs the old index named that are not in the repository.
    pub packs_missing: Vec<String>,
    /// Damaged packs: their sound blobs copied to new packs, then removed.
    pub packs_damaged: Vec<String>,
    /// Packs that cannot be read, left in place and unindexed.
    pub packs_unreadable: Vec<String>,
    /// Blobs copied out of damaged packs.
    pub blobs_salvaged: u64,
    /// Blobs the old index held that the new one does not: lost data,
    /// which the next create stores again if it still has it.
    pub blobs_dropped: u64,
    /// Damaged or unreadable index files (removed).
    pub index_files_damaged: Vec<String>,
    /// Index files before and after.
    pub index_files_before: u64,
    /// Index files written.
    pub index_files_after: u64,
    /// Snapshots rewritten or removed (with `snapshots`).
    pub snapshots: Vec<RepairedSnapshot>,
    /// Snapshots that are damaged but were left as they are (without
    /// `snapshots`, or a record that cannot be read just now).
    pub snapshots_damaged: Vec<String>,
    /// Messages about stale locks that were broken.
    pub notices: Vec<String>,
}

/// What reading one pack found.
enum PackState {
    Sound(Vec<IndexEntry>),
    /// Damaged but readable: its bytes, and the entries to try to salvage.
    Damaged(Vec<u8>, Vec<IndexEntry>, String),
    Unreadable(String),
}

impl Repository {
    /// Repairs the repository; see the module docs. Takes an exclusive lock.
    pub fn repair(
        &self,
        opts: RepairOptions,
        progress: &dyn Progress,
    ) -> Result<RepairSummary, Error> {
        let lock = self.lock(true)?;
        let mut sum = RepairSummary {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };
        // The old index: its sound files (for the entries of a pack whose
        // trailer is lost) and the names of all of them.
        let mut old_files = Vec::new();
        let mut old_names = Vec::new();
        for (name, f) in self.each_index_file()? {
            match f {
                Ok(f) => old_files.push(f),
                Err(e) => sum.index_files_damaged.push(e.to_string()),
            }
            old_names.push(name);
        }
        sum.index_files_before = old_names.len() as u64;
        let old = MasterIndex::from_files(old_files);
        let named = old.packs();

        let pack_names: Vec<(String, Id)> = self
            .backend()
            .list(RepoFile::Pack.dir())
            .map_err(|e| Error::io("listing packs", self.file_path(RepoFile::Pack.dir()), e))?
            .into_iter()
            .filter_map(|n| match RepoFile::parse_path(&n) {
                Some((RepoFile::Pack, id)) => Some((n, id)),
                _ => None,
            })
            .collect();
        let on_disk: BTreeSet<Id> = pack_names.iter().map(|(_, id)| *id).collect();
        sum.packs_missing = named
            .difference(&on_disk)
            .map(|p| {
                self.file_path(&RepoFile::Pack.path(p))
                    .display()
                    .to_string()
            })
            .collect();
        sum.packs = pack_names.len() as u64;
        let total: u64 = pack_names
            .iter()
            .map(|(n, _)| self.backend().size(n).unwrap_or(0))
            .sum();
        progress.discovered(pack_names.len() as u64, total);
        progress.discovery_done();

        // Every pack read, a few at a time (one whole pack in memory per
        // thread); entries of sound packs indexed every so many, as create
        // does, so memory stays flat.
        let packer = Packer::new(self);
        let mut new_indexes = BTreeSet::new();
        let mut pending: Vec<IndexEntry> = Vec::new();
        let mut salvaged_ids = HashSet::new();
        let mut to_remove = Vec::new();
        let width = rayon::current_num_threads().max(1) * 2;
        for group in pack_names.chunks(width) {
            let states: Vec<(String, Id, PackState)> = group
                .par_iter()
                .map(|(name, id)| {
                    let st = self.read_pack_for_repair(&old, name, id);
                    progress.entry_done();
                    (name.clone(), *id, st)
                })
                .collect();
            for (name, id, st) in states {
                let path = self.file_path(&name).display().to_string();
                match st {
                    PackState::Sound(entries) => {
                        progress.bytes(self.backend().size(&name).unwrap_or(0));
                        pending.extend(entries);
                    }
                    PackState::Unreadable(why) => {
                        sum.packs_unreadable.push(format!("{path}: {why}"));
                    }
                    PackState::Damaged(bytes, entries, why) => {
                        progress.bytes(bytes.len() as u64);
                        sum.packs_damaged.push(format!("{path}: {why}"));
                        let n = self.salvage(&packer, &bytes, &entries, &mut salvaged_ids)?;
                        sum.blobs_salvaged += n;
                        to_remove.push((name, id));
                    }
                }
                if pending.len() >= DEFAULT_INDEX_FLUSH {
                    new_indexes.extend(self.write_index(std::mem::take(&mut pending))?);
                }
                if packer.written_len() >= DEFAULT_INDEX_FLUSH {
                    new_indexes.extend(self.write_index(packer.take_written())?);
                }
            }
        }
        let (written, _, _) = packer.finish()?;
        let new_packs: HashSet<Id> = written.iter().map(|e| e.pack).collect();
        new_indexes.extend(self.write_index(pending)?);
        new_indexes.extend(self.write_index(written)?);
        sum.index_files_after = new_indexes.len() as u64;

        let mut files = Vec::new();
        for (name, id) in &new_indexes {
            files.push(self.load_index_file(name, *id)?);
        }
        let index = MasterIndex::from_files(files);
        sum.blobs_dropped = self.count_dropped(&old, &index)?;
        drop(old);

        // The new index is durable: the old files go, then the damaged packs.
        let keep: HashSet<&String> = new_indexes.iter().map(|(n, _)| n).collect();
        for name in old_names.iter().filter(|n| !keep.contains(n)) {
            self.backend()
                .remove(name)
                .map_err(|e| Error::io("removing index", self.file_path(name), e))?;
        }
        for (name, id) in to_remove {
            // A salvage that wrote exactly the same pack again keeps it.
            if !new_packs.contains(&id) {
                self.backend()
                    .remove(&name)
                    .map_err(|e| Error::io("removing pack", self.file_path(&name), e))?;
            }
        }
        self.blocks.clear();
        self.repair_snapshots(&index, opts, &mut sum)?;
        Ok(sum)
    }

    /// Reads one pack whole and tells whether it is sound.
    fn read_pack_for_repair(&self, old: &MasterIndex, name: &str, id: &Id) -> PackState {
        let bytes = match self.backend().get(name, u64::MAX) {
            Ok(b) => b,
            Err(e) => return PackState::Unreadable(e.to_string()),
        };
        let (trailer, why) = match PackReader::new(&bytes) {
            Ok(r) => match r.verify(id) {
                Ok(()) => {
                    let entries = r
                        .entries()
                        .iter()
                        .map(|e| IndexEntry::new(*id, e))
                        .collect();
                    return PackState::Sound(entries);
                }
                Err(e) => (
                    Some(
                        r.entries()
                            .iter()
                            .map(|e| IndexEntry::new(*id, e))
                            .collect(),
                    ),
                    e.to_string(),
                ),
            },
            Err(e) => (None, e.to_string()),
        };
        // The trailer lost: what the old index says the pack held.
        let entries = trailer.unwrap_or_else(|| {
            let mut v = Vec::new();
            // A damaged old file is not read here; its blobs are lost.
            let _ = old.each_entry(|_, _, e| {
                if e.pack == *id {
                    v.push(e);
                }
            });
            v
        });
        PackState::Damaged(bytes, entries, why)
    }

    /// Copies the sound blobs of a damaged pack's `bytes` into `packer`;
    /// returns how many.
    fn salvage(
        &self,
        packer: &Packer<'_>,
        bytes: &[u8],
        entries: &[IndexEntry],
        done: &mut HashSet<Id>,
    ) -> Result<u64, Error> {
        let mut n = 0;
        for mut group in by_stored_blob(entries) {
            group.dedup_by_key(|e| e.inner);
            let r = group[0].range();
            let Some(plain) = bytes
                .get(r.start as usize..r.end as usize)
                .and_then(|b| decode_blob_unverified(b, MAX_TREE_BLOB_LEN).ok())
                .map(|(_, p)| p)
            else {
                continue;
            };
            for e in group {
                let Ok(data) = bundle_member(&plain, e.inner, e.raw_len, &e.id) else {
                    continue;
                };
                if !done.insert(e.id) {
                    continue;
                }
                self.store_blob(packer, e.kind, e.id, data)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Adds one verified blob to `packer`, bundled if small, as create does.
    fn store_blob(
        &self,
        packer: &Packer<'_>,
        kind: BlobKind,
        id: Id,
        data: &[u8],
    ) -> Result<(), Error> {
        if data.len() < BUNDLE_MEMBER_MAX {
            packer.add_small(kind, id, data)
        } else {
            let blob = encode_blob_with_id(kind, data, id, self.config().zstd_level)
                .map_err(|e| Error::corrupt("encoding blob", self.location(), e))?;
            packer.add(&blob)
        }
    }

    /// How many distinct blobs `old` holds that `new` does not.
    fn count_dropped(&self, old: &MasterIndex, new: &MasterIndex) -> Result<u64, Error> {
        let corrupt = |e| Error::corrupt("reading index", self.location(), e);
        let readers: Vec<_> = old.files.iter().map(|f| f.reader()).collect();
        let (mut n, mut last) = (0, None);
        for m in merged_entries(&readers).map_err(corrupt)? {
            let id = m.map_err(corrupt)?.entry.id;
            if last != Some(id) && !new.contains(&id) {
                n += 1;
            }
            last = Some(id);
        }
        Ok(n)
    }

    /// Finds the snapshots that use lost data and, with `opts.snapshots`,
    /// writes each anew without it; removes damaged records.
    fn repair_snapshots(
        &self,
        index: &MasterIndex,
        opts: RepairOptions,
        sum: &mut RepairSummary,
    ) -> Result<(), Error> {
        let (snaps, damaged) = self.snapshot_records()?;
        let mut remove = Vec::new();
        for d in damaged {
            if opts.snapshots && d.corrupt {
                sum.snapshots.push(RepairedSnapshot {
                    original: d.id.to_hex(),
                    id: None,
                    removed: Some(format!("the record is damaged: {}", d.error)),
                    dropped: Vec::new(),
                });
                remove.push(d.id);
            } else {
                sum.snapshots_damaged
                    .push(format!("{}: {}", d.id.to_hex(), d.error));
            }
        }
        let packer = Packer::new(self);
        let mut fixer = Fixer {
            repo: self,
            index,
            packer: &packer,
            write: opts.snapshots,
            sound: CappedIds::new(WALKED_TREES),
            stored: HashSet::new(),
        };
        let mut new_records = Vec::new();
        for s in snaps {
            let mut dropped = Vec::new();
            let single = s.snapshot.paths.len() == 1;
            let root = fixer.tree(&s.snapshot.tree, (!single).then_some(""), &mut dropped)?;
            if root == Some(s.snapshot.tree) && dropped.is_empty() {
                continue;
            }
            if !opts.snapshots {
                sum.snapshots_damaged.push(format!(
                    "{}: {} file(s) or directories lost",
                    s.id.to_hex(),
                    dropped.len().max(1)
                ));
                continue;
            }
            remove.push(s.id);
            match root {
                None => sum.snapshots.push(RepairedSnapshot {
                    original: s.id.to_hex(),
                    id: None,
                    removed: Some("its root tree is lost".into()),
                    dropped,
                }),
                Some(tree) => new_records.push((s, tree, dropped)),
            }
        }
        let (written, _, _) = packer.finish()?;
        self.write_index(written)?;
        // The trees are durable: the new records, then the old ones go.
        for (s, tree, dropped) in new_records {
            let id = self.write_repaired(&s, tree, &dropped)?;
            sum.snapshots.push(RepairedSnapshot {
                original: s.id.to_hex(),
                id: Some(id.to_hex()),
                removed: None,
                dropped,
            });
        }
        for id in remove {
            let name = RepoFile::Snapshot.path(&id);
            self.backend()
                .remove(&name)
                .map_err(|e| Error::io("removing snapshot", self.file_path(&name), e))?;
        }
        Ok(())
    }

    /// Writes the record of `s` with root `tree`, tagged `repaired`.
    fn write_repaired(&self, s: &SnapshotInfo, tree: Id, dropped: &[String]) -> Result<Id, Error> {
        let mut snap = s.snapshot.clone();
        snap.tree = tree;
        if !snap.tags.iter().any(|t| t == "repaired") {
            snap.tags.push("repaired".into());
        }
        // A record repaired twice names the first one it replaces.
        snap.original = Some(snap.original.unwrap_or(s.id));
        snap.summary.files = snap.summary.files.saturating_sub(dropped.len() as u64);
        self.save_snapshot(&snap)
    }
}

/// Rewrites trees without the entries whose data is lost.
struct Fixer<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    packer: &'a Packer<'a>,
    /// Whether new trees are stored (else only what is lost is found).
    write: bool,
    /// Trees found whole, so that a subtree many snapshots share is walked
    /// once (at most [`WALKED_TREES`] remembered).
    sound: CappedIds,
    /// Trees stored by this run.
    stored: HashSet<Id>,
}

impl Fixer<'_> {
    /// The id of tree `id` without what is lost below it (itself when
    /// nothing is), or none if the tree itself is lost; `prefix` as check's
    /// walk has it. Each dropped entry is added to `dropped`. The walk is a
    /// stack of the trees being rewritten, not a recursion: any depth.
    fn tree(
        &mut self,
        id: &Id,
        prefix: Option<&str>,
        dropped: &mut Vec<String>,
    ) -> Result<Option<Id>, Error> {
        /// A tree being rewritten: the nodes not yet seen, those kept, and
        /// the directory node waiting for its own subtree's answer.
        struct Frame {
            id: Id,
            prefix: Option<String>,
            nodes: std::vec::IntoIter<Node>,
            kept: Vec<Node>,
            changed: bool,
            waiting: Option<(Node, String)>,
        }
        let start = |this: &mut Self, id: Id, prefix: Option<String>| {
            if this.sound.contains(&id) {
                return Err(Some(id));
            }
            match this.repo.load_tree(this.index, &id) {
                Ok(nodes) => Ok(Frame {
                    id,
                    prefix,
                    nodes: nodes.into_iter(),
                    kept: Vec::new(),
                    changed: false,
                    waiting: None,
                }),
                Err(_) => Err(None),
            }
        };
        let mut stack = match start(self, *id, prefix.map(str::to_string)) {
            Ok(f) => vec![f],
            Err(r) => return Ok(r),
        };
        // A subtree's answer, for the directory node waiting on it.
        let mut answer: Option<Option<Id>> = None;
        loop {
            let top = stack.last_mut().expect("the loop returns at the root");
            if let Some(r) = answer.take() {
                let (mut n, p) = top.waiting.take().expect("a subtree was walked");
                match (r, &n.kind) {
                    (None, _) => {
                        dropped.push(shown(&p));
                        top.changed = true;
                    }
                    (Some(new), NodeKind::Dir { subtree }) => {
                        if new != *subtree {
                            n.kind = NodeKind::Dir { subtree: new };
                            top.changed = true;
                        }
                        top.kept.push(n);
                    }
                    (Some(_), _) => top.kept.push(n),
                }
            }
            let Some(n) = top.nodes.next() else {
                let done = stack.pop().expect("a frame");
                let r = self.finish_tree(done.id, done.kept, done.changed)?;
                if stack.is_empty() {
                    return Ok(r);
                }
                answer = Some(r);
                continue;
            };
            let path = match top.prefix.as_deref() {
                None => String::new(),
                Some("") => String::from_utf8_lossy(&n.name).into_owned(),
                Some(p) => format!("{p}/{}", String::from_utf8_lossy(&n.name)),
            };
            match &n.kind {
                NodeKind::Dir { subtree } => {
                    let sub = *subtree;
                    top.waiting = Some((n, path.clone()));
                    match start(self, sub, Some(path)) {
                        Ok(f) => stack.push(f),
                        Err(r) => answer = Some(r),
                    }
                }
                NodeKind::File { chunks, .. } if !chunks.iter().all(|c| self.index.contains(c)) => {
                    dropped.push(shown(&path));
                    top.changed = true;
                }
                _ => top.kept.push(n),
            }
        }
    }

    /// A rewritten tree's id: its own if nothing changed (then known
    /// sound), else that of `kept`, stored unless already there.
    fn finish_tree(&mut self, id: Id, kept: Vec<Node>, changed: bool) -> Result<Option<Id>, Error> {
        if !changed {
            self.sound.insert(id);
            return Ok(Some(id));
        }
        let bytes = encode_tree(kept)
            .map_err(|e| Error::corrupt("encoding tree", self.repo.location(), e))?;
        let new = Id::hash(&bytes);
        if self.write && !self.index.contains(&new) && self.stored.insert(new) {
            self.repo
                .store_blob(self.packer, BlobKind::Tree, new, &bytes)?;
        }
        Ok(Some(new))
    }
}

fn shown(p: &str) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        p.to_string()
    }
}
