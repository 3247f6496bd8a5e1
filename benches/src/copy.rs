//! `copy`: full-copy and no-change re-run timings of haul vs rsync vs cp.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::corpus::{self, Corpus};
use crate::error::{bail, Context, Result};
use crate::measure::{self, Run};
use crate::report::{Goal, Results};
use crate::session::{self, Common, RunInfo};
use crate::tree;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Haul,
    /// The `--baseline` haul binary, run exactly like haul.
    HaulBase,
    Rsync,
    Cp,
}

impl Tool {
    /// The default tools; haul-base joins them only with `--baseline`.
    pub const ALL: [Tool; 3] = [Tool::Haul, Tool::Rsync, Tool::Cp];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Haul => "haul",
            Tool::HaulBase => "haul-base",
            Tool::Rsync => "rsync",
            Tool::Cp => "cp",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        [Tool::HaulBase]
            .into_iter()
            .chain(Tool::ALL)
            .find(|t| t.name() == s)
    }

    /// cp has no incremental mode: a re-run rewrites everything.
    fn has_no_change_run(self) -> bool {
        self != Tool::Cp
    }
}

/// The exact command lines being compared.
struct Commands {
    haul: PathBuf,
    /// The `--baseline` binary, when haul-base runs.
    haul_base: Option<PathBuf>,
    haul_args: Vec<String>,
}

impl Commands {
    fn command(&self, tool: Tool, src: &Path, dst: &Path) -> Command {
        let with_suffix = |p: &Path, s: &str| {
            let mut os = OsString::from(p);
            os.push(s);
            os
        };
        match tool {
            Tool::Haul | Tool::HaulBase => {
                let program = match (tool, &self.haul_base) {
                    (Tool::HaulBase, Some(base)) => base,
                    _ => &self.haul,
                };
                let mut c = Command::new(program);
                c.arg("copy")
                    .arg("--no-progress")
                    .args(&self.haul_args)
                    .arg(src)
                    .arg(dst);
                c
            }
            Tool::Rsync => {
                let mut c = Command::new("rsync");
                c.args(["-aHAXS", "--numeric-ids"])
                    .arg(with_suffix(src, "/"))
                    .arg(with_suffix(dst, "/"));
                c
            }
            Tool::Cp => {
                let mut c = Command::new("cp");
                c.arg("-a")
                    .arg(with_suffix(src, "/."))
                    .arg(with_suffix(dst, "/"));
                c
            }
        }
    }

    fn describe(&self, tool: Tool) -> String {
        let cmd = self.command(tool, Path::new("SRC"), Path::new("DST"));
        let mut parts = vec![tool.name().to_owned()];
        parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        parts.join(" ")
    }
}

pub struct CopyOpts {
    pub common: Common,
    pub tools: Vec<Tool>,
}

/// Finds (building if need be) haul, and checks each tool can run at all.
fn preflight(opts: &CopyOpts) -> Result<Commands> {
    let common = &opts.common;
    if opts.tools.contains(&Tool::Rsync) {
        session::require_program("rsync", "rsync")?;
    }
    if opts.tools.contains(&Tool::Cp) {
        session::require_program("cp", "coreutils")?;
    }
    let haul = session::haul_binary(common, opts.tools.contains(&Tool::Haul))?;
    if opts.tools.contains(&Tool::Haul) {
        session::require_haul(&haul, &["copy"], "haul copy is", "rsync,cp")?;
    }
    let haul_base = session::haul_base_binary(common, opts.tools.contains(&Tool::HaulBase))?;
    if let Some(base) = &haul_base {
        session::require_haul(
            base,
            &["copy"],
            "the --baseline haul's copy is",
            "haul,rsync,cp",
        )?;
    }
    Ok(Commands {
        haul,
        haul_base,
        haul_args: common.haul_args.clone(),
    })
}

/// Removes `dst` and recreates it empty, the same for every tool (`cp -a
/// SRC/. DST/` needs it to exist). Not timed.
pub(crate) fn fresh_dst(dst: &Path) -> Result<()> {
    corpus::remove_if_exists(dst)?;
    fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))
}

struct Bench<'a> {
    commands: &'a Commands,
    wait_idle: bool,
    logs: PathBuf,
    rounds: usize,
    results: Results,
}

impl Bench<'_> {
    /// Runs `tool` from `src` to `dst` and checks the outcome against the
    /// source. Returns the run and whatever looked wrong.
    fn run_checked(
        &self,
        tool: Tool,
        corpus: &Corpus,
        expected: &(tree::Summary, Vec<PathBuf>),
        dst: &Path,
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
        let run = measure::run(&self.commands.command(tool, &corpus.path, dst), &log)?;
        let mut problems = Vec::new();
        if !run.status.success() {
            problems.push(format!(
                "{label}: {} ({}): {}",
                run.status,
                tool.name(),
                run.stderr.trim()
            ));
        } else {
            problems.extend(
                tree::verify(&corpus.path, &expected.0, &expected.1, dst)
                    .into_iter()
                    .map(|p| format!("{label}: {p}")),
            );
        }
        let verdict = if problems.is_empty() { "ok" } else { "PROBLEM" };
        println!(
            "  {:<8} {:<16} {:<6} {:>9.3} s  cpu {:>8.3} s  rss {:>8.1} MiB  others {:.2}  {verdict}",
            corpus.kind.name(),
            label,
            tool.name(),
            run.wall_secs,
            run.cpu_secs,
            run.max_rss_mib(),
            run.others_load
        );
        for p in &problems {
            println!("      {p}");
        }
        Ok((run, problems))
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

    fn corpus(
        &mut self,
        corpus: &Corpus,
        expected: &(tree::Summary, Vec<PathBuf>),
        tools: &[Tool],
        dst_root: &Path,
    ) -> Result<()> {
        // Full copy: N interleaved rounds into a fresh destination each time;
        // the starting tool rotates so no tool always runs first.
        for round in 0..self.rounds {
            for tool in rotated(tools, round) {
                let dst = dst_root.join(tool.name());
                fresh_dst(&dst)?;
                let label = format!("full {}/{}", round + 1, self.rounds);
                let (run, problems) = self.run_checked(tool, corpus, expected, &dst, &label)?;
                self.record(corpus, "full", tool, run, problems);
                corpus::remove_if_exists(&dst)?;
            }
        }
        // No-change re-run: in each round, each tool fills a fresh
        // destination (untimed) and then re-runs the identical command. One
        // destination at a time: two copies of empty1m besides the source
        // would exceed the default inode limit of a tmpfs.
        let incremental: Vec<Tool> = tools
            .iter()
            .copied()
            .filter(|t| t.has_no_change_run())
            .collect();
        for round in 0..self.rounds {
            for tool in rotated(&incremental, round) {
                let dst = dst_root.join(tool.name());
                fresh_dst(&dst)?;
                let of = format!("{}/{}", round + 1, self.rounds);
                let (_, mut problems) =
                    self.run_checked(tool, corpus, expected, &dst, &format!("fill {of}"))?;
                let (run, more) =
                    self.run_checked(tool, corpus, expected, &dst, &format!("no-change {of}"))?;
                problems.extend(more);
                self.record(corpus, "no-change", tool, run, problems);
                corpus::remove_if_exists(&dst)?;
            }
        }
        Ok(())
    }
}

/// Fails early, before anything is timed, if `dir` lacks room for one more
/// copy of a tree like `summary`.
fn check_room(dir: &Path, summary: &tree::Summary) -> Result<()> {
    let (bytes, inodes) =
        crate::sys::free_space(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let need_inodes = summary.dirs + summary.files + summary.symlinks + summary.other + 1_000;
    let need_bytes = summary.bytes + summary.bytes / 20 + (64 << 20);
    if inodes < need_inodes || bytes < need_bytes {
        bail!(
            "{} has room for {inodes} inodes and {} MiB, but one copy needs about {need_inodes} \
             inodes and {} MiB: free some space or use a smaller --scale",
            dir.display(),
            bytes >> 20,
            need_bytes >> 20
        );
    }
    Ok(())
}

/// `tools`, starting at a different one each round.
pub(crate) fn rotated<T: Clone>(tools: &[T], round: usize) -> Vec<T> {
    let mut order = tools.to_vec();
    let n = order.len().max(1);
    order.rotate_left(round % n);
    order
}

fn goals(r: &Results) -> Vec<Goal> {
    let mut goals = Vec::new();
    for corpus in corpus::Kind::ALL.map(corpus::Kind::name) {
        goals.push(Goal::ratio(r, corpus, "full", "haul", "rsync", 0.30));
        goals.push(Goal::ratio(r, corpus, "full", "haul", "cp", 0.75));
        goals.push(Goal::ratio(r, corpus, "no-change", "haul", "rsync", 0.50));
    }
    goals.push(Goal::rss(r, "kernel", "haul", 100.0));
    goals.push(Goal::rss(r, "empty1m", "haul", 300.0));
    goals
}

pub fn run(opts: CopyOpts) -> Result<bool> {
    let common = &opts.common;
    let commands = preflight(&opts)?;
    let versions = opts.tools.iter().map(|&tool| {
        let program = match (tool, &commands.haul_base) {
            (Tool::Haul, _) => commands.haul.to_string_lossy().into_owned(),
            (Tool::HaulBase, Some(base)) => base.to_string_lossy().into_owned(),
            _ => tool.name().to_owned(),
        };
        let version = crate::machine::first_line(&program, &["--version"]);
        let version = match tool {
            Tool::HaulBase => format!("{version} (`{program}`)"),
            _ => version,
        };
        (tool.name().to_owned(), version, commands.describe(tool))
    });
    let mut run_info = RunInfo::start("copy");
    run_info.tools = versions.collect();

    let logs = common.root.join("logs");
    let dst_root = common.root.join("dst");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut bench = Bench {
        commands: &commands,
        wait_idle: common.wait_idle,
        logs,
        rounds: common.rounds,
        results: Results::default(),
    };
    let tools: Vec<&str> = opts.tools.iter().map(|t| t.name()).collect();
    session::each_corpus(
        common,
        &tools,
        &mut run_info,
        &[&dst_root],
        |corpus, expected| {
            check_room(&common.root, &expected.0)?;
            bench.corpus(corpus, expected, &opts.tools, &dst_root)
        },
    );
    let goals = goals(&bench.results);
    session::finish(common, run_info, &bench.results, &goals)
}
