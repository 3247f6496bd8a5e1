//! The one room for OS-specific and `unsafe` code.
//!
//! Everything the engine needs from the kernel goes through the functions
//! re-exported here. Each takes a directory handle and a single name, never a
//! multi-component path, so nothing written into a destination is resolved
//! through a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). On another OS a
//! sibling of `linux.rs` would expose the same functions.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("haul currently supports Linux only");

use std::fs::File;
use std::io;

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
