//! The end-to-end suite: one test binary that drives the real `haul` binary and checks
//! the outcome on disk with the independent walker and fixtures of `haul_tests`.
//!
//! One module per theme; a theme's edge cases are submodules of it. Helpers shared by
//! every module live in `haul_tests` (`tests/src/`), not here.
//!
//! Run as root (CI does): most tests build fixtures only root can (devices, foreign
//! owners, trusted.* xattrs) or run haul as an unprivileged user.
//! `cargo test -p haul-tests --test e2e -- snapshot::` runs one theme.

mod cli;
mod copy;
mod deep;
mod fallbacks;
mod full_disk;
mod snapshot;
mod walker;
