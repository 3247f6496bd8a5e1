//! Tar members to and from haul's member model (the stream codec is
//! `haul_formats::tarfmt`).
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;

use haul_formats::tarfmt::{TarError, TarKind, TarMember, TarReader, TarWriter};

use super::{DataFill, Member, MemberRead, MemberWrite, ReadError};
use crate::dest::entry::Entry;
use crate::meta::FileKind;
use crate::sys;

/// Members of a tar stream.
pub(crate) struct TarMembers {
    r: TarReader<Box<dyn Read + Send>>,
}

impl TarMembers {
    pub(crate) fn new(r: Box<dyn Read + Send>) -> TarMembers {
        TarMembers {
            r: TarReader::new(r),
        }
    }
}

fn archive_err(e: TarError) -> ReadError {
    ReadError::Archive(e.to_string())
}

fn to_member(t: TarMember) -> Result<Member, ReadError> {
    let name = String::from_utf8_lossy(&t.path).into_owned();
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .map_err(|_| ReadError::Member(format!("{name}: {what} {v} is out of range")))
    };
    let kind = match t.kind {
        TarKind::File | TarKind::Hardlink => FileKind::File,
        TarKind::Dir => FileKind::Dir,
        TarKind::Symlink => FileKind::Symlink,
        TarKind::CharDev => FileKind::CharDev,
        TarKind::BlockDev => FileKind::BlockDev,
        TarKind::Fifo => FileKind::Fifo,
    };
    let entry = Entry {
        kind,
        perm: t.mode & 0o7777,
        uid: id(t.uid, "uid")?,
        gid: id(t.gid, "gid")?,
        size: if t.kind == TarKind::File { t.size } else { 0 },
        rdev: sys::makedev(t.dev.0, t.dev.1),
        atime: t
            .atime
            .map(|(s, n)| (s, i64::from(n)))
            .unwrap_or((t.mtime.0, i64::from(t.mtime.1))),
        mtime: (t.mtime.0, i64::from(t.mtime.1)),
        attrs: 0,
        link: None,
    };
    Ok(Member {
        hardlink: (t.kind == TarKind::Hardlink).then(|| t.link.clone()),
        target: if t.kind == TarKind::Symlink {
            t.link
        } else {
            Vec::new()
        },
        path: t.path,
        entry,
        xattrs: t
            .xattrs
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), v))
            .collect(),
        sparse: t.sparse,
    })
}

impl MemberRead for TarMembers {
    fn next_member(&mut self) -> Result<Option<Member>, ReadError> {
        match self.r.next_member().map_err(archive_err)? {
            Some(t) => to_member(t).map(Some),
            None => Ok(None),
        }
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        self.r.read_data(buf).map_err(archive_err)
    }
}

/// Writes members as a PAX tar stream into `W`.
pub(crate) struct TarSink<W: Write> {
    w: TarWriter<W>,
    /// Turns the finished inner writer into the bytes written in all.
    close: Box<dyn FnOnce(W) -> io::Result<u64>>,
}

impl<W: Write> TarSink<W> {
    pub(crate) fn new(w: W, close: Box<dyn FnOnce(W) -> io::Result<u64>>) -> TarSink<W> {
        TarSink {
            w: TarWriter::new(w),
            close,
        }
    }
}

fn to_tar(m: &Member) -> TarMember {
    let e = &m.entry;
    let kind = match (&m.hardlink, e.kind) {
        (Some(_), _) => TarKind::Hardlink,
        (None, FileKind::Dir) => TarKind::Dir,
        (None, FileKind::Symlink) => TarKind::Symlink,
        (None, FileKind::CharDev) => TarKind::CharDev,
        (None, FileKind::BlockDev) => TarKind::BlockDev,
        (None, FileKind::Fifo) => TarKind::Fifo,
        (None, _) => TarKind::File,
    };
    TarMember {
        path: m.path.clone(),
        kind,
        mode: e.perm,
        uid: u64::from(e.uid),
        gid: u64::from(e.gid),
        size: if kind == TarKind::File { e.size } else { 0 },
        mtime: (e.mtime.0, e.mtime.1 as u32),
        atime: Some((e.atime.0, e.atime.1 as u32)),
        link: match kind {
            TarKind::Hardlink => m.hardlink.clone().unwrap_or_default(),
            TarKind::Symlink => m.target.clone(),
            _ => Vec::new(),
        },
        dev: sys::dev_parts(e.rdev),
        xattrs: m
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone().into_vec(), v.clone()))
            .collect(),
        sparse: if kind == TarKind::File {
            m.sparse.clone()
        } else {
            None
        },
    }
}

impl<W: Write> MemberWrite for TarSink<W> {
    fn add(&mut self, m: &Member, data: &mut DataFill<'_>) -> io::Result<()> {
        let t = to_tar(m);
        self.w.begin_member(&t)?;
        let want = t.data_len();
        let mut got = 0u64;
        let w = &mut self.w;
        data(&mut |b: &[u8]| {
            // The header promised `want` bytes: never more.
            let n = (b.len() as u64).min(want - got) as usize;
            got += n as u64;
            w.data(&b[..n])
        })?;
        if got < want {
            // The file shrank while it was read: the member keeps its
            // promised size (zeros, as GNU tar pads), and the caller
            // reports the file as failed.
            let zeros = [0u8; 64 << 10];
            while got < want {
                let n = (want - got).min(zeros.len() as u64) as usize;
                self.w.data(&zeros[..n])?;
                got += n as u64;
            }
            self.w.end_member(&t)?;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was read; archived padded with zeros",
            ));
        }
        self.w.end_member(&t)
    }

    fn finish(self: Box<Self>) -> io::Result<u64> {
        let me = *self;
        let w = me.w.finish()?;
        (me.close)(w)
    }
}
