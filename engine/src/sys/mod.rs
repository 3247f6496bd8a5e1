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
