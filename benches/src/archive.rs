//! `archive`: `haul archive create/extract` (.tar.zst and .zip) and `haul
//! snapshot download` against GNU tar + zstd and Info-ZIP's zip and unzip.
//!
//! Each measure pairs one haul command with one peer command and runs both
//! in every round, the starting side rotating. Archives of a round feed the
//! extractions of the same round, so haul's archive is checked by extracting
//! it (with haul and with GNU tar) and comparing the tree with the source.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::copy::{fresh_dst, rotated};
use crate::corpus::{self, Corpus};
use crate::error::{bail, Context, Result};
use crate::measure::{self, Run};
use crate::report::{Goal, Pair, Results};
use crate::session::{self, Common, RunInfo};
use crate::tree::{self, HardLinks, Mtime, Summary};

/// Which side of every comparison runs (`--tools haul,peer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Haul,
    /// GNU tar + zstd, zip or unzip, whichever the measure compares with.
    Peer,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Haul, Side::Peer];

    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "haul" => Some(Side::Haul),
            "peer" | "peers" => Some(Side::Peer),
            _ => None,
        }
    }
}

/// One haul command against one peer command (`--measures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    TzstCreate,
    /// Extracting the archive haul wrote in the round's `TzstCreate`.
    TzstExtractHaul,
    /// Extracting the archive GNU tar wrote in the round's `TzstCreate`.
    TzstExtractGnu,
    ZipCreate,
    /// Extracting the archive Info-ZIP's zip wrote in the round's `ZipCreate`.
    ZipExtract,
    /// `haul snapshot download` to .tar.zst against tar creating one.
    Download,
}

impl Measure {
    pub const ALL: [Measure; 6] = [
        Measure::TzstCreate,
        Measure::TzstExtractHaul,
        Measure::TzstExtractGnu,
        Measure::ZipCreate,
        Measure::ZipExtract,
        Measure::Download,
    ];

    /// The scenario name in tables, the data block and `--measures`.
    pub fn name(self) -> &'static str {
        match self {
            Measure::TzstCreate => "tzst-create",
            Measure::TzstExtractHaul => "tzst-extract-haul",
            Measure::TzstExtractGnu => "tzst-extract-gnu",
            Measure::ZipCreate => "zip-create",
            Measure::ZipExtract => "zip-extract",
            Measure::Download => "download",
        }
    }

    pub fn parse(s: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The peer's tool name in the results.
    fn peer(self) -> &'static str {
        match self {
            Measure::ZipCreate => "zip",
            Measure::ZipExtract => "unzip",
            _ => "tar+zstd",
        }
    }

    fn tool(self, side: Side) -> &'static str {
        match side {
            Side::Haul => "haul",
            Side::Peer => self.peer(),
        }
    }

    /// The most haul's wall time may be of the peer's.
    fn goal(self) -> f64 {
        match self {
            Measure::TzstCreate => 0.8,
            Measure::TzstExtractHaul => 0.5,
            Measure::TzstExtractGnu => 0.7,
            Measure::ZipCreate | Measure::ZipExtract => 0.4,
            Measure::Download => 1.0,
        }
    }

    /// What is compared, for the side-by-side table.
    fn what(self) -> &'static str {
        match self {
            Measure::TzstCreate => ".tar.zst create",
            Measure::TzstExtractHaul => ".tar.zst extract of haul's archive",
            Measure::TzstExtractGnu => ".tar.zst extract of GNU tar's archive",
            Measure::ZipCreate => ".zip create (deflate)",
            Measure::ZipExtract => ".zip extract of Info-ZIP's archive",
            Measure::Download => "snapshot download to .tar.zst",
        }
    }

    /// The peer's command, in short, for the side-by-side table.
    fn peer_what(self) -> &'static str {
        match self {
            Measure::TzstCreate | Measure::Download => "tar -cf",
            Measure::TzstExtractHaul | Measure::TzstExtractGnu => "tar -xf",
            Measure::ZipCreate => "zip",
            Measure::ZipExtract => "unzip",
        }
    }

    /// For an extraction, the measure and side whose output it reads.
    fn input(self) -> Option<(Measure, Side)> {
        match self {
            Measure::TzstExtractHaul => Some((Measure::TzstCreate, Side::Haul)),
            Measure::TzstExtractGnu => Some((Measure::TzstCreate, Side::Peer)),
            Measure::ZipExtract => Some((Measure::ZipCreate, Side::Peer)),
            _ => None,
        }
    }

    /// How faithful an extraction must be. GNU tar's default format keeps
    /// whole-second mtimes; zip keeps whole seconds (Info-ZIP's extended
    /// timestamp) and has no hard links, so each link comes back as a copy.
    fn fidelity(self) -> (Mtime, HardLinks) {
        match self {
            Measure::TzstExtractGnu => (Mtime::WholeSeconds, HardLinks::Kept),
            Measure::ZipExtract => (Mtime::WholeSeconds, HardLinks::AsCopies),
            _ => (Mtime::Exact, HardLinks::Kept),
        }
    }
}

/// Where `measure`'s `side` writes its archive (creates and downloads).
fn archive_path(out_root: &Path, measure: Measure, side: Side) -> PathBuf {
    let name = match (measure, side) {
        (Measure::ZipCreate, Side::Haul) => "haul.zip",
        (Measure::ZipCreate, Side::Peer) => "infozip.zip",
        (Measure::Download, Side::Haul) => "download.tar.zst",
        (Measure::Download, Side::Peer) => "gnu-download.tar.zst",
        (_, Side::Haul) => "haul.tar.zst",
        (_, Side::Peer) => "gnu.tar.zst",
    };
    out_root.join(name)
}

/// The exact command lines being compared.
struct Commands {
    haul: PathBuf,
    haul_args: Vec<String>,
    /// The repository `download` reads, made once per corpus (untimed).
    repo: PathBuf,
    /// TMPDIR for every tool, on the same tmpfs as everything else.
    tmpdir: PathBuf,
}

impl Commands {
    fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("TMPDIR", &self.tmpdir);
        c
    }

    /// `measure`'s command for `side`: from the tree `src` or the archive
    /// `archive` into the archive `archive` or the directory `dst`.
    fn command(
        &self,
        measure: Measure,
        side: Side,
        src: &Path,
        archive: &Path,
        dst: &Path,
    ) -> Command {
        let mut c;
        match (measure, side) {
            (Measure::TzstCreate | Measure::ZipCreate, Side::Haul) => {
                // The trailing slash stores SRC's contents at the archive
                // root, as `tar -C SRC .` and `cd SRC && zip -r . ` do.
                let mut src = OsString::from(src);
                src.push("/");
                c = self.program(&self.haul);
                c.args(["archive", "create", "--no-progress"])
                    .args(&self.haul_args)
                    .arg(src)
                    .arg("-o")
                    .arg(archive);
            }
            (Measure::Download, Side::Haul) => {
                c = self.program(&self.haul);
                c.args(["snapshot", "download", "--repo"])
                    .arg(&self.repo)
                    .args(&self.haul_args)
                    .arg("latest")
                    .arg("-o")
                    .arg(archive);
            }
            (Measure::TzstCreate | Measure::Download, Side::Peer) => {
                c = self.program("tar");
                c.args(["-I", "zstd -3 -T0", "-cf"])
                    .arg(archive)
                    .arg("-C")
                    .arg(src)
                    .arg(".");
            }
            (Measure::ZipCreate, Side::Peer) => {
                // zip stores paths as given: run it inside SRC.
                c = self.program("zip");
                c.arg("-qry").arg(archive).arg(".").current_dir(src);
            }
            (_, Side::Haul) => {
                c = self.program(&self.haul);
                c.args(["archive", "extract"])
                    .args(&self.haul_args)
                    .arg(archive)
                    .arg(dst);
            }
            (Measure::ZipExtract, Side::Peer) => {
                c = self.program("unzip");
                c.arg("-q").arg(archive).arg("-d").arg(dst);
            }
            (_, Side::Peer) => {
                c = self.program("tar");
                c.args(["-I", "zstd", "-xf"])
                    .arg(archive)
                    .arg("-C")
                    .arg(dst);
            }
        }
        c
    }

    /// `measure`'s command for `side` with placeholders for the paths.
    fn describe(&self, measure: Measure, side: Side) -> String {
        let shown = Commands {
            haul: PathBuf::from("haul"),
            haul_args: self.haul_args.clone(),
            repo: PathBuf::from("R"),
            tmpdir: self.tmpdir.clone(),
        };
        let archive = match (measure.input(), measure) {
            (Some(_), Measure::ZipExtract) => "IN.zip",
            (Some(_), _) => "IN.tar.zst",
            (None, Measure::ZipCreate) => "OUT.zip",
            (None, _) => "OUT.tar.zst",
        };
        let c = shown.command(
            measure,
            side,
            Path::new("SRC"),
            Path::new(archive),
            Path::new("DST"),
        );
        let mut parts = Vec::new();
        if c.get_current_dir().is_some() {
            parts.push("cd SRC &&".to_owned());
        }
        parts.push(c.get_program().to_string_lossy().into_owned());
        parts.extend(c.get_args().map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        }));
        parts.join(" ")
    }
}

pub struct ArchiveOpts {
    pub common: Common,
    pub sides: Vec<Side>,
    pub measures: Vec<Measure>,
}

/// Whether `haul SUBCOMMAND... --help` succeeds.
fn haul_has(haul: &Path, subcommand: &[&str]) -> bool {
    Command::new(haul)
        .args(subcommand)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks every tool the chosen measures need, and finds (building if need
/// be) haul. The peers are required even for `--tools haul`: they also make
/// the untimed inputs and check haul's archives.
fn preflight(opts: &ArchiveOpts) -> Result<Commands> {
    let common = &opts.common;
    let any = |ms: &[Measure]| opts.measures.iter().any(|m| ms.contains(m));
    use Measure::*;
    if any(&[TzstCreate, TzstExtractHaul, TzstExtractGnu, Download]) {
        session::require_program("tar", "tar")?;
        session::require_program("zstd", "zstd")?;
    }
    if any(&[ZipCreate, ZipExtract]) {
        session::require_program("zip", "zip")?;
        session::require_program("unzip", "unzip")?;
    }
    let with_haul = opts.sides.contains(&Side::Haul);
    let haul = session::haul_binary(common, with_haul)?;
    if with_haul {
        let archive_measures: Vec<&str> = opts
            .measures
            .iter()
            .filter(|&&m| m != Download)
            .map(|m| m.name())
            .collect();
        for (needed, sub, without) in [
            (
                !archive_measures.is_empty(),
                ["archive", "create"],
                "download",
            ),
            (
                !archive_measures.is_empty(),
                ["archive", "extract"],
                "download",
            ),
            (
                any(&[Download]),
                ["snapshot", "download"],
                &*archive_measures.join(","),
            ),
        ] {
            if needed && !haul_has(&haul, &sub) {
                bail!(
                    "`{} {} --help` fails: not usable yet in this haul; run the peers alone with \
                     `--tools peer`, or pick measures with `--measures {without}`",
                    haul.display(),
                    sub.join(" ")
                );
            }
        }
    }
    let root = std::path::absolute(&common.root).context("making --root absolute")?;
    Ok(Commands {
        haul,
        haul_args: common.haul_args.clone(),
        repo: root.join("repo"),
        tmpdir: root.join("tmp"),
    })
}

/// Runs an untimed helper command; returns what went wrong, if it failed
/// or could not start (haul left out with `--tools peer` may not be built).
fn untimed(mut cmd: Command) -> Result<Option<String>> {
    let out = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) => out,
        Err(e) => return Ok(Some(format!("cannot run {cmd:?}: {e}"))),
    };
    if out.status.success() {
        return Ok(None);
    }
    let mut err = out.stderr;
    err.truncate(2048);
    Ok(Some(format!(
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&err).trim()
    )))
}

struct Bench<'a> {
    commands: &'a Commands,
    wait_idle: bool,
    logs: PathBuf,
    rounds: usize,
    out_root: PathBuf,
    dst_root: PathBuf,
    results: Results,
}

impl Bench<'_> {
    /// Runs `cmd` timed, its stderr logged; a failure is a problem.
    fn timed(
        &self,
        cmd: &Command,
        corpus: &Corpus,
        tool: &str,
        label: &str,
    ) -> Result<(Run, Vec<String>)> {
        let slug = label.replace(' ', "-").replace('/', "of");
        let log = self
            .logs
            .join(format!("{}-{slug}-{tool}.stderr", corpus.kind.name()));
        if self.wait_idle {
            measure::wait_idle(std::time::Duration::from_secs(600));
        }
        let run = measure::run(cmd, &log)?;
        let mut problems = Vec::new();
        if !run.status.success() {
            problems.push(format!(
                "{label}: {} ({tool}): {}",
                run.status,
                run.stderr.trim()
            ));
        }
        Ok((run, problems))
    }

    fn record(
        &mut self,
        corpus: &Corpus,
        label: &str,
        measure: Measure,
        side: Side,
        run: Run,
        problems: Vec<String>,
    ) {
        let tool = measure.tool(side);
        let verdict = if problems.is_empty() { "ok" } else { "PROBLEM" };
        println!(
            "  {:<8} {:<22} {:<8} {:>9.3} s  cpu {:>8.3} s  rss {:>8.1} MiB  others {:.2}  {verdict}",
            corpus.kind.name(),
            label,
            tool,
            run.wall_secs,
            run.cpu_secs,
            run.max_rss_mib(),
            run.others_load
        );
        for p in &problems {
            println!("      {p}");
        }
        let cell = self.results.cell(corpus.kind.name(), measure.name(), tool);
        cell.last_stderr = run.stderr.trim().to_owned();
        cell.runs.push(run);
        cell.problems.extend(problems);
    }

    /// Notes a run that could not take place because an earlier step failed.
    fn skipped(&mut self, corpus: &Corpus, measure: Measure, side: Side, why: String) {
        let tool = measure.tool(side);
        println!(
            "  {:<8} {:<22} {tool:<8} skipped: {why}",
            corpus.kind.name(),
            measure.name()
        );
        let cell = self.results.cell(corpus.kind.name(), measure.name(), tool);
        cell.problems.push(why);
    }

    fn record_size(
        &mut self,
        corpus: &Corpus,
        measure: Measure,
        side: Side,
        out: &Path,
        src_bytes: u64,
    ) {
        let tool = measure.tool(side);
        match fs::metadata(out) {
            Ok(md) => {
                println!(
                    "  {:<8} {:<22} {tool:<8} {:>9.1} MB",
                    corpus.kind.name(),
                    format!("size {}", measure.name()),
                    md.len() as f64 / 1e6
                );
                let cell = self
                    .results
                    .size(corpus.kind.name(), measure.name(), tool, src_bytes);
                cell.bytes.push(md.len());
                cell.files.push(1);
            }
            Err(e) => {
                let cell = self.results.cell(corpus.kind.name(), measure.name(), tool);
                cell.problems
                    .push(format!("measuring {}: {e}", out.display()));
            }
        }
    }

    /// Extracts `archive` untimed with GNU tar into a fresh destination and
    /// compares the tree with the source: the check of an archive haul
    /// wrote, by a reader that is not haul.
    fn check_by_tar(
        &self,
        src: &Path,
        expected: &(Summary, Vec<PathBuf>),
        archive: &Path,
    ) -> Result<Vec<String>> {
        let dst = self.dst_root.join("check");
        fresh_dst(&dst)?;
        let cmd = self
            .commands
            .command(Measure::TzstExtractHaul, Side::Peer, src, archive, &dst);
        let problems = match untimed(cmd)? {
            Some(why) => vec![format!("GNU tar cannot extract it: {why}")],
            None => tree::verify(src, &expected.0, &expected.1, &dst)
                .into_iter()
                .map(|p| format!("extracted by GNU tar: {p}"))
                .collect(),
        };
        corpus::remove_if_exists(&dst)?;
        Ok(problems)
    }

    /// A create (or download): each side writes its archive afresh, timed,
    /// then haul's is checked (untimed) and both sizes recorded.
    fn create(
        &mut self,
        corpus: &Corpus,
        src: &Path,
        expected: &(Summary, Vec<PathBuf>),
        measure: Measure,
        sides: &[Side],
        round: usize,
    ) -> Result<()> {
        let of = format!("{}/{}", round + 1, self.rounds);
        for side in rotated(sides, round) {
            let out = archive_path(&self.out_root, measure, side);
            corpus::remove_if_exists(&out)?;
            if measure == Measure::Download && side == Side::Haul && !self.commands.repo.is_dir() {
                self.skipped(
                    corpus,
                    measure,
                    side,
                    format!("{} {of}: no repository", measure.name()),
                );
                continue;
            }
            let label = format!("{} {of}", measure.name());
            let cmd = self
                .commands
                .command(measure, side, src, &out, Path::new("-"));
            let (run, mut problems) = self.timed(&cmd, corpus, measure.tool(side), &label)?;
            if problems.is_empty() && side == Side::Haul {
                let found = match measure {
                    // Every member's CRC, by Info-ZIP's reader.
                    Measure::ZipCreate => {
                        let mut test = self.commands.program("unzip");
                        test.arg("-tqq").arg(&out);
                        untimed(test)?.into_iter().collect()
                    }
                    // The whole tree, as GNU tar extracts it. (The archive
                    // of a tzst-create is checked by tzst-extract-haul.)
                    Measure::Download => self.check_by_tar(src, expected, &out)?,
                    _ => Vec::new(),
                };
                problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
            }
            let ok = problems.is_empty();
            self.record(corpus, &label, measure, side, run, problems);
            if ok {
                self.record_size(corpus, measure, side, &out, expected.0.bytes);
            } else {
                // A broken archive must not feed this round's extractions.
                corpus::remove_if_exists(&out)?;
            }
        }
        Ok(())
    }

    /// An extraction: each side extracts the same archive into a fresh
    /// destination, timed, and the tree is compared with the source.
    fn extract(
        &mut self,
        corpus: &Corpus,
        src: &Path,
        expected: &(Summary, Vec<PathBuf>),
        measure: Measure,
        sides: &[Side],
        round: usize,
    ) -> Result<()> {
        let of = format!("{}/{}", round + 1, self.rounds);
        let Some((maker, maker_side)) = measure.input() else {
            return Ok(());
        };
        let archive = archive_path(&self.out_root, maker, maker_side);
        // Made this round by the create measure, or else now, untimed.
        let missing = if archive.is_file() {
            None
        } else {
            let make = self
                .commands
                .command(maker, maker_side, src, &archive, Path::new("-"));
            let why = untimed(make)?;
            if why.is_some() {
                corpus::remove_if_exists(&archive)?;
            }
            why
        };
        let (mtime, links) = measure.fidelity();
        for side in rotated(sides, round) {
            if let Some(why) = &missing {
                let why = format!("{} {of}: no input archive: {why}", measure.name());
                self.skipped(corpus, measure, side, why);
                continue;
            }
            let dst = self.dst_root.join(measure.tool(side));
            fresh_dst(&dst)?;
            let label = format!("{} {of}", measure.name());
            let cmd = self.commands.command(measure, side, src, &archive, &dst);
            let (run, mut problems) = self.timed(&cmd, corpus, measure.tool(side), &label)?;
            if problems.is_empty() {
                problems.extend(
                    tree::verify_as(src, &expected.0, &expected.1, &dst, mtime, links)
                        .into_iter()
                        .map(|p| format!("{label}: {p}")),
                );
            }
            self.record(corpus, &label, measure, side, run, problems);
            corpus::remove_if_exists(&dst)?;
        }
        Ok(())
    }

    fn corpus(
        &mut self,
        corpus: &Corpus,
        expected: &(Summary, Vec<PathBuf>),
        opts: &ArchiveOpts,
    ) -> Result<()> {
        let src = std::path::absolute(&corpus.path).context("making the corpus path absolute")?;
        fs::create_dir_all(&self.out_root)
            .with_context(|| format!("creating {}", self.out_root.display()))?;
        if opts.measures.contains(&Measure::Download) && opts.sides.contains(&Side::Haul) {
            // The repository `download` reads: the same tree, once, untimed.
            let repo = &self.commands.repo;
            corpus::remove_if_exists(repo)?;
            let mut create = self.commands.program(&self.commands.haul);
            create
                .args(["snapshot", "create", "--repo"])
                .arg(repo)
                .arg("--no-progress")
                .arg(&src);
            println!("  making the repository for download (untimed)");
            if let Some(why) = untimed(create)? {
                println!("      {why}");
                corpus::remove_if_exists(repo)?;
            }
        }
        for round in 0..self.rounds {
            for &m in &opts.measures {
                match m.input() {
                    None => self.create(corpus, &src, expected, m, &opts.sides, round)?,
                    Some(_) => self.extract(corpus, &src, expected, m, &opts.sides, round)?,
                }
            }
            for m in Measure::ALL {
                for side in Side::ALL {
                    corpus::remove_if_exists(&archive_path(&self.out_root, m, side))?;
                }
            }
        }
        corpus::remove_if_exists(&self.commands.repo)?;
        println!("  {}: done", corpus.kind.name());
        Ok(())
    }
}

/// Fails early, before anything is timed, if `dir` lacks room for a round:
/// the repository and up to six archives (a third to a half of the source
/// each) and one extracted tree.
fn check_room(dir: &Path, summary: &Summary) -> Result<()> {
    let (bytes, inodes) =
        crate::sys::free_space(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let need_inodes = summary.dirs + summary.files + summary.symlinks + summary.other + 50_000;
    let need_bytes =
        summary.name_bytes + summary.bytes / 20 + 7 * (summary.bytes / 2) + (256 << 20);
    if inodes < need_inodes || bytes < need_bytes {
        bail!(
            "{} has room for {inodes} inodes and {} MiB, but the archives and one extraction \
             need about {need_inodes} inodes and {} MiB: free some space or use a smaller --scale",
            dir.display(),
            bytes >> 20,
            need_bytes >> 20
        );
    }
    Ok(())
}

/// The size goals: haul's archive against the peer's.
fn size_goal(m: Measure) -> Option<f64> {
    match m {
        Measure::TzstCreate => Some(1.02),
        Measure::ZipCreate => Some(1.05),
        _ => None,
    }
}

/// Peak RSS of every haul command, MiB.
const MAX_RSS_MIB: f64 = 100.0;

fn goals(r: &Results, opts: &ArchiveOpts) -> Vec<Goal> {
    let mut goals = Vec::new();
    for corpus in opts.common.corpora.iter().map(|k| k.name()) {
        for &m in &opts.measures {
            goals.push(Goal::ratio(r, corpus, m.name(), "haul", m.peer(), m.goal()));
            if let Some(max) = size_goal(m) {
                goals.push(Goal::size_ratio(r, corpus, m.name(), "haul", m.peer(), max));
            }
        }
        goals.push(Goal::rss(r, corpus, "haul", MAX_RSS_MIB));
    }
    goals
}

/// The side-by-side table: every measure's medians, ratio, spread and goal.
fn pairs(r: &Results, opts: &ArchiveOpts) -> Vec<Pair> {
    let mut pairs = Vec::new();
    let several = opts.common.corpora.len() > 1;
    for corpus in opts.common.corpora.iter().map(|k| k.name()) {
        let label = |what: String| {
            if several {
                format!("{corpus}: {what}")
            } else {
                what
            }
        };
        for &m in &opts.measures {
            let tools = ("haul", m.peer());
            let what = format!("{} vs {}", m.what(), m.peer_what());
            let (time, max) = (label(format!("{what}, s")), m.goal());
            pairs.push(Pair::time(r, corpus, m.name(), tools, time, max));
            if let Some(max) = size_goal(m) {
                let size = label(format!("{what}, size"));
                pairs.push(Pair::size(r, corpus, m.name(), tools, size, max));
            }
        }
        for &m in &opts.measures {
            let what = label(format!("peak RSS, {}", m.what()));
            pairs.push(Pair::rss(
                r,
                corpus,
                m.name(),
                ("haul", m.peer()),
                what,
                MAX_RSS_MIB,
            ));
        }
    }
    pairs
}

fn versions(commands: &Commands, opts: &ArchiveOpts) -> Vec<(String, String, String)> {
    let line_with = |program: &str, args: &[&str], needle: &str| match Command::new(program)
        .args(args)
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("unavailable ({e})"),
    };
    let mut tools = Vec::new();
    // Each distinct command line once, after the measures that run it.
    let commands_of = |tool: &str| {
        let mut lines: Vec<(Vec<&str>, String)> = Vec::new();
        for &m in &opts.measures {
            for side in Side::ALL {
                if m.tool(side) != tool || !opts.sides.contains(&side) {
                    continue;
                }
                let line = commands.describe(m, side);
                match lines.iter_mut().find(|(_, l)| *l == line) {
                    Some((names, _)) => names.push(m.name()),
                    None => lines.push((vec![m.name()], line)),
                }
            }
        }
        lines
            .into_iter()
            .map(|(names, line)| format!("{}: {line}", names.join(", ")))
            .collect::<Vec<_>>()
    };
    let haul_version = crate::machine::first_line(&commands.haul.to_string_lossy(), &["--version"]);
    let tar_version = format!(
        "{}, {}",
        crate::machine::first_line("tar", &["--version"]),
        crate::machine::first_line("zstd", &["--version"])
            .trim_matches('*')
            .trim()
    );
    for (tool, version) in [
        ("haul", haul_version),
        ("tar+zstd", tar_version),
        ("zip", line_with("zip", &["-v"], "This is Zip")),
        ("unzip", crate::machine::first_line("unzip", &["-v"])),
    ] {
        let lines = commands_of(tool);
        if !lines.is_empty() {
            tools.push((tool.to_owned(), version, lines.join("; ")));
        }
    }
    tools
}

pub fn run(opts: ArchiveOpts) -> Result<bool> {
    let common = &opts.common;
    let commands = preflight(&opts)?;
    let mut run_info = RunInfo::start("archive");
    run_info.tools = versions(&commands, &opts);
    run_info.notes.push(format!(
        "Everything (corpus, archives, repository, destinations, and `TMPDIR={}` for every \
         tool) is on the tmpfs `{}`, as in `copy`: neither side reads or writes a disk, and the \
         page cache is treated alike (nothing is dropped; the inputs are in memory for both).",
        commands.tmpdir.display(),
        common.root.display()
    ));
    run_info.notes.push(
        "Per round, in this order: `tzst-create` (each side writes its archive), \
         `tzst-extract-haul` and `tzst-extract-gnu` (both sides extract the archive haul, \
         resp. GNU tar, wrote in that round's `tzst-create`), `zip-create`, `zip-extract` (of \
         the archive Info-ZIP's zip wrote), `download`. An extraction whose create measure was \
         left out (`--measures`) gets its input made untimed. Each destination is fresh and \
         empty, and removed after the run (untimed)."
            .to_owned(),
    );
    run_info.notes.push(
        "Checks, untimed: every extracted tree is compared with the source (counts, bytes, \
         hard links, and type, mode, owner, size, mtime, contents of ~400 sampled entries). \
         GNU tar's archive keeps whole-second mtimes, so its extractions are compared to the \
         second; a zip has no hard links and whole-second mtimes, so zip extractions expect \
         each hard link as a separate copy and are compared to the second; haul's .tar.zst to \
         the nanosecond. haul's zip must pass `unzip -tqq`; haul's download is extracted by \
         GNU tar and compared to the nanosecond. A failed check marks the run INVALID."
            .to_owned(),
    );
    if opts.measures.contains(&Measure::Download) {
        run_info.notes.push(
            "`download` reads a repository made once per corpus by `haul snapshot create --repo \
             R SRC` (untimed); its peer is `tar -I 'zstd -3 -T0' -cf` of the same tree, timed \
             again in its own rounds."
                .to_owned(),
        );
    }
    if !common.haul_args.is_empty() {
        run_info.notes.push(format!(
            "`--haul-arg` {:?} is added to every timed haul command.",
            common.haul_args
        ));
    }

    let root = std::path::absolute(&common.root).context("making --root absolute")?;
    let logs = root.join("logs");
    for dir in [&logs, &commands.tmpdir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bench = Bench {
        commands: &commands,
        wait_idle: common.wait_idle,
        logs,
        rounds: common.rounds,
        out_root: root.join("out"),
        dst_root: root.join("dst"),
        results: Results::default(),
    };
    let mut tools: Vec<&str> = Vec::new();
    for &m in &opts.measures {
        for &side in &opts.sides {
            if !tools.contains(&m.tool(side)) {
                tools.push(m.tool(side));
            }
        }
    }
    let scratch = [
        bench.out_root.clone(),
        bench.dst_root.clone(),
        commands.repo.clone(),
    ];
    let scratch: Vec<&Path> = scratch.iter().map(PathBuf::as_path).collect();
    session::each_corpus(
        common,
        &tools,
        &mut run_info,
        &scratch,
        |corpus, expected| {
            check_room(&common.root, &expected.0)?;
            bench.corpus(corpus, expected, &opts)
        },
    );
    corpus::remove_if_exists(&commands.tmpdir)?;
    let goals = goals(&bench.results, &opts);
    run_info.sections.push(crate::report::Pair::section(
        "Side by side",
        "haul against its peer in each measure, in the same run. Times are medians of the \
         rounds' wall seconds, sizes medians in MB, RSS the largest peak over the rounds. \
         \"ratio\" is haul / peer read both ways: of the medians, and in brackets the median \
         of the per-round ratios; both must meet the goal. \"spread\" is the smallest and \
         largest per-round ratio.",
        &pairs(&bench.results, &opts),
    ));
    session::finish(common, run_info, &bench.results, &goals)
}
