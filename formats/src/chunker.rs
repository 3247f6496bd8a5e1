//! Content-defined chunking parameters and the FastCDC calls that use them.
//!
//! Chunk boundaries are part of the format in practice: if they move, every
//! file re-uploads. So the algorithm (FastCDC 2020, normalization level 1,
//! fastcdc's default gear table) is pinned here and by golden tests.

use std::io::Read;

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// Minimum, average and maximum chunk size for FastCDC 2020.
///
/// A file no larger than `min_size` is always a single chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter than this, except the last one of a file.
    pub min_size: u32,
    /// The size FastCDC aims for.
    pub avg_size: u32,
    /// No chunk is longer than this.
    pub max_size: u32,
}

/// Where one chunk lies in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkSpan {
    /// Offset of the chunk's first byte.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// One chunk read from a stream, with its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamChunk {
    /// Offset of the chunk's first byte in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl ChunkerParams {
    /// haul's default: 256 KiB / 1 MiB / 4 MiB.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min_size: 256 * 1024,
        avg_size: 1024 * 1024,
        max_size: 4 * 1024 * 1024,
    };

    /// Checks the sizes against FastCDC's limits (it panics outside them, and
    /// these values come from a repository's config file) and their order.
    pub fn validate(&self) -> Result<(), FormatError> {
        let check = |what: &'static str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(FormatError::invalid(
                    "chunker parameters",
                    format!("{what} {v} is outside {lo}..={hi}"),
                ))
            }
        };
        check(
            "min_size",
            self.min_size,
            v2020::MINIMUM_MIN,
            v2020::MINIMUM_MAX,
        )?;
        check(
            "avg_size",
            self.avg_size,
            v2020::AVERAGE_MIN,
            v2020::AVERAGE_MAX,
        )?;
        check(
            "max_size",
            self.max_size,
            v2020::MAXIMUM_MIN,
            v2020::MAXIMUM_MAX,
        )?;
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            return Err(FormatError::invalid(
                "chunker parameters",
                format!(
                    "need min_size <= avg_size <= max_size, got {} / {} / {}",
                    self.min_size, self.avg_size, self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// The chunks of an in-memory buffer. An empty buffer has no chunks.
    pub fn chunks<'a>(
        &self,
        data: &'a [u8],
    ) -> Result<impl Iterator<Item = ChunkSpan> + 'a, FormatError> {
        self.validate()?;
        let cdc = v2020::FastCDC::new(data, self.min_size, self.avg_size, self.max_size);
        Ok(cdc.map(|c| ChunkSpan {
            offset: c.offset as u64,
            // validate() caps max_size at 16 MiB, so a chunk length fits.
            len: c.length as u32,
        }))
    }

    /// The chunks of a stream, read with a buffer of `max_size` bytes; each
    /// chunk's bytes are returned in a fresh `Vec`. Boundaries are the same
    /// as [`ChunkerParams::chunks`] on the whole input.
    pub fn stream_chunks<R: Read>(
        &self,
        reader: R,
    ) -> Result<impl Iterator<Item = Result<StreamChunk, FormatError>>, FormatError> {
        self.validate()?;
        let cdc = v2020::StreamCDC::new(reader, self.min_size, self.avg_size, self.max_size);
        Ok(cdc.map(|r| {
            r.map(|c| StreamChunk {
                offset: c.offset,
                data: c.data,
            })
            .map_err(|e| FormatError::Io(e.into()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        ChunkerParams::DEFAULT.validate().unwrap();
        let mut p = ChunkerParams::DEFAULT;
        p.min_size = 0;
        assert!(p.validate().is_err());
        assert!(p.chunks(b"abc").is_err());
        let p = ChunkerParams {
            min_size: 4096,
            avg_size: 2048,
            max_size: 8192,
        };
        assert!(p.validate().is_err());
        let p = ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: u32::MAX,
        };
        assert!(p.validate().is_err());
    }

    #[test]
    fn small_input_is_one_chunk() {
        let data = vec![7u8; 1000];
        let spans: Vec<_> = ChunkerParams::DEFAULT.chunks(&data).unwrap().collect();
        assert_eq!(
            spans,
            vec![ChunkSpan {
                offset: 0,
                len: 1000
            }]
        );
        assert_eq!(ChunkerParams::DEFAULT.chunks(&[]).unwrap().count(), 0);
    }

    #[test]
    fn stream_matches_memory() {
        let p = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
        };
        let mut x: u64 = 1;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mem: Vec<_> = p.chunks(&data).unwrap().collect();
        let streamed: Vec<_> = p
            .stream_chunks(&data[..])
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        assert!(mem.len() > 10);
        assert_eq!(mem.len(), streamed.len());
        for (m, s) in mem.iter().zip(&streamed) {
            assert_eq!(m.offset, s.offset);
            let range = m.offset as usize..m.offset as usize + m.len as usize;
            assert_eq!(&data[range], &s.data[..]);
        }
    }
}
