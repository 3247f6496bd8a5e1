//! Removing from DST: directories a non-directory replaces, entries the
//! source no longer has, and whole trees, without recursion.
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::error::{Step, StepError};
use crate::meta::FileKind;
use crate::sys::{self, Stat};

/// The failure of an entry whose place in DST is a directory with contents.
pub(crate) fn not_empty() -> StepError {
    StepError {
        op: "cannot replace non-empty directory (--delete would)",
        err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
    }
}

impl DestWriter<'_> {
    /// `--delete` for a source that is not a directory (a snapshot's tree):
    /// removes every entry of `dst` for which `wanted` is false and that the
    /// filter does not protect, and counts it as deleted. Leftover
    /// temporary files go too, uncounted. A dry run only counts and lists.
    pub(crate) fn remove_extraneous(&self, dst: &File, rel: &Path, wanted: impl Fn(&[u8]) -> bool) {
        let r = sys::each_batch(dst, |batch| -> io::Result<()> {
            for e in batch {
                let name = e.name.to_bytes();
                if wanted(name) {
                    continue;
                }
                let crel = rel.join(name_of(&e.name));
                let is_dir = match sys::is_dir_entry(dst, e) {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(err) => {
                        self.fail(&crel, format!("stat destination: {err}"));
                        continue;
                    }
                };
                let tmp = is_tmp_name(name) && !is_dir;
                if !tmp && self.protect.excluded(&crel, is_dir) {
                    continue;
                }
                let r = if self.opts.dry_run {
                    if tmp {
                        continue;
                    }
                    self.dry_remove_tree(dst, &e.name, &crel)
                } else {
                    self.remove_tree(dst, &e.name, &crel, !tmp)
                };
                if let Err(err) = r {
                    self.fail(&crel, format!("deleting: {err}"));
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(rel, format!("reading destination directory: {e}"));
        }
    }

    /// A dry run's [`DestWriter::remove_tree`]: counts and lists as deleted
    /// what it would remove, and touches nothing. Like it, it stops with an
    /// error at an entry the filter protects (what was counted before stays
    /// counted, as what was removed before stays removed). Depth first from
    /// a list of directories still to read, each named by its parent's
    /// handle: no recursion.
    pub(crate) fn dry_remove_tree(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
    ) -> Result<(), StepError> {
        let st = sys::stat_at(dir, name).step("stat")?;
        if st.kind() != FileKind::Dir {
            self.deleted(true, rel);
            return Ok(());
        }
        let mut todo: Vec<(Arc<File>, CString, PathBuf)> = Vec::new();
        let first = sys::open_dir_at(dir, name).step("open directory")?;
        let mut next = Some((first, rel.to_path_buf()));
        loop {
            let (d, drel) = match next.take() {
                Some(x) => x,
                None => {
                    let Some((parent, name, crel)) = todo.pop() else {
                        break;
                    };
                    let d = sys::open_dir_at(&parent, &name).step("open directory")?;
                    (d, crel)
                }
            };
            let d = Arc::new(d);
            let mut excluded = false;
            sys::each_batch(&d, |batch| -> io::Result<()> {
                for e in batch {
                    let crel = drel.join(name_of(&e.name));
                    let is_dir = sys::stat_at(&d, &e.name)?.kind() == FileKind::Dir;
                    if self.protect.excluded(&crel, is_dir) {
                        excluded = true;
                        break;
                    }
                    if is_dir {
                        todo.push((d.clone(), e.name.clone(), crel.clone()));
                    }
                    self.deleted(true, &crel);
                }
                Ok(())
            })
            .step("read directory")?;
            if excluded {
                return Err(StepError {
                    op: "cannot remove directory holding excluded entries",
                    err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
                });
            }
        }
        self.deleted(true, rel);
        Ok(())
    }

    /// Removes `name` in `dir` and everything below it, never following a
    /// symlink. `report`: count (and list) every removed entry as deleted.
    /// Inside a removed directory, entries the filter excludes are kept, as
    /// they are everywhere else (`--exclude` protects from `--delete`); the
    /// directory then stays and this fails, naming why. Depth first from a
    /// stack of the directories being emptied, one handle each, so a chain
    /// of any depth goes without recursion.
    pub(crate) fn remove_tree(
        &self,
        dir: &File,
        name: &CStr,
        rel: &Path,
        report: bool,
    ) -> Result<(), StepError> {
        /// A directory being emptied, and the entries of it still to remove.
        struct Emptying {
            fd: File,
            name: CString,
            rel: PathBuf,
            todo: Vec<sys::RawEntry>,
        }
        let st = sys::stat_at(dir, name).step("stat")?;
        self.unlock(dir, name, &st)?;
        if st.kind() != FileKind::Dir {
            sys::unlink_at(dir, name, false).step("unlink")?;
            self.deleted(report, rel);
            return Ok(());
        }
        let open = |parent: &File, name: &CStr, st: &Stat| -> Result<File, StepError> {
            let d = sys::open_dir_at(parent, name).step("open directory")?;
            if !self.is_root && st.perm() & 0o700 != 0o700 {
                sys::chmod_fd(&d, st.perm() | 0o700).step("chmod")?;
            }
            Ok(d)
        };
        let mut stack = vec![Emptying {
            fd: open(dir, name, &st)?,
            name: name.to_owned(),
            rel: rel.to_path_buf(),
            todo: Vec::new(),
        }];
        while let Some(top) = stack.last_mut() {
            let Some(e) = top.todo.pop() else {
                // What is left is read from the start again: the entries
                // removed since are gone from it.
                let mut left = Vec::new();
                sys::DirStream::new(&top.fd)
                    .and_then(|mut s| s.read_batch(&mut left, sys::BATCH))
                    .step("read directory")?;
                if !left.is_empty() {
                    top.todo = left;
                    continue;
                }
                let done = stack.pop().expect("a directory");
                drop(done.fd);
                let parent = stack.last().map_or(dir, |p| &p.fd);
                sys::unlink_at(parent, &done.name, true).step("rmdir")?;
                self.deleted(report, &done.rel);
                continue;
            };
            let crel = top.rel.join(name_of(&e.name));
            let cst = sys::stat_at(&top.fd, &e.name).step("stat")?;
            let is_dir = cst.kind() == FileKind::Dir;
            if self.protect.excluded(&crel, is_dir) {
                return Err(StepError {
                    op: "cannot remove directory holding excluded entries",
                    err: io::Error::from_raw_os_error(libc::ENOTEMPTY),
                });
            }
            self.unlock(&top.fd, &e.name, &cst)?;
            if is_dir {
                let fd = open(&top.fd, &e.name, &cst)?;
                stack.push(Emptying {
                    fd,
                    name: e.name,
                    rel: crel,
                    todo: Vec::new(),
                });
            } else {
                sys::unlink_at(&top.fd, &e.name, false).step("unlink")?;
                self.deleted(report, &crel);
            }
        }
        Ok(())
    }

    /// Whether a new non-directory may take the place of `cur`. A directory
    /// is only replaced when it is empty or with `--delete` (then all it
    /// holds is removed and counted as deleted), as rsync does: without
    /// `--delete`, whatever is inside is not haul's to remove.
    pub(crate) fn may_replace(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<&Stat>,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir && !self.delete => {
                let sub = sys::open_dir_at(d, name).step("open destination directory")?;
                if sys::DirStream::new(&sub)
                    .and_then(|mut s| s.read_batch(&mut Vec::new(), 1))
                    .step("read destination directory")?
                    > 0
                {
                    return Err(not_empty());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Makes room for a new entry named `name`: a directory there (`cur`)
    /// is removed, since nothing can be renamed or linked over it. Without
    /// `--delete` only an empty one is (see [`DestWriter::may_replace`]).
    pub(crate) fn clear_dir_for(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
    ) -> Result<(), StepError> {
        match cur {
            Some(c) if c.kind() == FileKind::Dir && self.delete => {
                self.remove_tree(d, name, rel, true)
            }
            Some(c) if c.kind() == FileKind::Dir => sys::unlink_at(d, name, true).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    not_empty()
                } else {
                    StepError {
                        op: "remove empty directory",
                        err: e,
                    }
                }
            }),
            _ => Ok(()),
        }
    }
}
