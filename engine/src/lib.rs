//! haul's engine: a parallel, full-fidelity tree copy ([`copy`]), and
//! snapshot repositories ([`Repository`]: create, restore, list, diff, check,
//! repair, prune) built on the same walker and metadata layer.
//!
//! The engine knows nothing of terminals or argument parsing: callers pass
//! options, receive progress through the [`Progress`] trait, and get a
//! summary in which every entry's outcome is accounted for.
//!
//! ```no_run
//! use haul_engine::{copy, CopyOptions, NoProgress};
//! let summary = copy("/opt/cycle_server".as_ref(), "/mnt/new/cycle_server".as_ref(),
//!                    &CopyOptions::default(), &NoProgress)?;
//! assert_eq!(summary.failed_count(), 0);
//! # Ok::<(), haul_engine::Error>(())
//! ```
#![deny(missing_docs)]

mod archive;
mod chunk;
mod copy;
mod dest;
mod error;
mod filter;
mod idmap;
mod meta;
mod progress;
mod query;
mod remote;
mod repo;
mod sys;
mod walk;

pub use archive::{
    create_archive, extract_archive, list_archive, ArchiveFormat, ArchiveInput, ArchiveOptions,
    ArchiveSummary, ExtractOptions, ListedMember, ZipCompression,
};
pub use copy::{copy, CopyOptions};
pub use dest::{CopySummary, EntryIssue, SourceCounts, WriteOptions};
pub use error::{Error, ErrorKind};
pub use filter::{Filter, FilterError};
pub use haul_formats::wire::QueryKind;
pub use haul_formats::{Id, Snapshot, Timestamp};
pub use idmap::{IdMap, IdMapError};
pub use meta::FileKind;
pub use progress::{Action, NoProgress, Progress};
pub use query::query_local;
pub use remote::{
    pull, push, push_many, query, serve_stdio, RemoteOptions, RemotePath, RemoteSummary,
    ServeOptions,
};
pub use repo::retention::{parse_duration, parse_interval};
pub use repo::{
    Bucket, CheckOptions, CheckReport, CreateOptions, CreateSummary, DamagedSnapshot, DiffChange,
    ImportOptions, InitOptions, KeepPolicy, Location, LockGuard, LsEntry, PruneSummary,
    RepairOptions, RepairSummary, RepairedSnapshot, Repository, RestoreOptions, RetentionError,
    SnapshotInfo,
};
