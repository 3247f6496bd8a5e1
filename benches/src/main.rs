//! End-to-end benchmarks of haul against the tools it replaces.
//!
//! `cargo run --release -p haul-benches -- copy [--rounds N] [--scale F] [--keep-corpus]`
//! `cargo run --release -p haul-benches -- snapshot [--rounds N] [--scale F] [--keep-corpus]`
//! `cargo run --release -p haul-benches -- archive [--rounds N] [--scale F] [--keep-corpus]`
//! `cargo run --release -p haul-benches -- ssh [--rounds N] [--scale F] [--keep-corpus]`
//! See benches/README.md, or run with `--help`.

mod archive;
mod copy;
mod corpus;
mod error;
mod machine;
mod measure;
mod prng;
mod report;
mod session;
mod snapshot;
mod ssh;
mod sys;
mod tree;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::corpus::Kind;
use crate::error::{bail, Context, Result};
use crate::session::Common;

const USAGE: &str = "\
usage: cargo run --release -p haul-benches -- <subcommand> [options]

subcommands:
  copy      time haul copy vs rsync -aHAXS vs cp -a: full copy and no-change re-run
  snapshot  haul snapshot vs restic vs tar+zstd: first create, repository size,
            unchanged re-create, full restore (kernel corpus by default)
  archive   haul archive create/extract (.tar.zst, .zip) and snapshot download vs
            tar+zstd, zip, unzip (kernel corpus by default)
  ssh       haul copy over ssh to a local sshd vs rsync -e ssh and tar|zstd|ssh:
            initial push, no-change and append re-runs, fan-out, peak RSS of
            both sides (kernel corpus by default; needs root and openssh-server)
  compare   compare two results files: compare BASELINE.md NEW.md
  corpus    only build the corpora (implies --keep-corpus) and print their summaries
  clean     remove the scratch directory (--root)

options (copy, snapshot, archive, ssh, corpus):
  --rounds N         interleaved rounds per tool (default 3)
  --scale F          scale the corpora's file counts and sizes (default 1; e.g. 0.02 to try)
  --corpora LIST     comma-separated: kernel,empty1m (default both; snapshot: kernel)
  --tools LIST       copy: haul,rsync,cp; snapshot: haul,restic,tar; archive: haul,peer
                     (default all); haul-base too (copy, snapshot), with --baseline BINARY
                     (added if left out)
  --measures LIST    archive only: tzst-create,tzst-extract-haul,tzst-extract-gnu,
                     zip-create,zip-extract,download (default all);
                     ssh: push,no-change,append,fan-out (default all)
  --keep-corpus      keep the corpora for the next run (rebuilt only if parameters change)
  --seed N           corpus seed (default 1)
  --root DIR         scratch directory, should be tmpfs (default /dev/shm/haul-bench)
  --out DIR          where results files go (default benches/results)
  --no-write         print the tables but write no results file
  --baseline PATH    an executable: a second haul binary, run as one more tool
                     (\"haul-base\") in every round, reported as haul / haul-base;
                     any other file: an earlier results file to compare with.
                     May be given twice, once of each kind
  --haul PATH        haul binary to use (default: build target/release/haul)
  --haul-arg ARG     extra argument for `haul copy` (snapshot: for `haul snapshot create`
                     and `restore`; archive: every timed haul command) (repeatable)
  --wait-idle        before each timed run, wait (up to 10 min) until other processes
                     use under 0.2 cores: for shared machines

exit status: 0 all runs verified, 1 some run failed or did not verify, 2 usage or setup error
";

fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    let argv: Vec<String> = raw.by_ref().take(1).collect();
    if argv.first().map(String::as_str) == Some(measure::RUNNER_SUBCOMMAND) {
        return measure::runner_main(raw);
    }
    let argv: Vec<String> = argv.into_iter().chain(raw).collect();
    match run(argv) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("haul-benches: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(argv: Vec<String>) -> Result<bool> {
    let mut args: VecDeque<String> = argv.iter().cloned().collect();
    let Some(sub) = args.pop_front() else {
        print!("{USAGE}");
        return Ok(true);
    };
    match sub.as_str() {
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(true)
        }
        "copy" => {
            let mut tools = copy::Tool::ALL.to_vec();
            let common = parse_common(&mut args, argv, |flag, args| {
                if flag != "--tools" {
                    return Ok(false);
                }
                tools = parse_list(&value(args, flag)?, copy::Tool::parse, "tool")?;
                Ok(true)
            })?;
            let tools = with_base(tools, copy::Tool::HaulBase, &common)?;
            copy::run(copy::CopyOpts { common, tools })
        }
        "snapshot" => {
            let corpora_given = argv
                .iter()
                .any(|a| a == "--corpora" || a.starts_with("--corpora="));
            let mut tools = snapshot::Tool::ALL.to_vec();
            let mut common = parse_common(&mut args, argv, |flag, args| {
                if flag != "--tools" {
                    return Ok(false);
                }
                tools = parse_list(&value(args, flag)?, snapshot::Tool::parse, "tool")?;
                Ok(true)
            })?;
            if !corpora_given {
                common.corpora = vec![Kind::Kernel];
            }
            let tools = with_base(tools, snapshot::Tool::HaulBase, &common)?;
            snapshot::run(snapshot::SnapshotOpts { common, tools })
        }
        "archive" => {
            let corpora_given = argv
                .iter()
                .any(|a| a == "--corpora" || a.starts_with("--corpora="));
            let mut sides = archive::Side::ALL.to_vec();
            let mut measures = archive::Measure::ALL.to_vec();
            let mut common = parse_common(&mut args, argv, |flag, args| match flag {
                "--tools" => {
                    sides = parse_list(&value(args, flag)?, archive::Side::parse, "tool")?;
                    Ok(true)
                }
                "--measures" => {
                    let list = value(args, flag)?;
                    measures = parse_list(&list, archive::Measure::parse, "measure")?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
            if !corpora_given {
                common.corpora = vec![Kind::Kernel];
            }
            if common.haul_base.is_some() {
                bail!("archive has no haul-base arm: compare two results files instead");
            }
            // Keep the order of Measure::ALL: extractions read the
            // archives their create measure wrote earlier in the round.
            measures = archive::Measure::ALL
                .into_iter()
                .filter(|m| measures.contains(m))
                .collect();
            archive::run(archive::ArchiveOpts {
                common,
                sides,
                measures,
            })
        }
        "ssh" => {
            let corpora_given = argv
                .iter()
                .any(|a| a == "--corpora" || a.starts_with("--corpora="));
            let mut measures = ssh::Measure::ALL.to_vec();
            let mut common = parse_common(&mut args, argv, |flag, args| {
                if flag != "--measures" {
                    return Ok(false);
                }
                measures = parse_list(&value(args, flag)?, ssh::Measure::parse, "measure")?;
                Ok(true)
            })?;
            if !corpora_given {
                common.corpora = vec![Kind::Kernel];
            }
            if common.haul_base.is_some() {
                bail!("ssh has no haul-base arm: compare two results files instead");
            }
            measures = ssh::Measure::ALL
                .into_iter()
                .filter(|m| measures.contains(m))
                .collect();
            ssh::run(ssh::SshOpts { common, measures })
        }
        "corpus" => {
            let mut common = parse_common(&mut args, argv, |_, _| Ok(false))?;
            common.keep_corpus = true;
            let mut info = session::RunInfo::start("corpus");
            for &kind in &common.corpora {
                let (corpus, _) = session::prepare_corpus(&common, kind, &mut info)?;
                println!("  at {}", corpus.path.display());
            }
            Ok(true)
        }
        "compare" => {
            let (Some(base), Some(new), None) =
                (args.pop_front(), args.pop_front(), args.pop_front())
            else {
                bail!("usage: compare BASELINE.md NEW.md");
            };
            let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
            let Some(c) = report::compare(&read(&base)?, &read(&new)?) else {
                bail!("{base} or {new} has no `haul-bench-data v1` block");
            };
            println!("{base} -> {new}\n\n{}", c.text());
            if let Some(w) = c.warning {
                println!("warning: {w}");
            }
            Ok(true)
        }
        "clean" => {
            let common = parse_common(&mut args, argv, |_, _| Ok(false))?;
            corpus::remove_if_exists(&common.root)?;
            println!("removed {}", common.root.display());
            Ok(true)
        }
        other => bail!("unknown subcommand `{other}`\n\n{USAGE}"),
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Puts `base` (the haul-base tool) in `tools` when `--baseline` named a haul
/// binary, and refuses it when none was named.
fn with_base<T: PartialEq>(mut tools: Vec<T>, base: T, common: &Common) -> Result<Vec<T>> {
    match (&common.haul_base, tools.contains(&base)) {
        (Some(_), false) => tools.push(base),
        (None, true) => bail!("tool `haul-base` needs `--baseline PATH` naming a haul binary"),
        _ => {}
    }
    Ok(tools)
}

fn value(args: &mut VecDeque<String>, flag: &str) -> Result<String> {
    args.pop_front()
        .ok_or_else(|| error::Error::msg(format!("{flag} needs a value")))
}

fn parse_list<T>(s: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>> {
    let items: Vec<T> = s
        .split(',')
        .map(|x| parse(x.trim()).ok_or_else(|| error::Error::msg(format!("unknown {what} `{x}`"))))
        .collect::<Result<_>>()?;
    if items.is_empty() {
        bail!("empty {what} list");
    }
    Ok(items)
}

/// Parses the options every subcommand shares; `extra` may claim a flag
/// (returning true) before it is rejected as unknown.
fn parse_common(
    args: &mut VecDeque<String>,
    argv: Vec<String>,
    mut extra: impl FnMut(&str, &mut VecDeque<String>) -> Result<bool>,
) -> Result<Common> {
    let mut c = Common {
        rounds: 3,
        scale: 1.0,
        seed: 1,
        keep_corpus: false,
        corpora: Kind::ALL.to_vec(),
        root: PathBuf::from("/dev/shm/haul-bench"),
        out_dir: session::workspace().join("benches").join("results"),
        write_results: true,
        baseline: None,
        haul: None,
        haul_base: None,
        haul_args: Vec::new(),
        wait_idle: false,
        argv,
    };
    while let Some(flag) = args.pop_front() {
        // Accept --flag=value as well as --flag value.
        if let Some((f, v)) = flag.split_once('=').filter(|_| flag.starts_with("--")) {
            args.push_front(v.to_owned());
            args.push_front(f.to_owned());
            continue;
        }
        match flag.as_str() {
            "--rounds" => c.rounds = value(args, &flag)?.parse().context("--rounds")?,
            "--scale" => c.scale = value(args, &flag)?.parse().context("--scale")?,
            "--seed" => c.seed = value(args, &flag)?.parse().context("--seed")?,
            "--keep-corpus" => c.keep_corpus = true,
            "--corpora" => c.corpora = parse_list(&value(args, &flag)?, Kind::parse, "corpus")?,
            "--root" => c.root = value(args, &flag)?.into(),
            "--out" => c.out_dir = value(args, &flag)?.into(),
            "--no-write" => c.write_results = false,
            "--baseline" => {
                // A haul binary to race against, or an earlier results file
                // to compare with: told apart by the execute bit, since
                // results files are Markdown.
                let path = PathBuf::from(value(args, &flag)?);
                if is_executable(&path) {
                    c.haul_base = Some(path);
                } else {
                    c.baseline = Some(path);
                }
            }
            "--haul" => c.haul = Some(value(args, &flag)?.into()),
            "--haul-arg" => c.haul_args.push(value(args, &flag)?),
            "--wait-idle" => c.wait_idle = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            f => {
                if !extra(f, args)? {
                    bail!("unknown option `{f}` (see --help)");
                }
            }
        }
    }
    if c.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !(c.scale > 0.0 && c.scale <= 10.0) {
        bail!("--scale must be in (0, 10]");
    }
    Ok(c)
}
