//! zstd on all cores, for `.tar.zst`.
//!
//! Writing: the stream is cut into [`FRAME`]-byte pieces, each compressed
//! on the rayon pool as an independent zstd frame that records its content
//! size, and written in order. Concatenated frames are one valid zstd
//! stream: `zstd -d` and `tar -I zstd` read it as any other.
//!
//! Reading: frames are found by their headers (`ZSTD_findFrameCompressedSize`)
//! and those that declare a content size up to [`MAX_PARALLEL_FRAME`] are
//! decompressed on the pool, in order, a bounded number ahead. A frame that
//! does not (another tool's single long frame) is decoded as a stream on a
//! thread of its own (overlapping the reader's parsing), with
//! the decoder's window capped so a hostile header cannot claim more memory
//! than [`MAX_WINDOW_LOG`] allows.
use std::collections::VecDeque;
use std::io::{self, Read, Write};

use crossbeam_channel::{bounded, Receiver};
use zstd::zstd_safe;

use crate::walk::pool_recv;

/// Bytes of the tar stream per frame.
pub(crate) const FRAME: usize = 4 << 20;
/// The largest frame content decoded in one piece on the pool.
const MAX_PARALLEL_FRAME: u64 = 16 << 20;
/// The largest zstd window accepted (2^26 = 64 MiB): what `zstd -19` and
/// `--long` below 27 use; a larger claim is refused, not allocated.
const MAX_WINDOW_LOG: u32 = 26;

fn in_flight(jobs: usize) -> usize {
    // Each holds a frame in and its output: about 5 MiB. Seven keep an
    // archive command under 100 MiB with the walk's read-ahead.
    jobs.clamp(1, 6) + 1
}

/// A `Write` that compresses into independent frames on the pool.
pub(crate) struct FrameWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    level: i32,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max: usize,
    /// Compressed bytes written.
    pub(crate) written: u64,
}

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(out: W, level: i32, jobs: usize) -> FrameWriter<W> {
        FrameWriter {
            out,
            buf: Vec::with_capacity(FRAME),
            level,
            pending: VecDeque::new(),
            max: in_flight(jobs),
            written: 0,
        }
    }

    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(FRAME));
        let (tx, rx) = bounded(1);
        let level = self.level;
        rayon::spawn(move || {
            let r = (|| {
                let mut c = zstd::bulk::Compressor::new(level)?;
                c.include_contentsize(true)?;
                c.include_checksum(true)?;
                c.compress(&data)
            })();
            let _ = tx.send(r);
        });
        self.pending.push_back(rx);
        while self.pending.len() >= self.max {
            self.write_one()?;
        }
        Ok(())
    }

    fn write_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let frame = pool_recv(&rx)
                .ok_or_else(|| io::Error::other("a compression worker stopped"))??;
            self.out.write_all(&frame)?;
            self.written += frame.len() as u64;
        }
        Ok(())
    }

    /// Compresses what is left, writes every frame, and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.cut()?;
        while !self.pending.is_empty() {
            self.write_one()?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == FRAME {
            self.cut()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt zstd stream: {what}"),
    )
}

/// A `Read` of a zstd stream, decoding haul's frames in parallel.
pub(crate) struct FrameReader<R: Read> {
    src: Option<R>,
    /// Compressed bytes read but not yet handed to a decoder.
    raw: Vec<u8>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// What is not in independent small frames, decoded as a stream on a
    /// thread of its own (so decoding overlaps the reader's own work), in
    /// pieces.
    stream: Option<Receiver<io::Result<Vec<u8>>>>,
    eof: bool,
}

impl<R: Read + Send + 'static> FrameReader<R> {
    pub(crate) fn new(src: R, jobs: usize) -> FrameReader<R> {
        FrameReader {
            src: Some(src),
            raw: Vec::new(),
            pending: VecDeque::new(),
            max: in_flight(jobs),
            out: Vec::new(),
            out_pos: 0,
            stream: None,
            eof: false,
        }
    }

    /// Reads more compressed input; false at its end.
    fn more(&mut self) -> io::Result<bool> {
        let Some(src) = self.src.as_mut() else {
            return Ok(false);
        };
        let old = self.raw.len();
        self.raw.resize(old + (1 << 20), 0);
        let n = loop {
            match src.read(&mut self.raw[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.raw.truncate(old);
                    return Err(e);
                }
            }
        };
        self.raw.truncate(old + n);
        Ok(n > 0)
    }

    /// Starts decoding the frames at the front of `raw`, keeping up to
    /// `max` in flight. Switches to the stream decoder at the first frame
    /// that is not a small independent one.
    fn schedule(&mut self) -> io::Result<()> {
        while self.pending.len() < self.max && self.stream.is_none() && !self.eof {
            // A frame header is at most 18 bytes.
            while self.raw.len() < 18 && self.more()? {}
            if self.raw.is_empty() {
                self.eof = true;
                break;
            }
            let size = zstd_safe::get_frame_content_size(&self.raw);
            let small = matches!(size, Ok(Some(s)) if s <= MAX_PARALLEL_FRAME);
            if !small {
                self.stream_rest()?;
                break;
            }
            let content = size.ok().flatten().unwrap_or(0) as usize;
            let len = loop {
                match zstd_safe::find_frame_compressed_size(&self.raw) {
                    Ok(n) => break Some(n),
                    // Incomplete: read on, within a bound.
                    Err(_) if self.raw.len() < MAX_PARALLEL_FRAME as usize + (1 << 20) => {
                        if !self.more()? {
                            break None;
                        }
                    }
                    Err(_) => break None,
                }
            };
            let Some(len) = len else {
                // Truncated, or not a frame at all: the stream decoder
                // says which.
                self.stream_rest()?;
                break;
            };
            // The frame keeps the buffer; only the (shorter) rest is copied.
            let rest = self.raw.split_off(len);
            let frame = std::mem::replace(&mut self.raw, rest);
            let (tx, rx) = bounded(1);
            rayon::spawn(move || {
                let r = zstd::bulk::decompress(&frame, content).map_err(corrupt);
                let r = r.and_then(|v| {
                    if v.len() == content {
                        Ok(v)
                    } else {
                        Err(corrupt("a frame's content is shorter than its header says"))
                    }
                });
                let _ = tx.send(r);
            });
            self.pending.push_back(rx);
        }
        Ok(())
    }

    fn stream_rest(&mut self) -> io::Result<()> {
        let src = self.src.take().expect("stream taken once");
        let head = io::Cursor::new(std::mem::take(&mut self.raw));
        let mut d = zstd::stream::read::Decoder::new(head.chain(src))?;
        d.window_log_max(MAX_WINDOW_LOG)?;
        // A few pieces ahead: bounded memory, and the thread ends when the
        // reader is dropped (its next send fails).
        let (tx, rx) = bounded(4);
        std::thread::Builder::new()
            .name("zstd-stream".into())
            .spawn(move || loop {
                let mut piece = vec![0u8; 1 << 20];
                let r = match d.read(&mut piece) {
                    // The end, said explicitly: a closed channel without it
                    // is a decoder that stopped, not the end of the archive.
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        break;
                    }
                    Ok(n) => {
                        piece.truncate(n);
                        Ok(piece)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    break;
                }
            })?;
        self.stream = Some(rx);
        Ok(())
    }
}

impl<R: Read + Send + 'static> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            self.schedule()?;
            if let Some(rx) = self.pending.pop_front() {
                self.out = pool_recv(&rx)
                    .ok_or_else(|| io::Error::other("a decompression worker stopped"))??;
                self.out_pos = 0;
                continue;
            }
            if let Some(rx) = self.stream.as_ref() {
                match rx.recv() {
                    Ok(Ok(piece)) if piece.is_empty() => {
                        self.stream = None;
                        self.eof = true;
                        return Ok(0);
                    }
                    Ok(Ok(piece)) => {
                        self.out = piece;
                        self.out_pos = 0;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.stream = None;
                        self.eof = true;
                        return Err(
                            if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData)
                            {
                                corrupt(e)
                            } else {
                                e
                            },
                        );
                    }
                    Err(_) => return Err(io::Error::other("the zstd decoder stopped")),
                }
            }
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn frames_round_trip_and_are_one_zstd_stream() {
        let d = data(3 * FRAME + 12345);
        let mut w = FrameWriter::new(Vec::new(), 3, 4);
        for piece in d.chunks(100_000) {
            w.write_all(piece).unwrap();
        }
        let z = w.finish().unwrap();
        // Independent frames, each with its content size.
        assert_eq!(
            zstd_safe::get_frame_content_size(&z).unwrap(),
            Some(FRAME as u64)
        );
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), d);
        let mut got = Vec::new();
        FrameReader::new(io::Cursor::new(z), 4)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, d);
    }

    #[test]
    fn a_single_long_frame_is_streamed() {
        let d = data(2 * FRAME);
        let z = zstd::encode_all(&d[..], 3).unwrap();
        let mut got = Vec::new();
        FrameReader::new(io::Cursor::new(z), 2)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, d);
    }

    #[test]
    fn damage_is_an_error() {
        let d = data(2 * FRAME);
        let mut w = FrameWriter::new(Vec::new(), 3, 2);
        w.write_all(&d).unwrap();
        let z = w.finish().unwrap();
        for at in [z.len() / 3, z.len() - 5] {
            let mut bad = z.clone();
            bad[at] ^= 0x55;
            let mut got = Vec::new();
            let r = FrameReader::new(io::Cursor::new(bad), 2).read_to_end(&mut got);
            assert!(r.is_err() || got != d, "damage at {at} went unnoticed");
        }
        let mut got = Vec::new();
        let r =
            FrameReader::new(io::Cursor::new(z[..z.len() / 2].to_vec()), 2).read_to_end(&mut got);
        assert!(r.is_err(), "truncation went unnoticed");
    }
}
