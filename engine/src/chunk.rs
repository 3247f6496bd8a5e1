//! Reading a source file's data: its data regions (holes skipped, found
//! with `SEEK_DATA`/`SEEK_HOLE`), whole-buffer positional reads, and its
//! content-defined chunks. Shared by copy (regions), snapshot create
//! (regions and chunks) and, later, the ssh delta code (chunks).
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use haul_formats::ChunkerParams;

use crate::sys::{self, Stat};

/// Whether a file's data has holes worth keeping: fewer allocated blocks
/// than its size implies.
pub(crate) fn is_sparse(st: &Stat) -> bool {
    st.blocks.saturating_mul(512) < st.size
}

/// The data regions of the first `size` bytes of `f`, as (offset, length):
/// every region `SEEK_DATA`/`SEEK_HOLE` report, in order.
pub(crate) fn data_regions(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(start) = sys::seek_data(f, off)? else {
            break;
        };
        if start >= size {
            break;
        }
        let end = sys::seek_hole(f, start)?.min(size);
        v.push((start, end - start));
        off = end;
    }
    Ok(v)
}

/// Fills `buf` from `off` unless the file ends first; returns the bytes read.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A file region read through `pread`, as a `Read` for the chunker.
struct Section<'f> {
    f: &'f File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Why chunking a region stopped.
#[derive(Debug)]
pub(crate) enum ChunkError<E> {
    /// Reading the file failed (the cause, as text).
    Read(String),
    /// The chunker's parameters were refused.
    Params(haul_formats::FormatError),
    /// The consumer of a chunk failed.
    Consumer(E),
}

/// Cuts the region (`off`, `len`) of `f` into content-defined chunks and
/// hands each to `each`, in order. A region no longer than the chunker's
/// minimum is one chunk, read into an exact buffer. Returns the bytes read,
/// which are fewer than `len` if the file shrank meanwhile.
pub(crate) fn chunk_region<E>(
    f: &File,
    off: u64,
    len: u64,
    params: &ChunkerParams,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    if len <= u64::from(params.min_size) {
        let mut buf = vec![0u8; len as usize];
        let n = read_full_at(f, &mut buf, off).map_err(|e| ChunkError::Read(e.to_string()))?;
        if n > 0 {
            each(&buf[..n]).map_err(ChunkError::Consumer)?;
        }
        return Ok(n as u64);
    }
    let section = Section {
        f,
        pos: off,
        end: off + len,
    };
    let it = params.stream_chunks(section).map_err(ChunkError::Params)?;
    let mut got = 0u64;
    for c in it {
        let c = c.map_err(|e| ChunkError::Read(e.to_string()))?;
        got += c.data.len() as u64;
        each(&c.data).map_err(ChunkError::Consumer)?;
    }
    Ok(got)
}
