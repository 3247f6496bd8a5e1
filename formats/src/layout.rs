//! Where things live in a repository, and the repository's config file.
//!
//! Paths are `/`-separated keys relative to the repository root, so the same
//! strings serve a local directory, an ssh host or an object-store bucket.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::error::FormatError;
use crate::id::Id;
use crate::time::Timestamp;

/// The repository format version this build reads and writes.
pub const REPO_VERSION: u32 = 2;

/// The config file's key: `config`.
pub const CONFIG_FILE: &str = "config";
/// Directory reserved for key files (encryption; unused so far).
pub const KEYS_DIR: &str = "keys";
/// Directory of pack files, fanned out by the first two hex digits.
pub const DATA_DIR: &str = "data";
/// Directory of index files.
pub const INDEX_DIR: &str = "index";
/// Directory of snapshot records.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Directory of lock records.
pub const LOCKS_DIR: &str = "locks";

/// The default zstd level for blobs.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// The default size a pack writer aims for before starting a new pack.
pub const DEFAULT_PACK_SIZE: u32 = 32 * 1024 * 1024;
/// Smallest and largest `pack_size` a config may ask for.
pub const PACK_SIZE_RANGE: std::ops::RangeInclusive<u32> = (1024 * 1024)..=(1024 * 1024 * 1024);
/// Largest config file accepted.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// The kinds of id-named files in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepoFile {
    /// `data/<2 hex>/<pack id>`: a pack file.
    Pack,
    /// `index/<id>`: an index file.
    Index,
    /// `snapshots/<id>`: a snapshot record.
    Snapshot,
    /// `locks/<id>`: a lock record.
    Lock,
}

impl RepoFile {
    /// All kinds, in the order a checker would list them.
    pub const ALL: [RepoFile; 4] = [
        RepoFile::Pack,
        RepoFile::Index,
        RepoFile::Snapshot,
        RepoFile::Lock,
    ];

    /// The top-level directory holding this kind.
    pub const fn dir(self) -> &'static str {
        match self {
            RepoFile::Pack => DATA_DIR,
            RepoFile::Index => INDEX_DIR,
            RepoFile::Snapshot => SNAPSHOTS_DIR,
            RepoFile::Lock => LOCKS_DIR,
        }
    }

    /// The key of the file with this id, e.g. `data/3f/3fa9…` or `index/…`.
    pub fn path(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            RepoFile::Pack => format!("{DATA_DIR}/{}/{hex}", &hex[..2]),
            other => format!("{}/{hex}", other.dir()),
        }
    }

    /// Recognises a key produced by [`RepoFile::path`] (a listing entry);
    /// anything else, including a pack in the wrong fan-out directory, is
    /// `None`.
    pub fn parse_path(path: &str) -> Option<(RepoFile, Id)> {
        let (dir, rest) = path.split_once('/')?;
        let kind = RepoFile::ALL.into_iter().find(|k| k.dir() == dir)?;
        let name = if kind == RepoFile::Pack {
            let (fan, name) = rest.split_once('/')?;
            if fan.len() != 2 || !name.starts_with(fan) {
                return None;
            }
            name
        } else {
            rest
        };
        let id = Id::from_hex(name).ok()?;
        // Only the canonical lowercase spelling is a repository file.
        (kind.path(&id) == path).then_some((kind, id))
    }
}

/// The repository's `config` file (JSON).
///
/// Written once at `init`; every client reads it first and refuses a
/// `version` it does not know, because a newer version may mean encrypted
/// blobs that an old client must not mix plaintext into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Repository format version ([`REPO_VERSION`]).
    pub version: u32,
    /// Random id naming this repository (chosen by whoever runs `init`).
    pub id: Id,
    /// Chunking parameters; every client must chunk the same way to dedup.
    pub chunker: ChunkerParams,
    /// zstd level for new blobs.
    pub zstd_level: i32,
    /// Size in bytes a pack writer aims for.
    pub pack_size: u32,
    /// When the repository was created.
    pub created: Timestamp,
}

impl RepoConfig {
    /// A version-[`REPO_VERSION`] config with haul's defaults.
    pub fn new(id: Id, created: Timestamp) -> Self {
        RepoConfig {
            version: REPO_VERSION,
            id,
            chunker: ChunkerParams::DEFAULT,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            pack_size: DEFAULT_PACK_SIZE,
            created,
        }
    }

    /// Checks every field against what this build can work with.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.version != REPO_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "repository config",
                got: u64::from(self.version),
                supported: u64::from(REPO_VERSION),
            });
        }
        self.chunker.validate()?;
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            return Err(FormatError::invalid(
                "repository config",
                format!(
                    "zstd_level {} is outside {}..={}",
                    self.zstd_level,
                    levels.start(),
                    levels.end()
                ),
            ));
        }
        if !PACK_SIZE_RANGE.contains(&self.pack_size) {
            return Err(FormatError::invalid(
                "repository config",
                format!(
                    "pack_size {} is outside {}..={}",
                    self.pack_size,
                    PACK_SIZE_RANGE.start(),
                    PACK_SIZE_RANGE.end()
                ),
            ));
        }
        Ok(())
    }

    /// Pretty-printed JSON, after [`RepoConfig::validate`].
    pub fn to_json(&self) -> Result<Vec<u8>, FormatError> {
        self.validate()?;
        let mut out = serde_json::to_vec_pretty(self).map_err(|source| FormatError::Json {
            what: "repository config",
            source,
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses and validates a config file of at most [`MAX_CONFIG_LEN`] bytes.
    ///
    /// The version is checked before the other fields, so a config from a
    /// newer haul says "unsupported version" rather than "missing field".
    pub fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(FormatError::too_large(
                "repository config",
                bytes.len() as u64,
                MAX_CONFIG_LEN as u64,
            ));
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u64,
        }
        let json_err = |source| FormatError::Json {
            what: "repository config",
            source,
        };
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(json_err)?;
        if v.version != u64::from(REPO_VERSION) {
            return Err(FormatError::UnsupportedVersion {
                what: "repository config",
                got: v.version,
                supported: u64::from(REPO_VERSION),
            });
        }
        let config: RepoConfig = serde_json::from_slice(bytes).map_err(json_err)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let id = Id::hash(b"pack");
        let hex = id.to_hex();
        assert_eq!(
            RepoFile::Pack.path(&id),
            format!("data/{}/{hex}", &hex[..2])
        );
        assert_eq!(RepoFile::Index.path(&id), format!("index/{hex}"));
        assert_eq!(RepoFile::Snapshot.path(&id), format!("snapshots/{hex}"));
        assert_eq!(RepoFile::Lock.path(&id), format!("locks/{hex}"));
        for kind in RepoFile::ALL {
            assert_eq!(RepoFile::parse_path(&kind.path(&id)), Some((kind, id)));
        }
        assert_eq!(RepoFile::parse_path(&format!("data/00/{hex}")), None);
        assert_eq!(RepoFile::parse_path(&format!("data/{hex}")), None);
        assert_eq!(
            RepoFile::parse_path(&format!("index/{}", hex.to_uppercase())),
            None
        );
        assert_eq!(RepoFile::parse_path(&format!("keys/{hex}")), None);
        assert_eq!(RepoFile::parse_path("config"), None);
        assert_eq!(RepoFile::parse_path("index/é"), None);
    }

    #[test]
    fn config_round_trip() {
        let c = RepoConfig::new(Id::hash(b"repo"), Timestamp::new(1_700_000_000, 0).unwrap());
        let json = c.to_json().unwrap();
        assert_eq!(RepoConfig::from_json(&json).unwrap(), c);
    }

    #[test]
    fn config_rejects() {
        let c = RepoConfig::new(Id::hash(b"repo"), Timestamp::EPOCH);
        let mut bad = c.clone();
        bad.zstd_level = 99;
        assert!(bad.to_json().is_err());
        let mut bad = c.clone();
        bad.chunker.max_size = 1;
        assert!(bad.to_json().is_err());
        let json = String::from_utf8(c.to_json().unwrap()).unwrap();
        let older = json.replace("\"version\": 2", "\"version\": 1");
        assert!(matches!(
            RepoConfig::from_json(older.as_bytes()),
            Err(FormatError::UnsupportedVersion { got: 1, .. })
        ));
        let newer = json.replace("\"version\": 2", "\"version\": 3");
        assert!(matches!(
            RepoConfig::from_json(newer.as_bytes()),
            Err(FormatError::UnsupportedVersion { got: 3, .. })
        ));
        assert!(matches!(
            RepoConfig::from_json(br#"{"version": 7}"#),
            Err(FormatError::UnsupportedVersion { got: 7, .. })
        ));
        assert!(RepoConfig::from_json(br#"{"version": 1}"#).is_err());
        assert!(RepoConfig::from_json(b"").is_err());
        assert!(RepoConfig::from_json(&vec![b' '; MAX_CONFIG_LEN + 1]).is_err());
    }
}
