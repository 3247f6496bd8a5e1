//! `snapshot check`: is every snapshot restorable? Structure always; with
//! `read_data`, every byte of every pack is read and every blob's hash
//! verified. Problems are collected, never fatal, and traced back to the
//! snapshots and files they affect.
use std::collections::{BTreeSet, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, FileKind as RepoFile, Id, IndexEntry, Node, NodeKind,
    PackReader, MAX_DATA_BLOB_LEN, MAX_TREE_BLOB_LEN,
};
use rayon::prelude::*;
use serde::Serialize;

use super::batch::Batching;
use super::idset::{CappedIds, WALKED_TREES};
use super::index::{by_stored_blob, MasterIndex};
use super::Repository;
use crate::error::Error;
use crate::progress::Progress;

/// What to check.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Read every pack and verify every blob.
    pub read_data: bool,
}

/// A file that cannot be restored correctly.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct AffectedFile {
    /// The snapshot holding it.
    pub snapshot: String,
    /// Its path relative to the snapshot root.
    pub path: String,
}

/// What check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// No errors.
    pub ok: bool,
    /// Every problem, naming the repository file and the cause.
    pub errors: Vec<String>,
    /// Snapshots that cannot be restored exactly.
    pub affected_snapshots: Vec<String>,
    /// Files that cannot be restored exactly.
    pub affected_files: Vec<AffectedFile>,
    /// Things worth knowing that are not errors (unindexed packs, stale locks broken).
    pub notices: Vec<String>,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs checked.
    pub packs: u64,
    /// Index entries checked.
    pub blobs: u64,
}

impl Repository {
    /// Checks the repository; see the module docs.
    pub fn check(&self, opts: CheckOptions, progress: &dyn Progress) -> Result<CheckReport, Error> {
        let lock = self.lock(false)?;
        let mut rep = CheckReport {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };

        // Index files, each on its own: one damaged file is reported, not
        // fatal. They are memory-mapped (local) and looked up in place.
        let mut files = Vec::new();
        let names = self
            .backend()
            .list(RepoFile::Index.dir())
            .map_err(|e| Error::io("listing indexes", self.file_path(RepoFile::Index.dir()), e))?;
        for name in names {
            let Some((RepoFile::Index, id)) = RepoFile::parse_path(&name) else {
                continue;
            };
            match self.load_index_file(&name, id) {
                Ok(f) => files.push(f),
                Err(e) => rep.errors.push(e.to_string()),
            }
        }
        let index = MasterIndex::from_files(files);
        // How many blobs each pack holds: memory in the number of packs, not
        // of blobs.
        let per_pack = index
            .blobs_per_pack()
            .map_err(|e| Error::corrupt("reading index", self.location(), e))?;
        rep.blobs = per_pack.values().sum();
        rep.packs = per_pack.len() as u64;
        let on_disk: BTreeSet<Id> = self
            .backend()
            .list(RepoFile::Pack.dir())
            .map_err(|e| Error::io("listing packs", self.file_path(RepoFile::Pack.dir()), e))?
            .iter()
            .filter_map(|n| RepoFile::parse_path(n).map(|(_, id)| id))
            .collect();
        let unindexed = on_disk.iter().filter(|p| !per_pack.contains_key(p)).count();
        if unindexed > 0 {
            rep.notices.push(format!(
                "{unindexed} pack(s) are in no index (left by an interrupted run); the next create reuses them and prune removes what is unused"
            ));
        }

        // Packs: present, self-consistent, and (read_data) every blob intact.
        if opts.read_data {
            let total: u64 = per_pack
                .keys()
                .map(|p| self.backend().size(&RepoFile::Pack.path(p)).unwrap_or(0))
                .sum();
            progress.discovered(per_pack.len() as u64, total);
            progress.discovery_done();
        }
        // A batch of packs at a time, with the index entries of just those
        // packs.
        let mut bad: HashSet<Id> = HashSet::new();
        let packs: Vec<(Id, u64)> = per_pack.into_iter().collect();
        self.each_pack_batch(
            &index,
            &packs,
            Batching::default(),
            |_, _, e| e,
            |entries| {
                let results: Vec<(Vec<String>, Vec<Id>)> = entries
                    .par_iter()
                    .map(|(pack, entries)| {
                        let r = self.check_pack(pack, entries, opts.read_data, progress);
                        progress.entry_done();
                        r
                    })
                    .collect();
                for (errs, blobs) in results {
                    rep.errors.extend(errs);
                    bad.extend(blobs);
                }
                Ok(())
            },
        )?;

        // Snapshots: every tree and chunk indexed, none of them bad.
        let snap_ids = self.backend().list(RepoFile::Snapshot.dir()).map_err(|e| {
            Error::io(
                "listing snapshots",
                self.file_path(RepoFile::Snapshot.dir()),
                e,
            )
        })?;
        let mut clean = CappedIds::new(WALKED_TREES);
        let mut affected_snaps = BTreeSet::new();
        let mut affected_files = BTreeSet::new();
        for name in snap_ids {
            let Some((RepoFile::Snapshot, id)) = RepoFile::parse_path(&name) else {
                continue;
            };
            rep.snapshots += 1;
            let snap = match self.load_snapshot(&id) {
                Ok(s) => s,
                Err(e) => {
                    rep.errors.push(format!("snapshot {}: {e}", id.to_hex()));
                    affected_snaps.insert(id.to_hex());
                    continue;
                }
            };
            let mut walker = Walker {
                repo: self,
                index: &index,
                bad: &bad,
                clean: &mut clean,
                errors: Vec::new(),
                files: Vec::new(),
            };
            walker.tree(&snap.snapshot.tree, "");
            if !walker.errors.is_empty() || !walker.files.is_empty() {
                affected_snaps.insert(id.to_hex());
            }
            rep.errors.extend(
                walker
                    .errors
                    .into_iter()
                    .map(|e| format!("snapshot {}: {e}", id.short())),
            );
            affected_files.extend(walker.files.into_iter().map(|p| AffectedFile {
                snapshot: id.to_hex(),
                path: p,
            }));
        }
        rep.affected_snapshots = affected_snaps.into_iter().collect();
        rep.affected_files = affected_files.into_iter().collect();
        rep.errors.dedup();
        rep.ok = rep.errors.is_empty();
        Ok(rep)
    }

    /// Checks one pack; returns errors and the ids of blobs that are unusable.
    fn check_pack(
        &self,
        pack: &Id,
        entries: &[IndexEntry],
        read_data: bool,
        progress: &dyn Progress,
    ) -> (Vec<String>, Vec<Id>) {
        let name = RepoFile::Pack.path(pack);
        let path = self.file_path(&name);
        let all = || entries.iter().map(|e| e.id).collect::<Vec<_>>();
        if !read_data {
            return match self.read_pack_entries(&name) {
                Ok(own) => {
                    let own: HashSet<IndexEntry> =
                        own.iter().map(|e| IndexEntry::new(*pack, e)).collect();
                    let missing: Vec<Id> = entries
                        .iter()
                        .filter(|e| !own.contains(e))
                        .map(|e| e.id)
                        .collect();
                    if missing.is_empty() {
                        (vec![], vec![])
                    } else {
                        (
                            vec![format!(
                                "pack {}: {} indexed blob(s) are not in the pack",
                                path.display(),
                                missing.len()
                            )],
                            missing,
                        )
                    }
                }
                Err(e) => (vec![format!("pack {}: {e}", path.display())], all()),
            };
        }
        let bytes = match self.backend().get(&name, u64::MAX) {
            Ok(b) => {
                progress.bytes(b.len() as u64);
                b
            }
            Err(e) => return (vec![format!("pack {}: {e}", path.display())], all()),
        };
        let mut errs = Vec::new();
        match PackReader::new(&bytes) {
            Ok(r) => {
                if let Err(e) = r.verify(pack) {
                    errs.push(format!("pack {}: {e}", path.display()));
                }
            }
            Err(e) => errs.push(format!("pack {}: {e}", path.display())),
        }
        let mut bad = Vec::new();
        // Each stored blob is decoded once, then every member named in the
        // index is checked against its own id.
        for group in by_stored_blob(entries) {
            let first = group[0];
            let r = first.range();
            let max = if first.kind == haul_formats::BlobKind::Tree {
                MAX_TREE_BLOB_LEN
            } else {
                MAX_DATA_BLOB_LEN
            };
            let plain = bytes
                .get(r.start as usize..r.end as usize)
                .and_then(|b| decode_blob_unverified(b, max).ok());
            for e in group {
                let ok = plain
                    .as_ref()
                    .is_some_and(|(_, p)| bundle_member(p, e.inner, e.raw_len, &e.id).is_ok());
                if !ok {
                    bad.push(e.id);
                }
            }
        }
        if !bad.is_empty() {
            errs.push(format!(
                "pack {}: {} blob(s) fail verification",
                path.display(),
                bad.len()
            ));
        }
        (errs, bad)
    }
}

struct Walker<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    bad: &'a HashSet<Id>,
    /// Sound trees, so that a subtree many snapshots share is walked once
    /// (at most [`WALKED_TREES`] remembered).
    clean: &'a mut CappedIds,
    errors: Vec<String>,
    files: Vec<String>,
}

impl Walker<'_> {
    /// Walks a tree; returns whether everything below it is sound.
    fn tree(&mut self, id: &Id, prefix: &str) -> bool {
        if self.clean.contains(id) {
            return true;
        }
        if self.bad.contains(id) || !self.index.contains(id) {
            self.errors.push(format!(
                "tree {} of {:?} is missing or damaged",
                id.short(),
                display(prefix)
            ));
            self.files.push(display(prefix));
            return false;
        }
        let nodes: Vec<Node> = match self.repo.load_tree(self.index, id) {
            Ok(n) => n,
            Err(e) => {
                self.errors
                    .push(format!("tree {} of {:?}: {e}", id.short(), display(prefix)));
                self.files.push(display(prefix));
                return false;
            }
        };
        let mut ok = true;
        for n in &nodes {
            let p = if prefix.is_empty() {
                String::from_utf8_lossy(&n.name).into_owned()
            } else {
                format!("{prefix}/{}", String::from_utf8_lossy(&n.name))
            };
            match &n.kind {
                NodeKind::Dir { subtree } => ok &= self.tree(subtree, &p),
                NodeKind::File { chunks, .. } => {
                    let mut file_ok = true;
                    for c in chunks {
                        if !self.index.contains(c) {
                            self.errors
                                .push(format!("{p}: data blob {} is missing", c.short()));
                            file_ok = false;
                        } else if self.bad.contains(c) {
                            file_ok = false;
                        }
                    }
                    if !file_ok {
                        self.files.push(p);
                        ok = false;
                    }
                }
                _ => {}
            }
        }
        if ok {
            self.clean.insert(*id);
        }
        ok
    }
}

fn display(p: &str) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        p.to_string()
    }
}
