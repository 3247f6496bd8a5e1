//! The destination writer: everything that writes into a local tree, for
//! every source (a local tree for `copy`, a snapshot for `restore`, and
//! later archives and the wire). Its guarantees are those of
//! ARCHITECTURE.md's invariants 1 to 5:
//! - every write goes through a directory handle and a single name (`*at`
//!   syscalls, `O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), so a symlink already in
//!   the destination is replaced, never written through;
//! - new content is written where nobody sees it and named only once its
//!   data and metadata are complete: a new regular file is an unnamed
//!   `O_TMPFILE` inode linked into place, anything else, or a file that
//!   replaces another, goes to a temporary name and is renamed;
//! - metadata in a fixed order (owner, xattrs, mode, times, chattr flags),
//!   a directory's after its contents, and only what differs is written;
//! - every entry's outcome is tallied and reaches the caller's summary.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::idmap::IdMap;
use crate::meta::{FileKind, XattrPolicy, Xattrs};
use crate::progress::{Action, Progress};
use crate::sys;

pub(crate) mod bypath;
pub(crate) mod entry;
pub(crate) mod leaf;
mod links;
mod meta;
mod place;
mod remove;
#[cfg(test)]
mod tests;

pub(crate) use links::Link;
pub(crate) use meta::{has_default_acl, Target};
pub(crate) use place::{
    check_name, is_tmp_name, name_of, open_or_create_root, split_parent, tmp_name,
};

/// At most this many failed (and, separately, partial) entries are kept with
/// their reasons; the rest are only counted, so memory stays bounded.
pub(crate) const MAX_ISSUES: usize = 100_000;

/// What the destination writer keeps of each entry, and how it writes.
#[derive(Debug)]
pub struct WriteOptions {
    /// Report what would change and touch nothing.
    pub dry_run: bool,
    /// Preserve numeric owner and group.
    pub owner: bool,
    /// Preserve extended attributes.
    pub xattrs: bool,
    /// Preserve POSIX ACLs (the `system.posix_acl_*` attributes).
    pub acls: bool,
    /// Owner remapping.
    pub ids: IdMap,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dry_run: false,
            owner: true,
            xattrs: true,
            acls: true,
            ids: IdMap::new(),
        }
    }
}

/// Writes entries into a destination tree (see the module docs), and
/// tallies what it did.
pub(crate) struct DestWriter<'a> {
    pub(crate) opts: &'a WriteOptions,
    /// A non-directory may replace a directory with contents, which is
    /// then removed and counted as deleted.
    pub(crate) delete: bool,
    /// Entries this filter excludes are never removed.
    pub(crate) protect: &'a Filter,
    /// Report every change through [`Progress::change`].
    pub(crate) record_changes: bool,
    pub(crate) progress: &'a dyn Progress,
    pub(crate) policy: XattrPolicy,
    pub(crate) is_root: bool,
    c: Counters,
    issues: Mutex<Issues>,
    links: Mutex<HashMap<entry::LinkKey, Link>>,
    /// Whether new files can be `O_TMPFILE` inodes linked into place:
    /// `TMPFILE_UNKNOWN` until the first one is tried.
    tmpfile: AtomicU8,
    /// The destination root, for hardlinks whose first name is elsewhere.
    pub(crate) dst_root: Option<File>,
}

/// Entries seen in SRC, by kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceCounts {
    /// Regular files (the first name of each hardlinked inode included).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Further names of an inode already seen.
    pub hardlinks: u64,
    /// Fifos, sockets and devices.
    pub specials: u64,
    /// Bytes of regular-file content (apparent size).
    pub bytes: u64,
}

/// One entry that failed or was not fully preserved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryIssue {
    /// Path relative to the root of the copy.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// What went wrong, with the OS's reason.
    pub reason: String,
}

fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The outcome of a copy. Every entry's fate is in here: nothing is dropped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CopySummary {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Wall time of the run.
    pub seconds: f64,
    /// What SRC holds.
    pub source: SourceCounts,
    /// Entries created in DST.
    pub created: u64,
    /// Entries whose content was rewritten or whose type changed.
    pub updated: u64,
    /// Entries whose metadata alone was fixed in place.
    pub metadata_only: u64,
    /// Entries already identical.
    pub unchanged: u64,
    /// Entries removed from DST.
    pub deleted: u64,
    /// Bytes of file data written.
    pub bytes_copied: u64,
    /// Entries that could not be copied.
    pub failed: Vec<EntryIssue>,
    /// Entries copied, but with some metadata not preserved.
    pub partial: Vec<EntryIssue>,
    /// Differences `--verify` found.
    pub verify_mismatches: Vec<EntryIssue>,
    /// Failed entries beyond the recorded list.
    pub failed_not_listed: u64,
    /// Partial entries beyond the recorded list.
    pub partial_not_listed: u64,
    /// Things the user should still hear about that do not change the exit
    /// code: a file that grew while it was read, a setuid file given to root
    /// by a map, a stale repository lock a restore broke (named by the
    /// repository's path).
    pub notices: Vec<EntryIssue>,
    /// Notices beyond the recorded list.
    pub notices_not_listed: u64,
}

impl CopySummary {
    /// Total failed entries.
    pub fn failed_count(&self) -> u64 {
        self.failed.len() as u64 + self.failed_not_listed
    }

    /// Total partially preserved entries.
    pub fn partial_count(&self) -> u64 {
        self.partial.len() as u64 + self.partial_not_listed
    }
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    specials: AtomicU64,
    bytes: AtomicU64,
    created: AtomicU64,
    updated: AtomicU64,
    metadata: AtomicU64,
    unchanged: AtomicU64,
    deleted: AtomicU64,
    copied: AtomicU64,
}

/// A list of entry issues capped at [`MAX_ISSUES`], the rest counted: so
/// memory stays bounded and no outcome is lost.
#[derive(Default)]
pub(crate) struct IssueTally {
    listed: Vec<EntryIssue>,
    not_listed: u64,
}

impl IssueTally {
    pub(crate) fn push(&mut self, rel: &Path, reason: String) {
        if self.listed.len() < MAX_ISSUES {
            self.listed.push(EntryIssue {
                path: rel.to_path_buf(),
                reason,
            });
        } else {
            self.not_listed += 1;
        }
    }

    /// The listed issues by path, and how many more there were.
    pub(crate) fn into_sorted(mut self) -> (Vec<EntryIssue>, u64) {
        self.listed.sort_by(|a, b| a.path.cmp(&b.path));
        (self.listed, self.not_listed)
    }
}

#[derive(Default)]
struct Issues {
    failed: IssueTally,
    partial: IssueTally,
    notices: IssueTally,
}

/// Whether an entry was just created by this run, and if so whether its
/// attributes are known (`None`: read them back).
#[derive(Clone, Copy)]
pub(crate) enum Fresh<'a> {
    No,
    Yes(Option<&'a Xattrs>),
}

pub(crate) enum Outcome {
    Created,
    Updated,
    Metadata,
    Unchanged,
}

impl<'a> DestWriter<'a> {
    pub(crate) fn new(
        opts: &'a WriteOptions,
        delete: bool,
        protect: &'a Filter,
        record_changes: bool,
        progress: &'a dyn Progress,
    ) -> DestWriter<'a> {
        DestWriter {
            opts,
            delete,
            protect,
            record_changes,
            progress,
            policy: XattrPolicy {
                xattrs: opts.xattrs,
                acls: opts.acls,
            },
            is_root: sys::euid() == 0,
            c: Counters::default(),
            issues: Mutex::default(),
            links: Mutex::default(),
            tmpfile: AtomicU8::new(place::TMPFILE_UNKNOWN),
            dst_root: None,
        }
    }

    pub(crate) fn summary(&self, start: Instant) -> CopySummary {
        let c = &self.c;
        let issues = std::mem::take(&mut *self.issues.lock().unwrap_or_else(|e| e.into_inner()));
        let (failed, failed_not_listed) = issues.failed.into_sorted();
        let (partial, partial_not_listed) = issues.partial.into_sorted();
        let (notices, notices_not_listed) = issues.notices.into_sorted();
        CopySummary {
            dry_run: self.opts.dry_run,
            seconds: start.elapsed().as_secs_f64(),
            source: SourceCounts {
                files: c.files.load(Relaxed),
                dirs: c.dirs.load(Relaxed),
                symlinks: c.symlinks.load(Relaxed),
                hardlinks: c.hardlinks.load(Relaxed),
                specials: c.specials.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
            },
            created: c.created.load(Relaxed),
            updated: c.updated.load(Relaxed),
            metadata_only: c.metadata.load(Relaxed),
            unchanged: c.unchanged.load(Relaxed),
            deleted: c.deleted.load(Relaxed),
            bytes_copied: c.copied.load(Relaxed),
            failed,
            partial,
            verify_mismatches: Vec::new(),
            failed_not_listed,
            partial_not_listed,
            notices,
            notices_not_listed,
        }
    }

    fn issues(&self) -> std::sync::MutexGuard<'_, Issues> {
        self.issues.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn fail(&self, rel: &Path, e: impl std::fmt::Display) {
        self.issues().failed.push(rel, e.to_string());
    }

    /// Records a notice (see [`CopySummary::notices`]).
    pub(crate) fn notice(&self, rel: &Path, msg: impl std::fmt::Display) {
        self.issues().notices.push(rel, msg.to_string());
    }

    pub(crate) fn partial(&self, rel: &Path, reasons: Vec<String>) {
        if !reasons.is_empty() {
            self.issues().partial.push(rel, reasons.join("; "));
        }
    }

    pub(crate) fn record(&self, o: Outcome, rel: &Path) {
        let (counter, action) = match o {
            Outcome::Created => (&self.c.created, Some(Action::Create)),
            Outcome::Updated => (&self.c.updated, Some(Action::Update)),
            Outcome::Metadata => (&self.c.metadata, Some(Action::Metadata)),
            Outcome::Unchanged => (&self.c.unchanged, None),
        };
        counter.fetch_add(1, Relaxed);
        if let (Some(a), true) = (action, self.record_changes) {
            self.progress.change(a, rel);
        }
    }

    /// Counts (and, with `-v`, lists) one removed entry, if `report`.
    pub(crate) fn deleted(&self, report: bool, rel: &Path) {
        if report {
            self.c.deleted.fetch_add(1, Relaxed);
            if self.record_changes {
                self.progress.change(Action::Delete, rel);
            }
        }
    }

    /// Warns when a map or `--chown` hands a setuid file that root does
    /// not own to root: it will run as root on the destination.
    pub(crate) fn check_owner_map(&self, st: &entry::Entry, rel: &Path) {
        if self.opts.owner
            && st.kind() == FileKind::File
            && st.perm() & 0o4000 != 0
            && st.uid != 0
            && self.opts.ids.uid(st.uid) == 0
        {
            self.notice(
                rel,
                format!(
                    "setuid file of uid {} is given to root by the owner map",
                    st.uid
                ),
            );
        }
    }

    pub(crate) fn count_source(&self, st: &entry::Entry, follower: bool) {
        let c = &self.c;
        match st.kind() {
            _ if follower => c.hardlinks.fetch_add(1, Relaxed),
            FileKind::File => {
                c.bytes.fetch_add(st.size, Relaxed);
                c.files.fetch_add(1, Relaxed)
            }
            FileKind::Dir => c.dirs.fetch_add(1, Relaxed),
            FileKind::Symlink => c.symlinks.fetch_add(1, Relaxed),
            _ => c.specials.fetch_add(1, Relaxed),
        };
    }

    pub(crate) fn copied(&self, n: u64) {
        self.c.copied.fetch_add(n, Relaxed);
        self.progress.bytes(n);
    }
}
