//! The walker's ordered mode, for sinks that need one ordered stream (an
//! archive, the wire): a tree's entries depth first, a directory before
//! its contents and each directory's entries by name, as an iterator on the
//! caller's thread. So that the sink never waits on a disk read, the data
//! of the files ahead in the stream is prepared on the rayon pool: each is
//! opened and, if small, read whole, within a bounded window of files and
//! bytes.
//!
//! Its users: archive creation, and next the ssh sender.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};

use crate::chunk::read_full_at;
use crate::filter::Filter;
use crate::meta::FileKind;
use crate::sys::{self, Stat};

/// Files prepared ahead at most.
const AHEAD_FILES: usize = 32;
/// A file up to this size is read whole ahead; a larger one only opened.
const SMALL: u64 = 1 << 20;

/// A file's data as prepared ahead: its open handle, and its bytes if it is
/// small (`None`: read it from the handle).
pub(crate) struct Prepared {
    pub(crate) file: File,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// One entry of the ordered stream.
pub(crate) struct OrderedEntry {
    /// Path relative to the root.
    pub(crate) rel: PathBuf,
    /// As `lstat` saw it when its directory was listed.
    pub(crate) st: Stat,
    /// For a regular file, its data (or why it could not be opened or read).
    pub(crate) data: Option<io::Result<Prepared>>,
    /// Its directory and name, for what the sink reads itself (a symlink's
    /// target, attributes).
    pub(crate) dir: Arc<File>,
    pub(crate) name: CString,
}

/// A directory being streamed: its handle, its path, and its entries not
/// yet handed out, by name.
struct Frame {
    dir: Arc<File>,
    rel: PathBuf,
    rest: VecDeque<(CString, Stat)>,
}

/// An entry whose data is being prepared on the pool.
struct Pending {
    rel: PathBuf,
    st: Stat,
    dir: Arc<File>,
    name: CString,
    data: Option<Receiver<io::Result<Prepared>>>,
}

/// The ordered walk (see the module docs). An entry that cannot be listed
/// or stat'ed is an `Err` in the stream, with its path, and the walk goes on.
pub(crate) struct OrderedWalk<'f> {
    filter: &'f Filter,
    stack: Vec<Frame>,
    /// Entries taken off the stack, in stream order, some being prepared.
    ahead: VecDeque<Pending>,
    errors: VecDeque<(PathBuf, io::Error)>,
    /// Small files are read ahead, not only opened.
    read_ahead: bool,
    /// Files are not even opened: their data is `None`.
    names_only: bool,
}

impl<'f> OrderedWalk<'f> {
    /// Streams the tree below `root` (itself not included), skipping what
    /// `filter` excludes.
    pub(crate) fn new(root: File, filter: &'f Filter) -> OrderedWalk<'f> {
        let mut w = OrderedWalk {
            filter,
            stack: Vec::new(),
            ahead: VecDeque::new(),
            errors: VecDeque::new(),
            read_ahead: true,
            names_only: false,
        };
        w.push_dir(Arc::new(root), PathBuf::new());
        w
    }

    /// Files are only opened ahead, not read.
    #[allow(dead_code)]
    pub(crate) fn open_only(mut self) -> Self {
        self.read_ahead = false;
        self
    }

    /// Files are neither opened nor read (their `data` is `None`): for a
    /// sink that opens only the files it turns out to want (the wire's
    /// sender, whose receiver has most of them already on a re-run).
    pub(crate) fn names_only(mut self) -> Self {
        self.names_only = true;
        self
    }

    /// Lists a directory, by name, onto the stack.
    fn push_dir(&mut self, dir: Arc<File>, rel: PathBuf) {
        let mut names = Vec::new();
        if let Err(e) = sys::each_batch(&dir, |batch| -> io::Result<()> {
            names.extend(batch.iter().map(|e| e.name.clone()));
            Ok(())
        }) {
            self.errors.push_back((rel.clone(), e));
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut rest = VecDeque::with_capacity(names.len());
        for name in names {
            let crel = rel.join(OsStr::from_bytes(name.as_bytes()));
            match sys::stat_at(&dir, &name) {
                Ok(st) if self.filter.excluded(&crel, st.kind() == FileKind::Dir) => {}
                Ok(st) => rest.push_back((name, st)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.errors.push_back((crel, e)),
            }
        }
        self.stack.push(Frame { dir, rel, rest });
    }

    /// The next entry in stream order, without its data; directories are
    /// descended into as they are taken.
    fn take(&mut self) -> Option<Pending> {
        loop {
            let top = self.stack.last_mut()?;
            let Some((name, st)) = top.rest.pop_front() else {
                self.stack.pop();
                continue;
            };
            let rel = top.rel.join(OsStr::from_bytes(name.as_bytes()));
            let dir = top.dir.clone();
            if st.kind() == FileKind::Dir {
                match sys::open_dir_at(&dir, &name) {
                    Ok(d) => self.push_dir(Arc::new(d), rel.clone()),
                    Err(e) => self.errors.push_back((rel.clone(), e)),
                }
            }
            return Some(Pending {
                rel,
                st,
                dir,
                name,
                data: None,
            });
        }
    }

    /// Fills the window ahead and starts preparing the files in it.
    fn fill(&mut self) {
        while self.ahead.len() < AHEAD_FILES {
            let Some(mut p) = self.take() else { break };
            if p.st.kind() == FileKind::File && !self.names_only {
                let (tx, rx) = bounded(1);
                let (dir, name) = (p.dir.clone(), p.name.clone());
                let size = if self.read_ahead { p.st.size } else { u64::MAX };
                rayon::spawn(move || {
                    let _ = tx.send(prepare(&dir, &name, size));
                });
                p.data = Some(rx);
            }
            self.ahead.push_back(p);
        }
    }
}

/// Opens a file without following a symlink and, if small, reads it whole
/// (`size` `u64::MAX`: only opens it).
fn prepare(dir: &File, name: &CString, size: u64) -> io::Result<Prepared> {
    let file = sys::open_read_at(dir, name)?;
    let bytes = if size <= SMALL {
        let mut buf = vec![0u8; size as usize];
        let n = read_full_at(&file, &mut buf, 0)?;
        buf.truncate(n);
        Some(buf)
    } else {
        None
    };
    Ok(Prepared { file, bytes })
}

impl Iterator for OrderedWalk<'_> {
    type Item = Result<OrderedEntry, (PathBuf, io::Error)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.errors.pop_front() {
            return Some(Err(e));
        }
        if self.ahead.is_empty() {
            self.fill();
        }
        let p = self.ahead.pop_front()?;
        let data = p.data.map(|rx| {
            super::pool_recv(&rx)
                .unwrap_or_else(|| Err(io::Error::other("preparing the file stopped")))
        });
        // Keep the pool busy while the sink takes this one.
        self.fill();
        Some(Ok(OrderedEntry {
            rel: p.rel,
            st: p.st,
            data,
            dir: p.dir,
            name: p.name,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Every entry below `root`, depth first and by name, walked with std.
    fn expected(root: &std::path::Path, rel: PathBuf, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let r = rel.join(&n);
            out.push(r.clone());
            let md = std::fs::symlink_metadata(root.join(&r)).unwrap();
            if md.is_dir() {
                expected(root, r, out);
            }
        }
    }

    #[test]
    fn streams_depth_first_by_name_with_data_prepared() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for d in 0..7 {
            for f in 0..40 {
                let p = root.join(format!("d{d}/sub{}/f{f:02}", f % 3));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, format!("{d}/{f}").repeat(f + 1)).unwrap();
            }
        }
        std::fs::write(root.join("big"), vec![7u8; (SMALL + 5) as usize]).unwrap();
        std::os::unix::fs::symlink("d0", root.join("link")).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        let mut want = Vec::new();
        expected(root, PathBuf::new(), &mut want);

        let filter = Filter::default();
        let got: Vec<OrderedEntry> = OrderedWalk::new(sys::open_dir_path(root).unwrap(), &filter)
            .map(|e| e.unwrap_or_else(|(p, e)| panic!("{}: {e}", p.display())))
            .collect();
        let paths: Vec<PathBuf> = got.iter().map(|e| e.rel.clone()).collect();
        assert_eq!(paths, want);
        for e in &got {
            let on_disk = std::fs::symlink_metadata(root.join(&e.rel)).unwrap();
            assert_eq!(e.st.kind(), FileKind::from_mode(on_disk.mode()));
            if !on_disk.is_file() {
                assert!(e.data.is_none(), "{}", e.rel.display());
                continue;
            }
            let p = e.data.as_ref().unwrap().as_ref().unwrap();
            let want = std::fs::read(root.join(&e.rel)).unwrap();
            match &p.bytes {
                Some(b) => assert_eq!(b, &want, "{}", e.rel.display()),
                None => {
                    assert!(want.len() as u64 > SMALL);
                    let mut b = vec![0u8; want.len()];
                    read_full_at(&p.file, &mut b, 0).unwrap();
                    assert_eq!(b, want);
                }
            }
        }
    }

    #[test]
    fn excluded_entries_are_not_streamed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("keep/skip")).unwrap();
        std::fs::write(t.path().join("keep/skip/x"), b"x").unwrap();
        std::fs::write(t.path().join("keep/a.log"), b"x").unwrap();
        std::fs::write(t.path().join("keep/b"), b"x").unwrap();
        let filter = Filter::new(&["skip/", "*.log"]).unwrap();
        let got: Vec<PathBuf> = OrderedWalk::new(sys::open_dir_path(t.path()).unwrap(), &filter)
            .map(|e| e.ok().unwrap().rel)
            .collect();
        assert_eq!(got, [PathBuf::from("keep"), PathBuf::from("keep/b")]);
    }
}
