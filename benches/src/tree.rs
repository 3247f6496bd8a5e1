//! Cheap tree summaries and spot checks, so a broken copy can't look fast.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    /// Sum of regular file sizes, counting each hard-linked inode once.
    pub bytes: u64,
    /// Regular files with more than one link, and their distinct inodes.
    pub hardlinked_names: u64,
    pub hardlinked_inodes: u64,
    /// Sum of regular file sizes over every name: what a format that stores
    /// each hard link as a copy of its file (zip) brings back.
    pub name_bytes: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files, {} dirs, {} symlinks, {} hard-linked names on {} inodes, {:.1} MiB",
            self.files,
            self.dirs,
            self.symlinks,
            self.hardlinked_names,
            self.hardlinked_inodes,
            self.bytes as f64 / (1u64 << 20) as f64
        )?;
        if self.other > 0 {
            write!(f, ", {} other", self.other)?;
        }
        Ok(())
    }
}

/// At most this many entries are compared in full by [`verify`].
const MAX_SAMPLES: usize = 400;

/// Walks `root` without following symlinks; the root itself is not counted.
/// Also returns a deterministic sample of relative paths for [`verify`].
pub fn scan(root: &Path) -> Result<(Summary, Vec<PathBuf>)> {
    let mut sum = Summary::default();
    let mut inodes = HashSet::new();
    let mut samples = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0u64;
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in rd {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let ty = entry.file_type()?;
            let child = rel.join(entry.file_name());
            seen += 1;
            if ty.is_dir() {
                sum.dirs += 1;
                stack.push(child.clone());
            } else if ty.is_symlink() {
                sum.symlinks += 1;
            } else if ty.is_file() {
                sum.files += 1;
                let md = entry.metadata()?;
                sum.name_bytes += md.len();
                if md.nlink() > 1 {
                    sum.hardlinked_names += 1;
                    if !inodes.insert((md.dev(), md.ino())) {
                        continue;
                    }
                }
                sum.bytes += md.len();
            } else {
                sum.other += 1;
            }
            // Knuth's multiplicative hash of the visit number: a spread-out,
            // repeatable pick that needs no second pass.
            if (seen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) == 0 && !ty.is_dir() {
                samples.push(child);
            }
        }
    }
    sum.hardlinked_inodes = inodes.len() as u64;
    if samples.len() > MAX_SAMPLES {
        let step = samples.len().div_ceil(MAX_SAMPLES);
        samples = samples.into_iter().step_by(step).collect();
    }
    Ok((sum, samples))
}

/// How exactly [`verify_with`] compares modification times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtime {
    /// To the nanosecond.
    Exact,
    /// To the second, with the fraction dropped: what a format that keeps
    /// whole seconds (GNU tar's default) restores.
    WholeSeconds,
}

/// What [`verify_as`] expects of hard links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardLinks {
    /// Names that share an inode in the source share one in the copy.
    Kept,
    /// Every name is a file of its own with the same contents: what a
    /// format without hard links (zip) brings back.
    AsCopies,
}

/// Compares `dst` with `src`: the whole-tree summary, then type, mode,
/// owner, size, mtime and contents (or link target) of the sampled entries.
/// Returns human-readable problems; empty means the copy looks faithful.
pub fn verify(src: &Path, expected: &Summary, samples: &[PathBuf], dst: &Path) -> Vec<String> {
    verify_with(src, expected, samples, dst, Mtime::Exact)
}

/// [`verify`], with mtimes compared as `mtime` says.
pub fn verify_with(
    src: &Path,
    expected: &Summary,
    samples: &[PathBuf],
    dst: &Path,
    mtime: Mtime,
) -> Vec<String> {
    verify_as(src, expected, samples, dst, mtime, HardLinks::Kept)
}

/// [`verify_with`], with hard links expected as `links` says.
pub fn verify_as(
    src: &Path,
    expected: &Summary,
    samples: &[PathBuf],
    dst: &Path,
    mtime: Mtime,
    links: HardLinks,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Without hard links, only the counts and the bytes over every name
    // can match.
    let key = |s: &Summary| match links {
        HardLinks::Kept => s.clone(),
        HardLinks::AsCopies => Summary {
            dirs: s.dirs,
            files: s.files,
            symlinks: s.symlinks,
            other: s.other,
            name_bytes: s.name_bytes,
            ..Summary::default()
        },
    };
    match scan(dst) {
        Err(e) => problems.push(format!("cannot scan destination: {e}")),
        Ok((got, _)) if key(&got) != key(expected) => problems.push(format!(
            "tree differs: source has {expected}; destination has {got}"
        )),
        Ok(_) => {}
    }
    for rel in samples {
        if let Err(e) = compare_entry(&src.join(rel), &dst.join(rel), mtime) {
            problems.push(format!("{}: {e}", rel.display()));
        }
        if problems.len() >= 8 {
            problems.push("(further checks skipped)".into());
            break;
        }
    }
    problems
}

fn compare_entry(src: &Path, dst: &Path, mtime: Mtime) -> Result<()> {
    let a = fs::symlink_metadata(src).context("source")?;
    let b = fs::symlink_metadata(dst).context("destination")?;
    let describe = |m: &fs::Metadata| {
        format!(
            "type {:?} mode {:o} uid {} gid {} size {}",
            m.file_type(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.len()
        )
    };
    if (a.mode(), a.uid(), a.gid(), a.len()) != (b.mode(), b.uid(), b.gid(), b.len()) {
        return Err(crate::error::Error::msg(format!(
            "source {} but destination {}",
            describe(&a),
            describe(&b)
        )));
    }
    if a.file_type().is_symlink() {
        if fs::read_link(src)? != fs::read_link(dst)? {
            crate::error::bail!("symlink target differs");
        }
        return Ok(());
    }
    let expected_nsec = match mtime {
        Mtime::Exact => a.mtime_nsec(),
        Mtime::WholeSeconds => 0,
    };
    if (a.mtime(), expected_nsec) != (b.mtime(), b.mtime_nsec()) {
        crate::error::bail!(
            "mtime {}.{:09} became {}.{:09}",
            a.mtime(),
            a.mtime_nsec(),
            b.mtime(),
            b.mtime_nsec()
        );
    }
    if a.is_file() && read_all(src)? != read_all(dst)? {
        crate::error::bail!("contents differ");
    }
    Ok(())
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}
