//! `snapshot check`: is every snapshot restorable? Structure always; with
//! `read_data`, every byte of every pack is read and every blob's hash
//! verified. Problems are collected, never fatal, and traced back to the
//! snapshots and files they affect.
//!
//! The walk of the snapshots does not look each file's chunks up: it sorts
//! their ids out of memory ([`IdSorter`]) and joins them against the index
//! merged in id order, sequential reads where lookups were cache misses;
//! only when that finds chunks missing does a second walk name the files.
use std::collections::{BTreeSet, HashSet};

use haul_formats::{
    bundle_member, decode_blob_unverified, merged_entries, Id, IndexEntry, Node, NodeKind,
    PackReader, RepoFile, MAX_DATA_BLOB_LEN, MAX_TREE_BLOB_LEN,
};
use rayon::prelude::*;
use serde::Serialize;

use super::batch::Batching;
use super::idset::{CappedIds, IdSorter, SortedIds, RUN_IDS, WALKED_TREES};
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
        self.check_with(opts, progress, Limits::default())
    }

    /// [`Repository::check`] within `limits`.
    fn check_with(
        &self,
        opts: CheckOptions,
        progress: &dyn Progress,
        limits: Limits,
    ) -> Result<CheckReport, Error> {
        let lock = self.read_lock()?;
        let mut rep = CheckReport {
            notices: lock.notices().to_vec(),
            ..Default::default()
        };

        // Index files, each on its own: one damaged file is reported, not
        // fatal, and the packs only it named are read from their trailers,
        // as every other command does. They are memory-mapped (local) and
        // looked up in place.
        let mut files = Vec::new();
        let mut damaged = 0;
        for (_, f) in self.each_index_file()? {
            match f {
                Ok(f) => files.push(f),
                Err(e) => {
                    damaged += 1;
                    rep.errors.push(e.to_string());
                }
            }
        }
        let mut index = MasterIndex::from_files(files);
        if damaged > 0 && self.recover_in_memory(&mut index)? > 0 {
            rep.notices.push(format!(
                "the packs named only by the {damaged} damaged index file(s) were read from their own trailers"
            ));
        }
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
                "{unindexed} pack(s) are in no index and their trailers cannot be read; `haul snapshot repair` drops what is lost"
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
        // (blob, pack) of every copy found missing or damaged.
        let mut bad_copies: HashSet<(Id, Id)> = HashSet::new();
        let packs: Vec<(Id, u64)> = per_pack.into_iter().collect();
        self.each_pack_batch(
            &index,
            &packs,
            Batching::default(),
            |_, _, e| e,
            |entries| {
                let results: Vec<(Id, Vec<String>, Vec<Id>)> = entries
                    .par_iter()
                    .map(|(pack, entries)| {
                        let (errs, bad) = self.check_pack(pack, entries, opts.read_data, progress);
                        progress.entry_done();
                        (*pack, errs, bad)
                    })
                    .collect();
                for (pack, errs, blobs) in results {
                    rep.errors.extend(errs);
                    bad_copies.extend(blobs.into_iter().map(|b| (b, pack)));
                }
                Ok(())
            },
        )?;
        // A blob is bad only if every copy of it is: reads fall back on a
        // sound one.
        let bad: HashSet<Id> = bad_copies
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| {
                index
                    .lookup_all(b)
                    .iter()
                    .all(|e| bad_copies.contains(&(*b, e.pack)))
            })
            .collect();
        drop(bad_copies);

        // Snapshots: every tree and chunk indexed, none of them bad. The
        // walk gathers the chunks' ids, and one pass over the sorted index
        // finds those it lacks; only then does a second walk name the
        // files that use them.
        let snap_ids = self.backend().list(RepoFile::Snapshot.dir()).map_err(|e| {
            Error::io(
                "listing snapshots",
                self.file_path(RepoFile::Snapshot.dir()),
                e,
            )
        })?;
        let mut ids = IdSorter::new(limits.run_ids);
        let mut gather = Chunks::Gather(&mut ids);
        let mut walk = self.walk(&index, &bad, &snap_ids, &mut gather);
        let missing = match gather {
            Chunks::Failed => None,
            _ => self.missing_chunks(&index, &ids.finish(), limits.missing),
        };
        match missing {
            Some(m) if m.is_empty() => {}
            Some(m) => walk = self.walk(&index, &bad, &snap_ids, &mut Chunks::Missing(&m)),
            None => walk = self.walk(&index, &bad, &snap_ids, &mut Chunks::Lookup),
        }
        rep.snapshots = walk.snapshots;
        rep.errors.extend(walk.errors);
        rep.affected_snapshots = walk.snaps.into_iter().collect();
        rep.affected_files = walk.files.into_iter().collect();
        rep.errors.dedup();
        rep.ok = rep.errors.is_empty();
        if !rep.ok {
            rep.notices.push(
                "`haul snapshot repair` rebuilds the index from the sound packs, so that the next create stores lost data again; `--snapshots` also rewrites damaged snapshots without their lost files".into(),
            );
        }
        Ok(rep)
    }

    /// Walks every snapshot's trees.
    fn walk(
        &self,
        index: &MasterIndex,
        bad: &HashSet<Id>,
        names: &[String],
        chunks: &mut Chunks<'_>,
    ) -> Walk {
        let mut clean = CappedIds::new(WALKED_TREES);
        let mut out = Walk::default();
        for name in names {
            let Some((RepoFile::Snapshot, id)) = RepoFile::parse_path(name) else {
                continue;
            };
            out.snapshots += 1;
            let snap = match self.load_snapshot(&id) {
                Ok(s) => s,
                Err(e) => {
                    out.errors.push(format!("snapshot {}: {e}", id.to_hex()));
                    out.snaps.insert(id.to_hex());
                    continue;
                }
            };
            let mut walker = Walker {
                repo: self,
                index,
                bad,
                clean: &mut clean,
                chunks,
                errors: Vec::new(),
                files: Vec::new(),
            };
            // Files are named as `snapshot ls` and `restore --path` name
            // them: for a snapshot of one path, from inside that path.
            let single = snap.snapshot.paths.len() == 1;
            walker.tree(&snap.snapshot.tree, (!single).then_some(""));
            if !walker.errors.is_empty() || !walker.files.is_empty() {
                out.snaps.insert(id.to_hex());
            }
            out.errors.extend(
                walker
                    .errors
                    .into_iter()
                    .map(|e| format!("snapshot {}: {e}", id.short())),
            );
            out.files
                .extend(walker.files.into_iter().map(|p| AffectedFile {
                    snapshot: id.to_hex(),
                    path: p,
                }));
        }
        out
    }

    /// The ids of `used` that no index file holds, from one pass over the
    /// index merged in id order; `None` when that pass cannot tell (an
    /// index file out of order or a record damaged, a temporary file
    /// unreadable) or more than `cap` are missing: the walk then looks
    /// each chunk up.
    fn missing_chunks(
        &self,
        index: &MasterIndex,
        used: &SortedIds,
        cap: usize,
    ) -> Option<HashSet<Id>> {
        let readers: Vec<_> = index.files.iter().map(|f| f.reader()).collect();
        let mut entries = merged_entries(&readers).ok()?;
        let (mut head, mut done) = (None, false);
        let mut missing = HashSet::new();
        for id in used.cursor() {
            let id = id.ok()?;
            while !done && head.is_none_or(|h| h < id) {
                match entries.next() {
                    Some(m) => head = Some(m.ok()?.entry.id),
                    None => (head, done) = (None, true),
                }
            }
            if head != Some(id) {
                if missing.len() == cap {
                    return None;
                }
                missing.insert(id);
            }
        }
        Some(missing)
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
                    // The trailer is in stored order, (offset, inner)
                    // ascending (equal only around an empty member): the
                    // index's entries are put in that order and the two
                    // lists walked together.
                    let mut order: Vec<(u32, u32, usize)> = entries
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (e.offset, e.inner, i))
                        .collect();
                    order.sort_unstable();
                    let key = |o: &haul_formats::PackEntry| (o.offset, o.inner);
                    let mut at = 0;
                    let mut missing = Vec::new();
                    for (offset, inner, i) in order {
                        while own.get(at).is_some_and(|o| key(o) < (offset, inner)) {
                            at += 1;
                        }
                        let e = &entries[i];
                        let held = own[at..]
                            .iter()
                            .take_while(|o| key(o) == (offset, inner))
                            .any(|o| IndexEntry::new(*pack, o) == *e);
                        if !held {
                            missing.push(e.id);
                        }
                    }
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

struct Walker<'a, 'b> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    bad: &'a HashSet<Id>,
    /// Sound trees, so that a subtree many snapshots share is walked once
    /// (at most [`WALKED_TREES`] remembered).
    clean: &'a mut CappedIds,
    chunks: &'a mut Chunks<'b>,
    errors: Vec<String>,
    files: Vec<String>,
}

impl Walker<'_, '_> {
    /// Walks a tree; returns whether everything below it is sound.
    /// `prefix`: the tree's path; `None` for the root of a snapshot of one
    /// path, whose one node is that path and is named as the root.
    fn tree(&mut self, id: &Id, prefix: Option<&str>) -> bool {
        /// A tree being walked: its id, its path, the nodes not yet seen,
        /// and whether everything seen so far is sound.
        struct Frame {
            id: Id,
            prefix: Option<String>,
            nodes: std::vec::IntoIter<Node>,
            ok: bool,
        }
        // From a stack of the trees being walked, not by recursion: a
        // chain of directories of any depth.
        let mut stack = match self.enter(id, prefix) {
            Ok(nodes) => vec![Frame {
                id: *id,
                prefix: prefix.map(str::to_string),
                nodes: nodes.into_iter(),
                ok: true,
            }],
            Err(ok) => return ok,
        };
        loop {
            let Some(top) = stack.last_mut() else {
                unreachable!("the loop returns when the root tree is done");
            };
            let Some(n) = top.nodes.next() else {
                let done = stack.pop().expect("a frame");
                if done.ok {
                    self.clean.insert(done.id);
                }
                match stack.last_mut() {
                    Some(parent) => parent.ok &= done.ok,
                    None => return done.ok,
                }
                continue;
            };
            // A path is spelled out only for a directory walked into or a
            // file with something to report, not for every sound file.
            let path = || match top.prefix.as_deref() {
                // The root of a one-path snapshot: a directory's contents
                // are named from inside it, a single file by its name.
                None if matches!(n.kind, NodeKind::Dir { .. }) => String::new(),
                None | Some("") => String::from_utf8_lossy(&n.name).into_owned(),
                Some(p) => format!("{p}/{}", String::from_utf8_lossy(&n.name)),
            };
            match &n.kind {
                NodeKind::Dir { subtree } => {
                    let p = path();
                    match self.enter(subtree, Some(&p)) {
                        Ok(nodes) => stack.push(Frame {
                            id: *subtree,
                            prefix: Some(p),
                            nodes: nodes.into_iter(),
                            ok: true,
                        }),
                        Err(ok) => stack.last_mut().expect("a frame").ok &= ok,
                    }
                }
                NodeKind::File { chunks, .. } => {
                    let mut file_ok = true;
                    for c in chunks {
                        if self.chunks.missing(c, self.index) {
                            self.errors.push(format!(
                                "{}: data blob {} is missing",
                                display(&path()),
                                c.short()
                            ));
                            file_ok = false;
                        } else if !self.bad.is_empty() && self.bad.contains(c) {
                            file_ok = false;
                        }
                    }
                    if !file_ok {
                        self.files.push(display(&path()));
                        top.ok = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// Starts walking tree `id` (named `prefix`): its nodes, or, if it need
    /// not or cannot be walked, whether it is sound (errors recorded).
    fn enter(&mut self, id: &Id, prefix: Option<&str>) -> Result<Vec<Node>, bool> {
        let shown = prefix.unwrap_or_default();
        if self.clean.contains(id) {
            return Err(true);
        }
        if self.index.lookup(id).is_none() || self.bad.contains(id) {
            self.errors.push(format!(
                "tree {} of {:?} is missing or damaged",
                id.short(),
                display(shown)
            ));
            self.files.push(display(shown));
            return Err(false);
        }
        match self.repo.load_tree(self.index, id) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.errors
                    .push(format!("tree {} of {:?}: {e}", id.short(), display(shown)));
                self.files.push(display(shown));
                Err(false)
            }
        }
    }
}

/// How a walk tells whether a file's chunk is indexed.
enum Chunks<'a> {
    /// It does not yet: it gathers the ids for [`Repository::missing_chunks`].
    Gather(&'a mut IdSorter),
    /// Gathering failed (a temporary file could not be written).
    Failed,
    /// The ids found missing.
    Missing(&'a HashSet<Id>),
    /// An index lookup for each.
    Lookup,
}

impl Chunks<'_> {
    /// Whether `id` is known to be missing (never, while gathering).
    fn missing(&mut self, id: &Id, index: &MasterIndex) -> bool {
        match self {
            Chunks::Gather(ids) => {
                if ids.push(*id).is_err() {
                    *self = Chunks::Failed;
                }
                false
            }
            Chunks::Failed => false,
            Chunks::Missing(m) => m.contains(id),
            Chunks::Lookup => !index.contains(id),
        }
    }
}

/// What a walk of every snapshot found.
#[derive(Default)]
struct Walk {
    snapshots: u64,
    errors: Vec<String>,
    snaps: BTreeSet<String>,
    files: BTreeSet<AffectedFile>,
}

/// What check holds in memory at most.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Chunk ids before they are sorted out to a temporary file.
    run_ids: usize,
    /// Missing chunk ids held to name the files that use them; past this
    /// many the second walk looks every chunk up instead.
    missing: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            run_ids: RUN_IDS,
            missing: MISSING_IDS,
        }
    }
}

/// See [`Limits::missing`]: about 12 MiB of ids.
const MISSING_IDS: usize = 1 << 18;

fn display(p: &str) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::progress::NoProgress;
    use crate::repo::{CreateOptions, InitOptions};
    use haul_formats::BlobKind;

    /// Two snapshots of a tree of small and chunked files in a few
    /// directories, then the index written anew as `edit` leaves it.
    fn repo_with_index(dir: &Path, edit: impl FnOnce(&mut Vec<IndexEntry>)) -> Repository {
        let src = dir.join("src");
        let repo = Repository::init(&dir.join("repo"), &InitOptions::default()).unwrap();
        for round in 0..2u32 {
            for i in 0..120u32 {
                let d = src.join(format!("d{}", i % 5));
                std::fs::create_dir_all(&d).unwrap();
                let len = if i % 30 == 0 {
                    600_000
                } else {
                    100 + i as usize
                };
                let v = if i % 3 == 0 { round } else { 0 };
                let mut data = vec![0u8; len];
                let mut h = blake3::Hasher::new();
                h.update(&[i.to_le_bytes(), v.to_le_bytes()].concat());
                h.finalize_xof().fill(&mut data);
                std::fs::write(d.join(format!("f{i}")), data).unwrap();
            }
            repo.create_snapshot(
                &CreateOptions {
                    paths: vec![src.clone()],
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
        }
        let index = repo.load_index().unwrap();
        let mut entries = Vec::new();
        index.each_entry(|_, _, e| entries.push(e)).unwrap();
        edit(&mut entries);
        let names: Vec<String> = repo.backend().list(RepoFile::Index.dir()).unwrap();
        repo.write_index(entries).unwrap();
        for name in names {
            repo.backend().remove(&name).unwrap();
        }
        repo
    }

    /// [`repo_with_index`] whose index lacks every `nth` data blob (all of
    /// them still in their packs).
    fn repo_missing_every(dir: &Path, nth: usize) -> Repository {
        repo_with_index(dir, |entries| {
            let mut n = 0;
            entries.retain(|e| {
                n += usize::from(e.kind == BlobKind::Data);
                nth == 0 || e.kind != BlobKind::Data || n % nth != 0
            });
        })
    }

    fn outcome(r: &CheckReport) -> (bool, Vec<String>, Vec<String>, Vec<AffectedFile>) {
        (
            r.ok,
            r.errors.clone(),
            r.affected_snapshots.clone(),
            r.affected_files.clone(),
        )
    }

    /// Chunks joined against the index (their ids sorted in memory or out
    /// through temporary files) and chunks looked up one by one find the
    /// same problems and name the same files.
    #[test]
    fn joined_and_looked_up_chunks_give_one_report() {
        for nth in [0, 7] {
            let t = tempfile::tempdir().unwrap();
            let repo = repo_missing_every(t.path(), nth);
            let opts = CheckOptions::default();
            let joined = repo.check(opts, &NoProgress).unwrap();
            let spilled = Limits {
                run_ids: 3,
                ..Default::default()
            };
            // No room for a missing id: every chunk looked up.
            let looked_up = Limits {
                run_ids: 3,
                missing: 0,
            };
            for limits in [spilled, looked_up] {
                let r = repo.check_with(opts, &NoProgress, limits).unwrap();
                assert_eq!(outcome(&r), outcome(&joined), "every {nth}th, {limits:?}");
            }
            match 120usize.checked_div(nth) {
                None => assert!(joined.ok, "{:?}", joined.errors),
                Some(least) => {
                    assert!(!joined.ok);
                    assert_eq!(joined.affected_snapshots.len(), 2);
                    assert!(joined.affected_files.len() >= least, "{joined:?}");
                    assert!(joined.errors.iter().all(|e| e.contains("is missing")));
                }
            }
        }
    }

    /// An index entry that does not match its pack's own entry (another
    /// length or place) is reported, by pack and count, without reading
    /// data, and the files that use it are named.
    #[test]
    fn index_entries_a_pack_does_not_hold_are_found_without_reading_data() {
        let t = tempfile::tempdir().unwrap();
        let mut changed = Vec::new();
        let repo = repo_with_index(t.path(), |entries| {
            for (i, e) in entries.iter_mut().enumerate() {
                if e.kind == BlobKind::Data && i % 9 == 0 {
                    match i % 2 {
                        0 => e.raw_len += 1,
                        _ => e.inner += 1,
                    }
                    changed.push(e.id);
                }
            }
        });
        let r = repo.check(CheckOptions::default(), &NoProgress).unwrap();
        assert!(!r.ok);
        let counted: usize = r
            .errors
            .iter()
            .filter_map(|e| {
                e.split(": ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        assert_eq!(counted, changed.len(), "{:?}", r.errors);
        assert!(r.errors.iter().all(|e| e.contains("are not in the pack")));
        assert!(r.affected_files.len() >= changed.len() / 2, "{r:?}");
    }

    /// A directory whose tree the index lacks is reported once, by its
    /// path, in the one snapshot that has that tree; every other file of
    /// both snapshots is checked as usual (so a chunk missing elsewhere is
    /// still found), joined or looked up alike.
    #[test]
    fn a_missing_tree_names_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let (mut gone, mut latest) = (Id::default(), String::new());
        let mut chunk = Id::default();
        let repo = repo_with_index(t.path(), |entries| {
            let repo = Repository::open(&t.path().join("repo")).unwrap();
            let index = repo.load_index().unwrap();
            let snap = repo.find_snapshot("latest").unwrap();
            latest = snap.id.to_hex();
            let node = |path: &str| {
                let tree = &snap.snapshot.tree;
                repo.resolve_path(&index, tree, true, Path::new(path))
                    .unwrap()
                    .unwrap()
                    .kind
            };
            // d1 holds f6, which the second create changed: its tree is
            // the latest snapshot's alone.
            let NodeKind::Dir { subtree } = node("d1") else {
                panic!("d1 is not a directory")
            };
            gone = subtree;
            // f2 is the same in both snapshots.
            let NodeKind::File { chunks, .. } = node("d2/f2") else {
                panic!("d2/f2 is not a file")
            };
            chunk = chunks[0];
            entries.retain(|e| e.id != gone && e.id != chunk);
        });
        let joined = repo.check(CheckOptions::default(), &NoProgress).unwrap();
        let looked_up = Limits {
            run_ids: 3,
            missing: 0,
        };
        let r = repo.check_with(CheckOptions::default(), &NoProgress, looked_up);
        assert_eq!(outcome(&r.unwrap()), outcome(&joined));
        assert!(!joined.ok);
        let tree_errors: Vec<&String> = joined
            .errors
            .iter()
            .filter(|e| e.contains("is missing or damaged"))
            .collect();
        assert_eq!(tree_errors.len(), 1, "{:?}", joined.errors);
        assert!(tree_errors[0].contains(&gone.short()), "{tree_errors:?}");
        assert!(tree_errors[0].contains("\"d1\""), "{tree_errors:?}");
        let missing = format!("d2/f2: data blob {} is missing", chunk.short());
        assert_eq!(
            joined
                .errors
                .iter()
                .filter(|e| e.ends_with(&missing))
                .count(),
            2,
            "{:?}",
            joined.errors
        );
        assert_eq!(joined.affected_snapshots.len(), 2);
        let mut named: Vec<(bool, &str)> = joined
            .affected_files
            .iter()
            .map(|f| (f.snapshot == latest, f.path.as_str()))
            .collect();
        named.sort();
        assert_eq!(named, [(false, "d2/f2"), (true, "d1"), (true, "d2/f2")]);
    }

    /// An index file out of order (checksum and name correct, two records
    /// swapped) is reported and left out, and its packs are read from their
    /// own trailers, so no file is damaged: joined or looked up, one report.
    #[test]
    fn an_index_out_of_order_is_reported_and_its_packs_recovered() {
        use haul_formats::{INDEX_FOOTER_LEN, INDEX_RECORD_LEN};
        let t = tempfile::tempdir().unwrap();
        let repo = repo_missing_every(t.path(), 0);
        let names = repo.backend().list(RepoFile::Index.dir()).unwrap();
        assert_eq!(names.len(), 1);
        let mut bytes = repo.backend().get(&names[0], u64::MAX).unwrap();
        let n = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
        let records = bytes.len() - INDEX_FOOTER_LEN - n * INDEX_RECORD_LEN;
        // Swap the middle two records.
        let a = records + (n / 2 - 1) * INDEX_RECORD_LEN;
        let (first, second) = bytes[a..a + 2 * INDEX_RECORD_LEN].split_at_mut(INDEX_RECORD_LEN);
        first.swap_with_slice(second);
        let end = bytes.len() - INDEX_FOOTER_LEN;
        let sum = *blake3::hash(&bytes[..end]).as_bytes();
        bytes[end..].copy_from_slice(&sum);
        repo.backend().remove(&names[0]).unwrap();
        let name = RepoFile::Index.path(&Id::hash(&bytes));
        repo.backend().put(&name, &bytes).unwrap();
        let opts = CheckOptions::default();
        let got = repo.check(opts, &NoProgress).unwrap();
        assert!(!got.ok);
        assert!(got.errors[0].contains("out of order"), "{:?}", got.errors);
        assert_eq!(got.errors.len(), 1, "{:?}", got.errors);
        assert!(got.affected_files.is_empty(), "{got:?}");
        assert!(got.notices.iter().any(|n| n.contains("trailers")));
        let looked_up = Limits {
            missing: 0,
            ..Default::default()
        };
        let want = repo.check_with(opts, &NoProgress, looked_up).unwrap();
        assert_eq!(outcome(&got), outcome(&want));
    }
}
