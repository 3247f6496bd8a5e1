//! `snapshot`: haul snapshots vs restic vs tar + zstd: first create,
//! repository size, unchanged re-create, full restore.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::copy::{fresh_dst, rotated};
use crate::corpus::{self, Corpus};
use crate::error::{bail, Context, Result};
use crate::measure::{self, Run};
use crate::report::{Goal, Results};
use crate::session::{self, Common, RunInfo};
use crate::tree::{self, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Haul,
    /// The `--baseline` haul binary, with its own repository.
    HaulBase,
    Restic,
    Tar,
}

impl Tool {
    /// The default tools; haul-base joins them only with `--baseline`.
    pub const ALL: [Tool; 3] = [Tool::Haul, Tool::Restic, Tool::Tar];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Haul => "haul",
            Tool::HaulBase => "haul-base",
            Tool::Restic => "restic",
            Tool::Tar => "tar+zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        match s {
            "tar" | "zstd" => Some(Tool::Tar),
            _ => [Tool::HaulBase]
                .into_iter()
                .chain(Tool::ALL)
                .find(|t| t.name() == s),
        }
    }

    /// A tar archive has no incremental mode: a second run rewrites it all.
    fn has_recreate(self) -> bool {
        self != Tool::Tar
    }
}

/// Scenario names, as they appear in tables and the data block.
const FIRST: &str = "first-create";
const AGAIN: &str = "re-create";
const RESTORE: &str = "restore";

/// restic's password for the throwaway benchmark repositories.
const RESTIC_PASSWORD: &str = "bench";

/// The exact command lines being compared.
struct Commands {
    haul: PathBuf,
    /// The `--baseline` binary, when haul-base runs.
    haul_base: Option<PathBuf>,
    haul_args: Vec<String>,
    /// restic ≥ 0.15 has `backup --no-scan`; Debian 12 ships 0.14.
    restic_no_scan: bool,
    restic_cache: PathBuf,
    /// TMPDIR for every tool: restic stages pack files there, and the
    /// default /tmp may be on disk while everything else is on tmpfs.
    tmpdir: PathBuf,
}

impl Commands {
    /// The binary haul or haul-base runs.
    fn haul_of(&self, tool: Tool) -> &Path {
        match (tool, &self.haul_base) {
            (Tool::HaulBase, Some(base)) => base,
            _ => &self.haul,
        }
    }

    fn base(&self, tool: Tool) -> Command {
        let mut c = match tool {
            Tool::Haul | Tool::HaulBase => Command::new(self.haul_of(tool)),
            Tool::Restic => {
                let mut c = Command::new("restic");
                c.env("RESTIC_PASSWORD", RESTIC_PASSWORD);
                c
            }
            Tool::Tar => Command::new("tar"),
        };
        c.env("TMPDIR", &self.tmpdir);
        c
    }

    fn restic(&self, repo: &Path) -> Command {
        let mut c = self.base(Tool::Restic);
        c.arg("-r")
            .arg(repo)
            .arg("--cache-dir")
            .arg(&self.restic_cache);
        c
    }

    /// Records `src` into `out` (a repository, or the archive file).
    fn create(&self, tool: Tool, src: &Path, out: &Path) -> Command {
        match tool {
            Tool::Haul | Tool::HaulBase => {
                let mut c = self.base(tool);
                c.args(["snapshot", "create", "--repo"])
                    .arg(out)
                    .arg("--no-progress")
                    .args(&self.haul_args)
                    .arg(src);
                c
            }
            Tool::Restic => {
                let mut c = self.restic(out);
                c.arg("backup");
                if self.restic_no_scan {
                    c.arg("--no-scan");
                }
                c.arg(src);
                c
            }
            Tool::Tar => {
                let mut c = self.base(tool);
                c.args(["-I", "zstd -3 -T0", "-cf"])
                    .arg(out)
                    .arg("-C")
                    .arg(src)
                    .arg(".");
                c
            }
        }
    }

    /// Restores the latest snapshot in `out` (or the archive) into `dst`.
    fn restore(&self, tool: Tool, out: &Path, dst: &Path) -> Command {
        match tool {
            Tool::Haul | Tool::HaulBase => {
                let mut c = self.base(tool);
                c.args(["snapshot", "restore", "--repo"])
                    .arg(out)
                    .arg("latest")
                    .arg(dst)
                    .arg("--no-progress")
                    .args(&self.haul_args);
                c
            }
            Tool::Restic => {
                let mut c = self.restic(out);
                c.args(["restore", "latest", "--target"]).arg(dst);
                c
            }
            Tool::Tar => {
                let mut c = self.base(tool);
                c.args(["-I", "zstd", "-xf"]).arg(out).arg("-C").arg(dst);
                c
            }
        }
    }

    /// Both command lines, with placeholders for the paths.
    fn describe(&self, tool: Tool) -> String {
        let shown = Commands {
            haul: self.haul.clone(),
            haul_base: self.haul_base.clone(),
            haul_args: self.haul_args.clone(),
            restic_no_scan: self.restic_no_scan,
            restic_cache: PathBuf::from("CACHE"),
            tmpdir: self.tmpdir.clone(),
        };
        let (out, src, dst) = match tool {
            Tool::Haul => ("R", "SRC", "DST"),
            Tool::HaulBase => ("R0", "SRC", "DST0"),
            Tool::Restic => ("R2", "SRC", "DST2"),
            Tool::Tar => ("OUT.tar.zst", "SRC", "DST3"),
        };
        let line = |c: Command| {
            let mut parts = vec![match tool {
                Tool::Haul | Tool::HaulBase => tool.name().to_owned(),
                _ => c.get_program().to_string_lossy().into_owned(),
            }];
            parts.extend(c.get_args().map(|a| {
                let a = a.to_string_lossy();
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.into_owned()
                }
            }));
            parts.join(" ")
        };
        format!(
            "{}  /  {}",
            line(shown.create(tool, Path::new(src), Path::new(out))),
            line(shown.restore(tool, Path::new(out), Path::new(dst)))
        )
    }
}

pub struct SnapshotOpts {
    pub common: Common,
    pub tools: Vec<Tool>,
}

/// Finds (building if need be) haul, and checks each tool can run at all.
fn preflight(opts: &SnapshotOpts) -> Result<Commands> {
    let common = &opts.common;
    if opts.tools.contains(&Tool::Restic) {
        session::require_program("restic", "restic")?;
    }
    if opts.tools.contains(&Tool::Tar) {
        session::require_program("tar", "tar")?;
        session::require_program("zstd", "zstd")?;
    }
    let haul = session::haul_binary(common, opts.tools.contains(&Tool::Haul))?;
    if opts.tools.contains(&Tool::Haul) {
        let create = ["snapshot", "create"];
        session::require_haul(&haul, &create, "haul snapshots are", "restic,tar")?;
    }
    let haul_base = session::haul_base_binary(common, opts.tools.contains(&Tool::HaulBase))?;
    if let Some(base) = &haul_base {
        let what = "the --baseline haul's snapshots are";
        session::require_haul(base, &["snapshot", "create"], what, "haul,restic,tar")?;
    }
    let restic_no_scan = opts.tools.contains(&Tool::Restic)
        && Command::new("restic")
            .args(["backup", "--help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--no-scan"));
    let root = std::path::absolute(&common.root).context("making --root absolute")?;
    Ok(Commands {
        haul,
        haul_base,
        haul_args: common.haul_args.clone(),
        restic_no_scan,
        restic_cache: root.join("restic-cache"),
        tmpdir: root.join("tmp"),
    })
}

/// Where each tool's repository or archive lives.
fn output_path(out_root: &Path, corpus: &Corpus, tool: Tool) -> PathBuf {
    match tool {
        Tool::Haul => out_root.join(format!("{}-haul-repo", corpus.kind.name())),
        Tool::HaulBase => out_root.join(format!("{}-haul-base-repo", corpus.kind.name())),
        Tool::Restic => out_root.join(format!("{}-restic-repo", corpus.kind.name())),
        Tool::Tar => out_root.join(format!("{}.tar.zst", corpus.kind.name())),
    }
}

/// Total bytes and number of the regular files at `path` (a directory or a
/// file).
fn output_size(path: &Path) -> Result<(u64, u64)> {
    let md = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if md.is_file() {
        return Ok((md.len(), 1));
    }
    let (sum, _) = tree::scan(path)?;
    Ok((sum.bytes, sum.files))
}

/// Runs an untimed helper command (restic init, haul snapshot check);
/// returns its stderr if it fails.
fn untimed(mut cmd: Command) -> Result<Option<String>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if out.status.success() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{:?} failed ({}): {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

struct Bench<'a> {
    commands: &'a Commands,
    wait_idle: bool,
    logs: PathBuf,
    rounds: usize,
    results: Results,
}

impl Bench<'_> {
    /// Runs `cmd` timed, logging its stderr; a failure is a problem.
    fn timed(
        &self,
        cmd: &Command,
        corpus: &Corpus,
        tool: Tool,
        label: &str,
    ) -> Result<(Run, Vec<String>)> {
        let slug = label.replace(' ', "-").replace('/', "of");
        let log = self.logs.join(format!(
            "{}-{slug}-{}.stderr",
            corpus.kind.name(),
            tool.name()
        ));
        if self.wait_idle {
            measure::wait_idle(std::time::Duration::from_secs(600));
        }
        let run = measure::run(cmd, &log)?;
        let mut problems = Vec::new();
        if !run.status.success() {
            problems.push(format!(
                "{label}: {} ({}): {}",
                run.status,
                tool.name(),
                run.stderr.trim()
            ));
        }
        Ok((run, problems))
    }

    fn print(&self, corpus: &Corpus, label: &str, tool: Tool, run: &Run, problems: &[String]) {
        let verdict = if problems.is_empty() { "ok" } else { "PROBLEM" };
        println!(
            "  {:<8} {:<18} {:<8} {:>9.3} s  cpu {:>8.3} s  rss {:>8.1} MiB  others {:.2}  {verdict}",
            corpus.kind.name(),
            label,
            tool.name(),
            run.wall_secs,
            run.cpu_secs,
            run.max_rss_mib(),
            run.others_load
        );
        for p in problems {
            println!("      {p}");
        }
    }

    fn record(
        &mut self,
        corpus: &Corpus,
        scenario: &str,
        tool: Tool,
        run: Run,
        problems: Vec<String>,
    ) {
        let cell = self.results.cell(corpus.kind.name(), scenario, tool.name());
        cell.last_stderr = run.stderr.trim().to_owned();
        cell.runs.push(run);
        cell.problems.extend(problems);
    }

    /// Notes a run that could not take place because an earlier step failed.
    fn skipped(&mut self, corpus: &Corpus, scenario: &str, tool: Tool, why: String) {
        println!(
            "  {:<8} {:<18} {:<8} skipped: {why}",
            corpus.kind.name(),
            scenario,
            tool.name()
        );
        let cell = self.results.cell(corpus.kind.name(), scenario, tool.name());
        cell.problems.push(why);
    }

    fn record_size(&mut self, corpus: &Corpus, scenario: &str, tool: Tool, out: &Path, src: u64) {
        match output_size(out) {
            Ok((bytes, files)) => {
                println!(
                    "  {:<8} {:<18} {:<8} {:>9.1} MB in {files} files",
                    corpus.kind.name(),
                    format!("size {scenario}"),
                    tool.name(),
                    bytes as f64 / 1e6
                );
                let cell = self
                    .results
                    .size(corpus.kind.name(), scenario, tool.name(), src);
                cell.bytes.push(bytes);
                cell.files.push(files);
            }
            Err(e) => {
                let cell = self.results.cell(corpus.kind.name(), scenario, tool.name());
                cell.problems.push(format!("measuring the output: {e}"));
            }
        }
    }

    /// Removes any previous output of `tool` and, for restic, creates an
    /// empty repository (untimed). Returns why not, if that failed.
    fn fresh_output(&self, tool: Tool, out: &Path) -> Result<Option<String>> {
        corpus::remove_if_exists(out)?;
        if tool == Tool::Restic {
            let mut init = self.commands.restic(out);
            init.arg("init");
            return untimed(init);
        }
        Ok(None)
    }

    fn corpus(
        &mut self,
        corpus: &Corpus,
        expected: &(Summary, Vec<PathBuf>),
        tools: &[Tool],
        out_root: &Path,
        dst_root: &Path,
    ) -> Result<()> {
        let name = corpus.kind.name();
        let src = std::path::absolute(&corpus.path).context("making the corpus path absolute")?;
        let src_bytes = expected.0.bytes;
        for round in 0..self.rounds {
            let of = format!("{}/{}", round + 1, self.rounds);
            // Which tools have a usable repository or archive this round.
            let mut made = Vec::new();

            // First create, into a fresh repository or archive.
            for tool in rotated(tools, round) {
                let out = output_path(out_root, corpus, tool);
                if let Some(why) = self.fresh_output(tool, &out)? {
                    self.skipped(corpus, FIRST, tool, why);
                    continue;
                }
                let label = format!("{FIRST} {of}");
                let cmd = self.commands.create(tool, &src, &out);
                let (run, mut problems) = self.timed(&cmd, corpus, tool, &label)?;
                if problems.is_empty() && matches!(tool, Tool::Haul | Tool::HaulBase) {
                    // The repository must be sound, not just fast to write;
                    // each binary checks its own.
                    let mut check = Command::new(self.commands.haul_of(tool));
                    check.args(["snapshot", "check", "--repo"]).arg(&out);
                    problems.extend(untimed(check)?.map(|p| format!("{label}: {p}")));
                }
                self.print(corpus, &label, tool, &run, &problems);
                let ok = problems.is_empty();
                self.record(corpus, FIRST, tool, run, problems);
                if ok {
                    self.record_size(corpus, FIRST, tool, &out, src_bytes);
                    made.push(tool);
                }
            }

            // Unchanged re-create: the same command again, same repository.
            let again: Vec<Tool> = tools.iter().copied().filter(|t| t.has_recreate()).collect();
            for tool in rotated(&again, round) {
                if !made.contains(&tool) {
                    self.skipped(corpus, AGAIN, tool, format!("{AGAIN} {of}: no repository"));
                    continue;
                }
                let out = output_path(out_root, corpus, tool);
                let label = format!("{AGAIN} {of}");
                let cmd = self.commands.create(tool, &src, &out);
                let (run, problems) = self.timed(&cmd, corpus, tool, &label)?;
                self.print(corpus, &label, tool, &run, &problems);
                let ok = problems.is_empty();
                self.record(corpus, AGAIN, tool, run, problems);
                if ok {
                    self.record_size(corpus, AGAIN, tool, &out, src_bytes);
                } else {
                    made.retain(|&t| t != tool);
                }
            }

            // Full restore of the latest snapshot into a fresh destination,
            // one at a time, each checked against the source.
            for tool in rotated(tools, round) {
                if !made.contains(&tool) {
                    self.skipped(
                        corpus,
                        RESTORE,
                        tool,
                        format!("{RESTORE} {of}: nothing to restore"),
                    );
                    continue;
                }
                let out = output_path(out_root, corpus, tool);
                let dst = dst_root.join(tool.name());
                fresh_dst(&dst)?;
                let label = format!("{RESTORE} {of}");
                let cmd = self.commands.restore(tool, &out, &dst);
                let (run, mut problems) = self.timed(&cmd, corpus, tool, &label)?;
                if problems.is_empty() {
                    // restic restores the absolute source path below the target.
                    let tree = match tool {
                        Tool::Restic => dst.join(src.strip_prefix("/").unwrap_or(&src)),
                        _ => dst.clone(),
                    };
                    // GNU tar's default format keeps whole-second mtimes.
                    let mtime = match tool {
                        Tool::Tar => tree::Mtime::WholeSeconds,
                        _ => tree::Mtime::Exact,
                    };
                    problems.extend(
                        tree::verify_with(&corpus.path, &expected.0, &expected.1, &tree, mtime)
                            .into_iter()
                            .map(|p| format!("{label}: {p}")),
                    );
                }
                self.print(corpus, &label, tool, &run, &problems);
                self.record(corpus, RESTORE, tool, run, problems);
                corpus::remove_if_exists(&dst)?;
            }

            for &tool in tools {
                corpus::remove_if_exists(&output_path(out_root, corpus, tool))?;
            }
            corpus::remove_if_exists(&self.commands.restic_cache)?;
        }
        println!("  {name}: done");
        Ok(())
    }
}

/// Fails early, before anything is timed, if `dir` lacks room for the
/// outputs of every tool (about a third of the source each, allowing for
/// twice that) plus one restored copy.
fn check_room(dir: &Path, summary: &Summary, tools: usize) -> Result<()> {
    let (bytes, inodes) =
        crate::sys::free_space(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let need_inodes = summary.dirs + summary.files + summary.symlinks + summary.other + 50_000;
    let need_bytes =
        summary.bytes + summary.bytes / 20 + tools as u64 * (summary.bytes * 2 / 3) + (256 << 20);
    if inodes < need_inodes || bytes < need_bytes {
        bail!(
            "{} has room for {inodes} inodes and {} MiB, but the outputs and one restore need \
             about {need_inodes} inodes and {} MiB: free some space or use a smaller --scale",
            dir.display(),
            bytes >> 20,
            need_bytes >> 20
        );
    }
    Ok(())
}

fn goals(r: &Results, corpora: &[corpus::Kind]) -> Vec<Goal> {
    let (haul, restic, tar) = ("haul", "restic", "tar+zstd");
    let mut goals = Vec::new();
    for corpus in corpora.iter().map(|k| k.name()) {
        goals.push(Goal::ratio(r, corpus, FIRST, haul, restic, 0.40));
        goals.push(Goal::ratio(r, corpus, FIRST, haul, tar, 1.0));
        goals.push(Goal::size_ratio(r, corpus, FIRST, haul, tar, 1.05));
        goals.push(Goal::ratio(r, corpus, AGAIN, haul, restic, 0.15));
        goals.push(Goal::ratio(r, corpus, RESTORE, haul, restic, 0.40));
        goals.push(Goal::ratio(r, corpus, RESTORE, haul, tar, 0.6));
        goals.push(Goal::rss(r, corpus, haul, 200.0));
    }
    goals
}

pub fn run(opts: SnapshotOpts) -> Result<bool> {
    let common = &opts.common;
    let commands = preflight(&opts)?;
    let mut run_info = RunInfo::start("snapshot");
    run_info.tools = opts
        .tools
        .iter()
        .map(|&tool| {
            let version = match tool {
                Tool::Haul => {
                    crate::machine::first_line(&commands.haul.to_string_lossy(), &["--version"])
                }
                Tool::HaulBase => {
                    let base = commands.haul_of(tool).to_string_lossy();
                    let version = crate::machine::first_line(&base, &["--version"]);
                    format!("{version} (`{base}`)")
                }
                Tool::Restic => crate::machine::first_line("restic", &["version"]),
                Tool::Tar => format!(
                    "{}, {}",
                    crate::machine::first_line("tar", &["--version"]),
                    crate::machine::first_line("zstd", &["--version"])
                        .trim_matches('*')
                        .trim()
                ),
            };
            (tool.name().to_owned(), version, commands.describe(tool))
        })
        .collect();
    run_info.notes.push(format!(
        "Every tool runs with `TMPDIR={}` (restic stages pack files in TMPDIR; the default /tmp \
         may be a disk while the sources and repositories are on tmpfs).",
        commands.tmpdir.display()
    ));
    if opts.tools.contains(&Tool::Restic) {
        run_info.notes.push(format!(
            "restic runs with `RESTIC_PASSWORD={RESTIC_PASSWORD}` and `CACHE` = `{}` (emptied \
             after each round); each round starts from a fresh repository made by `restic init` \
             (untimed). Its repositories use restic's defaults (format 2, compression `auto`).",
            commands.restic_cache.display()
        ));
    }
    if opts.tools.contains(&Tool::Tar) {
        run_info.notes.push(
            "GNU tar's default archive format stores whole-second mtimes, so a tar+zstd restore \
             is checked to the second (haul's and restic's to the nanosecond); everything else is \
             checked alike. (`--format=posix` would keep the nanoseconds, at the cost of an \
             extended header per file.)"
                .to_owned(),
        );
    }
    if opts.tools.contains(&Tool::Restic) && !commands.restic_no_scan {
        let note = "This restic has no `backup --no-scan` (added in restic 0.15), so it runs \
                    without it: its scanner walks the tree alongside the backup.";
        println!("note: {note}");
        run_info.notes.push(note.to_owned());
    }
    run_info.notes.push(format!(
        "`{AGAIN}`: the same create command again into the repository the round's \
         `{FIRST}` wrote, the tree unchanged. `{RESTORE}`: the latest snapshot (the \
         re-created one, where there is one) into a fresh empty directory, then checked \
         against the source (for restic, the absolute source path below the target). \
         haul's repository also passes `haul snapshot check` (untimed) after each {FIRST}."
    ));
    if !common.haul_args.is_empty() {
        run_info.notes.push(format!(
            "`--haul-arg` {:?} is added to both haul snapshot create and restore.",
            common.haul_args
        ));
    }

    let logs = common.root.join("logs");
    let out_root = common.root.join("out");
    let dst_root = common.root.join("dst");
    for dir in [&logs, &commands.tmpdir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bench = Bench {
        commands: &commands,
        wait_idle: common.wait_idle,
        logs,
        rounds: common.rounds,
        results: Results::default(),
    };
    let tools: Vec<&str> = opts.tools.iter().map(|t| t.name()).collect();
    let scratch = [&dst_root, &out_root, &commands.restic_cache];
    let scratch = scratch.map(PathBuf::as_path);
    session::each_corpus(
        common,
        &tools,
        &mut run_info,
        &scratch,
        |corpus, expected| {
            check_room(&common.root, &expected.0, opts.tools.len())?;
            fs::create_dir_all(&out_root)
                .with_context(|| format!("creating {}", out_root.display()))?;
            bench.corpus(corpus, expected, &opts.tools, &out_root, &dst_root)
        },
    );
    corpus::remove_if_exists(&commands.tmpdir)?;
    let goals = goals(&bench.results, &common.corpora);
    session::finish(common, run_info, &bench.results, &goals)
}
