//! Putting new entries in place: unnamed `O_TMPFILE` inodes linked into
//! place, temporary names renamed over, directories made real, and the
//! leftovers of an interrupted run recognised and cleared.
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use super::entry::Entry;
use super::*;
use crate::error::{Error, Step, StepError};
use crate::meta::FileKind;
use crate::sys::{self, Stat};

pub(crate) const TMP_PREFIX: &[u8] = b".haul-tmp.";

pub(crate) const TMPFILE_UNKNOWN: u8 = 0;
pub(crate) const TMPFILE_YES: u8 = 1;
pub(crate) const TMPFILE_NO: u8 = 2;

/// A new regular file being written, not yet under its final name: an
/// unnamed `O_TMPFILE` inode (`tmp` is `None`) or a file under its
/// temporary name. [`DestWriter::publish`] names it; dropping it unpublished
/// leaves nothing but, for a named one, the temporary name, which
/// [`DestWriter::discard`] removes.
pub(crate) struct NewFile {
    file: File,
    tmp: Option<CString>,
}

pub(crate) fn name_of(c: &CStr) -> &OsStr {
    OsStr::from_bytes(c.to_bytes())
}

/// The temporary name for `name`: fixed length (so it fits NAME_MAX whatever
/// `name` is) and derived from the name, so a re-run after a crash reuses,
/// and so clears, the same slot.
pub(crate) fn tmp_name(name: &CStr) -> CString {
    let h = blake3::hash(name.to_bytes());
    let hex = h.to_hex();
    let mut v = TMP_PREFIX.to_vec();
    v.extend_from_slice(&hex.as_bytes()[..16]);
    CString::new(v).expect("no NUL in hex")
}

/// `linkat(AT_EMPTY_PATH)` refused for want of privilege (`ENOENT` is what
/// kernels before 6.10 answer without `CAP_DAC_READ_SEARCH`).
pub(crate) fn flink_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::EPERM | libc::EACCES | libc::EINVAL)
    )
}

/// Refuses a name that is not one plain component: empty, `.`, `..`, or
/// holding a `/`. Names from readdir never are; names from a snapshot are
/// checked when decoded; this guards every other source (archives, the
/// wire) at the one place all names pass.
pub(crate) fn check_name(name: &CStr) -> Result<(), StepError> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(StepError {
            op: "refusing a name that is not one path component",
            err: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    Ok(())
}

pub(crate) fn is_tmp_name(name: &[u8]) -> bool {
    name.len() == TMP_PREFIX.len() + 16
        && name.starts_with(TMP_PREFIX)
        && name[TMP_PREFIX.len()..].iter().all(u8::is_ascii_hexdigit)
}

/// A path's directory (`.` if none) and final name.
pub(crate) fn split_parent(p: &Path) -> Result<(PathBuf, CString), Error> {
    let name = p
        .file_name()
        .ok_or_else(|| Error::invalid(p, "path has no final component"))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let c = CString::new(name.as_bytes()).map_err(|_| Error::invalid(p, "path contains a NUL"))?;
    Ok((parent, c))
}

/// Opens DST, creating it and its parents if missing. A DST that exists but
/// is not a directory is an error rather than something to replace: the user
/// named it.
pub(crate) fn open_or_create_root(
    dst: &Path,
    dry_run: bool,
) -> Result<(Option<File>, bool), Error> {
    match sys::stat_path(dst, true) {
        Ok(st) if st.kind() == FileKind::Dir => {
            let d =
                sys::open_dir_path(dst).map_err(|e| Error::io("opening destination", dst, e))?;
            Ok((Some(d), true))
        }
        Ok(_) => Err(Error::invalid(
            dst,
            "destination exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dry_run {
                return Ok((None, false));
            }
            std::fs::create_dir_all(dst).map_err(|e| Error::io("creating destination", dst, e))?;
            let d =
                sys::open_dir_path(dst).map_err(|e| Error::io("opening destination", dst, e))?;
            Ok((Some(d), false))
        }
        Err(e) => Err(Error::io("reading destination", dst, e)),
    }
}

impl DestWriter<'_> {
    /// Removes a leftover temporary entry from an interrupted run: only a
    /// non-directory, which is all haul ever puts under a temporary name.
    /// A directory there is the user's and is left alone (the entry fails).
    pub(crate) fn clear_tmp(&self, dst: &File, tmp: &CStr) -> Result<(), StepError> {
        match sys::stat_at_opt(dst, tmp).step("stat temporary")? {
            Some(st) if st.kind() == FileKind::Dir => Err(StepError {
                op: "temporary name taken by a directory, left alone",
                err: io::Error::from_raw_os_error(libc::EEXIST),
            }),
            Some(_) => sys::unlink_at(dst, tmp, false).step("remove temporary"),
            None => Ok(()),
        }
    }

    /// Creates the symlink (to `target`), fifo, socket or device `st`
    /// describes under the temporary name `tmp`, and returns its stat.
    /// `target` is given for a symlink and only for one.
    pub(crate) fn create_special(
        &self,
        d: &File,
        tmp: &CStr,
        st: &Entry,
        target: Option<&[u8]>,
    ) -> Result<Stat, StepError> {
        let kind = st.kind();
        match target {
            Some(target) => {
                self.create_tmp(d, tmp, || sys::symlink_at(target, d, tmp))?;
            }
            None => {
                let dev = matches!(kind, FileKind::CharDev | FileKind::BlockDev);
                let rdev = if dev { st.rdev } else { 0 };
                let mode = kind.type_bits() | 0o600;
                self.create_tmp(d, tmp, || sys::mknod_at(d, tmp, mode, rdev))?;
            }
        }
        sys::stat_at(d, tmp).step("stat new entry")
    }

    /// Puts a new regular file at `name` in `d`, in place of `cur`: creates
    /// it with permission bits `perm`, has `write` fill it (data and
    /// metadata), and only then gives it its name. On an error nothing is
    /// left behind and `cur` is untouched. Returns the file, for what can
    /// only come after its name (`chattr` flags: an immutable inode can be
    /// neither linked nor renamed).
    pub(crate) fn put_new_file(
        &self,
        d: &File,
        name: &CStr,
        perm: u32,
        cur: Option<Stat>,
        rel: &Path,
        write: impl FnOnce(&File) -> Result<(), StepError>,
    ) -> Result<File, StepError> {
        let f = self.new_file(d, name, perm, cur.is_some())?;
        let written = write(&f.file).and_then(|()| self.clear_dir_for(d, name, cur, rel));
        if let Err(e) = written {
            self.discard(d, f);
            return Err(e);
        }
        self.publish(d, f, name)
    }

    /// [`DestWriter::put_new_file`] for a symlink, fifo, socket or device: `write`
    /// creates it, with its metadata, under the temporary name it is given.
    pub(crate) fn put_new_special(
        &self,
        d: &File,
        name: &CStr,
        cur: Option<Stat>,
        rel: &Path,
        write: impl FnOnce(&CStr) -> Result<(), StepError>,
    ) -> Result<(), StepError> {
        let tmp = tmp_name(name);
        let written = write(&tmp).and_then(|()| self.clear_dir_for(d, name, cur, rel));
        if let Err(e) = written {
            let _ = sys::unlink_at(d, &tmp, false);
            return Err(e);
        }
        self.rename_into_place(d, &tmp, name)
    }

    /// Renames a complete entry from its temporary name to `name`; on an
    /// error the temporary name is removed.
    pub(crate) fn rename_into_place(
        &self,
        d: &File,
        tmp: &CStr,
        name: &CStr,
    ) -> Result<(), StepError> {
        sys::rename_at(d, tmp, d, name)
            .step("rename into place")
            .inspect_err(|_| {
                let _ = sys::unlink_at(d, tmp, false);
            })
    }

    /// Creates the new regular file that will become `name` in `d`, with
    /// permission bits `perm`. `replacing`: `name` exists and this file
    /// will take its place (a link cannot replace, so it gets a temporary
    /// name and is renamed over it).
    pub(crate) fn new_file(
        &self,
        d: &File,
        name: &CStr,
        perm: u32,
        replacing: bool,
    ) -> Result<NewFile, StepError> {
        let state = self.tmpfile.load(Relaxed);
        if !replacing && state != TMPFILE_NO {
            match sys::open_tmpfile_at(d, perm) {
                Ok(file) if state == TMPFILE_YES => return Ok(NewFile { file, tmp: None }),
                Ok(file) => {
                    // The first one: whether this process may link an
                    // unnamed file (kernels before 6.10 want
                    // CAP_DAC_READ_SEARCH) is learnt by naming this one
                    // with its temporary name, which it then keeps.
                    let tmp = tmp_name(name);
                    self.clear_tmp(d, &tmp)?;
                    match sys::link_fd_at(&file, d, &tmp) {
                        Ok(()) => {
                            self.tmpfile.store(TMPFILE_YES, Relaxed);
                            return Ok(NewFile {
                                file,
                                tmp: Some(tmp),
                            });
                        }
                        Err(e) if flink_refused(&e) => self.tmpfile.store(TMPFILE_NO, Relaxed),
                        Err(e) => return Err(e).step("link new file"),
                    }
                }
                // No O_TMPFILE on this filesystem (EISDIR: a kernel older
                // than 3.11 read it as O_DIRECTORY).
                Err(e) if sys::is_unsupported(&e) || e.raw_os_error() == Some(libc::EISDIR) => {
                    self.tmpfile.store(TMPFILE_NO, Relaxed);
                }
                Err(e) => return Err(e).step("create"),
            }
        }
        let tmp = tmp_name(name);
        let file = self.create_tmp(d, &tmp, || sys::create_excl_at(d, &tmp, perm))?;
        Ok(NewFile {
            file,
            tmp: Some(tmp),
        })
    }

    /// Gives a complete new file its final name, replacing what is there.
    /// On an error nothing is left under a temporary name.
    pub(crate) fn publish(&self, d: &File, f: NewFile, name: &CStr) -> Result<File, StepError> {
        let tmp = match f.tmp {
            Some(tmp) => tmp,
            None => match sys::link_fd_at(&f.file, d, name) {
                Ok(()) => return Ok(f.file),
                // The name was taken meanwhile: replace it by a rename.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let tmp = tmp_name(name);
                    self.clear_tmp(d, &tmp)?;
                    sys::link_fd_at(&f.file, d, &tmp).step("link new file")?;
                    tmp
                }
                Err(e) => return Err(e).step("link new file"),
            },
        };
        self.rename_into_place(d, &tmp, name)?;
        Ok(f.file)
    }

    /// Removes what an unpublished new file left: its temporary name, if any.
    pub(crate) fn discard(&self, d: &File, f: NewFile) {
        if let Some(tmp) = f.tmp {
            let _ = sys::unlink_at(d, &tmp, false);
        }
    }

    /// Runs `create` for a temporary name; a leftover of an interrupted run
    /// under that name is removed and the creation tried once more.
    pub(crate) fn create_tmp<T>(
        &self,
        d: &File,
        tmp: &CStr,
        create: impl Fn() -> io::Result<T>,
    ) -> Result<T, StepError> {
        match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear_tmp(d, tmp)?;
                create().step("create")
            }
            r => r.step("create"),
        }
    }

    /// Makes sure `dname` in the destination directory `parent` (absent in a
    /// dry run below a new directory) is a real directory, replacing anything
    /// else without following it. Returns its handle and whether it existed.
    pub(crate) fn ensure_dir(
        &self,
        parent: Option<&File>,
        parent_fresh: bool,
        dname: &CStr,
        rel: &Path,
    ) -> Result<(Option<File>, bool), StepError> {
        check_name(dname)?;
        let Some(pd) = parent else {
            self.record(Outcome::Created, rel);
            return Ok((None, false));
        };
        let cur = if parent_fresh {
            None
        } else {
            sys::stat_at_opt(pd, dname).step("stat destination")?
        };
        match cur {
            Some(c) if c.kind() == FileKind::Dir => {
                let d = sys::open_dir_at(pd, dname).step("open destination directory")?;
                // Entries inside cannot change while it is immutable; its
                // metadata pass puts the source's flags back.
                if c.attrs != 0 && !self.opts.dry_run {
                    sys::set_attrs_fd(&d, 0).step("clear chattr flags")?;
                }
                if !self.is_root && !self.opts.dry_run && c.perm() & 0o700 != 0o700 {
                    // Let this run write inside; the final metadata pass restores the mode.
                    sys::chmod_fd(&d, c.perm() | 0o700).step("chmod")?;
                }
                Ok((Some(d), true))
            }
            other => {
                let outcome = if other.is_some() {
                    Outcome::Updated
                } else {
                    Outcome::Created
                };
                if self.opts.dry_run {
                    self.record(outcome, rel);
                    return Ok((None, false));
                }
                if let Some(c) = &other {
                    self.unlock(pd, dname, c)?;
                    sys::unlink_at(pd, dname, false).step("remove non-directory")?;
                }
                sys::mkdir_at(pd, dname, 0o700).step("mkdir")?;
                let d = sys::open_dir_at(pd, dname).step("open new directory")?;
                self.record(outcome, rel);
                Ok((Some(d), false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn tmp_names_are_fixed_length_and_recognised() {
        let long = CString::new(vec![b'x'; 255]).unwrap();
        let t = tmp_name(&long);
        assert!(t.to_bytes().len() < 64);
        assert!(is_tmp_name(t.to_bytes()));
        assert!(!is_tmp_name(b".haul-tmp.notahexname!!"));
        assert_eq!(tmp_name(&long), tmp_name(&long));
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A new file shows under no name until it is published, and then under
    /// its final name only; the name taken meanwhile is replaced; a discarded
    /// one leaves nothing. Each case runs three times, since the first new
    /// file of a run goes its own way (it learns whether linking works).
    #[test]
    fn new_files_appear_only_when_published() {
        let dir = tempfile::tempdir().unwrap();
        let d = sys::open_dir_path(dir.path()).unwrap();
        let opts = WriteOptions::default();
        let protect = Filter::default();
        let run = DestWriter::new(&opts, false, &protect, false, &crate::NoProgress);
        for round in 0..3 {
            let name = CString::new(format!("f{round}")).unwrap();
            let f = run.new_file(&d, &name, 0o640, false).unwrap();
            f.file.write_all_at(b"data", 0).unwrap();
            assert!(!dir.path().join(name.to_str().unwrap()).exists());
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"data");

            // Someone else takes the name before the file is published.
            let name = CString::new(format!("taken{round}")).unwrap();
            let f = run.new_file(&d, &name, 0o640, false).unwrap();
            f.file.write_all_at(b"ours", 0).unwrap();
            std::fs::write(dir.path().join(name.to_str().unwrap()), b"theirs").unwrap();
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"ours");

            // Replacing an existing file, and giving up on one.
            let f = run.new_file(&d, &name, 0o640, true).unwrap();
            f.file.write_all_at(b"again", 0).unwrap();
            run.publish(&d, f, &name).unwrap();
            let got = std::fs::read(dir.path().join(name.to_str().unwrap())).unwrap();
            assert_eq!(got, b"again");
            let gone = CString::new("gone").unwrap();
            for replacing in [false, true] {
                let f = run.new_file(&d, &gone, 0o640, replacing).unwrap();
                f.file.write_all_at(b"x", 0).unwrap();
                run.discard(&d, f);
            }
        }
        assert_eq!(
            names(dir.path()),
            ["f0", "f1", "f2", "taken0", "taken1", "taken2"]
        );
    }
}
