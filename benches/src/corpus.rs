//! Deterministic benchmark corpora, built once on tmpfs and reused.
//!
//! Each corpus lives in `<root>/corpus/<name>/`; `<root>/corpus/<name>.params`
//! sits beside it (outside the copied tree) and records the parameters it was
//! built with. It is written last, so a half-built tree is never reused.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Context, Result};
use crate::prng::Rng;

/// Bump whenever a change here (or in `prng`) changes the generated trees.
pub const GENERATOR_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A kernel-source-like tree: ~80k files, ~4.5k dirs, ~1.5 GB of text.
    Kernel,
    /// 1,000,000 empty files in 1,000 directories.
    Empty1m,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Kernel, Kind::Empty1m];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Empty1m => "empty1m",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

pub struct Corpus {
    pub kind: Kind,
    pub path: PathBuf,
    params_path: PathBuf,
    /// True when an existing tree with the same parameters was reused.
    pub reused: bool,
    pub build_secs: f64,
}

impl Corpus {
    pub fn remove(&self) -> Result<()> {
        remove_if_exists(&self.params_path)?;
        remove_if_exists(&self.path)
    }
}

pub fn remove_if_exists(path: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    res.with_context(|| format!("removing {}", path.display()))
}

/// Builds the corpus under `root` unless an identical one is already there.
pub fn ensure(root: &Path, kind: Kind, scale: f64, seed: u64) -> Result<Corpus> {
    let dir = root.join("corpus");
    let path = dir.join(kind.name());
    let params_path = dir.join(format!("{}.params", kind.name()));
    let params = format!(
        "generator=haul-benches v{GENERATOR_VERSION}\nkind={}\nscale={scale}\nseed={seed}\n",
        kind.name()
    );
    let mut corpus = Corpus {
        kind,
        path,
        params_path,
        reused: false,
        build_secs: 0.0,
    };
    if fs::read_to_string(&corpus.params_path).ok().as_deref() == Some(params.as_str())
        && corpus.path.is_dir()
    {
        corpus.reused = true;
        return Ok(corpus);
    }
    corpus.remove()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let start = Instant::now();
    match kind {
        Kind::Kernel => build_kernel(&corpus.path, &plan_kernel(scale, seed), seed)?,
        Kind::Empty1m => build_empty(&corpus.path, scale, seed)?,
    }
    fs::write(&corpus.params_path, params)
        .with_context(|| format!("writing {}", corpus.params_path.display()))?;
    corpus.build_secs = start.elapsed().as_secs_f64();
    Ok(corpus)
}

fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

fn mtime(rng: &mut Rng) -> SystemTime {
    // Spread over 2020-09 .. 2023-11, with nanoseconds, so precision loss shows.
    SystemTime::UNIX_EPOCH
        + Duration::new(
            1_600_000_000 + rng.below(100_000_000),
            rng.below(1_000_000_000) as u32,
        )
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs `work(i)` for every `i in 0..n`, spread over all cores.
fn par_for(n: usize, work: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let nthreads = threads().min(n.max(1));
    std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (0..nthreads)
            .map(|t| s.spawn(move || (t..n).step_by(nthreads).try_for_each(work)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("corpus worker panicked"))
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32, time: SystemTime) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    // Explicit fchmod: the umask must not change the corpus.
    f.set_permissions(Permissions::from_mode(mode))?;
    f.set_times(FileTimes::new().set_accessed(time).set_modified(time))?;
    Ok(())
}

fn set_dir_time(path: &Path, time: SystemTime) -> Result<()> {
    File::open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_accessed(time).set_modified(time)))
        .with_context(|| format!("setting times of {}", path.display()))
}

fn make_dir(path: &Path) -> Result<()> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .and_then(|()| fs::set_permissions(path, Permissions::from_mode(0o755)))
        .with_context(|| format!("creating {}", path.display()))
}

// ---------------------------------------------------------------------------
// kernel

struct FileSpec {
    rel: String,
    size: u64,
    mode: u32,
}

struct KernelPlan {
    /// Relative paths, parents before children; the root is not listed.
    dirs: Vec<String>,
    files: Vec<FileSpec>,
    /// (link, target as stored in the link)
    symlinks: Vec<(String, String)>,
    /// (new name, existing file)
    hardlinks: Vec<(String, String)>,
}

/// Share of directories at depth 1..=6 (the kernel has ~20 top-level dirs).
const DIR_LEVELS: [f64; 6] = [0.005, 0.06, 0.20, 0.33, 0.25, 0.155];

/// (extension, weight, mode)
const EXTENSIONS: &[(&str, u64, u32)] = &[
    ("c", 42, 0o644),
    ("h", 30, 0o644),
    ("dtsi", 4, 0o644),
    ("dts", 3, 0o644),
    ("rst", 5, 0o644),
    ("txt", 3, 0o644),
    ("yaml", 4, 0o644),
    ("S", 2, 0o644),
    ("json", 1, 0o644),
    ("sh", 4, 0o755),
    ("py", 2, 0o755),
];

fn unique(taken: &mut HashSet<String>, parent: &str, base: &str, ext: &str) -> String {
    let join = |suffix: String| {
        let name = if ext.is_empty() {
            format!("{base}{suffix}")
        } else {
            format!("{base}{suffix}.{ext}")
        };
        if parent.is_empty() {
            name
        } else {
            format!("{parent}/{name}")
        }
    };
    let mut rel = join(String::new());
    let mut n = 2;
    while !taken.insert(rel.clone()) {
        rel = join(format!("-{n}"));
        n += 1;
    }
    rel
}

fn plan_kernel(scale: f64, seed: u64) -> KernelPlan {
    let mut rng = Rng::derive(seed, 1);
    let words = TextGen::new(seed);
    let n_dirs = scaled(4_500.0, scale);
    let n_files = scaled(80_000.0, scale);
    let total_bytes = (1.5e9 * scale) as u64;
    let mut taken = HashSet::new();

    // Directories, level by level; each picks a random parent one level up.
    // `all` holds (rel, depth) with the root first.
    let mut all: Vec<(String, usize)> = vec![(String::new(), 0)];
    let mut prev_level: Vec<usize> = vec![0];
    let mut left = n_dirs;
    for (i, share) in DIR_LEVELS.iter().enumerate() {
        let want = if i + 1 == DIR_LEVELS.len() {
            left
        } else {
            ((share * n_dirs as f64).round() as usize)
                .max(usize::from(i == 0))
                .min(left)
        };
        left -= want;
        let mut level = Vec::with_capacity(want);
        for _ in 0..want {
            let parent = all[*rng.pick(&prev_level)].0.clone();
            let rel = unique(&mut taken, &parent, words.word(&mut rng), "");
            level.push(all.len());
            all.push((rel, i + 1));
        }
        if !level.is_empty() {
            prev_level = level;
        }
    }

    // Files: a log-normal body (median 8 KiB) plus a thin tail of 1-6 MiB
    // files, then scaled so the total hits the target exactly.
    let ext_total: u64 = EXTENSIONS.iter().map(|e| e.1).sum();
    let mut files = Vec::with_capacity(n_files);
    let mut raw = Vec::with_capacity(n_files);
    for _ in 0..n_files {
        let dir = &all[rng.below(all.len() as u64) as usize].0;
        let mut pick = rng.below(ext_total);
        let &(ext, _, mut mode) = EXTENSIONS
            .iter()
            .find(|e| {
                pick < e.1 || {
                    pick -= e.1;
                    false
                }
            })
            .expect("weights cover the range");
        let base = if rng.chance(0.5) {
            words.word(&mut rng).to_owned()
        } else {
            format!("{}_{}", words.word(&mut rng), words.word(&mut rng))
        };
        let rel = unique(&mut taken, dir, &base, ext);
        if rng.chance(0.005) {
            mode = 0o600;
        }
        let size = if rng.chance(0.005) {
            0.0
        } else if rng.chance(0.001) {
            (1u64 << 20) as f64 * 6f64.powf(rng.unit())
        } else {
            (8192f64.ln() + 1.2 * rng.normal())
                .exp()
                .clamp(16.0, (1u64 << 20) as f64)
        };
        raw.push(size);
        files.push(FileSpec { rel, size: 0, mode });
    }
    let factor = total_bytes as f64 / raw.iter().sum::<f64>();
    for (f, r) in files.iter_mut().zip(&raw) {
        f.size = (r * factor).round() as u64;
    }

    let up = |depth: usize| "../".repeat(depth);
    let mut symlinks = Vec::new();
    for _ in 0..n_files.div_ceil(200) {
        let (dir, depth) = all[rng.below(all.len() as u64) as usize].clone();
        let rel = unique(&mut taken, &dir, words.word(&mut rng), "lnk");
        let roll = rng.below(100);
        let target = if roll < 3 {
            format!("{}missing/{}", up(depth), words.word(&mut rng))
        } else if roll < 6 {
            format!("{}{}", up(depth), rng.pick(&all[1..]).0)
        } else {
            format!("{}{}", up(depth), rng.pick(&files).rel)
        };
        symlinks.push((rel, target));
    }
    let mut hardlinks = Vec::new();
    for _ in 0..n_files.div_ceil(1000) {
        let dir = &all[rng.below(all.len() as u64) as usize].0;
        let rel = unique(&mut taken, dir, words.word(&mut rng), "h");
        hardlinks.push((rel, rng.pick(&files).rel.clone()));
    }

    KernelPlan {
        dirs: all.into_iter().skip(1).map(|d| d.0).collect(),
        files,
        symlinks,
        hardlinks,
    }
}

fn build_kernel(root: &Path, plan: &KernelPlan, seed: u64) -> Result<()> {
    make_dir(root)?;
    for d in &plan.dirs {
        make_dir(&root.join(d))?;
    }
    let text = TextGen::new(seed);
    par_for(plan.files.len(), |i| {
        let f = &plan.files[i];
        let mut rng = Rng::derive(seed, 1_000_000_000 + i as u64);
        let mut buf = Vec::new();
        text.fill(&mut rng, f.size as usize, &mut buf);
        write_file(&root.join(&f.rel), &buf, f.mode, mtime(&mut rng))
    })?;
    for (link, existing) in &plan.hardlinks {
        fs::hard_link(root.join(existing), root.join(link))
            .with_context(|| format!("hard-linking {link}"))?;
    }
    for (link, target) in &plan.symlinks {
        std::os::unix::fs::symlink(target, root.join(link))
            .with_context(|| format!("symlinking {link}"))?;
    }
    // Directory times last (children first), since creating entries bumps them.
    for (i, d) in plan.dirs.iter().enumerate().rev() {
        set_dir_time(
            &root.join(d),
            mtime(&mut Rng::derive(seed, 2_000_000_000 + i as u64)),
        )?;
    }
    set_dir_time(root, mtime(&mut Rng::derive(seed, 3_000_000_000)))
}

// ---------------------------------------------------------------------------
// empty1m

const EMPTY_PER_DIR: usize = 1_000;

fn build_empty(root: &Path, scale: f64, seed: u64) -> Result<()> {
    let n_files = scaled(1_000_000.0, scale);
    let n_dirs = n_files.div_ceil(EMPTY_PER_DIR);
    make_dir(root)?;
    par_for(n_dirs, |d| {
        let dir = root.join(format!("d{d:04}"));
        make_dir(&dir)?;
        for i in d * EMPTY_PER_DIR..((d + 1) * EMPTY_PER_DIR).min(n_files) {
            let mut rng = Rng::derive(seed, i as u64);
            write_file(&dir.join(format!("f{i:07}")), &[], 0o644, mtime(&mut rng))?;
        }
        set_dir_time(
            &dir,
            mtime(&mut Rng::derive(seed, 2_000_000_000 + d as u64)),
        )
    })?;
    set_dir_time(root, mtime(&mut Rng::derive(seed, 3_000_000_000)))
}

// ---------------------------------------------------------------------------
// source-like text

/// Generates C-like lines from a Zipf-distributed vocabulary: varied enough
/// to defeat deduplication, redundant enough that zstd gets about 3-4x.
struct TextGen {
    words: Vec<String>,
    /// 16-bit uniform value -> word index, shaped by Zipf weights.
    zipf: Vec<u16>,
}

const VOCAB: usize = 4096;
const ZIPF_EXPONENT: f64 = 1.1;
/// Share of lines (in percent) that repeat one of the last 16 lines.
const REPEAT_PERCENT: u64 = 20;
const COMMON: &[&str] = &[
    "if", "int", "return", "struct", "static", "void", "the", "else", "for", "const", "unsigned",
    "u32", "case", "break", "NULL", "sizeof", "goto", "err", "ret", "dev", "data", "size", "long",
    "char", "while", "u8", "u64", "bool", "true", "false", "to", "of", "is", "a", "in", "and",
    "reg", "val", "len", "buf", "out", "index", "flags", "mask", "lock", "irq", "page", "state",
    "inline", "define", "include", "unlock", "offset", "count", "addr", "list", "node", "ops",
];
const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
const SEPARATORS: &[&str] = &[
    " ", " ", " ", " ", "(", ", ", ", ", "->", ".", " = ", " = ", "_", " == ", ") ", "[", "] ",
    " & ", " + ",
];
const ENDINGS: &[&str] = &[
    ";", ";", ";", ";", ");", ") {", "", "", ",", " {", "}", " */", ":",
];

impl TextGen {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::derive(seed, 0);
        let mut seen: HashSet<String> = COMMON.iter().map(|w| w.to_string()).collect();
        let mut words: Vec<String> = COMMON.iter().map(|w| w.to_string()).collect();
        while words.len() < VOCAB {
            // Rarer words are longer, as in real code.
            let len = 2 + rng.below(4) as usize + (words.len().ilog2() as usize) / 2;
            let mut w = String::with_capacity(len);
            for k in 0..len {
                if k >= 2 && k + 1 < len && rng.chance(0.08) {
                    w.push('_');
                } else {
                    let skewed = rng.below(26).min(rng.below(26)) as usize;
                    w.push(LETTERS[skewed] as char);
                }
            }
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let weights: Vec<f64> = (0..VOCAB)
            .map(|r| (r as f64 + 1.0).powf(-ZIPF_EXPONENT))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut zipf = Vec::with_capacity(1 << 16);
        let (mut rank, mut cum) = (0usize, weights[0] / total);
        for slot in 0..(1u32 << 16) {
            let u = (f64::from(slot) + 0.5) / 65536.0;
            while cum < u && rank + 1 < VOCAB {
                rank += 1;
                cum += weights[rank] / total;
            }
            zipf.push(rank as u16);
        }
        TextGen { words, zipf }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        &self.words[usize::from(self.zipf[(rng.next_u64() >> 48) as usize])]
    }

    fn fill(&self, rng: &mut Rng, size: usize, buf: &mut Vec<u8>) {
        buf.clear();
        buf.reserve(size + 256);
        // Where recent lines start: real code repeats lines nearby
        // (`}`, `return ret;`, `break;`), which gives zstd its long matches.
        let mut recent = [0usize; 16];
        let mut lines = 0usize;
        while buf.len() < size {
            let kind = rng.below(100);
            if kind < 10 {
                buf.push(b'\n');
                continue;
            }
            if kind < 10 + REPEAT_PERCENT && lines > 0 {
                let back = 1 + rng.below(lines.min(recent.len()) as u64) as usize;
                let start = recent[(lines - back) % recent.len()];
                let end = start
                    + buf[start..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(0, |e| e + 1);
                buf.extend_from_within(start..end);
                continue;
            }
            recent[lines % recent.len()] = buf.len();
            lines += 1;
            for _ in 0..[0, 1, 1, 1, 2, 2, 3][rng.below(7) as usize] {
                buf.push(b'\t');
            }
            if kind < 10 + REPEAT_PERCENT + 8 {
                buf.extend_from_slice(b" * ");
                for k in 0..3 + rng.below(9) {
                    if k > 0 {
                        buf.push(b' ');
                    }
                    buf.extend_from_slice(self.word(rng).as_bytes());
                }
            } else {
                for k in 0..1 + rng.below(8) {
                    if k > 0 {
                        buf.extend_from_slice(rng.pick(SEPARATORS).as_bytes());
                    }
                    buf.extend_from_slice(self.word(rng).as_bytes());
                }
                buf.extend_from_slice(rng.pick(ENDINGS).as_bytes());
            }
            buf.push(b'\n');
        }
        buf.truncate(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_plan_is_deterministic_and_scaled() {
        let a = plan_kernel(0.01, 42);
        let b = plan_kernel(0.01, 42);
        assert_eq!(a.files.len(), 800);
        assert_eq!(a.dirs.len(), 45);
        let total: u64 = a.files.iter().map(|f| f.size).sum();
        assert!((total as i64 - 15_000_000).abs() < 1_000, "total {total}");
        assert!(a
            .files
            .iter()
            .zip(&b.files)
            .all(|(x, y)| x.rel == y.rel && x.size == y.size));
        assert!(a.dirs.iter().all(|d| d.matches('/').count() < 6));
    }

    #[test]
    fn text_has_exact_size() {
        let g = TextGen::new(1);
        let mut buf = Vec::new();
        for size in [0, 1, 100, 65_537] {
            g.fill(&mut Rng::new(size as u64), size, &mut buf);
            assert_eq!(buf.len(), size);
        }
    }
}
