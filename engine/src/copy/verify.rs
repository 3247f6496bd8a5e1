//! `--verify`: DST re-read after the copy and compared with SRC, entry by
//! entry, through the same walk.
use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::data::hash_file;
use super::*;
use crate::dest::{name_of, EntryIssue, MAX_ISSUES};
use crate::error::{Step, StepError};
use crate::meta::FileKind;
use crate::sys::{self};
use crate::walk::{DiskVisitor, Opened};

/// `--verify`'s [`TreeVisitor`]: a directory holds nothing once listed.
pub(super) struct VerifyWalk<'r, 'a>(pub(super) &'r Copier<'a>);

/// A directory pair found by `--verify`, opened when its turn comes.
pub(super) struct VerifySub {
    parents: Arc<(File, File)>,
    name: CString,
    rel: PathBuf,
}

impl DiskVisitor for VerifyWalk<'_, '_> {
    type Dir = PathBuf;
    type Shared = Arc<(File, File)>;
    type Sub = VerifySub;

    fn list_failed(&self, rel: &PathBuf, e: io::Error) {
        self.0.mismatch(rel, format!("reading directory: {e}"))
    }

    fn entry(
        &self,
        rel: &PathBuf,
        dirs: &Arc<(File, File)>,
        e: &sys::RawEntry,
    ) -> Option<VerifySub> {
        let crel = rel.join(name_of(&e.name));
        let descend = self
            .0
            .verify_entry(&dirs.0, &dirs.1, &e.name, &e.name, crel.clone());
        descend.then(|| VerifySub {
            parents: dirs.clone(),
            name: e.name.clone(),
            rel: crel,
        })
    }

    fn open_sub(&self, _: &PathBuf, sub: VerifySub) -> Option<Opened<Self>> {
        let r = (|| -> Result<_, StepError> {
            let s = sys::open_dir_at(&sub.parents.0, &sub.name).step("open directory")?;
            let d =
                sys::open_dir_at(&sub.parents.1, &sub.name).step("open destination directory")?;
            let l = sys::DirStream::new(&s).step("read directory")?;
            Ok((l, Arc::new((s, d))))
        })();
        match r {
            Ok(listing) => Some((sub.rel, Some(listing))),
            Err(e) => {
                self.0.mismatch(&sub.rel, e.to_string());
                None
            }
        }
    }

    fn done(&self, _: &PathBuf, _: Option<&PathBuf>) {}
}

impl Copier<'_> {
    /// `--verify`: compares one entry of DST with SRC; returns true for a
    /// directory on both sides, which the walk then goes into.
    pub(super) fn verify_entry(
        &self,
        sdir: &File,
        ddir: &File,
        sname: &CStr,
        dname: &CStr,
        rel: PathBuf,
    ) -> bool {
        let r = (|| -> Result<Result<bool, String>, StepError> {
            let st = sys::stat_at(sdir, sname).step("stat")?;
            if self.opts.filter.excluded(&rel, st.kind() == FileKind::Dir) {
                return Ok(Ok(false));
            }
            let Some(dt) = sys::stat_at_opt(ddir, dname).step("stat destination")? else {
                return Ok(Err("missing from destination".into()));
            };
            if dt.kind() != st.kind() {
                return Ok(Err(format!(
                    "type differs: {:?} vs {:?}",
                    st.kind(),
                    dt.kind()
                )));
            }
            match st.kind() {
                FileKind::Dir => return Ok(Ok(true)),
                FileKind::File => {
                    if dt.size != st.size {
                        return Ok(Err(format!("size differs: {} vs {}", st.size, dt.size)));
                    }
                    let a =
                        hash_file(&sys::open_read_at(sdir, sname).step("open")?).step("read")?;
                    let b = hash_file(&sys::open_read_at(ddir, dname).step("open destination")?)
                        .step("read destination")?;
                    if a != b {
                        return Ok(Err(format!(
                            "content differs: blake3 {} vs {}",
                            a.to_hex(),
                            b.to_hex()
                        )));
                    }
                }
                FileKind::Symlink => {
                    let same = sys::readlink_at(sdir, sname).step("readlink")?
                        == sys::readlink_at(ddir, dname).step("readlink destination")?;
                    if !same {
                        return Ok(Err("symlink target differs".into()));
                    }
                }
                _ => {}
            }
            Ok(Ok(false))
        })();
        match r {
            Ok(Ok(descend)) => descend,
            Ok(Err(m)) => {
                self.mismatch(&rel, m);
                false
            }
            Err(e) => {
                self.mismatch(&rel, e.to_string());
                false
            }
        }
    }

    pub(super) fn mismatch(&self, rel: &Path, reason: String) {
        let mut m = self.mismatches.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_ISSUES {
            m.push(EntryIssue {
                path: rel.to_path_buf(),
                reason,
            });
        }
    }
}
