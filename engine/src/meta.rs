//! The metadata layer: entry kinds and extended attributes, read and applied
//! through directory handles only.
use std::ffi::{CStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;

use serde::Serialize;

use crate::sys::{self, Stat};

/// The type of a filesystem entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix-domain socket.
    Socket,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
}

impl FileKind {
    /// Its name, as `--json` and `snapshot ls` spell it (serde's too).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDev => "chardev",
            FileKind::BlockDev => "blockdev",
        }
    }

    /// The kind a snapshot node records.
    pub(crate) fn of_node(k: &haul_formats::NodeKind) -> FileKind {
        use haul_formats::NodeKind;
        match k {
            NodeKind::File { .. } => FileKind::File,
            NodeKind::Dir { .. } => FileKind::Dir,
            NodeKind::Symlink { .. } => FileKind::Symlink,
            NodeKind::Fifo => FileKind::Fifo,
            NodeKind::Socket => FileKind::Socket,
            NodeKind::CharDevice { .. } => FileKind::CharDev,
            NodeKind::BlockDevice { .. } => FileKind::BlockDev,
        }
    }

    /// The kind encoded in a `st_mode`.
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => FileKind::File,
        }
    }

    /// The `S_IF*` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
        }
    }
}

impl Stat {
    pub(crate) fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode)
    }

    /// Permission bits including setuid, setgid and sticky.
    pub(crate) fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// The extended attributes of one entry, sorted by name.
pub(crate) type Xattrs = Vec<(OsString, Vec<u8>)>;

/// Which attributes take part in a copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct XattrPolicy {
    pub xattrs: bool,
    pub acls: bool,
}

impl XattrPolicy {
    fn wants(&self, name: &OsString) -> bool {
        let b = name.as_bytes();
        if !self.xattrs {
            return false;
        }
        if b.starts_with(b"system.posix_acl_") {
            return self.acls;
        }
        true
    }

    pub(crate) fn any(&self) -> bool {
        self.xattrs
    }
}

/// Where an entry's attributes are read and written: an open file, or a
/// name inside an open directory for entries haul must not open (symlinks,
/// fifos, devices).
pub(crate) enum XTarget<'a> {
    Fd(&'a File),
    At(&'a File, &'a CStr),
}

fn is_absent(e: &io::Error) -> bool {
    // ENODATA: attribute vanished between list and get.
    e.raw_os_error() == Some(libc::ENODATA)
}

fn not_supported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

/// Reads every attribute the policy covers. A filesystem without xattr
/// support reads as "no attributes".
pub(crate) fn read_xattrs(t: &XTarget<'_>, policy: XattrPolicy) -> io::Result<Xattrs> {
    if !policy.any() {
        return Ok(Vec::new());
    }
    use xattr::FileExt;
    let names: Vec<OsString> = match t {
        XTarget::Fd(f) => match f.list_xattr() {
            Ok(l) => l.collect(),
            Err(e) if not_supported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
        XTarget::At(d, n) => match xattr::list(sys::proc_path(d, n)) {
            Ok(l) => l.collect(),
            Err(e) if not_supported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !policy.wants(&name) {
            continue;
        }
        let v = match t {
            XTarget::Fd(f) => f.get_xattr(&name),
            XTarget::At(d, n) => xattr::get(sys::proc_path(d, n), &name),
        };
        match v {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the attributes of `t` equal `want` (both sorted, both filtered by
/// the same policy). Returns whether anything was written; each failure is
/// reported with the attribute's name, and the rest are still attempted.
pub(crate) fn sync_xattrs(
    t: &XTarget<'_>,
    have: &Xattrs,
    want: &Xattrs,
    failures: &mut Vec<String>,
) -> bool {
    use xattr::FileExt;
    let mut wrote = false;
    for (name, _) in have {
        if want.binary_search_by(|(n, _)| n.cmp(name)).is_err() {
            let r = match t {
                XTarget::Fd(f) => f.remove_xattr(name),
                XTarget::At(d, n) => xattr::remove(sys::proc_path(d, n), name),
            };
            match r {
                Ok(()) => wrote = true,
                Err(e) if is_absent(&e) => {}
                Err(e) => failures.push(format!("removing xattr {}: {e}", name.to_string_lossy())),
            }
        }
    }
    for (name, value) in want {
        let same = have
            .binary_search_by(|(n, _)| n.cmp(name))
            .map(|i| &have[i].1 == value)
            .unwrap_or(false);
        if same {
            continue;
        }
        let r = match t {
            XTarget::Fd(f) => f.set_xattr(name, value),
            XTarget::At(d, n) => xattr::set(sys::proc_path(d, n), name, value),
        };
        match r {
            Ok(()) => wrote = true,
            Err(e) => failures.push(format!("xattr {}: {e}", name.to_string_lossy())),
        }
    }
    wrote
}
