//! How the engine reports what it is doing. The engine calls these hooks; the
//! CLI renders them (a bar on a terminal, JSON lines for scripts). Every hook
//! has a no-op default, and [`NoProgress`] ignores them all.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A change made to the destination (or, in a dry run, one that would be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The entry did not exist and was created.
    Create,
    /// The entry's content was rewritten (or it was replaced by another type).
    Update,
    /// Only the entry's metadata was changed, in place.
    Metadata,
    /// The entry was removed (`--delete`).
    Delete,
}

/// Progress hooks. Implementations must be cheap and thread-safe: they are
/// called from every worker.
pub trait Progress: Sync {
    /// Whether the caller wants totals up front (costs a separate scan).
    fn wants_totals(&self) -> bool {
        false
    }
    /// The scan found `files` more entries holding `bytes` more data.
    fn discovered(&self, _files: u64, _bytes: u64) {}
    /// The scan is complete: totals are final.
    fn discovery_done(&self) {}
    /// One more entry is finished.
    fn entry_done(&self) {}
    /// `n` more bytes of file data were processed.
    fn bytes(&self, _n: u64) {}
    /// A change to the destination; only called when changes are recorded.
    fn change(&self, _action: Action, _path: &Path) {}
}

/// Ignores all progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
