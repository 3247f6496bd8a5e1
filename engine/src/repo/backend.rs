//! Where repository files live. The format only needs whole-object put, get,
//! ranged get, list and delete, so the same repository can later live on an
//! ssh host or in object storage; this file is the local-directory backend.
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Storage for repository files, addressed by `/`-separated relative names
/// such as `data/ab/abcd...` or `snapshots/<id>`.
pub(crate) trait Backend: Send + Sync {
    /// Stores `bytes` under `name`, durably and atomically: a reader sees
    /// either nothing or all of it.
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Reads a whole file, refusing one larger than `max` bytes.
    fn get(&self, name: &str, max: u64) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset` into `buf[..len]`, growing `buf` if it
    /// is shorter; a caller that reuses `buf` saves an allocation per read.
    /// A short file is an `UnexpectedEof` error.
    fn get_range_into(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<()>;
    /// Reads `len` bytes at `offset` into a new buffer.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.get_range_into(name, offset, len, &mut v)?;
        Ok(v)
    }
    /// The size of a file.
    fn size(&self, name: &str) -> io::Result<u64>;
    /// The names of the files under `dir` (recursively), complete names only:
    /// temporary files of writes in progress are not listed.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Deletes a file; a missing file is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The file memory-mapped, when the backend is local (index files,
    /// which are immutable once written); `None` elsewhere.
    fn map(&self, name: &str) -> Option<io::Result<memmap2::Mmap>>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Creates a new, empty repository: the `dirs` and the `files`, all at
    /// once (a crash leaves a complete repository or none). Refuses a
    /// location that already holds something.
    fn create(&self, dirs: &[&str], files: &[(&str, &[u8])]) -> io::Result<()>;
}

/// Where a repository lives, as the user names it. A local directory
/// today; ssh hosts and object storage come with their backends, and are
/// refused until then rather than taken for a directory of that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on this host.
    Local(PathBuf),
}

impl Location {
    /// Parses what the user gave (`--repo`, `HAUL_REPO`).
    pub fn parse(s: &Path) -> Result<Location, crate::Error> {
        let text = s.to_string_lossy();
        for scheme in ["ssh://", "sftp:", "s3:", "azure:", "rest:"] {
            if text.starts_with(scheme) {
                return Err(crate::Error::invalid(
                    s,
                    format!("{scheme} repositories are not supported yet; give a local directory"),
                ));
            }
        }
        Ok(Location::Local(s.to_path_buf()))
    }

    /// How it is shown in messages.
    pub fn display_path(&self) -> &Path {
        match self {
            Location::Local(p) => p,
        }
    }

    /// The backend that reaches it.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Location::Local(p) => Arc::new(LocalBackend::new(p)),
        }
    }
}

/// A repository in a local directory.
pub(crate) struct LocalBackend {
    root: PathBuf,
    /// Open handles for ranged reads: a restore reads thousands of blobs
    /// from each pack, and an open per blob would dominate small files.
    handles: Mutex<HashMap<String, Arc<File>>>,
}

/// Open read handles kept at most; the cache is simply emptied when full.
const MAX_HANDLES: usize = 64;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Marks names of files still being written; they are never listed.
pub(crate) const TMP_MARK: &str = ".tmp-";

impl LocalBackend {
    pub(crate) fn new(root: &Path) -> LocalBackend {
        LocalBackend {
            root: root.to_path_buf(),
            handles: Mutex::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Writes `bytes` to `path` via a temporary sibling, fsyncs it, renames it
/// into place and fsyncs the directory, so the file is complete or absent
/// even after a crash or power loss.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        "{}{TMP_MARK}{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

impl Backend for LocalBackend {
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        match write_atomic(&path, bytes) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = path.parent().expect("joined path has a parent");
                fs::create_dir_all(parent)?;
                if let Some(gp) = parent.parent() {
                    File::open(gp)?.sync_all()?;
                }
                write_atomic(&path, bytes)
            }
            r => r,
        }
    }

    fn get(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let f = File::open(self.path(name))?;
        let len = f.metadata()?.len();
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: {len} bytes is more than the {max} allowed"),
            ));
        }
        let mut v = Vec::with_capacity(len as usize);
        f.take(max.saturating_add(1)).read_to_end(&mut v)?;
        Ok(v)
    }

    fn get_range_into(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let cached = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        let f = match cached {
            Some(f) => f,
            None => {
                let f = Arc::new(File::open(self.path(name))?);
                let mut h = self.handles.lock().unwrap_or_else(|e| e.into_inner());
                if h.len() >= MAX_HANDLES {
                    h.clear();
                }
                h.insert(name.to_string(), f.clone());
                f
            }
        };
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        f.read_exact_at(&mut buf[..len], offset)
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(name))?.len())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(self.path(&d)) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let rel = format!("{d}/{name}");
                if e.file_type()?.is_dir() {
                    stack.push(rel);
                } else if !name.contains(TMP_MARK) {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn map(&self, name: &str) -> Option<io::Result<memmap2::Mmap>> {
        Some(File::open(self.path(name)).and_then(|f| crate::sys::map_readonly(&f)))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.path(name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Assembled under a temporary name beside the root and renamed into
    /// place; an existing empty directory is replaced.
    fn create(&self, dirs: &[&str], files: &[(&str, &[u8])]) -> io::Result<()> {
        let path = &self.root;
        if let Ok(mut rd) = fs::read_dir(path) {
            if rd.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "already exists and is not empty",
                ));
            }
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no final component"))?;
        let tmp = parent.join(format!(
            ".{}{}{}",
            name.to_string_lossy(),
            TMP_MARK,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        let build = || -> io::Result<()> {
            fs::create_dir(&tmp)?;
            for d in dirs {
                fs::create_dir(tmp.join(d))?;
            }
            for (name, bytes) in files {
                write_atomic(&tmp.join(name), bytes)?;
            }
            for d in dirs {
                File::open(tmp.join(d))?.sync_all()?;
            }
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&parent)?.sync_all()
        };
        build().inspect_err(|_| {
            let _ = fs::remove_dir_all(&tmp);
        })
    }
}
