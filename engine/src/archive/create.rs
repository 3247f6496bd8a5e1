//! Creation: the ordered walk's entries, as members, into a format writer.
//! The walk prepares file data ahead on the pool; `.tar.zst` compresses
//! frames on the pool too; the stream itself is written on this thread.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::frames::FrameWriter;
use super::tar::TarSink;
use super::{ArchiveFormat, ArchiveOptions, ArchiveSummary, Member, MemberWrite};
use crate::chunk::{data_regions, is_sparse, read_full_at};
use crate::dest::entry::Entry;
use crate::dest::IssueTally;
use crate::error::Error;
use crate::meta::{read_xattrs, FileKind, XTarget, XattrPolicy, Xattrs};
use crate::progress::Progress;
use crate::sys::{self, Stat};
use crate::walk::ordered::{OrderedWalk, Prepared};
use crate::walk::worker_pool;

/// A `Write` that counts what passes.
struct Counting<W> {
    w: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.w.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The member writer for `format`, writing into `out` (compressing on
/// the current rayon pool, `jobs` wide).
pub(crate) fn sink(
    format: ArchiveFormat,
    out: Box<dyn Write + Send>,
    opts: &ArchiveOptions,
    jobs: usize,
) -> Box<dyn MemberWrite> {
    // Large writes: the output may be a pipe or a slow disk.
    let out = io::BufWriter::with_capacity(1 << 20, out);
    match format {
        ArchiveFormat::Tar => Box::new(TarSink::new(
            Counting { w: out, n: 0 },
            Box::new(|mut c: Counting<_>| {
                c.flush()?;
                Ok(c.n)
            }),
        )),
        ArchiveFormat::TarZst => Box::new(TarSink::new(
            FrameWriter::new(Counting { w: out, n: 0 }, opts.level.unwrap_or(3), jobs),
            Box::new(|f: FrameWriter<Counting<_>>| {
                let mut c = f.finish()?;
                c.flush()?;
                Ok(c.n)
            }),
        )),
        ArchiveFormat::Zip => Box::new(super::zip::ZipSink::new(Counting { w: out, n: 0 }, opts)),
    }
}

/// What one archive run keeps track of.
struct Run<'a> {
    policy: XattrPolicy,
    /// First member path of each hardlinked inode seen.
    links: HashMap<(u64, u64), Vec<u8>>,
    failed: IssueTally,
    notices: IssueTally,
    sum: ArchiveSummary,
    progress: &'a dyn Progress,
    output: Option<(u64, u64)>,
}

fn join(prefix: &[u8], rel: &Path) -> Vec<u8> {
    let mut p = prefix.to_vec();
    if !p.is_empty() && !rel.as_os_str().is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(rel.as_os_str().as_bytes());
    p
}

impl Run<'_> {
    fn count(&mut self, st: &Stat, follower: bool) {
        let s = &mut self.sum.source;
        match st.kind() {
            _ if follower => s.hardlinks += 1,
            FileKind::File => {
                s.files += 1;
                s.bytes += st.size;
            }
            FileKind::Dir => s.dirs += 1,
            FileKind::Symlink => s.symlinks += 1,
            _ => s.specials += 1,
        }
    }

    /// Adds one entry: `dir`/`name` is where it is, `path` its member path.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        w: &mut dyn MemberWrite,
        path: Vec<u8>,
        rel: &Path,
        st: &Stat,
        dir: &File,
        name: &std::ffi::CStr,
        data: Option<io::Result<Prepared>>,
    ) -> Result<(), Error> {
        let mut entry = Entry::from_stat(st);
        entry.link = None;
        let kind = st.kind();
        if self.output == Some((st.dev, st.ino)) {
            // As GNU tar: "file is the archive; not dumped".
            self.notices
                .push(rel, "the archive being written is not archived".into());
            return Ok(());
        }
        if kind == FileKind::Socket {
            self.notices.push(
                rel,
                "socket not archived (no archive format holds one)".into(),
            );
            return Ok(());
        }
        let mut m = Member {
            path,
            entry,
            xattrs: Xattrs::new(),
            target: Vec::new(),
            hardlink: None,
            sparse: None,
        };
        // The first name of an inode with several carries its data; it is
        // remembered only once archived whole, so a later name never links
        // to a member that failed (or is not there).
        let mut leader = false;
        if kind != FileKind::Dir && st.nlink > 1 {
            match self.links.get(&(st.dev, st.ino)) {
                Some(first) => {
                    m.hardlink = Some(first.clone());
                    m.entry.size = 0;
                }
                None => leader = true,
            }
        }
        self.count(st, m.hardlink.is_some());
        let prepared = match data {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                self.failed.push(rel, format!("open: {e}"));
                return Ok(());
            }
            None => None,
        };
        let x = match (&prepared, kind) {
            (Some(p), _) => read_xattrs(&XTarget::Fd(&p.file), self.policy),
            (None, FileKind::Dir) => {
                sys::open_dir_at(dir, name).and_then(|d| read_xattrs(&XTarget::Fd(&d), self.policy))
            }
            _ => read_xattrs(&XTarget::At(dir, name), self.policy),
        };
        match x {
            Ok(x) => m.xattrs = x,
            Err(e) => self.notices.push(rel, format!("attributes not read: {e}")),
        }
        if kind == FileKind::Symlink {
            match sys::readlink_at(dir, name) {
                Ok(t) => m.target = t,
                Err(e) => {
                    self.failed.push(rel, format!("readlink: {e}"));
                    return Ok(());
                }
            }
        }
        let file = prepared.as_ref().map(|p| &p.file);
        if let (Some(f), None) = (file, &m.hardlink) {
            if is_sparse(st) {
                match data_regions(f, st.size) {
                    Ok(r) if r.iter().map(|&(_, l)| l).sum::<u64>() < st.size => m.sparse = Some(r),
                    Ok(_) => {}
                    Err(e) => {
                        self.failed.push(rel, format!("finding holes: {e}"));
                        return Ok(());
                    }
                }
            }
        }
        let regions = match &m.sparse {
            Some(r) => r.clone(),
            None => vec![(0, m.data_len())],
        };
        let mut read_in = 0u64;
        let mut src_err: Option<io::Error> = None;
        let progress = self.progress;
        let r = w.add(&m, &mut |out| {
            let Some(p) = &prepared else { return Ok(()) };
            if m.data_len() == 0 {
                return Ok(());
            }
            if let (Some(b), None) = (&p.bytes, &m.sparse) {
                read_in += b.len() as u64;
                progress.bytes(b.len() as u64);
                return out(b);
            }
            let mut buf = vec![0u8; (1 << 20).min(m.data_len() as usize)];
            for &(off, len) in &regions {
                let mut done = 0u64;
                while done < len {
                    let want = (len - done).min(buf.len() as u64) as usize;
                    let n = match read_full_at(&p.file, &mut buf[..want], off + done) {
                        Ok(n) => n,
                        Err(e) => {
                            src_err = Some(e);
                            return Ok(());
                        }
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    out(&buf[..n])?;
                    read_in += n as u64;
                    progress.bytes(n as u64);
                    done += n as u64;
                }
            }
            Ok(())
        });
        self.sum.bytes_in += read_in;
        match (r, src_err) {
            (Ok(()), None) => {
                if leader {
                    self.links.insert((st.dev, st.ino), m.path.clone());
                }
            }
            (_, Some(e)) => self.failed.push(rel, format!("read: {e}")),
            (Err(e), None) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.failed.push(rel, e.to_string())
            }
            (Err(e), None) => return Err(Error::io("writing archive", rel, e)),
        }
        self.sum.entries += 1;
        progress.entry_done();
        Ok(())
    }
}

/// Writes an archive of `sources` into `out`. A source named with a
/// trailing slash (or `.`) contributes its contents at the archive's root,
/// with a `./` member for the directory itself; otherwise it is stored
/// under its own name. Entries that cannot be read are in the summary's
/// failures; an output that cannot be written is an `Error`.
pub fn create_archive(
    sources: &[PathBuf],
    out: Box<dyn Write + Send>,
    opts: &ArchiveOptions,
    progress: &dyn Progress,
) -> Result<ArchiveSummary, Error> {
    let start = Instant::now();
    let format = opts
        .format
        .ok_or_else(|| Error::invalid("-", "no archive format given"))?;
    sys::raise_nofile_limit();
    let pool =
        worker_pool(opts.jobs, "archive").map_err(|e| Error::io("starting workers", "-", e))?;
    let jobs = pool.current_num_threads();
    pool.install(|| {
        let mut w = sink(format, out, opts, jobs);
        let mut run = Run {
            policy: XattrPolicy {
                xattrs: true,
                acls: true,
            },
            links: HashMap::new(),
            failed: IssueTally::default(),
            notices: IssueTally::default(),
            sum: ArchiveSummary {
                format: format.name(),
                ..ArchiveSummary::default()
            },
            progress,
            output: opts.output_inode,
        };
        for src in sources {
            add_source(&mut run, &mut *w, src, opts)?;
        }
        run.sum.bytes_out = w
            .finish()
            .map_err(|e| Error::io("writing archive", "-", e))?;
        let (failed, failed_not_listed) = run.failed.into_sorted();
        let (notices, notices_not_listed) = run.notices.into_sorted();
        Ok(ArchiveSummary {
            seconds: start.elapsed().as_secs_f64(),
            failed,
            failed_not_listed,
            notices,
            notices_not_listed,
            ..run.sum
        })
    })
}

fn add_source(
    run: &mut Run<'_>,
    w: &mut dyn MemberWrite,
    src: &Path,
    opts: &ArchiveOptions,
) -> Result<(), Error> {
    let s = src.as_os_str().as_bytes();
    let contents = s.ends_with(b"/") || s == b"." || s.ends_with(b"/.");
    let st = sys::stat_path(src, contents).map_err(|e| Error::io("reading source", src, e))?;
    let open = |p: &Path| sys::open_dir_path(p).map_err(|e| Error::io("opening source", p, e));
    let (prefix, pdir, pname) = if contents {
        if st.kind() != FileKind::Dir {
            return Err(Error::invalid(
                src,
                "a trailing slash names a directory's contents",
            ));
        }
        (Vec::new(), open(src)?, c".".to_owned())
    } else {
        let (parent, cname) = crate::dest::split_parent(src)?;
        (cname.as_bytes().to_vec(), open(&parent)?, cname)
    };
    if st.kind() != FileKind::Dir {
        let data = (st.kind() == FileKind::File)
            .then(|| sys::open_read_at(&pdir, &pname).map(|file| Prepared { file, bytes: None }));
        let rel = PathBuf::from(OsStr::from_bytes(&prefix));
        return run.add(w, prefix, &rel, &st, &pdir, &pname, data);
    }
    // The directory itself: `./` for its contents, else its name.
    let root_path = if prefix.is_empty() {
        b"./".to_vec()
    } else {
        prefix.clone()
    };
    run.add(w, root_path, Path::new(""), &st, &pdir, &pname, None)?;
    let walk = OrderedWalk::new(open(src)?, &opts.filter);
    for e in walk {
        match e {
            Ok(e) => {
                let path = join(&prefix, &e.rel);
                run.add(w, path, &e.rel, &e.st, &e.dir, &e.name, e.data)?;
            }
            Err((rel, err)) => run.failed.push(&rel, err.to_string()),
        }
    }
    Ok(())
}
