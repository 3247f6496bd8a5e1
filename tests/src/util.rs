//! Small helpers every end-to-end module shares: temporary directories, the unprivileged
//! user haul runs as, and the odd byte flip or signal.

use std::fs;
use std::path::Path;

use crate::{fixture, read, CompareOpts};

/// The unprivileged user the tests run haul as (nobody:nogroup).
pub const NOBODY: (u32, u32) = (65534, 65534);

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// A fresh temporary directory under `/tmp`, removed when dropped.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haul-e2e-")
        .tempdir_in("/tmp")
        .expect("tempdir in /tmp")
}

/// Like [`tmp`], owned by [`NOBODY`] so that haul run as nobody can write in it.
pub fn tmp_for_nobody() -> tempfile::TempDir {
    let t = tmp();
    fixture::lchown(t.path(), NOBODY.0, NOBODY.1);
    t
}

/// Compare everything: the default [`CompareOpts`].
pub fn all() -> CompareOpts {
    CompareOpts::default()
}

/// Flips some bits of the byte at `offset` in the file at `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut b = read(path);
    b[offset as usize] ^= 0x5a;
    fs::write(path, b).unwrap();
}

/// Sends SIGKILL to process `pid`.
pub fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// `true` if `hay` contains `needle`, ignoring case.
pub fn ci_contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// The first 8 hex digits of an id, as haul prints it in short form.
pub fn short(id: &str) -> &str {
    &id[..8]
}
