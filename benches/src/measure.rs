//! Runs one child process and measures its wall time and peak RSS.
//!
//! The tool is not spawned by the harness itself but by a fresh exec of this
//! binary (the hidden `__measure` subcommand). Linux folds the memory high-water
//! mark of the address space a process execs *from* into its `ru_maxrss`; for a
//! child spawned straight from the harness that is the harness's own peak (tens
//! of MiB after building a corpus), which would put a floor under every tool's
//! figure. The runner's address space is a fresh ~2 MiB one.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use crate::error::{bail, Context, Result};
use crate::sys;

pub struct Run {
    pub wall_secs: f64,
    /// User + system CPU time of the child and its reaped descendants.
    pub cpu_secs: f64,
    /// `ru_maxrss` from `wait4`: the largest resident set of the child or of
    /// any descendant it reaped (a maximum, not a sum), in KiB.
    pub max_rss_kib: u64,
    pub status: ExitStatus,
    /// CPU cores kept busy by *other* processes during the run, on average
    /// (system-wide busy time from /proc/stat minus the child's own): a sign
    /// that something else competed with the tool and the figure is noisy.
    pub others_load: f64,
    /// Start of the child's stderr, for reporting failures and warnings.
    pub stderr: String,
}

impl Run {
    pub fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

pub const RUNNER_SUBCOMMAND: &str = "__measure";

/// `__measure --stdout FILE PROGRAM ARGS...`: the tool's stdout goes to FILE.
const STDOUT_FLAG: &str = "--stdout";

/// Runs `cmd` (its program, arguments, environment changes and working
/// directory; nothing else of it is used) with stdin and stdout on /dev/null
/// and stderr in `stderr_path`.
pub fn run(cmd: &Command, stderr_path: &Path) -> Result<Run> {
    run_to(cmd, stderr_path, None)
}

/// [`run`], with the tool's stdout in `stdout_path` (a `--json` summary,
/// say) instead of /dev/null.
pub fn run_to(cmd: &Command, stderr_path: &Path, stdout_path: Option<&Path>) -> Result<Run> {
    let err =
        File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let exe = std::env::current_exe().context("locating haul-benches itself")?;
    let mut runner = Command::new(exe);
    runner.arg(RUNNER_SUBCOMMAND);
    if let Some(out) = stdout_path {
        runner.arg(STDOUT_FLAG).arg(out);
    }
    runner
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stderr(err);
    // The runner passes its environment and working directory on to the tool.
    if let Some(dir) = cmd.get_current_dir() {
        runner.current_dir(dir);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => runner.env(key, v),
            None => runner.env_remove(key),
        };
    }
    let busy_before = busy_secs();
    let out = runner
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let busy = busy_secs()
        .zip(busy_before)
        .map_or(0.0, |(after, before)| after - before);
    let report = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = report.split_whitespace().collect();
    let [status, wall, cpu, rss] = fields[..] else {
        bail!("measuring {cmd:?} failed ({}): {report:?}", out.status);
    };
    let num = |s: &str| {
        s.parse::<f64>()
            .map_err(|e| crate::error::Error::msg(format!("{s}: {e}")))
    };
    let mut stderr = std::fs::read(stderr_path).unwrap_or_default();
    stderr.truncate(4096);
    use std::os::unix::process::ExitStatusExt;
    let (wall_secs, cpu_secs) = (num(wall)?, num(cpu)?);
    Ok(Run {
        status: ExitStatus::from_raw(status.parse().context("runner status")?),
        wall_secs,
        cpu_secs,
        others_load: ((busy - cpu_secs) / wall_secs.max(1e-3)).max(0.0),
        max_rss_kib: rss.parse().context("runner rss")?,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Waits (at most `max_wait`) until other processes use less than a fifth of
/// a core over one second. Returns false if the machine never went quiet.
pub fn wait_idle(max_wait: std::time::Duration) -> bool {
    let start = Instant::now();
    let mut said = false;
    loop {
        let before = busy_secs();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let load = busy_secs().zip(before).map_or(0.0, |(a, b)| a - b);
        if load < 0.2 {
            return true;
        }
        if start.elapsed() > max_wait {
            println!(
                "      machine still busy ({load:.2} cores) after {max_wait:?}; measuring anyway"
            );
            return false;
        }
        if !said {
            println!("      waiting for other processes to go quiet ({load:.2} cores busy)");
            said = true;
        }
    }
}

/// System-wide non-idle CPU time so far, from the first line of /proc/stat.
fn busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map_while(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(busy as f64 / sys::clock_ticks_per_sec())
}

/// The `__measure [--stdout FILE] PROGRAM ARGS...` runner: spawns the
/// program (stdout to FILE or /dev/null, stderr inherited), reaps it (with
/// its rusage), and prints `<raw wait status> <wall s> <cpu s> <max rss KiB>`
/// on stdout.
pub fn runner_main(mut args: impl Iterator<Item = String>) -> ExitCode {
    let mut program = args.next();
    let mut stdout = Stdio::null();
    if program.as_deref() == Some(STDOUT_FLAG) {
        let Some(path) = args.next() else {
            eprintln!("{RUNNER_SUBCOMMAND}: {STDOUT_FLAG} needs a file");
            return ExitCode::from(2);
        };
        match File::create(&path) {
            Ok(f) => stdout = Stdio::from(f),
            Err(e) => {
                eprintln!("{RUNNER_SUBCOMMAND}: creating {path}: {e}");
                return ExitCode::from(2);
            }
        }
        program = args.next();
    }
    let Some(program) = program else {
        eprintln!("usage: {RUNNER_SUBCOMMAND} [{STDOUT_FLAG} FILE] PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let mut child = match Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {program}: {e}");
            return ExitCode::from(2);
        }
    };
    let waited = sys::wait_usage(&mut child);
    let wall = start.elapsed().as_secs_f64();
    // `child` is already reaped: dropping it neither waits nor kills.
    drop(child);
    match waited {
        Ok((status, usage)) => {
            println!(
                "{status} {wall:.6} {:.6} {}",
                usage.cpu_secs, usage.max_rss_kib
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wait4 on {program}: {e}");
            ExitCode::from(2)
        }
    }
}
