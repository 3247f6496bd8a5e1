//! Hardlink groups, for any source: the first name met is written, later
//! names are linked to it.
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::error::{Step, StepError};
use crate::sys::{self};

/// The state of a hardlinked inode's first destination name.
pub(crate) enum Link {
    Pending,
    Done {
        rel: PathBuf,
        dst: Option<(u64, u64)>,
    },
    Failed,
}

/// `linkat`, also to an immutable or append-only inode (which refuses new
/// names): its flags come off for the link and go back on.
pub(crate) fn link_past_attrs(odir: &File, old: &CStr, ndir: &File, new: &CStr) -> io::Result<()> {
    match sys::link_at(odir, old, ndir, new) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let st = sys::stat_at(odir, old)?;
            if st.attrs == 0 {
                return Err(e);
            }
            let f = sys::open_for_attrs_at(odir, old)?;
            sys::set_attrs_fd(&f, 0)?;
            let r = sys::link_at(odir, old, ndir, new);
            sys::set_attrs_fd(&f, st.attrs)?;
            r
        }
        r => r,
    }
}

impl DestWriter<'_> {
    /// Hardlink groups, for any source: `key` names the inode. The first
    /// name met is written by `write_first`, which says whether it kept the
    /// inode already there; later names are linked to it.
    /// Returns (whether this was the first name, the write's result).
    #[allow(clippy::type_complexity)]
    pub(crate) fn linked(
        &self,
        key: super::entry::LinkKey,
        dst: Option<&File>,
        dname: &CStr,
        rel: &Path,
        write_first: impl FnOnce() -> Result<bool, StepError>,
    ) -> Result<(bool, Result<(), StepError>), StepError> {
        // A later name must be linked while its directory is still being
        // processed (its metadata is applied afterwards), so it waits for the
        // first name to be written. The wait runs other queued work through
        // rayon::yield_now, and cannot deadlock: writing a first name is
        // straight-line code that never waits on anything.
        let leader = loop {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            match links.get(&key) {
                None | Some(Link::Failed) => {
                    links.insert(key.clone(), Link::Pending);
                    break None;
                }
                Some(Link::Pending) => {
                    drop(links);
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
                Some(Link::Done { rel, dst }) => break Some((rel.clone(), *dst)),
            }
        };
        if let Some((lrel, ldst)) = leader {
            let r = match dst {
                Some(d) => self.make_link(d, dname, rel, &lrel, ldst),
                None => {
                    self.record(Outcome::Created, rel);
                    Ok(())
                }
            };
            return Ok((false, r));
        }
        let r = write_first();
        let state = match (&r, dst) {
            // In a dry run the first name still has its old inode, which
            // the later names keep only if a real run would keep it too.
            (Ok(kept), Some(d)) if *kept || !self.opts.dry_run => match sys::stat_at(d, dname) {
                Ok(s) => Link::Done {
                    rel: rel.to_path_buf(),
                    dst: Some((s.dev, s.ino)),
                },
                Err(_) => Link::Failed,
            },
            (Ok(_), _) => Link::Done {
                rel: rel.to_path_buf(),
                dst: None,
            },
            (Err(_), _) => Link::Failed,
        };
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, state);
        Ok((true, r.map(drop)))
    }

    /// Makes `dname` in `dst` another name of the destination inode first
    /// written at `leader_rel`.
    pub(crate) fn make_link(
        &self,
        dst: &File,
        dname: &CStr,
        rel: &Path,
        leader_rel: &Path,
        leader_dst: Option<(u64, u64)>,
    ) -> Result<(), StepError> {
        let cur = sys::stat_at_opt(dst, dname).step("stat destination")?;
        if let (Some(c), Some(l)) = (cur, leader_dst) {
            if (c.dev, c.ino) == l {
                self.record(Outcome::Unchanged, rel);
                return Ok(());
            }
        }
        self.may_replace(dst, dname, cur.as_ref())?;
        if let (Some(c), false) = (&cur, self.opts.dry_run) {
            self.unlock(dst, dname, c)?;
        }
        let outcome = if cur.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        if self.opts.dry_run {
            self.record(outcome, rel);
            return Ok(());
        }
        let (ldir, lname) = self
            .open_dst_parent(leader_rel)
            .step("open hardlink target")?;
        match cur {
            None => link_past_attrs(&ldir, &lname, dst, dname).step("link")?,
            Some(c) => {
                let tmp = tmp_name(dname);
                self.clear_tmp(dst, &tmp)?;
                link_past_attrs(&ldir, &lname, dst, &tmp).step("link")?;
                if let Err(e) = self.clear_dir_for(dst, dname, Some(c), rel) {
                    let _ = sys::unlink_at(dst, &tmp, false);
                    return Err(e);
                }
                sys::rename_at(dst, &tmp, dst, dname).step("rename")?;
            }
        }
        self.record(outcome, rel);
        Ok(())
    }

    /// Opens the destination directory holding `rel`, one component at a time
    /// with `O_NOFOLLOW`.
    pub(crate) fn open_dst_parent(&self, rel: &Path) -> io::Result<(File, CString)> {
        let root = self
            .dst_root
            .as_ref()
            .ok_or_else(|| io::Error::other("no destination root"))?;
        let mut d = root.try_clone()?;
        // A link key that names an earlier path (a tar hardlink, later)
        // comes from outside: only plain components, each opened without
        // following a symlink, so it cannot lead out of the root.
        let mut comps = Vec::new();
        for comp in rel.components() {
            match comp {
                std::path::Component::Normal(c) => comps.push(CString::new(c.as_bytes())?),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("link target {} leaves the destination", rel.display()),
                    ))
                }
            }
        }
        let name = comps
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty link target"))?;
        for c in &comps {
            d = sys::open_dir_at(&d, c)?;
        }
        Ok((d, name))
    }
}
