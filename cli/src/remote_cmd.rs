//! `haul copy` to and from other hosts (push, pull, fan-out), and
//! `haul serve`.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use haul_engine::{
    pull, push, push_many, serve_stdio, RemoteOptions, RemotePath, RemoteSummary, ServeOptions,
};
use serde_json::json;

use crate::copy_cmd::{change_sink, exit_code, print_human, summary_json, CopyArgs};
use crate::exit;
use crate::render::{escape_str, Reporter};

/// `haul serve`: the remote end of `haul copy` over ssh.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Speak the protocol on stdin and stdout (as ssh runs it).
    #[arg(long, required = true)]
    pub stdio: bool,
    /// Serve only roots at or below DIR (repeatable), for a `command=` in
    /// authorized_keys.
    #[arg(long, value_name = "DIR")]
    pub restrict_to_path: Vec<PathBuf>,
    /// Refuse pushes: nothing is written.
    #[arg(long)]
    pub read_only: bool,
    /// End the session when the client sends nothing at all (it sends
    /// keepalives while busy) for SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

pub fn serve(a: ServeArgs) -> Result<u8> {
    let opts = ServeOptions {
        restrict_to: a.restrict_to_path,
        read_only: a.read_only,
        timeout: std::time::Duration::from_secs(a.timeout),
    };
    serve_stdio(&opts)?;
    Ok(exit::OK)
}

enum Loc {
    Local(PathBuf),
    Remote(RemotePath),
}

fn loc(p: &Path) -> Result<Loc, String> {
    match RemotePath::parse(p.as_os_str()) {
        None => Ok(Loc::Local(p.to_path_buf())),
        Some(Ok(r)) => Ok(Loc::Remote(r)),
        Some(Err(m)) => Err(m),
    }
}

fn usage(msg: &str) -> u8 {
    let _ = writeln!(std::io::stderr(), "haul: error: {}", escape_str(msg));
    exit::USAGE
}

fn options(a: &CopyArgs) -> RemoteOptions {
    RemoteOptions {
        jobs: a.jobs.unwrap_or(0),
        delete: a.delete,
        checksum: a.checksum,
        dry_run: a.dry_run,
        verify: a.verify,
        record_changes: a.dry_run || a.verbose,
        owner: !a.no_owner,
        xattrs: !a.no_xattrs,
        acls: !a.no_acls && !a.no_xattrs,
        exclude: a.exclude.clone(),
        usermap: a.usermap.clone(),
        groupmap: a.groupmap.clone(),
        chown: a.chown.clone(),
        map_by_name: a.map_by_name,
        rsh: a.rsh.split_whitespace().map(String::from).collect(),
        remote_haul: a.remote_haul.clone(),
        compress_level: if a.no_compress {
            None
        } else {
            Some(a.compress_level.unwrap_or(1))
        },
        bwlimit: a.bwlimit,
        timeout: std::time::Duration::from_secs(a.timeout),
    }
}

/// Runs a copy that involves another host; `None` when SRC and the one
/// DST are both local (a local copy).
pub fn run(a: &CopyArgs) -> Result<Option<u8>> {
    let src = match loc(&a.src) {
        Ok(l) => l,
        Err(m) => return Ok(Some(usage(&m))),
    };
    let mut dsts = Vec::new();
    for d in &a.dst {
        match loc(d) {
            Ok(l) => dsts.push(l),
            Err(m) => return Ok(Some(usage(&m))),
        }
    }
    if a.rsh.split_whitespace().next().is_none() {
        return Ok(Some(usage("--rsh: the ssh command is empty")));
    }
    let o = options(a);
    let record = a.dry_run || a.verbose;
    match (src, dsts.as_slice()) {
        (Loc::Local(_), [Loc::Local(_)]) => Ok(None),
        (Loc::Remote(_), [Loc::Remote(_), ..]) => Ok(Some(usage(
            "both SRC and DST are remote; one side must be local",
        ))),
        (Loc::Remote(r), [Loc::Local(d)]) => {
            let reporter = Reporter::new(!a.no_progress && !a.json, change_sink(record, a.json));
            let res = pull(&r, d, &o, &reporter);
            let changes = reporter.finish();
            let s = res?;
            Ok(Some(report_one(a, &s, &changes)?))
        }
        (Loc::Remote(_), _) => Ok(Some(usage("a remote SRC takes one local DST"))),
        (Loc::Local(s), [Loc::Remote(r)]) => {
            let reporter = Reporter::new(!a.no_progress && !a.json, change_sink(record, a.json));
            let res = push(&s, r, &o, &reporter);
            let changes = reporter.finish();
            let sum = res?;
            Ok(Some(report_one(a, &sum, &changes)?))
        }
        (Loc::Local(s), many) => {
            let mut remotes = Vec::new();
            for d in many {
                match d {
                    Loc::Remote(r) => remotes.push(r.clone()),
                    Loc::Local(p) => {
                        return Ok(Some(usage(&format!(
                            "{}: with several destinations, each must be remote",
                            p.display()
                        ))))
                    }
                }
            }
            fan_out(a, &s, &remotes, &o).map(Some)
        }
    }
}

fn one_json(s: &RemoteSummary, code: u8) -> Result<serde_json::Value> {
    let mut v = summary_json(&s.summary, code)?;
    v["bytes_sent"] = json!(s.bytes_sent);
    v["bytes_received"] = json!(s.bytes_received);
    Ok(v)
}

fn report_one(a: &CopyArgs, s: &RemoteSummary, changes: &crate::render::Changes) -> Result<u8> {
    let bytes = [
        ("bytes_sent", json!(s.bytes_sent)),
        ("bytes_received", json!(s.bytes_received)),
    ];
    let code = crate::copy_cmd::report(&s.summary, a.json, a.verbose, changes, &bytes)?;
    if !a.json {
        eprintln!(
            "sent {} bytes, received {} bytes",
            s.bytes_sent, s.bytes_received
        );
    }
    Ok(code)
}

/// One push per destination, all at once (or one after another with
/// `--serial`); one failing host does not stop the others.
fn fan_out(a: &CopyArgs, src: &Path, dsts: &[RemotePath], o: &RemoteOptions) -> Result<u8> {
    // No bar: the hosts' summaries follow one another.
    let reporter = Reporter::new(false, crate::render::ChangeSink::None);
    let results: Vec<_> = if a.serial {
        dsts.iter()
            .flat_map(|d| push_many(src, std::slice::from_ref(d), o, &reporter))
            .collect()
    } else {
        push_many(src, dsts, o, &reporter)
    };
    reporter.finish();
    let mut hosts = Vec::new();
    let mut fatal = false;
    let mut worst = exit::OK;
    let mut err = std::io::stderr().lock();
    for (d, r) in dsts.iter().zip(results) {
        let dest = d.to_string();
        match r {
            Ok(s) => {
                let code = exit_code(&s.summary);
                worst = worst.max(code);
                if a.json {
                    let mut v = one_json(&s, code)?;
                    v["changes"] = s
                        .changes
                        .iter()
                        .map(|(act, p)| json!({"action": crate::render::action_word(*act), "path": p}))
                        .collect();
                    v["dest"] = json!(dest);
                    hosts.push(v);
                } else {
                    writeln!(err, "host {}:", escape_str(&dest))?;
                    for (act, p) in &s.changes {
                        println!("{dest}: {} {p}", crate::render::action_word(*act));
                    }
                    drop(err);
                    print_human(&s.summary, a.verbose, "-v")?;
                    err = std::io::stderr().lock();
                    writeln!(
                        err,
                        "sent {} bytes, received {} bytes",
                        s.bytes_sent, s.bytes_received
                    )?;
                }
            }
            Err(e) => {
                fatal = true;
                let msg = format!("{e:#}");
                if a.json {
                    hosts.push(
                        json!({"dest": dest, "ok": false, "exit_code": exit::FATAL, "error": msg}),
                    );
                } else {
                    writeln!(
                        err,
                        "host {}: haul: error: {}",
                        escape_str(&dest),
                        escape_str(&msg)
                    )?;
                }
            }
        }
    }
    let code = if fatal { exit::FATAL } else { worst };
    if a.json {
        let v = json!({"ok": code == exit::OK, "exit_code": code, "hosts": hosts});
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    }
    Ok(code)
}

/// What `haul query` asks.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Question {
    /// The host's user database.
    Users,
    /// The host's group database.
    Groups,
    /// Whether anything uses the path: processes (cwd, open files,
    /// executable), live pid files under it, ports those processes listen on.
    InUse,
}

/// `haul query`: what `migrate` will ask a host before moving a tree.
#[derive(Args, Debug)]
pub struct QueryArgs {
    #[arg(
        help = "The host and path asked about: [USER@]HOST:PATH, ssh://..., or a \
                  local path (answered here)"
    )]
    pub target: PathBuf,
    /// The questions, answered in order (one JSON object per line).
    #[arg(required = true, value_enum)]
    pub questions: Vec<Question>,
    /// The ssh command, split on spaces (rsync's -e).
    #[arg(short = 'e', long = "rsh", value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// The haul to run on the remote host.
    #[arg(long, value_name = "PATH", default_value = "haul")]
    pub remote_haul: String,
}

pub fn query(a: QueryArgs) -> Result<u8> {
    use haul_engine::QueryKind;
    let target = match loc(&a.target) {
        Ok(l) => l,
        Err(m) => return Ok(usage(&m)),
    };
    let path = match &target {
        Loc::Local(p) => std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec(),
        Loc::Remote(r) => r.path.clone(),
    };
    let kinds: Vec<QueryKind> = a
        .questions
        .iter()
        .map(|q| match q {
            Question::Users => QueryKind::Users,
            Question::Groups => QueryKind::Groups,
            Question::InUse => QueryKind::PathInUse(path.clone()),
        })
        .collect();
    let answers = match &target {
        Loc::Local(_) => kinds.iter().map(haul_engine::query_local).collect(),
        Loc::Remote(r) => {
            let o = RemoteOptions {
                rsh: a.rsh.split_whitespace().map(String::from).collect(),
                remote_haul: a.remote_haul.clone(),
                ..RemoteOptions::default()
            };
            haul_engine::query(r, &kinds, &o)?
        }
    };
    let mut out = std::io::stdout().lock();
    for v in answers {
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    }
    Ok(exit::OK)
}
