//! Metadata of what the writer puts in place: where it is applied (a
//! handle or a name), the order (owner, xattrs, mode, times, then chattr
//! flags), and only what differs.
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::Path;

use super::entry::Entry;
use super::*;
use crate::error::{Step, StepError};
use crate::meta::{read_xattrs, sync_xattrs, FileKind, XTarget, Xattrs};
use crate::sys::{self, Stat};

pub(crate) fn has_default_acl(d: &File) -> bool {
    use xattr::FileExt;
    !matches!(d.get_xattr("system.posix_acl_default"), Ok(None))
}

/// Where metadata is applied: an open file or directory, or a name in a
/// directory for entries that are not opened (symlinks, fifos, devices).
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Fd(&'a File),
    At(&'a File, &'a CStr, FileKind),
}

impl Target<'_> {
    pub(crate) fn xtarget(&self) -> XTarget<'_> {
        match *self {
            Target::Fd(f) => XTarget::Fd(f),
            Target::At(d, n, _) => XTarget::At(d, n),
        }
    }
    pub(crate) fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::chown_fd(f, uid, gid),
            Target::At(d, n, _) => sys::chown_at(d, n, uid, gid),
        }
    }
    pub(crate) fn chmod(&self, mode: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::chmod_fd(f, mode),
            Target::At(_, _, FileKind::Symlink) => Ok(()),
            Target::At(d, n, _) => sys::chmod_at(d, n, mode),
        }
    }
    pub(crate) fn times(&self, st: &Entry) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::set_times_fd(f, st.atime, st.mtime),
            Target::At(d, n, _) => sys::set_times_at(d, n, st.atime, st.mtime),
        }
    }
    /// Sets the kept `chattr` flags; only files and directories have them.
    pub(crate) fn set_attrs(&self, attrs: u32) -> io::Result<()> {
        match *self {
            Target::Fd(f) => sys::set_attrs_fd(f, attrs),
            Target::At(d, n, FileKind::File | FileKind::Dir) => {
                sys::set_attrs_fd(&sys::open_for_attrs_at(d, n)?, attrs)
            }
            Target::At(..) if attrs == 0 => Ok(()),
            Target::At(..) => Err(io::Error::from_raw_os_error(libc::ENOTTY)),
        }
    }
    pub(crate) fn is_symlink(&self) -> bool {
        matches!(self, Target::At(_, _, FileKind::Symlink))
    }
}

/// `+i`, `+a` or `+ia`, as chattr spells them.
pub(crate) fn attrs_word(attrs: u32) -> String {
    let mut w = String::from("+");
    if attrs & sys::ATTR_IMMUTABLE != 0 {
        w.push('i');
    }
    if attrs & sys::ATTR_APPEND != 0 {
        w.push('a');
    }
    w
}

impl DestWriter<'_> {
    /// Gives a new file, now under its final name, the source's `chattr`
    /// flags (a failure to is reported as partial).
    pub(crate) fn set_new_attrs(&self, f: &File, st: &Entry, partial: &mut Vec<String>) {
        if st.attrs != 0 && !self.opts.dry_run {
            if let Err(e) = sys::set_attrs_fd(f, st.attrs) {
                partial.push(format!(
                    "chattr flags {} not set: {e}",
                    attrs_word(st.attrs)
                ));
            }
        }
    }

    /// Clears the `chattr` flags of an entry in DST that is about to be
    /// replaced or written into (a rename over, or an unlink of, an
    /// immutable or append-only entry fails).
    pub(crate) fn unlock(&self, d: &File, name: &CStr, cur: &Stat) -> Result<(), StepError> {
        if cur.attrs == 0 {
            return Ok(());
        }
        Target::At(d, name, cur.kind())
            .set_attrs(0)
            .step("clear chattr flags")
    }

    /// An existing entry that already holds the right content: fixes its
    /// metadata where it differs and records metadata or unchanged.
    pub(crate) fn fix_in_place(
        &self,
        t: Target<'_>,
        want: &Entry,
        want_x: &Xattrs,
        have: &Stat,
        rel: &Path,
    ) -> Result<(), StepError> {
        let mut partial = Vec::new();
        let wrote = self.sync_meta(t, want, want_x, have, Fresh::No, &mut partial)?;
        self.record(
            if wrote {
                Outcome::Metadata
            } else {
                Outcome::Unchanged
            },
            rel,
        );
        self.partial(rel, partial);
        Ok(())
    }

    /// Brings `t`'s owner, xattrs, mode and times in line with SRC's, writing
    /// only what differs (so a re-run with no changes writes nothing).
    ///
    /// Order matters: chown first (it clears setuid/setgid and file
    /// capabilities), then xattrs (ACLs included), then the mode, then times.
    /// Returns whether anything was (or, in a dry run, would be) written.
    pub(crate) fn sync_meta(
        &self,
        t: Target<'_>,
        src: &Entry,
        src_x: &Xattrs,
        have: &Stat,
        fresh: Fresh<'_>,
        partial: &mut Vec<String>,
    ) -> Result<bool, StepError> {
        let (fresh, known_x) = match fresh {
            Fresh::No => (false, None),
            Fresh::Yes(x) => (true, x),
        };
        let dry = self.opts.dry_run;
        let mut wrote = false;
        let mut force_mode = false;
        // An immutable or append-only entry refuses every change, so its
        // flags come off first when anything is to change, and go back on
        // (the source's) last, after data and metadata.
        let mut attrs = have.attrs;
        let kept = sys::ATTR_IMMUTABLE | sys::ATTR_APPEND;
        if attrs & kept != 0
            && !dry
            && (src.attrs != have.attrs
                || src.perm() != have.perm()
                || src.mtime != have.mtime
                || (self.opts.owner
                    && (self.opts.ids.uid(src.uid), self.opts.ids.gid(src.gid))
                        != (have.uid, have.gid)))
        {
            t.set_attrs(0).step("clear chattr flags")?;
            attrs = 0;
        }
        // The owner the entry should have, and the one it has once this is
        // done (they differ when the owner is not preserved or not settable).
        let (want_owner, mut owner) = if self.opts.owner {
            let want = (self.opts.ids.uid(src.uid), self.opts.ids.gid(src.gid));
            (want, (have.uid, have.gid))
        } else {
            ((src.uid, src.gid), (have.uid, have.gid))
        };
        if self.opts.owner && owner != want_owner {
            let (uid, gid) = want_owner;
            wrote = true;
            if !dry {
                match t.chown(uid, gid) {
                    // chown clears setuid and setgid, nothing else.
                    Ok(()) => {
                        force_mode = src.perm() & 0o6000 != 0;
                        owner = want_owner;
                    }
                    Err(e) => partial.push(format!("owner {uid}:{gid} not set: {e}")),
                }
            } else {
                owner = want_owner;
            }
        }
        // A setuid or setgid file whose owner or group did not come along
        // would run as whoever owns it here: the bit is dropped, as cp does.
        let mut mode = src.perm();
        if src.kind() == FileKind::File && mode & 0o6000 != 0 {
            let mut drop_bits = 0;
            if mode & 0o4000 != 0 && owner.0 != want_owner.0 {
                drop_bits |= 0o4000;
            }
            if mode & 0o2000 != 0 && owner.1 != want_owner.1 {
                drop_bits |= 0o2000;
            }
            if drop_bits != 0 {
                mode &= !drop_bits;
                partial.push(format!(
                    "{} cleared: owner not preserved",
                    match drop_bits {
                        0o4000 => "setuid",
                        0o2000 => "setgid",
                        _ => "setuid and setgid",
                    }
                ));
            }
        }
        if self.policy.any() {
            let read;
            let have_x = match known_x {
                Some(x) => x,
                None => {
                    read =
                        read_xattrs(&t.xtarget(), self.policy).step("read destination xattrs")?;
                    &read
                }
            };
            if dry {
                wrote |= have_x != src_x;
            } else if sync_xattrs(&t.xtarget(), have_x, src_x, partial) {
                wrote = true;
                force_mode = true;
            }
        }
        // `have` is read back even for a fresh entry, and new files are
        // created with their final permission bits (as rsync does), so the
        // common file needs no chmod at all.
        if !t.is_symlink() && (force_mode || have.perm() != mode) {
            wrote |= have.perm() != mode;
            if !dry {
                if let Err(e) = t.chmod(mode) {
                    partial.push(format!("mode {mode:o} not set: {e}"));
                }
            }
        }
        if fresh || have.mtime != src.mtime {
            wrote |= have.mtime != src.mtime;
            if !dry {
                if let Err(e) = t.times(src) {
                    partial.push(format!("times not set: {e}"));
                }
            }
        }
        // A new file gets its flags once it has its name (see put_new_file).
        let deferred = fresh && src.kind() == FileKind::File;
        if src.attrs != attrs && !deferred {
            wrote |= src.attrs != have.attrs;
            if !dry {
                if let Err(e) = t.set_attrs(src.attrs) {
                    partial.push(format!(
                        "chattr flags {} not set: {e}",
                        attrs_word(src.attrs)
                    ));
                }
            }
        }
        Ok(wrote)
    }

    /// Brings a finished directory's metadata in line with `st` and `want_x`,
    /// and records the outcome (for one that existed: metadata or unchanged).
    pub(crate) fn apply_dir_meta(
        &self,
        d: &File,
        st: &Entry,
        want_x: impl FnOnce() -> Result<Xattrs, StepError>,
        existed: bool,
        rel: &Path,
    ) {
        let r = (|| -> Result<bool, StepError> {
            let want_x = want_x()?;
            let have = sys::stat_fd(d).step("stat destination")?;
            let mut partial = Vec::new();
            let fresh = if existed { Fresh::No } else { Fresh::Yes(None) };
            let wrote = self.sync_meta(Target::Fd(d), st, &want_x, &have, fresh, &mut partial)?;
            self.partial(rel, partial);
            Ok(wrote)
        })();
        match r {
            Ok(true) if existed => self.record(Outcome::Metadata, rel),
            Ok(false) if existed => self.record(Outcome::Unchanged, rel),
            Ok(_) => {}
            Err(e) => self.fail(rel, e),
        }
    }
}
