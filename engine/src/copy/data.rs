//! The source side of one leaf: reading a file's data into a new file
//! (reflink, `copy_file_range` per data extent, or a fixed buffer), checked
//! for changes while it was read, and deciding whether DST already holds it.
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::chunk::{data_regions, is_sparse, read_full_at};
use crate::dest::entry::Entry;
use crate::dest::leaf::{DataSink, LeafSource, Place};
use crate::error::{Step, StepError};
use crate::meta::{read_xattrs, FileKind, XTarget, Xattrs};
use crate::sys::{self, Stat};

/// Size of the per-thread buffer for the userspace copy and hashing paths.
pub(super) const BUF: usize = 256 * 1024;

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(super) fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < BUF {
            b.resize(BUF, 0);
        }
        f(&mut b)
    })
}

/// A leaf of SRC, as the destination writer asks for it.
pub(super) struct LocalLeaf<'r, 'a> {
    run: &'r Copier<'a>,
    dir: &'r File,
    name: &'r CStr,
    /// As `lstat` saw it (copy_stable checks the file against it) ...
    st: Stat,
    /// ... and as the writer wants it.
    entry: Entry,
    rel: &'r Path,
}

impl LeafSource for LocalLeaf<'_, '_> {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn same_content(&self, d: &File, name: &CStr, cur: &Stat) -> Result<bool, StepError> {
        self.run
            .same_content(self.dir, self.name, d, name, &self.st, cur)
    }

    fn target(&self) -> Result<Vec<u8>, StepError> {
        sys::readlink_at(self.dir, self.name).step("readlink")
    }

    fn xattrs(&self) -> Result<Xattrs, StepError> {
        // By name: a leaf with no data to read is not opened at all (a tree
        // of a million empty files is a real case).
        read_xattrs(&XTarget::At(self.dir, self.name), self.run.policy).step("read xattrs")
    }

    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError> {
        let f = sys::open_read_at(self.dir, self.name).step("open")?;
        let size = self.st.size;
        let regions = if is_sparse(&self.st) {
            data_regions(&f, size).step("seek data")?
        } else {
            vec![(0, size)]
        };
        with_buffer(|buf| {
            for (off, len) in regions {
                let mut done = 0u64;
                while done < len {
                    let want = (len - done).min(buf.len() as u64) as usize;
                    let n = read_full_at(&f, &mut buf[..want], off + done).step("read")?;
                    if n == 0 {
                        return Err(StepError {
                            op: "source changed while being read",
                            err: io::Error::from(io::ErrorKind::UnexpectedEof),
                        });
                    }
                    each(off + done, &buf[..n])?;
                    done += n as u64;
                }
            }
            Ok(())
        })
    }

    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError> {
        let mut want = self.st;
        let src = self
            .run
            .copy_stable(self.dir, self.name, out, &mut want, self.rel)?;
        let x = read_xattrs(&XTarget::Fd(&src), self.run.policy).step("read xattrs")?;
        let mut e = Entry::from_stat(&want);
        e.link = self.entry.link.clone();
        Ok((e, x))
    }
}

/// Whether two files hold the same bytes, read side by side through the
/// per-thread buffer; stops at the first difference.
pub(super) fn files_equal(a: &File, b: &File) -> io::Result<bool> {
    with_buffer(|buf| {
        let (x, y) = buf.split_at_mut(BUF / 2);
        let mut off = 0u64;
        loop {
            let n = read_full_at(a, x, off)?;
            let m = read_full_at(b, &mut y[..x.len()], off)?;
            if n != m || x[..n] != y[..n] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
            off += n as u64;
        }
    })
}

/// blake3 of a file's content, read through a fixed-size buffer.
pub(crate) fn hash_file(f: &File) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    with_buffer(|buf| {
        let mut off = 0u64;
        loop {
            let n = f.read_at(buf, off)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize())
    })
}

impl Copier<'_> {
    /// A file, symlink, fifo, socket or device, put through the
    /// destination writer's one leaf function. Returns whether the entry
    /// already in DST was kept.
    pub(super) fn leaf(
        &self,
        dir: &DirPair<'_>,
        sname: &CStr,
        dname: &CStr,
        rel: &Path,
        st: &Stat,
        entry: Entry,
    ) -> Result<bool, StepError> {
        let src = LocalLeaf {
            run: self,
            dir: dir.src,
            name: sname,
            st: *st,
            entry,
            rel,
        };
        let at = Place {
            dir: dir.dst,
            fresh: dir.fresh,
            acl_inherit: dir.acl_inherit,
            seen: None,
        };
        self.put_leaf(at, dname, rel, &src)
    }

    /// Copies the data of `sname` (last seen as `want`) into `out`, and
    /// makes sure it did not change while it was read: its inode, size,
    /// mtime and ctime are checked again afterwards, from the open file. A
    /// change means the copy may be torn (a file truncated mid-copy would
    /// otherwise arrive with a size it never had): the file is read once
    /// more, and if it changes again it fails by name. A file that only grew
    /// (a log being appended to) keeps what was read, its size and mtime as
    /// first seen, with a notice; the next run brings the rest. Returns the
    /// source file read; `want` is left as the state that was copied.
    pub(super) fn copy_stable(
        &self,
        sdir: &File,
        sname: &CStr,
        out: &File,
        want: &mut Stat,
        rel: &Path,
    ) -> Result<File, StepError> {
        let mut retried = false;
        loop {
            let src = sys::open_read_at(sdir, sname).step("open")?;
            if retried {
                *want = sys::stat_fd(&src).step("stat")?;
                if want.kind() != FileKind::File {
                    return Err(StepError {
                        op: "source changed while being read",
                        err: io::Error::other("it is no longer a regular file"),
                    });
                }
                sys::truncate_fd(out, 0).step("truncate")?;
            }
            self.copy_data(&src, out, want).step("copy data")?;
            let now = sys::stat_fd(&src).step("stat after reading")?;
            let same = |a: &Stat, b: &Stat| {
                (a.dev, a.ino, a.size, a.mtime, a.ctime) == (b.dev, b.ino, b.size, b.mtime, b.ctime)
            };
            if same(want, &now) {
                return Ok(src);
            }
            if (now.dev, now.ino) == (want.dev, want.ino) && now.size > want.size {
                self.notice(
                    rel,
                    format!(
                        "grew while being read ({} -> {} bytes): copied the first {}",
                        want.size, now.size, want.size
                    ),
                );
                return Ok(src);
            }
            if retried {
                return Err(StepError {
                    op: "source changed while being read, twice; not copied",
                    err: io::Error::other(format!(
                        "size {} -> {} bytes, mtime {}.{:09} -> {}.{:09}",
                        want.size, now.size, want.mtime.0, want.mtime.1, now.mtime.0, now.mtime.1
                    )),
                });
            }
            retried = true;
        }
    }

    /// Whether an existing destination file already holds SRC's content.
    pub(super) fn same_content(
        &self,
        sdir: &File,
        sname: &CStr,
        d: &File,
        dname: &CStr,
        st: &Stat,
        cur: &Stat,
    ) -> Result<bool, StepError> {
        if cur.size != st.size {
            return Ok(false);
        }
        if !self.opts.checksum && cur.mtime == st.mtime {
            return Ok(true);
        }
        let src = sys::open_read_at(sdir, sname).step("open")?;
        let dst = sys::open_rw_at(d, dname).step("open destination")?;
        if self.opts.checksum {
            let a = hash_file(&src).step("read")?;
            return Ok(a == hash_file(&dst).step("read destination")?);
        }
        // Same size, different mtime: the content may well be unchanged
        // (`touch`, a restore, an editor that saved without changes). Comparing
        // costs the same reads as copying but no writes, and keeps the inode
        // and any other names of it; the first difference ends it.
        files_equal(&src, &dst).step("compare")
    }

    /// Copies file data, keeping holes: reflink if possible, else
    /// `copy_file_range` per data extent, else a fixed-size userspace buffer.
    pub(super) fn copy_data(&self, src: &File, dst: &File, st: &Stat) -> io::Result<()> {
        let size = st.size;
        if size == 0 {
            return Ok(());
        }
        if !is_sparse(st) {
            if self.reflink_ok.load(Relaxed) {
                match sys::reflink(src, dst) {
                    Ok(()) => {
                        self.copied(size);
                        return Ok(());
                    }
                    Err(e) if sys::is_unsupported(&e) => self.reflink_ok.store(false, Relaxed),
                    Err(e) => return Err(e),
                }
            }
            return self.copy_extent(src, dst, 0, size);
        }
        for (off, len) in data_regions(src, size)? {
            self.copy_extent(src, dst, off, len)?;
        }
        sys::truncate_fd(dst, size)
    }

    pub(super) fn copy_extent(&self, src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        if self.cfr_ok.load(Relaxed) {
            while done < len {
                let want = (len - done).min(1 << 30) as usize;
                match sys::copy_range(src, off + done, dst, off + done, want) {
                    Ok(0) => return Ok(()), // source shrank under us
                    Ok(n) => {
                        done += n as u64;
                        self.copied(n as u64);
                    }
                    Err(e) if done == 0 && sys::is_unsupported(&e) => {
                        self.cfr_ok.store(false, Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if done == len {
                return Ok(());
            }
        }
        with_buffer(|buf| {
            while done < len {
                let want = (len - done).min(buf.len() as u64) as usize;
                let n = src.read_at(&mut buf[..want], off + done)?;
                if n == 0 {
                    return Ok(());
                }
                dst.write_all_at(&buf[..n], off + done)?;
                done += n as u64;
                self.copied(n as u64);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyOptions;

    /// A sparse file streams its data regions only, each piece at its
    /// offset, and the pieces rebuild the file.
    #[test]
    fn read_data_streams_data_regions_only() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sparse");
        let f = File::create(&p).unwrap();
        let size = 8u64 << 20;
        f.set_len(size).unwrap();
        f.write_all_at(&vec![1u8; 300_000], 1 << 20).unwrap();
        f.write_all_at(&vec![2u8; 5_000], 6 << 20).unwrap();
        drop(f);
        let dir = sys::open_dir_path(t.path()).unwrap();
        let name = std::ffi::CString::new("sparse").unwrap();
        let st = sys::stat_at(&dir, &name).unwrap();
        let opts = CopyOptions::default();
        let run = Copier::new(&opts, &crate::NoProgress);
        let leaf = LocalLeaf {
            run: &run,
            dir: &dir,
            name: &name,
            st,
            entry: Entry::from_stat(&st),
            rel: Path::new("sparse"),
        };
        let mut rebuilt = vec![0u8; size as usize];
        let mut streamed = 0u64;
        leaf.read_data(&mut |off, bytes| {
            rebuilt[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
            streamed += bytes.len() as u64;
            Ok(())
        })
        .unwrap();
        assert_eq!(rebuilt, std::fs::read(&p).unwrap());
        // Holes are not streamed (the filesystem may round regions to its
        // blocks, so allow a few blocks around the data).
        assert!(
            streamed < 1 << 20,
            "streamed {streamed} bytes of a mostly empty file"
        );
    }
}
