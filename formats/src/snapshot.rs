//! Snapshot and lock records: small JSON files named by the blake3 of their
//! bytes.

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::id::Id;
use crate::time::Timestamp;

/// Snapshot record version this build reads and writes.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest snapshot record accepted.
pub const MAX_SNAPSHOT_LEN: usize = 16 * 1024 * 1024;
/// Largest lock record accepted.
pub const MAX_LOCK_LEN: usize = 64 * 1024;

/// A snapshot: the root of one backup's tree plus who, when and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Record version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// When the snapshot was started.
    pub time: Timestamp,
    /// Host it was taken on.
    pub hostname: String,
    /// User who took it.
    pub username: String,
    /// The source paths as given (lossily converted if not UTF-8; the tree
    /// keeps exact names).
    pub paths: Vec<String>,
    /// User-chosen labels.
    pub tags: Vec<String>,
    /// Id of the root tree blob, whose nodes are the source paths.
    pub tree: Id,
    /// The snapshot this one was taken relative to, if any.
    pub parent: Option<Id>,
    /// Counts for listings, so they need not walk the tree.
    pub summary: SnapshotSummary,
    /// For a record `snapshot repair` wrote: the id of the damaged record
    /// it replaces (absent from every other record, whose bytes are as
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

/// Totals of a snapshot, counted as copy and restore count: a hardlinked
/// inode's data once, at its first name, and each kind on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// Regular files (a hardlinked inode once). Records written before
    /// `symlinks`, `hardlinks` and `specials` existed count every
    /// non-directory entry here.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file data in the snapshot (a hardlinked inode's once).
    pub bytes: u64,
    /// Bytes of data blobs this snapshot added to the repository (plaintext).
    pub bytes_new: u64,
    /// Symbolic links.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub symlinks: u64,
    /// Further names of a hardlinked inode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hardlinks: u64,
    /// Fifos, sockets and devices.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub specials: u64,
}

impl SnapshotSummary {
    /// Every entry: what a full restore goes through.
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.hardlinks + self.specials
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A lock record, `locks/<id>`: who holds the repository and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Host of the holding process.
    pub hostname: String,
    /// User running it.
    pub username: String,
    /// Its process id on that host.
    pub pid: u32,
    /// When the lock was taken.
    pub time: Timestamp,
    /// Exclusive (prune, repack) or shared (backup, restore).
    pub exclusive: bool,
    /// When the holder last renewed the lock (by writing a new record and
    /// removing the old one). Absent in records of older writers, whose
    /// refresh time is `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<Timestamp>,
}

fn to_record<T: Serialize>(what: &'static str, v: &T) -> Result<(Id, Vec<u8>), FormatError> {
    let mut bytes = serde_json::to_vec(v).map_err(|source| FormatError::Json { what, source })?;
    bytes.push(b'\n');
    Ok((Id::hash(&bytes), bytes))
}

fn from_record<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &[u8],
    expected: &Id,
    max: usize,
) -> Result<T, FormatError> {
    if bytes.len() > max {
        return Err(FormatError::too_large(what, bytes.len() as u64, max as u64));
    }
    let got = Id::hash(bytes);
    if got != *expected {
        return Err(FormatError::IdMismatch {
            what,
            expected: *expected,
            got,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| FormatError::Json { what, source })
}

impl Snapshot {
    /// Encodes the record; returns its id (its file name) and bytes.
    pub fn to_json(&self) -> Result<(Id, Vec<u8>), FormatError> {
        to_record("snapshot", self)
    }

    /// Decodes a record of at most [`MAX_SNAPSHOT_LEN`] bytes that must hash
    /// to `expected` (its file name).
    pub fn from_json(bytes: &[u8], expected: &Id) -> Result<Self, FormatError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u64,
        }
        let v: VersionOnly = from_record("snapshot", bytes, expected, MAX_SNAPSHOT_LEN)?;
        if v.version != u64::from(SNAPSHOT_VERSION) {
            return Err(FormatError::UnsupportedVersion {
                what: "snapshot",
                got: v.version,
                supported: u64::from(SNAPSHOT_VERSION),
            });
        }
        serde_json::from_slice(bytes).map_err(|source| FormatError::Json {
            what: "snapshot",
            source,
        })
    }
}

impl Lock {
    /// When the holder last showed it was alive: the refresh time, or the
    /// time the lock was taken for a record without one.
    pub fn last_refresh(&self) -> Timestamp {
        self.refreshed.unwrap_or(self.time)
    }

    /// Encodes the record; returns its id (its file name) and bytes.
    pub fn to_json(&self) -> Result<(Id, Vec<u8>), FormatError> {
        to_record("lock", self)
    }

    /// Decodes a record of at most [`MAX_LOCK_LEN`] bytes that must hash to
    /// `expected`.
    pub fn from_json(bytes: &[u8], expected: &Id) -> Result<Self, FormatError> {
        from_record("lock", bytes, expected, MAX_LOCK_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: Timestamp::new(1_700_000_000, 123_000_000).unwrap(),
            hostname: "host".into(),
            username: "me".into(),
            paths: vec!["/home/me".into()],
            tags: vec!["daily".into()],
            tree: Id::hash(b"tree"),
            parent: None,
            summary: SnapshotSummary {
                files: 3,
                dirs: 1,
                bytes: 100,
                bytes_new: 50,
                ..SnapshotSummary::default()
            },
            original: None,
        }
    }

    #[test]
    fn round_trip_and_id() {
        let s = sample();
        let (id, bytes) = s.to_json().unwrap();
        assert_eq!(id, Id::hash(&bytes));
        assert_eq!(Snapshot::from_json(&bytes, &id).unwrap(), s);
        assert!(matches!(
            Snapshot::from_json(&bytes, &Id::default()),
            Err(FormatError::IdMismatch { .. })
        ));
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Snapshot::from_json(newer.as_bytes(), &Id::hash(newer.as_bytes())),
            Err(FormatError::UnsupportedVersion { got: 2, .. })
        ));
    }

    #[test]
    fn lock_round_trip() {
        let l = Lock {
            hostname: "h".into(),
            username: "u".into(),
            pid: 42,
            time: Timestamp::new(5, 0).unwrap(),
            exclusive: true,
            refreshed: None,
        };
        let (id, bytes) = l.to_json().unwrap();
        assert_eq!(Lock::from_json(&bytes, &id).unwrap(), l);
        assert_eq!(l.last_refresh(), l.time);
        let r = Lock {
            refreshed: Some(Timestamp::new(65, 0).unwrap()),
            ..l.clone()
        };
        let (id, bytes) = r.to_json().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"refreshed\":"));
        assert_eq!(Lock::from_json(&bytes, &id).unwrap(), r);
        assert_eq!(r.last_refresh(), Timestamp::new(65, 0).unwrap());
        let big = vec![b' '; MAX_LOCK_LEN + 1];
        assert!(matches!(
            Lock::from_json(&big, &Id::hash(&big)),
            Err(FormatError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            secs in -62_167_219_200i64..=253_402_300_799,
            nanos in 0u32..1_000_000_000,
            host in "\\PC{0,20}",
            paths in proptest::collection::vec("\\PC{0,20}", 0..4),
            parent in proptest::option::of(any::<[u8; 32]>()),
            files in any::<u64>(),
        ) {
            let mut s = sample();
            s.time = Timestamp::new(secs, nanos).unwrap();
            s.hostname = host;
            s.paths = paths;
            s.parent = parent.map(Id::from_bytes);
            s.summary.files = files;
            let (id, bytes) = s.to_json().unwrap();
            prop_assert_eq!(Snapshot::from_json(&bytes, &id).unwrap(), s);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Snapshot::from_json(&data, &Id::hash(&data));
            let _ = Lock::from_json(&data, &Id::hash(&data));
        }
    }
}
