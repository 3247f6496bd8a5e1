//! The end-to-end suite: one test binary that drives the real `haul` binary and checks
//! the outcome on disk with the independent walker and fixtures of `haul_tests`.
//!
//! One module per theme; a theme's edge cases are submodules of it. A new theme is a new
//! module here, not a new file in `tests/tests/` (that would be a second test binary).
//! What modules share lives in `haul_tests` (`tests/src/`): fixture builders in
//! `fixture`, repository helpers in `repo`, small helpers (`tmp`, `NOBODY`, ...) in `util`.
//!
//! Run as root (CI does): most tests build fixtures only root can (devices, foreign
//! owners, trusted.* xattrs) or run haul as an unprivileged user.
//! `cargo test -p haul-tests --test e2e -- snapshot::` runs one theme.

mod archive_hostile;
mod archive_snapshot;
mod archive_tar;
mod archive_zip;
mod cli;
mod copy;
mod deep;
mod fallbacks;
mod full_disk;
mod remote;
mod remote_hostile;
mod snapshot;
mod sshd;
mod walker;
