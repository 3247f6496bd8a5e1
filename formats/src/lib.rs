//! Pure readers and writers for haul's on-disk structures.
//!
//! This crate does no filesystem walking and no I/O policy of its own: it turns
//! bytes into typed values and back, and rejects malformed input with an error
//! rather than a panic.
#![deny(missing_docs)]
