//! One leaf (a file, symlink, fifo, socket or device) put into DST, from any
//! source: the one place that decides between keeping what is there, fixing
//! its metadata in place, and writing it anew.
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::Path;

use super::entry::Entry;
use super::{DestWriter, Fresh, Outcome, Target};
use crate::error::{Step, StepError};
use crate::meta::{FileKind, Xattrs};
use crate::sys::{self, Stat};

/// Where a leaf's data streams to: each piece with its offset.
pub(crate) type DataSink<'s> = dyn FnMut(u64, &[u8]) -> Result<(), StepError> + 's;

/// A leaf as its source has it. Copy reads a local file; restore reads a
/// snapshot's node and blobs; later, archives and the wire. Generic, so the
/// hot path is monomorphised.
pub(crate) trait LeafSource {
    /// The entry as it should be.
    fn entry(&self) -> &Entry;
    /// Whether the regular file `name` in `d` (last seen as `cur`, of the
    /// same size) already holds this content.
    fn same_content(&self, d: &File, name: &CStr, cur: &Stat) -> Result<bool, StepError>;
    /// A symlink's target (asked of symlinks only).
    fn target(&self) -> Result<Vec<u8>, StepError>;
    /// The extended attributes it should have (ACLs and capabilities included).
    fn xattrs(&self) -> Result<Xattrs, StepError>;
    /// Writes a regular file's data into the new, empty `out`. Returns the
    /// state the data is of (a source may have read it again) and the
    /// attributes, which a source may read alongside the data.
    fn fill(&self, out: &File) -> Result<(Entry, Xattrs), StepError>;
    /// A regular file's data as a stream, for sinks that are not a file
    /// (an archive, the wire): each data region in order, as (offset,
    /// bytes) pieces; a hole is simply not handed out, and the entry's size
    /// says where the file ends. (Its users, archive creation and the ssh
    /// sender, come next; until then only tests call it.)
    #[cfg_attr(not(test), allow(dead_code))]
    fn read_data(&self, each: &mut DataSink<'_>) -> Result<(), StepError>;
}

/// Where a leaf goes: its directory in DST (absent in a dry run below a
/// directory that does not exist yet), whether this run created that
/// directory (nothing in it to look up), and whether new entries in it may
/// inherit a default ACL (their attributes are then read back).
#[derive(Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) dir: Option<&'a File>,
    pub(crate) fresh: bool,
    pub(crate) acl_inherit: bool,
    /// What the caller found at the name just now, if it looked
    /// (`Some(None)`: nothing there), so it is not looked up twice.
    pub(crate) seen: Option<Option<Stat>>,
}

impl DestWriter<'_> {
    /// Puts the leaf `src` at `name` in `at`: keeps what is there if it
    /// holds the same content (fixing metadata in place), else writes it
    /// anew and names it only once complete. Records the outcome. Returns
    /// whether the entry already in DST was kept (its metadata fixed in
    /// place, if need be).
    pub(crate) fn put_leaf<S: LeafSource>(
        &self,
        at: Place<'_>,
        name: &CStr,
        rel: &Path,
        src: &S,
    ) -> Result<bool, StepError> {
        super::check_name(name)?;
        let st = src.entry();
        let cur = match (at.seen, at.dir) {
            (Some(seen), _) => seen,
            (None, Some(d)) if !at.fresh => sys::stat_at_opt(d, name).step("stat destination")?,
            _ => None,
        };
        let kind = st.kind();
        if let (Some(d), Some(c)) = (at.dir, &cur) {
            // A destination inode that other names share can only be kept
            // if the source entry is hardlinked too; otherwise fixing it in
            // place would change those other names, so it is replaced.
            let same_type = c.kind() == kind && (c.nlink == 1 || st.link.is_some());
            let reusable = same_type
                && match kind {
                    FileKind::File => c.size == st.size && src.same_content(d, name, c)?,
                    FileKind::Symlink => {
                        src.target()? == sys::readlink_at(d, name).step("readlink destination")?
                    }
                    FileKind::CharDev | FileKind::BlockDev => c.rdev == st.rdev,
                    _ => true,
                };
            if reusable {
                let x = src.xattrs()?;
                return self
                    .fix_in_place(Target::At(d, name, kind), st, &x, c, rel)
                    .map(|()| true);
            }
            self.may_replace(d, name, Some(c))?;
            if !self.opts.dry_run {
                self.unlock(d, name, c)?;
            } else if c.kind() == FileKind::Dir && self.delete {
                // What a real run would remove is counted and listed.
                self.dry_remove_tree(d, name, rel)?;
            }
        }
        let outcome = if cur.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        let Some(d) = at.dir.filter(|_| !self.opts.dry_run) else {
            self.record(outcome, rel);
            return Ok(false);
        };
        // What a new entry carries before haul sets anything: no attributes,
        // unless the directory hands down a default ACL.
        let none = Xattrs::new();
        let have_x = (!at.acl_inherit).then_some(&none);
        let mut partial = Vec::new();
        if kind == FileKind::File
            && st.size == 0
            && cur.is_none()
            && self.put_empty(d, name, st, src, have_x, &mut partial)?
        {
            self.record(Outcome::Created, rel);
            self.partial(rel, partial);
            return Ok(false);
        }
        if kind == FileKind::File {
            let mut wrote = st.clone();
            let f = self.put_new_file(d, name, st.perm() & 0o777, cur, rel, |out| {
                let (got, x) = src.fill(out)?;
                let have = sys::stat_fd(out).step("stat new file")?;
                let r = self.sync_meta(
                    Target::Fd(out),
                    &got,
                    &x,
                    &have,
                    Fresh::Yes(have_x),
                    &mut partial,
                );
                wrote = got;
                r.map(drop)
            })?;
            self.set_new_attrs(&f, &wrote, &mut partial);
        } else {
            let target = match kind {
                FileKind::Symlink => Some(src.target()?),
                _ => None,
            };
            self.put_new_special(d, name, cur, rel, |tmp| {
                let have = self.create_special(d, tmp, st, target.as_deref())?;
                let x = src.xattrs()?;
                let t = Target::At(d, tmp, kind);
                self.sync_meta(t, st, &x, &have, Fresh::Yes(have_x), &mut partial)
                    .map(drop)
            })?;
        }
        self.record(outcome, rel);
        self.partial(rel, partial);
        Ok(false)
    }

    /// A new empty file is created under its final name: it has no content a
    /// crash could tear, and this saves a rename per file (a tree of a
    /// million empty files is a real case). If a crash leaves its metadata
    /// unfinished, the next run completes it: same size, another mtime, so
    /// the contents are compared (equal) and the metadata fixed in place.
    /// Returns false if the name was taken meanwhile (the caller then goes
    /// the temporary-name way).
    fn put_empty<S: LeafSource>(
        &self,
        d: &File,
        name: &CStr,
        st: &Entry,
        src: &S,
        have_x: Option<&Xattrs>,
        partial: &mut Vec<String>,
    ) -> Result<bool, StepError> {
        let out = match sys::create_excl_at(d, name, st.perm() & 0o777) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(StepError {
                    op: "create",
                    err: e,
                })
            }
        };
        let x = src.xattrs()?;
        let have = sys::stat_fd(&out).step("stat new file")?;
        self.sync_meta(Target::Fd(&out), st, &x, &have, Fresh::Yes(have_x), partial)?;
        self.set_new_attrs(&out, st, partial);
        Ok(true)
    }
}
