//! `ssh`: `haul copy` over ssh (issue 17) against rsync over ssh and a
//! `tar | zstd | ssh` pipeline, all to a real sshd on 127.0.0.1.
//!
//! The sshd is the end-to-end tests' ([`haul_tests::sshd::Sshd`]); the
//! remote side of every tool is this machine, so the "remote" destinations
//! are plain directories the harness checks like `copy`'s. The remote haul
//! is the same binary, run through a wrapper script that records the peak
//! RSS of each `haul serve` with `/usr/bin/time -f %M`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use haul_tests::sshd::Sshd;

use crate::copy::{fresh_dst, rotated};
use crate::corpus::{self, Corpus};
use crate::error::{bail, Context, Error, Result};
use crate::measure::{self, Run};
use crate::report::{Cell, Goal, Pair, Results, Section, Verdict};
use crate::session::{self, shell_quote, Common, RunInfo};
use crate::tree::{self, Summary};

mod report;
mod setup;

use report::{goals, pairs, traffic_section};
use setup::{
    check_room, haul_has_remote, preflight, versions, Appended, Commands, ServeRss, APPENDED_LINE,
};

/// One scenario of the issue's table (`--measures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Measure {
    /// Initial push into a fresh, empty destination.
    Push,
    /// The same push again, nothing changed.
    NoChange,
    /// A push after a line was appended to 1% of the files.
    Append,
    /// One haul to two destinations against two haul pushes in a row.
    FanOut,
}

impl Measure {
    pub const ALL: [Measure; 4] = [
        Measure::Push,
        Measure::NoChange,
        Measure::Append,
        Measure::FanOut,
    ];

    /// The scenario name in tables, the data block and `--measures`.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Push => "push",
            Measure::NoChange => "no-change",
            Measure::Append => "append",
            Measure::FanOut => "fan-out",
        }
    }

    pub fn parse(s: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == s)
    }

    /// haul first, then its peers, in the order of the round's rotation.
    fn tools(self) -> &'static [Tool] {
        match self {
            Measure::Push => &[Tool::Haul, Tool::Rsync, Tool::Tar],
            Measure::NoChange | Measure::Append => &[Tool::Haul, Tool::Rsync],
            Measure::FanOut => &[Tool::Haul, Tool::HaulTwice],
        }
    }

    /// (peer, the most haul's wall time may be of the peer's).
    fn goals(self) -> &'static [(Tool, f64)] {
        match self {
            Measure::Push => &[(Tool::Rsync, 0.5), (Tool::Tar, 1.0)],
            Measure::NoChange => &[(Tool::Rsync, 0.4)],
            Measure::Append => &[(Tool::Rsync, 0.5)],
            Measure::FanOut => &[(Tool::HaulTwice, 0.65)],
        }
    }

    /// What is compared, for the side-by-side table.
    fn what(self) -> &'static str {
        match self {
            Measure::Push => "initial push",
            Measure::NoChange => "no-change re-run",
            Measure::Append => "re-run after appending to 1% of the files",
            Measure::FanOut => "fan-out to 2 destinations",
        }
    }

    /// How many destinations each run fills.
    fn destinations(self) -> usize {
        match self {
            Measure::FanOut => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// `haul copy` over ssh, to one or (fan-out) two destinations.
    Haul,
    Rsync,
    /// `tar | zstd | ssh 'zstd -d | tar -x'`.
    Tar,
    /// The fan-out's peer: two `haul copy` pushes, one after the other.
    HaulTwice,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Haul => "haul",
            Tool::Rsync => "rsync",
            Tool::Tar => "tar+zstd",
            Tool::HaulTwice => "haul-twice",
        }
    }

    /// Whether it runs haul, and so `haul serve` on the remote side.
    fn is_haul(self) -> bool {
        matches!(self, Tool::Haul | Tool::HaulTwice)
    }
}

/// What one run of one tool gave.
struct Outcome {
    run: Run,
    problems: Vec<String>,
    /// The largest peak RSS of the `haul serve` processes it started, KiB.
    serve_kib: Option<u64>,
    /// haul's `bytes_sent` and `bytes_received`, from its `--json`.
    traffic: Option<(u64, u64)>,
}

/// Two runs one after the other as one: the haul-twice peer.
fn in_sequence(a: Run, b: Run) -> Run {
    Run {
        wall_secs: a.wall_secs + b.wall_secs,
        cpu_secs: a.cpu_secs + b.cpu_secs,
        max_rss_kib: a.max_rss_kib.max(b.max_rss_kib),
        status: if a.status.success() {
            b.status
        } else {
            a.status
        },
        others_load: a.others_load.max(b.others_load),
        stderr: [a.stderr.trim(), b.stderr.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `bytes_sent` and `bytes_received` of a `haul copy --json` summary,
/// summed over the hosts of a fan-out.
fn traffic(json: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let of =
        |h: &serde_json::Value| Some((h["bytes_sent"].as_u64()?, h["bytes_received"].as_u64()?));
    match v["hosts"].as_array() {
        Some(hosts) => hosts.iter().try_fold((0, 0), |(s, r), h| {
            let (hs, hr) = of(h)?;
            Some((s + hs, r + hr))
        }),
        None => of(&v),
    }
}

pub struct SshOpts {
    pub common: Common,
    pub measures: Vec<Measure>,
}

struct Bench<'a> {
    commands: &'a Commands,
    serve: ServeRss,
    wait_idle: bool,
    logs: PathBuf,
    rounds: usize,
    dst_root: PathBuf,
    /// The `append` measure's working copy of the source.
    work: PathBuf,
    results: Results,
    /// Per (corpus, measure): the `haul serve` peak of each timed haul run.
    serve_kib: BTreeMap<(String, Measure), Vec<u64>>,
    /// Per (corpus, measure): haul's (bytes_sent, bytes_received) per timed run.
    traffic: BTreeMap<(String, Measure), Vec<(u64, u64)>>,
}

impl Bench<'_> {
    /// One measured run of `cmd`, its stdout kept (haul's `--json`).
    fn run_one(&self, cmd: &Command, log: &Path, json: &Path) -> Result<(Run, String)> {
        let run = measure::run_to(cmd, log, Some(json))?;
        let out = fs::read_to_string(json).unwrap_or_default();
        Ok((run, out))
    }

    /// Runs `tool` from `src` to `dsts` (measured, timed or not), and
    /// collects haul's serve RSS and traffic. A failing command is a
    /// problem naming its exit status and stderr.
    fn run_tool(
        &self,
        corpus: &Corpus,
        tool: Tool,
        src: &Path,
        dsts: &[&Path],
        label: &str,
        timed: bool,
    ) -> Result<Outcome> {
        let slug = label.replace(' ', "-").replace('/', "of");
        let base = format!("{}-{slug}-{}", corpus.kind.name(), tool.name());
        let log = self.logs.join(format!("{base}.stderr"));
        let json = self.logs.join(format!("{base}.json"));
        if timed && self.wait_idle {
            measure::wait_idle(Duration::from_secs(600));
        }
        self.serve.clear()?;
        let (run, stdout) = match tool {
            Tool::HaulTwice => {
                let first =
                    self.run_one(&self.commands.command(tool, src, &dsts[..1]), &log, &json)?;
                if first.0.status.success() {
                    let log2 = self.logs.join(format!("{base}-2.stderr"));
                    let json2 = self.logs.join(format!("{base}-2.json"));
                    let second =
                        self.run_one(&self.commands.command(tool, src, &dsts[1..]), &log2, &json2)?;
                    let stdout = format!("{{\"hosts\":[{},{}]}}", first.1.trim(), second.1.trim());
                    (in_sequence(first.0, second.0), stdout)
                } else {
                    first
                }
            }
            _ => self.run_one(&self.commands.command(tool, src, dsts), &log, &json)?,
        };
        let serve_kib = if tool.is_haul() {
            // One serve per destination; a run that failed may have started
            // none, so it gets a short wait.
            let patience = Duration::from_secs(if run.status.success() { 10 } else { 1 });
            self.serve.collect(dsts.len(), patience)?
        } else {
            None
        };
        let mut problems = Vec::new();
        if !run.status.success() {
            problems.push(format!(
                "{label}: {} {}: {}",
                tool.name(),
                describe_status(run.status),
                one_line(&run.stderr)
            ));
        }
        let traffic = if tool.is_haul() {
            traffic(&stdout)
        } else {
            None
        };
        Ok(Outcome {
            run,
            problems,
            serve_kib,
            traffic,
        })
    }

    /// Compares each destination with `src` (after a successful run).
    fn verify(
        &self,
        outcome: &mut Outcome,
        src: &Path,
        expected: &Summary,
        samples: &[PathBuf],
        dsts: &[&Path],
        label: &str,
    ) {
        if !outcome.problems.is_empty() {
            return;
        }
        for (i, dst) in dsts.iter().enumerate() {
            let which = if dsts.len() > 1 {
                format!("destination {}: ", i + 1)
            } else {
                String::new()
            };
            outcome.problems.extend(
                tree::verify(src, expected, samples, dst)
                    .into_iter()
                    .map(|p| format!("{label}: {which}{p}")),
            );
        }
    }

    fn record(&mut self, corpus: &Corpus, measure: Measure, tool: Tool, label: &str, o: Outcome) {
        let verdict = if o.problems.is_empty() {
            "ok"
        } else {
            "PROBLEM"
        };
        let serve = o.serve_kib.map_or(String::new(), |k| {
            format!("  serve rss {:.1} MiB", k as f64 / 1024.0)
        });
        let sent = o.traffic.map_or(String::new(), |(s, _)| {
            format!("  sent {:.1} MB", s as f64 / 1e6)
        });
        println!(
            "  {:<8} {:<16} {:<10} {:>9.3} s  cpu {:>8.3} s  rss {:>7.1} MiB{serve}{sent}  others {:.2}  {verdict}",
            corpus.kind.name(),
            label,
            tool.name(),
            o.run.wall_secs,
            o.run.cpu_secs,
            o.run.max_rss_mib(),
            o.run.others_load
        );
        for p in &o.problems {
            println!("      {p}");
        }
        let key = (corpus.kind.name().to_owned(), measure);
        if let Some(k) = o.serve_kib {
            self.serve_kib.entry(key.clone()).or_default().push(k);
        }
        if let (Some(t), Tool::Haul) = (o.traffic, tool) {
            self.traffic.entry(key).or_default().push(t);
        }
        let cell = self
            .results
            .cell(corpus.kind.name(), measure.name(), tool.name());
        cell.last_stderr = o.run.stderr.trim().to_owned();
        cell.runs.push(o.run);
        cell.problems.extend(o.problems);
    }

    /// Notes a timed run that could not take place (its fill failed).
    fn skipped(&mut self, corpus: &Corpus, measure: Measure, tool: Tool, why: Vec<String>) {
        println!(
            "  {:<8} {:<16} {:<10} skipped: the untimed fill failed",
            corpus.kind.name(),
            measure.name(),
            tool.name()
        );
        for p in &why {
            println!("      {p}");
        }
        let cell = self
            .results
            .cell(corpus.kind.name(), measure.name(), tool.name());
        cell.problems.extend(why);
    }

    /// `push` and `fan-out`: every tool into fresh, empty destinations.
    fn push(
        &mut self,
        corpus: &Corpus,
        src: &Path,
        expected: &(Summary, Vec<PathBuf>),
        measure: Measure,
        round: usize,
    ) -> Result<()> {
        let label = format!("{} {}/{}", measure.name(), round + 1, self.rounds);
        for tool in rotated(measure.tools(), round) {
            let dsts: Vec<PathBuf> = (1..=measure.destinations())
                .map(|i| self.dst_root.join(format!("{}-{i}", tool.name())))
                .collect();
            for d in &dsts {
                fresh_dst(d)?;
            }
            let dsts: Vec<&Path> = dsts.iter().map(PathBuf::as_path).collect();
            let mut o = self.run_tool(corpus, tool, src, &dsts, &label, true)?;
            self.verify(&mut o, src, &expected.0, &expected.1, &dsts, &label);
            self.record(corpus, measure, tool, &label, o);
            for d in dsts {
                corpus::remove_if_exists(d)?;
            }
        }
        Ok(())
    }

    /// `no-change` and `append`: each tool fills a fresh destination
    /// (untimed, checked), then (for `append`, after growing the chosen
    /// files of the working copy) runs the same command again, timed.
    fn rerun(
        &mut self,
        corpus: &Corpus,
        expected: &(Summary, Vec<PathBuf>),
        measure: Measure,
        appended: Option<&Appended>,
        round: usize,
    ) -> Result<()> {
        let of = format!("{}/{}", round + 1, self.rounds);
        let label = format!("{} {of}", measure.name());
        let src = match appended {
            Some(_) => self.work.clone(),
            None => std::path::absolute(&corpus.path).context("making the corpus path absolute")?,
        };
        for tool in rotated(measure.tools(), round) {
            if let Some(a) = appended {
                a.restore(&src)?;
            }
            let dst = self.dst_root.join(tool.name());
            fresh_dst(&dst)?;
            let dsts = [dst.as_path()];
            let fill_label = format!("fill {of}");
            let mut fill = self.run_tool(corpus, tool, &src, &dsts, &fill_label, false)?;
            self.verify(
                &mut fill,
                &src,
                &expected.0,
                &expected.1,
                &dsts,
                &fill_label,
            );
            if !fill.problems.is_empty() {
                self.skipped(corpus, measure, tool, fill.problems);
                corpus::remove_if_exists(&dst)?;
                continue;
            }
            let (summary, samples) = match appended {
                None => (expected.0.clone(), expected.1.clone()),
                Some(a) => {
                    a.append(&src)?;
                    // The grown files are checked too, not only the sample.
                    let (summary, _) = tree::scan(&src)?;
                    let samples = expected
                        .1
                        .iter()
                        .cloned()
                        .chain(a.files.iter().take(100).map(|f| f.0.clone()))
                        .collect();
                    (summary, samples)
                }
            };
            let mut o = self.run_tool(corpus, tool, &src, &dsts, &label, true)?;
            self.verify(&mut o, &src, &summary, &samples, &dsts, &label);
            self.record(corpus, measure, tool, &label, o);
            corpus::remove_if_exists(&dst)?;
        }
        if let Some(a) = appended {
            a.restore(&src)?;
        }
        Ok(())
    }

    fn corpus(
        &mut self,
        corpus: &Corpus,
        expected: &(Summary, Vec<PathBuf>),
        measures: &[Measure],
    ) -> Result<()> {
        let src = std::path::absolute(&corpus.path).context("making the corpus path absolute")?;
        let appended = if measures.contains(&Measure::Append) {
            // The working copy the append measure grows and puts back; the
            // corpus itself stays untouched (it may be kept for later runs).
            println!("  copying the corpus for the append measure (untimed)");
            corpus::remove_if_exists(&self.work)?;
            let status = Command::new("cp")
                .arg("-a")
                .arg(&src)
                .arg(&self.work)
                .status()
                .context("running cp -a")?;
            if !status.success() {
                bail!(
                    "cp -a {} {} failed ({status})",
                    src.display(),
                    self.work.display()
                );
            }
            let a = Appended::pick(&self.work)?;
            println!("  append: a line to {} files each round", a.files.len());
            Some(a)
        } else {
            None
        };
        for round in 0..self.rounds {
            for &m in measures {
                match m {
                    Measure::Push | Measure::FanOut => {
                        self.push(corpus, &src, expected, m, round)?
                    }
                    Measure::NoChange => self.rerun(corpus, expected, m, None, round)?,
                    Measure::Append => self.rerun(corpus, expected, m, appended.as_ref(), round)?,
                }
            }
        }
        corpus::remove_if_exists(&self.work)?;
        println!("  {}: done", corpus.kind.name());
        Ok(())
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => format!("ended by {status}"),
    }
}

/// The first lines of `s` on one line, for the problem list.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(4)
        .collect();
    if lines.is_empty() {
        "(no message)".into()
    } else {
        lines.join(" / ")
    }
}

pub fn run(opts: SshOpts) -> Result<bool> {
    let common = &opts.common;
    let root = std::path::absolute(&common.root).context("making --root absolute")?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    println!("starting sshd on 127.0.0.1");
    let sshd = Sshd::start().map_err(|e| Error::msg(format!("starting the test sshd: {e}")))?;
    let (commands, serve) = preflight(common, &sshd, &root)?;
    let mut run_info = RunInfo::start("ssh");
    run_info.tools = versions(&commands, &opts);
    if !haul_has_remote(&commands.haul) {
        let warning = format!(
            "`{} copy --help` lists no `--remote-haul`: this haul has no ssh transport, so every \
             haul run fails (see Problems) and its goals are INVALID.",
            commands.haul.display()
        );
        println!("warning: {warning}");
        run_info.notes.push(warning);
    }
    run_info.notes.push(format!(
        "The remote side is a real sshd on 127.0.0.1 (the end-to-end tests' `Sshd`: its own \
         ed25519 host and client keys, no PAM, login as root). `SSH` in the command lines is \
         `{}` (no user configuration, so ssh's defaults: no compression); rsync and haul get \
         it as `-e`, the tar pipeline runs it. The remote haul is the same binary (`--remote-haul`), \
         the remote rsync, zstd and tar those of this machine. Destinations are fresh, empty \
         directories under `{}`; sources and destinations are on the same tmpfs.",
        commands.ssh,
        root.join("dst").display()
    ));
    run_info.notes.push(format!(
        "Peak RSS, client: `ru_maxrss` of the haul process as for the other benches (its ssh \
         child included: the largest single process). Server: `WRAPPER` ({}) is a script that runs \
         `exec /usr/bin/time -f %M -o REPORT haul \"$@\"`, so each `haul serve` the client starts \
         over ssh reports its own `ru_maxrss`; the figure is the largest over the serves of a run \
         (two in the fan-out) and over the rounds.",
        commands.wrapper.display()
    ));
    if opts.measures.contains(&Measure::Append) {
        run_info.notes.push(format!(
            "`append`: the source is a working copy of the corpus (`cp -a`, untimed). For each \
             tool in each round: the copy is put back to the corpus (the grown files truncated \
             and their mtimes reset), a fresh destination is filled from it (untimed, checked), \
             the line `{}` is appended to every 100th regular single-link file in sorted order \
             (the same files for every tool), and the same command runs again, timed; the \
             destination is then checked, the grown files included.",
            String::from_utf8_lossy(APPENDED_LINE).trim()
        ));
    }
    if opts.measures.contains(&Measure::NoChange) {
        run_info.notes.push(
            "`no-change`: for each tool in each round, a fresh destination is filled by the same \
             command (untimed, checked), which then runs again, timed."
                .to_owned(),
        );
    }
    if opts.measures.contains(&Measure::FanOut) {
        run_info.notes.push(
            "`fan-out`: haul pushes to two fresh destinations on the same host in one run (both \
             connections at once, the default); its peer `haul-twice` is two single pushes one \
             after the other, its time the sum of both (and its RSS the larger)."
                .to_owned(),
        );
    }
    run_info.notes.push(
        "The tar pipeline runs in `bash -c` with `pipefail`, so a failure anywhere in it fails \
         the run. Every destination is compared with its source after every timed run (counts, \
         bytes, hard links, and type, mode, owner, size, mtime to the nanosecond, contents of \
         ~400 sampled entries); a failed check marks the run INVALID."
            .to_owned(),
    );
    if !common.haul_args.is_empty() {
        run_info.notes.push(format!(
            "`--haul-arg` {:?} is added to every haul command.",
            common.haul_args
        ));
    }

    let logs = root.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut bench = Bench {
        commands: &commands,
        serve,
        wait_idle: common.wait_idle,
        logs,
        rounds: common.rounds,
        dst_root: root.join("dst"),
        work: root.join("work"),
        results: Results::default(),
        serve_kib: BTreeMap::new(),
        traffic: BTreeMap::new(),
    };
    let mut tools: Vec<&str> = Vec::new();
    for m in &opts.measures {
        for t in m.tools() {
            if !tools.contains(&t.name()) {
                tools.push(t.name());
            }
        }
    }
    let scratch = [bench.dst_root.clone(), bench.work.clone()];
    let scratch: Vec<&Path> = scratch.iter().map(PathBuf::as_path).collect();
    let mut sources = BTreeMap::new();
    session::each_corpus(
        common,
        &tools,
        &mut run_info,
        &scratch,
        |corpus, expected| {
            sources.insert(corpus.kind.name().to_owned(), expected.0.bytes);
            check_room(&common.root, &expected.0)?;
            bench.corpus(corpus, expected, &opts.measures)
        },
    );
    corpus::remove_if_exists(&bench.serve.dir)?;
    corpus::remove_if_exists(&commands.wrapper)?;
    drop(sshd);
    let goals = goals(&bench, &opts);
    run_info.sections.push(Pair::section(
        "Side by side",
        "haul against its peer in each measure, in the same run. Times are medians of the \
         rounds' wall seconds, RSS the largest peak over the rounds (client: the haul process; \
         haul serve: the remote haul, see Notes). \"ratio\" is haul / peer read both ways: of \
         the medians, and in brackets the median of the per-round ratios; both must meet the \
         goal. \"spread\" is the smallest and largest per-round ratio.",
        &pairs(&bench, &opts),
    ));
    run_info.sections.push(traffic_section(&bench, &sources));
    session::finish(common, run_info, &bench.results, &goals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_of_one_host_and_of_a_fan_out() {
        assert_eq!(
            traffic(r#"{"ok":true,"bytes_sent":10,"bytes_received":3}"#),
            Some((10, 3))
        );
        let fan = r#"{"ok":true,"hosts":[{"bytes_sent":10,"bytes_received":3},
                     {"bytes_sent":5,"bytes_received":1}]}"#;
        assert_eq!(traffic(fan), Some((15, 4)));
        assert_eq!(traffic(""), None);
        assert_eq!(
            traffic(r#"{"hosts":[{"dest":"h:/x","ok":false,"error":"e"}]}"#),
            None
        );
    }

    #[test]
    fn commands_as_documented() {
        let c = Commands {
            haul: "/x/haul".into(),
            wrapper: "/r/remote-haul".into(),
            ssh: "ssh -p 22".into(),
            login: "root@127.0.0.1".into(),
            haul_args: Vec::new(),
        };
        assert_eq!(
            c.describe(Measure::Push, Tool::Rsync),
            "rsync -aHAXS --numeric-ids -e SSH SRC/ root@127.0.0.1:DST/"
        );
        assert_eq!(
            c.describe(Measure::Push, Tool::Tar),
            "tar -C SRC --xattrs --acls --numeric-owner -cf - . | zstd -1 -T0 | SSH \
             root@127.0.0.1 'zstd -d | tar -C DST --xattrs --acls --numeric-owner -xpf -'"
        );
        assert_eq!(
            c.describe(Measure::FanOut, Tool::Haul),
            "haul copy --no-progress --json -e SSH --remote-haul WRAPPER SRC root@127.0.0.1:DST \
             root@127.0.0.1:DST2"
        );
    }
}
