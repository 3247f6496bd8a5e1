//! Exit codes. Keep in sync with the README's "Exit codes" table.

/// Everything was done and preserved.
pub const OK: u8 = 0;
/// The run could not proceed (bad SRC/DST, unreadable repository, ...).
pub const FATAL: u8 = 1;
/// The command line was invalid.
pub const USAGE: u8 = 2;
/// Some entries failed; the others were processed.
pub const SOME_FAILED: u8 = 3;
/// All entries were processed, but some metadata could not be preserved.
pub const PARTIAL: u8 = 4;
/// `--verify` (or a check) found a mismatch.
pub const MISMATCH: u8 = 5;
