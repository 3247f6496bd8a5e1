//! The one room for OS-specific and `unsafe` code.
//!
//! Everything the engine needs from the kernel goes through the functions
//! re-exported here. Each takes a directory handle and a single name, never a
//! multi-component path, so nothing written into a destination is resolved
//! through a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). On another OS a
//! sibling of `linux.rs` would expose the same functions.
//!
//! Testing knob: with `HAUL_FORCE_FALLBACKS=1` in the environment of the
//! process, [`open_tmpfile_at`], [`copy_range`] and [`reflink`] answer as a
//! kernel or filesystem without `O_TMPFILE`, `copy_file_range` and `FICLONE`
//! would (`EOPNOTSUPP`, `ENOSYS`, `EOPNOTSUPP`) without making the call, so
//! the end-to-end tests can run the temporary-name and userspace-buffer
//! paths, which no machine they run on would otherwise take.
#![allow(unsafe_code)]

pub(crate) mod hostinfo;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("haul currently supports Linux only");

use std::fs::File;
use std::io;
use std::sync::OnceLock;

/// Whether `HAUL_FORCE_FALLBACKS=1` is set (see the module doc). Read once:
/// after that, a load of an initialised `OnceLock` on the fast paths.
pub(crate) fn fallbacks_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("HAUL_FORCE_FALLBACKS").is_some_and(|v| v == "1"))
}

/// Entries read from a directory per batch: enough to spread over workers,
/// few enough that memory stays bounded in a directory of millions.
pub(crate) const BATCH: usize = 512;

/// Reads `dir` in batches and hands each to `f`. Stops at the first error,
/// of reading or returned by `f`; the batches before it were handled.
pub(crate) fn each_batch<E: From<io::Error>>(
    dir: &File,
    mut f: impl FnMut(&[RawEntry]) -> Result<(), E>,
) -> Result<(), E> {
    let mut stream = DirStream::new(dir)?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        if stream.read_batch(&mut batch, BATCH)? == 0 {
            return Ok(());
        }
        f(&batch)?;
    }
}

/// Whether the entry `e` of `dir` is a directory, from its `d_type` or,
/// where the filesystem leaves that unknown, an lstat; `None` if it is gone.
pub(crate) fn is_dir_entry(dir: &File, e: &RawEntry) -> io::Result<Option<bool>> {
    match e.d_type {
        DT_DIR => Ok(Some(true)),
        DT_UNKNOWN => {
            Ok(stat_at_opt(dir, &e.name)?.map(|st| st.mode & libc::S_IFMT == libc::S_IFDIR))
        }
        _ => Ok(Some(false)),
    }
}
