//! The one entry record: what every source says of an entry, and what the
//! destination writer makes of it. A local tree gives it from a stat, a
//! snapshot from a node, and later an archive or the wire from a header.
use std::path::PathBuf;

use crate::meta::FileKind;
use crate::sys::Stat;

/// Which entries are names of one inode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LinkKey {
    /// A local inode: (device, inode).
    Inode(u64, u64),
    /// A snapshot's hardlink group.
    Group(u64),
    /// An earlier path of the same stream, as a tar hardlink names it.
    #[allow(dead_code)]
    Path(PathBuf),
}

/// An entry as it should be: kind, permission bits (setuid, setgid and
/// sticky included), owner, times, size, device number, chattr flags, and
/// the inode it shares with other names, if any.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub kind: FileKind,
    /// `mode & 0o7777`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    /// The `chattr` flags haul keeps (`sys::ATTR_*`).
    pub attrs: u32,
    /// Set when other names share the entry's inode.
    pub link: Option<LinkKey>,
}

impl Entry {
    /// A local entry as `lstat` saw it.
    pub(crate) fn from_stat(st: &Stat) -> Entry {
        let kind = st.kind();
        Entry {
            kind,
            perm: st.perm(),
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            rdev: st.rdev,
            atime: st.atime,
            mtime: st.mtime,
            attrs: st.attrs,
            link: (st.nlink > 1 && kind != FileKind::Dir).then_some(LinkKey::Inode(st.dev, st.ino)),
        }
    }

    pub(crate) fn kind(&self) -> FileKind {
        self.kind
    }

    pub(crate) fn perm(&self) -> u32 {
        self.perm
    }
}
