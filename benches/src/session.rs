//! What every comparison subcommand shares: options, corpus preparation,
//! locating haul, and writing the dated results file.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::corpus::{self, Corpus, Kind};
use crate::error::{bail, Context, Result};
use crate::machine;
use crate::report::{self, Goal, Results, Section, Verdict};
use crate::tree::{self, Summary};

/// Options common to all comparison subcommands.
pub struct Common {
    pub rounds: usize,
    pub scale: f64,
    pub seed: u64,
    pub keep_corpus: bool,
    pub corpora: Vec<Kind>,
    /// Scratch space for corpora and destinations: should be tmpfs.
    pub root: PathBuf,
    pub out_dir: PathBuf,
    pub write_results: bool,
    /// An earlier results file to compare with (`--baseline FILE`).
    pub baseline: Option<PathBuf>,
    pub haul: Option<PathBuf>,
    /// A second haul binary, run as the tool "haul-base" (`--baseline BINARY`).
    pub haul_base: Option<PathBuf>,
    pub haul_args: Vec<String>,
    /// Before each timed run, wait for other processes to go quiet.
    pub wait_idle: bool,
    /// The arguments after the binary name, for the record.
    pub argv: Vec<String>,
}

/// The workspace root (benches/..), known at compile time.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_owned()
}

/// Fails with the Debian package to install if `program` cannot be started.
pub fn require_program(program: &str, debian_package: &str) -> Result<()> {
    match Command::new(program).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "`{program}` is not installed; install it with `apt-get install {debian_package}` \
             (Debian package `{debian_package}`)"
        ),
        Err(e) => bail!("cannot run `{program}`: {e}"),
    }
}

/// Fails unless `haul SUBCOMMAND... --help` succeeds, naming `others`
/// (the `--tools` list that leaves haul out) as the way to run the rest.
pub fn require_haul(haul: &Path, subcommand: &[&str], what: &str, others: &str) -> Result<()> {
    let ok = Command::new(haul)
        .args(subcommand)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "`{} {} --help` fails: {what} not usable yet; run the other arms with `--tools {others}`",
            haul.display(),
            subcommand.join(" ")
        );
    }
    Ok(())
}

/// `--haul PATH` as given, or target/release/haul freshly (re)built.
pub fn haul_binary(common: &Common, needed: bool) -> Result<PathBuf> {
    if let Some(p) = &common.haul {
        if needed && !p.is_file() {
            bail!("--haul {}: no such file", p.display());
        }
        return Ok(p.clone());
    }
    let ws = workspace();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws.join("target"), PathBuf::from);
    let haul = target.join("release").join("haul");
    if needed {
        // Always ask cargo: a stale binary would make the figures meaningless,
        // and an up-to-date build costs a second.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        println!("building haul: cargo build --release -p haul-cli");
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "haul-cli"])
            .current_dir(&ws)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p haul-cli failed ({status}); or pass --haul PATH");
        }
    }
    Ok(haul)
}

/// The `--baseline` haul binary, if haul-base is among the tools (`needed`).
pub fn haul_base_binary(common: &Common, needed: bool) -> Result<Option<PathBuf>> {
    match &common.haul_base {
        Some(p) if needed => {
            if !p.is_file() {
                bail!("--baseline {}: no such file", p.display());
            }
            Ok(Some(p.clone()))
        }
        _ => Ok(None),
    }
}

struct CorpusInfo {
    name: &'static str,
    summary: Summary,
    reused: bool,
    build_secs: f64,
}

/// Everything the results file records besides the measurements.
pub struct RunInfo {
    subcommand: &'static str,
    date: String,
    started: String,
    machine: Vec<(String, String)>,
    /// (tool, version, command line)
    pub tools: Vec<(String, String, String)>,
    corpora: Vec<CorpusInfo>,
    /// Harness failures that cut the run short.
    pub errors: Vec<String>,
    /// Remarks on how the tools were run (Markdown), for the results file.
    pub notes: Vec<String>,
    /// Tables of the subcommand's own, shown after the goals.
    pub sections: Vec<Section>,
}

impl RunInfo {
    pub fn start(subcommand: &'static str) -> RunInfo {
        let (date, started) = machine::utc_now();
        RunInfo {
            subcommand,
            date,
            started,
            machine: machine::info(),
            tools: Vec::new(),
            corpora: Vec::new(),
            errors: Vec::new(),
            notes: Vec::new(),
            sections: Vec::new(),
        }
    }
}

/// Builds or reuses the corpus, and scans it for later verification.
pub fn prepare_corpus(
    common: &Common,
    kind: Kind,
    info: &mut RunInfo,
) -> Result<(Corpus, (Summary, Vec<PathBuf>))> {
    println!(
        "\npreparing corpus {} (scale {}) under {}",
        kind.name(),
        common.scale,
        common.root.display()
    );
    let corpus = corpus::ensure(&common.root, kind, common.scale, common.seed)?;
    let scanned = tree::scan(&corpus.path)?;
    if corpus.reused {
        println!("  reused: {}", scanned.0);
    } else {
        println!("  built in {:.1} s: {}", corpus.build_secs, scanned.0);
    }
    info.corpora.push(CorpusInfo {
        name: kind.name(),
        summary: scanned.0.clone(),
        reused: corpus.reused,
        build_secs: corpus.build_secs,
    });
    Ok((corpus, scanned))
}

/// Runs `bench` on each of `common`'s corpora in turn: prepares the corpus,
/// announces the rounds of `tools`, and afterwards removes the corpus
/// (unless `--keep-corpus`) and the `scratch` directories. A harness error
/// (a full disk, ...) stops the run, is recorded in `info`, and leaves what
/// was measured so far to be reported.
pub fn each_corpus(
    common: &Common,
    tools: &[&str],
    info: &mut RunInfo,
    scratch: &[&Path],
    mut bench: impl FnMut(&Corpus, &(Summary, Vec<PathBuf>)) -> Result<()>,
) {
    for &kind in &common.corpora {
        let outcome = prepare_corpus(common, kind, info).and_then(|(corpus, expected)| {
            println!(
                "\n{}: {} rounds of {}",
                kind.name(),
                common.rounds,
                tools.join(", ")
            );
            bench(&corpus, &expected)?;
            if !common.keep_corpus {
                corpus.remove()?;
            }
            Ok(())
        });
        let cleanup = scratch.iter().try_for_each(|d| corpus::remove_if_exists(d));
        if let Err(e) = outcome.and(cleanup) {
            println!("harness error on {}: {e}", kind.name());
            info.errors.push(format!("{}: {e}", kind.name()));
            break;
        }
    }
}

/// `s` quoted for a POSIX shell, if it needs quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,/=:@+".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn command_line(common: &Common) -> String {
    let args: Vec<String> = common.argv.iter().map(|a| shell_quote(a)).collect();
    format!("cargo run --release -p haul-benches -- {}", args.join(" "))
}

fn git_commit() -> String {
    let ws = workspace();
    let head = machine::first_line(
        "git",
        &["-C", &ws.to_string_lossy(), "rev-parse", "--short", "HEAD"],
    );
    let dirty = Command::new("git")
        .args([
            "-C",
            &ws.to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

fn markdown(
    common: &Common,
    info: &RunInfo,
    results: &Results,
    goals: &[Goal],
    baseline: Option<&str>,
    data: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# haul {} benchmark, {}\n",
        info.subcommand, info.started
    );
    let _ = writeln!(
        md,
        "Command (from the workspace root, commit {}):\n",
        git_commit()
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", command_line(common));
    let _ = writeln!(
        md,
        "Each figure is the median of {} interleaved rounds (the starting tool rotates each round), \
         wall time from spawn to `wait4`. Peak RSS is the largest `ru_maxrss` over the rounds, as \
         reported by `wait4` for the child (for multi-process tools such as rsync, or tar with its \
         zstd, the largest single process, not the sum; the measuring runner itself accounts for ~2.6 MiB of it). \
         \"Others' CPU\" is the most CPU (in cores) that other processes used during any one run: \
         well above 0 means something competed with the tools and the figures are noisy. \
         Scratch space: `{}`.\n",
        common.rounds,
        common.root.display()
    );

    if !info.errors.is_empty() {
        let _ = writeln!(
            md,
            "**The run was cut short:** {}\n",
            info.errors.join("; ")
        );
    }
    md.push_str("## Goals\n\n");
    let (h, rows) = Goal::rows(goals);
    md.push_str(&report::markdown_table(&h, &rows));
    for s in &info.sections {
        let _ = writeln!(md, "\n## {}\n\n{}\n", s.title, s.intro);
        md.push_str(&report::markdown_table(&s.header, &s.rows));
    }

    let (h, rows, lines) = report::BaseRatio::rows(results);
    if !rows.is_empty() {
        let _ = writeln!(
            md,
            "\n## haul / haul-base (`--baseline`)\n\n\
             haul-base is the `--baseline` binary, run like haul (for snapshots, into its own \
             repository) in the same rounds. \"of medians\" is the ratio of the two medians, \
             \"rounds\" the median of the per-round ratios, \"spread\" their smallest and \
             largest. No slowdown: \"rounds\" at most 1, or the spread reaches 1.\n"
        );
        md.push_str(&report::markdown_table(&h, &rows));
        md.push('\n');
        for l in &lines {
            let _ = writeln!(md, "- {l}");
        }
    }
    md.push_str("\n## Results\n\n");
    let (h, rows) = results.table_rows();
    md.push_str(&report::markdown_table(&h, &rows));
    let problems: Vec<String> = results
        .cells
        .iter()
        .flat_map(|c| {
            c.problems.iter().map(move |p| {
                format!(
                    "- {} {} {}: {}",
                    c.corpus,
                    c.scenario,
                    c.tool,
                    p.replace('\n', " ")
                )
            })
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(md, "\n### Problems\n\n{}", problems.join("\n"));
    }
    if !results.sizes.is_empty() {
        md.push_str(
            "\n## Sizes\n\nTotal bytes (and number) of the regular files each tool wrote, \
             median over the rounds; \"of source\" relates it to the corpus's bytes.\n\n",
        );
        let (h, rows) = results.size_rows();
        md.push_str(&report::markdown_table(&h, &rows));
    }
    if !info.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &info.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    if let Some(b) = baseline {
        let _ = writeln!(md, "\n## Compared with baseline\n\n{b}");
    }

    md.push_str("\n## Corpora\n\n");
    let rows: Vec<Vec<String>> = info
        .corpora
        .iter()
        .map(|c| {
            let s = &c.summary;
            vec![
                c.name.to_owned(),
                s.files.to_string(),
                s.dirs.to_string(),
                s.symlinks.to_string(),
                format!("{} on {}", s.hardlinked_names, s.hardlinked_inodes),
                format!("{:.1}", s.bytes as f64 / 1e6),
                if c.reused {
                    "reused".into()
                } else {
                    format!("built in {:.1} s", c.build_secs)
                },
            ]
        })
        .collect();
    md.push_str(&report::markdown_table(
        &[
            "corpus",
            "files",
            "dirs",
            "symlinks",
            "hard links (names on inodes)",
            "MB",
            "corpus",
        ],
        &rows,
    ));
    let _ = writeln!(md, "\nScale {}, seed {}.", common.scale, common.seed);

    md.push_str("\n## Machine and tools\n\n");
    for (k, v) in &info.machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "- load average at end: {}", machine::loadavg());
    for (tool, version, cmd) in &info.tools {
        let _ = writeln!(md, "- {tool}: {version}; run as `{cmd}`");
    }
    let messages: Vec<String> = results
        .cells
        .iter()
        .filter(|c| !c.last_stderr.is_empty())
        .map(|c| {
            format!(
                "- {} {} {}: `{}`",
                c.corpus,
                c.scenario,
                c.tool,
                c.last_stderr.replace('\n', " / ")
            )
        })
        .collect();
    if !messages.is_empty() {
        let _ = writeln!(
            md,
            "\n## Tool messages\n\nstderr of the last run in each cell:\n\n{}",
            messages.join("\n")
        );
    }
    let _ = writeln!(md, "\n## Raw data\n\n```text\n{data}```");
    md
}

/// A path in `dir` named `<sub>-<date>.md` not yet taken.
fn results_path(dir: &Path, sub: &str, date: &str) -> PathBuf {
    let mut path = dir.join(format!("{sub}-{date}.md"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{sub}-{date}-{n}.md"));
        n += 1;
    }
    path
}

/// Prints the tables, writes the results file, cleans up. Returns false if
/// any run failed or did not verify.
pub fn finish(common: &Common, info: RunInfo, results: &Results, goals: &[Goal]) -> Result<bool> {
    let (h, rows) = results.table_rows();
    println!(
        "\nResults (median of {} rounds):\n\n{}",
        common.rounds,
        report::text_table(&h, &rows)
    );
    if !results.sizes.is_empty() {
        let (h, rows) = results.size_rows();
        println!("Sizes:\n\n{}", report::text_table(&h, &rows));
    }
    let (h, rows) = Goal::rows(goals);
    println!("Goals:\n\n{}", report::text_table(&h, &rows));
    for s in &info.sections {
        println!("{}:\n\n{}", s.title, report::text_table(&s.header, &s.rows));
    }
    let (h, rows, lines) = report::BaseRatio::rows(results);
    if !rows.is_empty() {
        println!(
            "haul / haul-base (--baseline):\n\n{}",
            report::text_table(&h, &rows)
        );
        for l in &lines {
            println!("{l}");
        }
        println!();
    }
    let data = results.data_block(&format!(
        "subcommand={} scale={} seed={} rounds={}",
        info.subcommand, common.scale, common.seed, common.rounds
    ));
    let baseline = match &common.baseline {
        None => None,
        Some(p) => {
            let text = fs::read_to_string(p)
                .with_context(|| format!("reading baseline {}", p.display()))?;
            let Some(c) = report::compare(&text, &data) else {
                bail!("baseline {} has no `haul-bench-data v1` block", p.display());
            };
            println!("Compared with {}:\n\n{}", p.display(), c.text());
            let mut md = format!("Baseline: `{}`\n\n", p.display());
            if let Some(w) = &c.warning {
                println!("warning: {w}\n");
                let _ = writeln!(md, "**Warning:** {w}\n");
            }
            md.push_str(&c.markdown());
            Some(md)
        }
    };
    if common.write_results {
        fs::create_dir_all(&common.out_dir)
            .with_context(|| format!("creating {}", common.out_dir.display()))?;
        let path = results_path(&common.out_dir, info.subcommand, &info.date);
        fs::write(
            &path,
            markdown(common, &info, results, goals, baseline.as_deref(), &data),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if common.keep_corpus {
        corpus::remove_if_exists(&common.root.join("logs"))?;
        println!(
            "kept the corpora under {} (--keep-corpus)",
            common.root.join("corpus").display()
        );
    } else {
        corpus::remove_if_exists(&common.root)?;
    }
    let valid = results.all_valid() && info.errors.is_empty();
    if !valid {
        println!("some runs failed or did not verify: their figures are marked INVALID");
    }
    if goals.iter().any(|g| g.verdict == Verdict::Miss) {
        println!("some goals were missed");
    }
    Ok(valid)
}
