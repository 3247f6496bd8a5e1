//! The Linux half of the `sys` room: one thin, checked wrapper per syscall
//! haul uses. One file on purpose: nearly every `unsafe` block of the engine
//! is here, to be reviewed together.
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The subset of `struct stat` haul uses, with the file type kept in `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// The `chattr` flags haul keeps: [`ATTR_IMMUTABLE`], [`ATTR_APPEND`].
    pub attrs: u32,
}

/// `chattr +i`: no change at all, not even by root without clearing it.
pub(crate) const ATTR_IMMUTABLE: u32 = 1;
/// `chattr +a`: data may only be appended.
pub(crate) const ATTR_APPEND: u32 = 2;

impl Stat {
    fn from_statx(st: &libc::statx) -> Stat {
        let t = |t: &libc::statx_timestamp| (t.tv_sec, i64::from(t.tv_nsec));
        let has = |bit: libc::c_int| st.stx_attributes & st.stx_attributes_mask & bit as u64 != 0;
        let mut attrs = 0;
        if has(libc::STATX_ATTR_IMMUTABLE) {
            attrs |= ATTR_IMMUTABLE;
        }
        if has(libc::STATX_ATTR_APPEND) {
            attrs |= ATTR_APPEND;
        }
        Stat {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            mode: u32::from(st.stx_mode),
            nlink: u64::from(st.stx_nlink),
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            size: st.stx_size,
            blocks: st.stx_blocks,
            atime: t(&st.stx_atime),
            mtime: t(&st.stx_mtime),
            ctime: t(&st.stx_ctime),
            attrs,
        }
    }
}

/// `statx(dir, name, flags)` for the fields [`Stat`] keeps. statx rather
/// than fstatat because it also reports the `chattr` flags, at no extra cost.
fn statx(dir: libc::c_int, name: &CStr, flags: libc::c_int) -> io::Result<Stat> {
    let mut st = MaybeUninit::<libc::statx>::uninit();
    let mask = libc::STATX_BASIC_STATS;
    // SAFETY: valid fd (or AT_FDCWD), NUL-terminated name; `st` is written
    // by the kernel on success.
    cvt(unsafe { libc::statx(dir, name.as_ptr(), flags, mask, st.as_mut_ptr()) })?;
    // SAFETY: statx succeeded, so the struct is initialised.
    Ok(Stat::from_statx(unsafe { &st.assume_init() }))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_fd(r: libc::c_int) -> io::Result<File> {
    // SAFETY: a non-negative return from open/openat is a new fd we own.
    cvt(r).map(|fd| unsafe { File::from_raw_fd(fd) })
}

/// Turns a path into a C string; a NUL byte inside is an `InvalidInput` error.
pub(crate) fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`, through statx.
pub(crate) fn stat_at(dir: &File, name: &CStr) -> io::Result<Stat> {
    statx(dir.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW)
}

/// `fstatat` that also reports "missing" as `Ok(None)`.
pub(crate) fn stat_at_opt(dir: &File, name: &CStr) -> io::Result<Option<Stat>> {
    match stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat`, through statx.
pub(crate) fn stat_fd(f: &File) -> io::Result<Stat> {
    statx(f.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// `stat`/`lstat` of a whole path; used only for the paths the user typed.
pub(crate) fn stat_path(p: &Path, follow: bool) -> io::Result<Stat> {
    let c = cpath(p)?;
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    statx(libc::AT_FDCWD, &c, flags)
}

/// Opens a directory the user named (following symlinks in the typed path).
pub(crate) fn open_dir_path(p: &Path) -> io::Result<File> {
    let c = cpath(p)?;
    // SAFETY: NUL-terminated path.
    cvt_fd(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// Opens `name` in `dir` as a directory, refusing a symlink.
pub(crate) fn open_dir_at(dir: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
}

/// Opens a file for reading without following a symlink. `O_NOATIME` is tried
/// first so that a copy does not dirty the source's atimes; it is refused
/// (EPERM) for files the caller does not own, and then dropped.
pub(crate) fn open_read_at(dir: &File, name: &CStr) -> io::Result<File> {
    // O_NONBLOCK: if the name was swapped for a fifo since it was stat'ed, open
    // must not hang; on regular files it has no effect.
    let base =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    // SAFETY: valid fd and NUL-terminated name.
    let r = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), base | libc::O_NOATIME) };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // SAFETY: as above.
        return cvt_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), base) });
    }
    cvt_fd(r)
}

/// Opens an existing regular file for writing in place (metadata fixes and
/// `--checksum` reads), refusing symlinks.
pub(crate) fn open_rw_at(dir: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    })
}

/// Creates a new file that must not exist yet (`O_EXCL`, so never through a symlink).
pub(crate) fn create_excl_at(dir: &File, name: &CStr, mode: u32) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// `openat(dir, ".", O_TMPFILE)`: a new regular file inside `dir` that has
/// no name yet, so nobody sees it half-written; it vanishes when closed
/// unless [`link_fd_at`] names it. Filesystems without `O_TMPFILE` answer
/// `EOPNOTSUPP` (or `EISDIR` on kernels that predate it).
pub(crate) fn open_tmpfile_at(dir: &File, mode: u32) -> io::Result<File> {
    if super::fallbacks_forced() {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    // SAFETY: valid fd and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// `linkat(f, "", dir, name, AT_EMPTY_PATH)`: gives a file opened with
/// [`open_tmpfile_at`] its name. Needs `CAP_DAC_READ_SEARCH` on kernels
/// before 6.10 (`ENOENT` or `EPERM` without it); `EEXIST` if `name` is taken.
pub(crate) fn link_fd_at(f: &File, dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::linkat(
            f.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `mkdirat`.
pub(crate) fn mkdir_at(dir: &File, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `unlinkat`, with `AT_REMOVEDIR` for directories.
pub(crate) fn unlink_at(dir: &File, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat` within or across directory handles; replaces the target atomically.
pub(crate) fn rename_at(odir: &File, old: &CStr, ndir: &File, new: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::renameat(
            odir.as_raw_fd(),
            old.as_ptr(),
            ndir.as_raw_fd(),
            new.as_ptr(),
        )
    })
    .map(drop)
}

/// `symlinkat`.
pub(crate) fn symlink_at(target: &[u8], dir: &File, name: &CStr) -> io::Result<()> {
    let t = CString::new(target)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "symlink target has a NUL"))?;
    // SAFETY: NUL-terminated strings and a valid fd.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `readlinkat`, growing the buffer until the target fits.
pub(crate) fn readlink_at(dir: &File, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() >= 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink target too long",
            ));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// `linkat` without following a symlink at `old`.
pub(crate) fn link_at(odir: &File, old: &CStr, ndir: &File, new: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            old.as_ptr(),
            ndir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `mknodat` for fifos, sockets and devices; `mode` carries the type bits.
pub(crate) fn mknod_at(dir: &File, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(drop)
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn chown_at(dir: &File, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fchown`.
pub(crate) fn chown_fd(f: &File, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchown(f.as_raw_fd(), uid, gid) }).map(drop)
}

/// `fchmod`.
pub(crate) fn chmod_fd(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// chmod by name without following a symlink: `fchmodat2(AT_SYMLINK_NOFOLLOW)`
/// (Linux 6.6+). Older kernels lack it; there plain `fchmodat` is used, which
/// is safe because callers pass only names they have just seen as non-symlinks
/// in a directory this run owns.
pub(crate) fn chmod_at(dir: &File, name: &CStr, mode: u32) -> io::Result<()> {
    static NO_FCHMODAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    use std::sync::atomic::Ordering::Relaxed;
    if !NO_FCHMODAT2.load(Relaxed) {
        // SAFETY: valid fd, NUL-terminated name; the syscall takes no pointers besides the name.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                mode as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        NO_FCHMODAT2.store(true, Relaxed);
    }
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
        .map(drop)
}

fn timespecs(atime: (i64, i64), mtime: (i64, i64)) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ]
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn set_times_at(
    dir: &File,
    name: &CStr,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    let ts = timespecs(atime, mtime);
    // SAFETY: valid fd, NUL-terminated name, two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `futimens`.
pub(crate) fn set_times_fd(f: &File, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let ts = timespecs(atime, mtime);
    // SAFETY: valid fd and two timespecs.
    cvt(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

/// `lseek(SEEK_DATA)`: `Ok(None)` when there is no data at or after `off`.
pub(crate) fn seek_data(f: &File, off: u64) -> io::Result<Option<u64>> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

/// `lseek(SEEK_HOLE)`: the end of the data run starting at `off`.
pub(crate) fn seek_hole(f: &File, off: u64) -> io::Result<u64> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_HOLE) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// `copy_file_range` at explicit offsets (file positions are left alone).
pub(crate) fn copy_range(
    src: &File,
    off_in: u64,
    dst: &File,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    if super::fallbacks_forced() {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let mut i = off_in as libc::loff_t;
    let mut o = off_out as libc::loff_t;
    // SAFETY: valid fds; offsets are passed by pointer to locals.
    let r =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Sets or clears the `chattr` flags haul keeps ([`ATTR_IMMUTABLE`],
/// [`ATTR_APPEND`]) on an open file or directory to `attrs`, leaving the
/// others as they are. Needs CAP_LINUX_IMMUTABLE to set them.
pub(crate) fn set_attrs_fd(f: &File, attrs: u32) -> io::Result<()> {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    const FS_APPEND_FL: libc::c_long = 0x20;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
    let mut want = flags & !(FS_IMMUTABLE_FL | FS_APPEND_FL);
    if attrs & ATTR_IMMUTABLE != 0 {
        want |= FS_IMMUTABLE_FL;
    }
    if attrs & ATTR_APPEND != 0 {
        want |= FS_APPEND_FL;
    }
    if want == flags {
        return Ok(());
    }
    // SAFETY: FS_IOC_SETFLAGS reads one long through the pointer.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &want) }).map(drop)
}

/// Opens a file or directory only to set its `chattr` flags, without
/// following a symlink or blocking on a fifo.
pub(crate) fn open_for_attrs_at(dir: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    })
}

/// `ioctl(FICLONE)`: share all of `src`'s extents with `dst` (reflink).
pub(crate) fn reflink(src: &File, dst: &File) -> io::Result<()> {
    if super::fallbacks_forced() {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) }).map(drop)
}

/// `ftruncate`.
pub(crate) fn truncate_fd(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::ftruncate(f.as_raw_fd(), len as libc::off_t) }).map(drop)
}

/// True for the errnos that mean "this fast path is not available here",
/// after which a slower but general method is used. Anything else is a real error.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSYS
                | libc::EXDEV
                | libc::EINVAL
                | libc::EOPNOTSUPP
                | libc::EPERM
                | libc::ETXTBSY
        )
    )
}

/// A path through `/proc/self/fd` naming `name` inside the open directory
/// `dir`. Path-only syscalls (the `l*xattr` family) use it: the directory is
/// pinned by its fd, and the final component is not followed.
pub(crate) fn proc_path(dir: &File, name: &CStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

/// One directory entry: its name and the type from `d_type` (0 when unknown).
pub(crate) struct RawEntry {
    pub name: CString,
    pub d_type: u8,
}

/// A `readdir` stream over its own duplicate of a directory fd, so that the
/// caller's handle stays usable for `*at` calls while entries are read in batches.
pub(crate) struct DirStream {
    dir: std::ptr::NonNull<libc::DIR>,
}

// SAFETY: the DIR* is used only through &mut self, from one thread at a time.
unsafe impl Send for DirStream {}

impl DirStream {
    pub(crate) fn new(dir: &File) -> io::Result<DirStream> {
        // SAFETY: valid fd; the dup is owned by the DIR* from here on.
        let fd: RawFd = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // Reading must start at the beginning even if the original fd was read before.
        // SAFETY: valid fd.
        unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        // SAFETY: `fd` is a directory fd we own.
        let d = unsafe { libc::fdopendir(fd) };
        match std::ptr::NonNull::new(d) {
            Some(dir) => Ok(DirStream { dir }),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so we still own fd.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    /// Appends up to `max` entries (without `.` and `..`) to `out`; returns
    /// how many were added, 0 at the end of the directory.
    pub(crate) fn read_batch(&mut self, out: &mut Vec<RawEntry>, max: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            // readdir reports errors only through errno, so clear it first.
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `self.dir` is a live DIR*.
            let ent = unsafe { libc::readdir64(self.dir.as_ptr()) };
            if ent.is_null() {
                // SAFETY: errno is thread-local.
                let errno = unsafe { *libc::__errno_location() };
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                break;
            }
            // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
            let (name, d_type) = unsafe {
                let e = &*ent;
                (CStr::from_ptr(e.d_name.as_ptr()), e.d_type)
            };
            let b = name.to_bytes();
            if b == b"." || b == b".." {
                continue;
            }
            out.push(RawEntry {
                name: name.to_owned(),
                d_type,
            });
            n += 1;
        }
        Ok(n)
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: closes the DIR* (and its fd) exactly once.
        unsafe { libc::closedir(self.dir.as_ptr()) };
    }
}

/// Lifts the soft open-file limit to the hard one: a parallel walk keeps a
/// pair of directory handles open per level per worker.
pub(crate) fn raise_nofile_limit() {
    let mut rl = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit writes the struct on success.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, rl.as_mut_ptr()) } == 0 {
        // SAFETY: initialised by getrlimit.
        let mut rl = unsafe { rl.assume_init() };
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            // SAFETY: valid struct. Failure leaves the old limit, which is fine.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        }
    }
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// `d_type` values.
pub(crate) const DT_DIR: u8 = libc::DT_DIR;
/// `d_type` of a filesystem that does not fill it in.
pub(crate) const DT_UNKNOWN: u8 = libc::DT_UNKNOWN;

/// Maps a file read-only. Used only for repository files haul wrote and never
/// modifies in place (index files): a mapping of a file that another process
/// truncates faults with SIGBUS, which is why source files are read, not mapped.
pub(crate) fn map_readonly(f: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: index files are immutable once renamed into place; see above.
    unsafe { memmap2::Mmap::map(f) }
}

/// A device number from its major and minor parts.
pub(crate) fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// A device number's major and minor parts.
pub(crate) fn dev_parts(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// Has the C allocator hand buffers of 1 MiB and more straight back to the
/// kernel when freed, instead of keeping them in its per-thread arenas.
/// For commands whose threads pass many large buffers around (snapshot
/// download: blobs read ahead by loader threads, frames compressed on the
/// pool), where the arenas held tens of MiB of freed memory and a 1.4 GiB
/// download peaked at 108 MiB (65 MiB with this); the cost is a page fault
/// per 4 KiB of each such buffer, a few per cent of the run.
pub(crate) fn return_large_buffers() {
    // SAFETY: mallopt only changes a parameter of glibc's allocator; it is
    // safe to call at any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
