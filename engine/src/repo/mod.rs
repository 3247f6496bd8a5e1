//! Snapshot repositories: content-addressed, deduplicated, compressed.
//!
//! The on-disk structures are defined (and pinned by golden vectors) in
//! `haul-formats`; this module decides how they are written and read:
//! - every file is written whole, under a temporary name, fsynced and
//!   renamed ([`backend`]), so a crash leaves each file complete or absent;
//! - a snapshot record is written last, after the packs and index it needs
//!   are durable, so a recorded snapshot is always restorable;
//! - packs written by an interrupted run are found by the next run (they are
//!   self-describing) and reused.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haul_formats::{
    Id, RepoConfig, RepoFile, Snapshot, Timestamp, CONFIG_FILE, DATA_DIR, INDEX_DIR, KEYS_DIR,
    LOCKS_DIR, MAX_CONFIG_LEN, MAX_SNAPSHOT_LEN, SNAPSHOTS_DIR,
};

use crate::error::Error;

pub(crate) mod backend;
mod batch;
mod blocks;
mod check;
mod create;
mod export;
mod idset;
mod import;
mod index;
mod lock;
mod packer;
mod prune;
mod read;
mod repair;
mod restore;
pub(crate) mod retention;
mod writer;

pub use check::{CheckOptions, CheckReport};
pub use create::{CreateOptions, CreateSummary};
pub use import::ImportOptions;
pub use lock::LockGuard;
pub use prune::PruneSummary;
pub use read::{DiffChange, LsEntry};
pub use repair::{RepairOptions, RepairSummary, RepairedSnapshot};
pub use restore::RestoreOptions;
pub use retention::{Bucket, KeepPolicy, RetentionError};

use backend::Backend;
pub use backend::Location;

/// A snapshot record together with its id.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// The record's id (blake3 of its bytes).
    pub id: Id,
    /// The record.
    pub snapshot: Snapshot,
}

/// A snapshot record that cannot be read: its bytes do not hash to its
/// name, or do not decode, or the file cannot be read.
#[derive(Clone, Debug)]
pub struct DamagedSnapshot {
    /// The record's id (its file name).
    pub id: Id,
    /// Why it cannot be read.
    pub error: String,
    /// Whether its bytes are damaged (not merely unreadable just now).
    pub corrupt: bool,
}

/// Where the engine sends warnings (things wrong that a run works around).
type Warn = Box<dyn Fn(&str) + Send + Sync>;

/// Options for a new repository.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// zstd level for new blobs (None: the format's default, 3).
    pub zstd_level: Option<i32>,
    /// Size pack files aim for, in bytes (None: the format's default, 32 MiB).
    pub pack_size: Option<u32>,
}

/// An open repository.
pub struct Repository {
    location: PathBuf,
    backend: Arc<dyn Backend>,
    config: RepoConfig,
    blocks: blocks::BlockCache,
    /// False when opened for read-only access without locks (`--no-lock`).
    locking: bool,
    warn: Warn,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location)
            .finish()
    }
}

fn random_id() -> Id {
    // Uniqueness, not secrecy: time, pid, a counter and the stack address.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    let local = 0u8;
    h.update(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    h.update(hostname().as_bytes());
    Id::from_bytes(*h.finalize().as_bytes())
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn username() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::geteuid().to_string())
}

impl Repository {
    /// Creates a repository at `path`. Creation is atomic: the directory is
    /// assembled under a temporary name beside `path` and renamed into place,
    /// so `path` is either a complete repository or absent. An existing empty
    /// directory is replaced; a non-empty one is an error.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Repository, Error> {
        let location = Location::parse(path)?;
        let mut config = RepoConfig::new(random_id(), Timestamp::now());
        if let Some(l) = opts.zstd_level {
            config.zstd_level = l;
        }
        if let Some(n) = opts.pack_size {
            config.pack_size = n;
        }
        config
            .validate()
            .map_err(|e| Error::corrupt("checking config", path, e))?;
        let bytes = config
            .to_json()
            .map_err(|e| Error::corrupt("encoding config", path, e))?;
        let dirs = [DATA_DIR, INDEX_DIR, SNAPSHOTS_DIR, LOCKS_DIR, KEYS_DIR];
        location
            .backend()
            .create(&dirs, &[(CONFIG_FILE, &bytes)])
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::invalid(path, "already exists and is not empty")
                }
                _ => Error::io("creating repository", path, e),
            })?;
        Repository::open(path)
    }

    /// Opens an existing repository, refusing a format version it does not know.
    pub fn open(path: &Path) -> Result<Repository, Error> {
        let backend = Location::parse(path)?.backend();
        let bytes =
            backend
                .get(CONFIG_FILE, MAX_CONFIG_LEN as u64)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::io("opening repository", path, std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no repository here (no config file); create one with `haul repo init`",
                ))
                    } else {
                        Error::io("reading config", path.join(CONFIG_FILE), e)
                    }
                })?;
        let config = RepoConfig::from_json(&bytes)
            .map_err(|e| Error::corrupt("reading config", path.join(CONFIG_FILE), e))?;
        Ok(Repository {
            location: path.to_path_buf(),
            backend,
            config,
            blocks: blocks::BlockCache::new(),
            locking: true,
            warn: Box::new(|_| {}),
        })
    }

    /// This repository without locks, for reading one this user cannot
    /// write to (another user's files, a read-only mount): restore and check
    /// then take no lock, and what writes (create, forget, prune) refuses to
    /// run. Nothing then stops a prune elsewhere from removing data while
    /// it is read.
    pub fn without_locks(mut self) -> Repository {
        self.locking = false;
        self
    }

    /// Opens the repository at `path`, creating it first if nothing is there.
    /// Returns whether it was created.
    pub fn open_or_init(path: &Path) -> Result<(Repository, bool), Error> {
        match Location::parse(path)?.backend().exists(CONFIG_FILE) {
            Ok(true) => Ok((Repository::open(path)?, false)),
            Ok(false) => Ok((Repository::init(path, &InitOptions::default())?, true)),
            Err(e) => Err(Error::io("opening repository", path, e)),
        }
    }

    /// Sends the warnings of later calls (a damaged index file or snapshot
    /// record passed over, a pack gone) to `f`; by default they are dropped.
    pub fn on_warning(&mut self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.warn = Box::new(f);
    }

    pub(crate) fn warn(&self, msg: &str) {
        (self.warn)(msg)
    }

    /// Where the repository is.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The repository's configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// A path naming repository file `name`, for messages.
    pub(crate) fn file_path(&self, name: &str) -> PathBuf {
        self.location.join(name)
    }

    /// Writes a snapshot record (as the last step of create, upload and
    /// repair: everything it names is durable by then) and returns its id.
    pub(crate) fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id, Error> {
        let (id, json) = snapshot
            .to_json()
            .map_err(|e| Error::corrupt("encoding snapshot", self.location(), e))?;
        let name = RepoFile::Snapshot.path(&id);
        self.backend()
            .put(&name, &json)
            .map_err(|e| Error::io("writing snapshot", self.file_path(&name), e))?;
        Ok(id)
    }

    fn list_ids(&self, kind: RepoFile) -> Result<Vec<Id>, Error> {
        let names = self
            .backend
            .list(kind.dir())
            .map_err(|e| Error::io("listing", self.file_path(kind.dir()), e))?;
        Ok(names
            .iter()
            .filter_map(|n| {
                RepoFile::parse_path(n)
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, id)| id)
            })
            .collect())
    }

    /// Every snapshot that can be read, oldest first; a damaged record is
    /// passed over with a warning (see [`Repository::snapshot_records`]).
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let (sound, damaged) = self.snapshot_records()?;
        for d in &damaged {
            self.warn(&format!(
                "skipping damaged snapshot {}: {}",
                d.id.to_hex(),
                d.error
            ));
        }
        Ok(sound)
    }

    /// Every snapshot record: those read, oldest first, and those that
    /// cannot be (a record removed between the listing and the read is in
    /// neither).
    pub fn snapshot_records(&self) -> Result<(Vec<SnapshotInfo>, Vec<DamagedSnapshot>), Error> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for id in self.list_ids(RepoFile::Snapshot)? {
            match self.load_snapshot(&id) {
                Ok(s) => out.push(s),
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
                Err(e) => damaged.push(DamagedSnapshot {
                    id,
                    corrupt: e.kind() == crate::error::ErrorKind::Corrupt,
                    error: e.to_string(),
                }),
            }
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        damaged.sort_by_key(|d| d.id);
        Ok((out, damaged))
    }

    fn load_snapshot(&self, id: &Id) -> Result<SnapshotInfo, Error> {
        let name = RepoFile::Snapshot.path(id);
        let bytes = self
            .backend
            .get(&name, MAX_SNAPSHOT_LEN as u64)
            .map_err(|e| Error::io("reading snapshot", self.file_path(&name), e))?;
        let snapshot = Snapshot::from_json(&bytes, id)
            .map_err(|e| Error::corrupt("reading snapshot", self.file_path(&name), e))?;
        Ok(SnapshotInfo { id: *id, snapshot })
    }

    /// Finds a snapshot by unique hex prefix, or `latest`.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotInfo, Error> {
        if spec == "latest" {
            return self
                .snapshots()?
                .pop()
                .ok_or_else(|| Error::invalid(&self.location, "the repository has no snapshots"));
        }
        self.load_snapshot(&self.find_snapshot_id(spec)?)
    }

    /// The id of the snapshot record named by unique hex prefix `spec`,
    /// without reading the record (so a damaged one can be forgotten), or
    /// of the latest snapshot that can be read.
    pub fn find_snapshot_id(&self, spec: &str) -> Result<Id, Error> {
        if spec == "latest" {
            return self.find_snapshot(spec).map(|s| s.id);
        }
        let ids = self.list_ids(RepoFile::Snapshot)?;
        haul_formats::find_by_prefix(spec, ids.iter())
            .map_err(|e| Error::invalid(&self.location, format!("snapshot {spec:?}: {e}")))
    }

    /// Deletes the given snapshot records (their data stays until `prune`).
    pub fn forget(&self, ids: &[Id]) -> Result<(), Error> {
        let _lock = self.lock(false)?;
        for id in ids {
            let name = RepoFile::Snapshot.path(id);
            self.backend
                .remove(&name)
                .map_err(|e| Error::io("removing snapshot", self.file_path(&name), e))?;
        }
        Ok(())
    }
}

/// A format error raised by the engine itself (a length that does not fit, a
/// missing blob), in the same type the decoders use.
pub(crate) fn bad(what: &'static str, reason: impl Into<String>) -> haul_formats::FormatError {
    haul_formats::FormatError::Invalid {
        what,
        reason: reason.into(),
    }
}
