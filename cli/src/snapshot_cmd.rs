//! `haul repo ...` and `haul snapshot ...`: restic-style verbs over the
//! engine's repository API.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use haul_engine::{
    parse_duration, parse_interval, Bucket, CheckOptions, CreateOptions, Filter, InitOptions,
    KeepPolicy, RepairOptions, Repository, RestoreOptions, SnapshotInfo, Timestamp, WriteOptions,
};
use serde_json::{json, Value};

use crate::copy_cmd::{
    change_sink, exit_code, failed_json, failed_line, jobs_parser, parse_exclude, print_human,
    summary_json,
};
use crate::exit;
use crate::render::{escape_str, ChangeSink, Reporter};

/// Where the repository is, and lock handling; shared by every repo command.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Repository location (a local directory).
    #[arg(long, env = "HAUL_REPO", value_name = "R")]
    pub repo: PathBuf,
    /// Remove every lock first (when a holder died on another host).
    #[arg(long)]
    pub force_unlock: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Lock handling of the commands that only read.
#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    /// Take no lock, to read a repository this user cannot write to (a
    /// read-only mount, another user's files). Nothing then stops a prune
    /// from removing data while it is read.
    #[arg(long, conflicts_with = "force_unlock")]
    pub no_lock: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// zstd level for new data (1-22, default 3).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=22))]
        compression_level: Option<i32>,
        /// Size pack files aim for, in MiB (1-1024, default 32).
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
        pack_size: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Record trees (with full metadata) as a new snapshot.
    Create {
        #[command(flatten)]
        repo: RepoArgs,
        /// Directories or files to record.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Label the snapshot (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Skip entries matching GLOB (same rules as `haul copy --exclude`).
        #[arg(long, value_name = "GLOB", value_parser = parse_exclude)]
        exclude: Vec<String>,
        /// Record this time instead of now (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        time: Option<Timestamp>,
        /// Worker threads, 1-1024 [default: one per CPU].
        #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
        jobs: Option<usize>,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Write an index file every N new blobs (tests and tuning).
        #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
        index_flush_every: usize,
    },
    /// List snapshots, oldest first.
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Show one snapshot.
    Show {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
        /// Snapshot id (unique hex prefix) or `latest`.
        id: String,
    },
    /// List a snapshot's entries.
    Ls {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
        /// Snapshot id or `latest`.
        id: String,
        /// Only entries below this path (relative to the snapshot root).
        path: Option<PathBuf>,
    },
    /// Entries added, removed or changed between two snapshots.
    Diff {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
        /// The older snapshot.
        a: String,
        /// The newer snapshot.
        b: String,
    },
    /// Restore a snapshot into DST, with full metadata.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
        /// Snapshot id or `latest`.
        id: String,
        /// Destination directory (created if missing).
        dst: PathBuf,
        /// Restore only this subtree (relative to the snapshot root; repeatable).
        #[arg(long = "path", value_name = "P")]
        paths: Vec<PathBuf>,
        /// Worker threads, 1-1024 [default: one per CPU].
        #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
        jobs: Option<usize>,
        /// Do not restore owners.
        #[arg(long)]
        no_owner: bool,
        /// Do not restore extended attributes (ACLs included).
        #[arg(long)]
        no_xattrs: bool,
        /// Do not restore POSIX ACLs.
        #[arg(long)]
        no_acls: bool,
        /// Remove entries in DST that the snapshot does not have (excluded
        /// entries are kept), and let a non-directory replace a directory
        /// that has contents.
        #[arg(long)]
        delete: bool,
        /// Neither restore nor delete entries matching GLOB (as for copy,
        /// matched against the path relative to DST).
        #[arg(long, value_name = "GLOB", value_parser = parse_exclude)]
        exclude: Vec<String>,
        /// Show what would change; touch nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// List every change as it is made, and every entry not fully preserved.
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Write a snapshot as an archive (zip, tar, tar.zst) that other tools read.
    #[command(alias = "export")]
    Download(crate::snapshot_io_cmd::DownloadArgs),
    /// Record an archive (haul's or another tool's) as a new snapshot.
    #[command(alias = "import")]
    Upload(crate::snapshot_io_cmd::UploadArgs),
    /// Check the repository; --read-data also verifies every byte.
    Check {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        read: ReadArgs,
        /// Read every pack and verify every blob's hash.
        #[arg(long)]
        read_data: bool,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Remove snapshots by id or by retention policy (data stays until prune).
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        /// Snapshot ids to remove.
        ids: Vec<String>,
        /// Keep the N newest snapshots.
        #[arg(long, value_name = "N")]
        keep_last: Option<u64>,
        /// Keep snapshots newer than (newest − DUR), e.g. 7d, 1h30m.
        #[arg(long, value_name = "DUR", value_parser = parse_dur)]
        keep_within: Option<i64>,
        /// Keep the newest snapshot of each of the last N hours.
        #[arg(long, value_name = "N")]
        keep_hourly: Option<u64>,
        /// ... of each of the last N days (UTC).
        #[arg(long, value_name = "N")]
        keep_daily: Option<u64>,
        /// ... of each of the last N weeks.
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u64>,
        /// ... of each of the last N calendar months (UTC).
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u64>,
        /// ... of each of the last N calendar years (UTC).
        #[arg(long, value_name = "N")]
        keep_yearly: Option<u64>,
        /// Keep the newest snapshot of each of the last N buckets of length
        /// DUR (repeatable), e.g. a CycleCloud-style schedule:
        /// --keep-interval 5m:12 --keep-interval 15m:4 --keep-interval 1h:24
        /// --keep-interval 4h:6 --keep-interval 8h:3 --keep-interval 1d:7 --keep-interval 7d:4
        #[arg(long, value_name = "DUR:N", value_parser = parse_every)]
        keep_interval: Vec<(i64, u64)>,
        /// Show what would be removed.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
    /// Free data no snapshot references.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Rebuild the index from the packs that are there and sound, dropping
    /// lost data so that the next create stores it again.
    Repair {
        #[command(flatten)]
        repo: RepoArgs,
        /// Also rewrite damaged snapshots without their lost files (tagged
        /// `repaired`), and remove damaged snapshot records.
        #[arg(long)]
        snapshots: bool,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
}

impl RepoCommand {
    /// Whether --json was given (a fatal error is then printed as JSON too).
    pub fn json(&self) -> bool {
        match self {
            RepoCommand::Init { repo, .. } => repo.json,
        }
    }
}

impl SnapshotCommand {
    /// Whether --json was given (a fatal error is then printed as JSON too).
    pub fn json(&self) -> bool {
        match self {
            SnapshotCommand::Create { repo, .. }
            | SnapshotCommand::List { repo, .. }
            | SnapshotCommand::Show { repo, .. }
            | SnapshotCommand::Ls { repo, .. }
            | SnapshotCommand::Diff { repo, .. }
            | SnapshotCommand::Restore { repo, .. }
            | SnapshotCommand::Check { repo, .. }
            | SnapshotCommand::Forget { repo, .. }
            | SnapshotCommand::Prune { repo, .. }
            | SnapshotCommand::Repair { repo, .. } => repo.json,
            SnapshotCommand::Download(a) => a.repo.json,
            SnapshotCommand::Upload(a) => a.repo.json,
        }
    }
}

// Value parsers: a bad value is a usage error (exit 2) with clap's message.
fn parse_time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(s).map_err(|e| e.to_string())
}

fn parse_dur(s: &str) -> Result<i64, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_every(s: &str) -> Result<(i64, u64), String> {
    parse_interval(s).map_err(|e| e.to_string())
}

fn usage(msg: &str) -> Result<u8> {
    eprintln!("haul: error: {msg}");
    Ok(exit::USAGE)
}

/// Warnings (a damaged file passed over) go to stderr as they happen.
fn warn_to_stderr(r: &mut Repository) {
    r.on_warning(|m| eprintln!("haul: warning: {m}"));
}

fn open(r: &RepoArgs) -> Result<Repository> {
    let mut repo = Repository::open(&r.repo)?;
    warn_to_stderr(&mut repo);
    if r.force_unlock {
        let n = repo.force_unlock()?;
        eprintln!("haul: removed {n} lock(s)");
    }
    Ok(repo)
}

/// [`open`] for a command that only reads, without locks if asked.
fn open_read(r: &RepoArgs, read: &ReadArgs) -> Result<Repository> {
    let repo = open(r)?;
    Ok(if read.no_lock {
        repo.without_locks()
    } else {
        repo
    })
}

fn notices(n: &[String]) {
    for m in n {
        eprintln!("haul: {}", escape_str(m));
    }
}

fn snapshot_json(s: &SnapshotInfo) -> Value {
    let sn = &s.snapshot;
    json!({
        "id": s.id.to_hex(),
        "short_id": s.id.short(),
        "time": sn.time.to_rfc3339().unwrap_or_default(),
        "hostname": sn.hostname,
        "username": sn.username,
        "paths": sn.paths,
        "tags": sn.tags,
        "files": sn.summary.files,
        "symlinks": sn.summary.symlinks,
        "hardlinks": sn.summary.hardlinks,
        "specials": sn.summary.specials,
        "dirs": sn.summary.dirs,
        "bytes": sn.summary.bytes,
        "bytes_new": sn.summary.bytes_new,
        "parent": sn.parent.map(|p| p.to_hex()),
        "tree": sn.tree.to_hex(),
        "original": sn.original.map(|p| p.to_hex()),
        "damaged": false,
    })
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Prints what a listing hands over as it comes: as one JSON array (the same
/// bytes as printing the whole list at once), or as a line per item.
fn stream<T: serde::Serialize>(
    json: bool,
    list: impl FnOnce(&mut dyn FnMut(T) -> Result<()>) -> Result<()>,
    line: impl Fn(&mut dyn Write, &T) -> std::io::Result<()>,
) -> Result<()> {
    // Nothing is printed before the first item, so an error before it
    // (no such snapshot or path) leaves stdout empty (but for the JSON
    // error object `main` prints).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let r = list(&mut |item| {
        if json {
            out.write_all(if first { b"[" } else { b"," })?;
            // As an io::Error, so that a closed pipe is seen as one.
            serde_json::to_writer(&mut out, &item).map_err(std::io::Error::from)?;
        } else {
            line(&mut out, &item)?;
        }
        first = false;
        Ok(())
    });
    if let Err(e) = r {
        if json && !first {
            // The array stays unclosed, so no one mistakes it for the whole
            // list; the error object goes on a line of its own.
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
        return Err(e);
    }
    if json {
        out.write_all(if first { b"[]\n" } else { b"]\n" })?;
    }
    out.flush()?;
    Ok(())
}

pub fn run_repo(c: RepoCommand) -> Result<u8> {
    match c {
        RepoCommand::Init {
            repo,
            compression_level,
            pack_size,
        } => {
            let opts = InitOptions {
                zstd_level: compression_level,
                pack_size: pack_size.map(|m| m << 20),
            };
            let r = Repository::init(&repo.repo, &opts)?;
            if repo.json {
                print_json(&json!({"location": r.location(), "id": r.config().id.to_hex()}))?;
            } else {
                writeln!(
                    std::io::stdout(),
                    "created repository {} at {}",
                    r.config().id.short(),
                    escape_str(&r.location().to_string_lossy())
                )?;
            }
            Ok(exit::OK)
        }
    }
}

pub fn run(c: SnapshotCommand) -> Result<u8> {
    match c {
        SnapshotCommand::Download(a) => crate::snapshot_io_cmd::download(a),
        SnapshotCommand::Upload(a) => crate::snapshot_io_cmd::upload(a),
        SnapshotCommand::Create {
            repo,
            paths,
            tags,
            exclude,
            time,
            jobs,
            no_progress,
            index_flush_every,
        } => {
            let (mut r, created) = Repository::open_or_init(&repo.repo)?;
            warn_to_stderr(&mut r);
            if created {
                eprintln!(
                    "haul: created repository at {}",
                    escape_str(&repo.repo.to_string_lossy())
                );
            }
            if repo.force_unlock {
                r.force_unlock()?;
            }
            let opts = CreateOptions {
                paths,
                tags,
                filter: Filter::new(&exclude)?,
                jobs: jobs.unwrap_or(0),
                time,
                index_flush_every,
            };
            let reporter = Reporter::new(!no_progress && !repo.json, ChangeSink::None);
            let res = r.create_snapshot(&opts, &reporter);
            reporter.finish();
            let s = res?;
            notices(&s.notices);
            let code = if s.failed.is_empty() && s.failed_not_listed == 0 {
                exit::OK
            } else {
                exit::SOME_FAILED
            };
            if repo.json {
                let mut v = serde_json::to_value(&s)?;
                v["ok"] = json!(code == exit::OK);
                v["exit_code"] = json!(code);
                v["failed"] = failed_json(&s.failed);
                print_json(&v)?;
            } else {
                for i in &s.failed {
                    eprintln!("{}", failed_line(&i.path, &i.reason));
                }
                if s.failed_not_listed > 0 {
                    eprintln!("haul: ... and {} more failed entries", s.failed_not_listed);
                }
                eprintln!(
                    "{} files, {} dirs, {} symlinks, {} hardlinks, {} special ({} bytes); \
                     read {} bytes, added {} new ({} stored in {} packs) in {:.2}s",
                    s.files,
                    s.dirs,
                    s.symlinks,
                    s.hardlinks,
                    s.specials,
                    s.bytes,
                    s.bytes_read,
                    s.bytes_new,
                    s.bytes_stored,
                    s.packs,
                    s.seconds
                );
                writeln!(std::io::stdout(), "snapshot {} saved", s.id.to_hex())?;
            }
            Ok(code)
        }
        SnapshotCommand::List { repo, read } => {
            let r = open_read(&repo, &read)?;
            let (snaps, damaged) = r.snapshot_records()?;
            if repo.json {
                // Damaged records last: their time is unknown.
                let list: Vec<Value> = snaps
                    .iter()
                    .map(snapshot_json)
                    .chain(damaged.iter().map(|d| {
                        json!({
                            "id": d.id.to_hex(),
                            "short_id": d.id.short(),
                            "damaged": true,
                            "error": d.error,
                        })
                    }))
                    .collect();
                print_json(&list)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<10} {:<20} {:<16} {:>10} {:>14}  paths",
                    "id", "time", "host", "files", "bytes"
                )?;
                for s in &snaps {
                    let sn = &s.snapshot;
                    let t = sn.time.to_rfc3339().unwrap_or_default();
                    writeln!(
                        out,
                        "{:<10} {:<20} {:<16} {:>10} {:>14}  {}{}",
                        s.id.short(),
                        &t[..t.len().min(19)],
                        sn.hostname,
                        sn.summary.files,
                        sn.summary.bytes,
                        sn.paths.join(" "),
                        if sn.tags.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", sn.tags.join(","))
                        }
                    )?;
                }
                for d in &damaged {
                    writeln!(out, "{:<10} DAMAGED: {}", d.id.short(), d.error)?;
                }
            }
            Ok(exit::OK)
        }
        SnapshotCommand::Show { repo, read, id } => {
            let r = open_read(&repo, &read)?;
            let s = r.find_snapshot(&id)?;
            let v = snapshot_json(&s);
            if repo.json {
                print_json(&v)?;
            } else {
                writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&v)?)?;
            }
            Ok(exit::OK)
        }
        SnapshotCommand::Ls {
            repo,
            read,
            id,
            path,
        } => {
            let r = open_read(&repo, &read)?;
            stream(
                repo.json,
                |each| r.ls(&id, path.as_deref(), each),
                |out, e: &haul_engine::LsEntry| {
                    writeln!(
                        out,
                        "{:<8} {:04o} {:>6}:{:<6} {:>12} {} {}",
                        e.kind,
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.mtime,
                        escape_str(&e.path)
                    )
                },
            )?;
            Ok(exit::OK)
        }
        SnapshotCommand::Diff { repo, read, a, b } => {
            let r = open_read(&repo, &read)?;
            stream(
                repo.json,
                |each| r.diff(&a, &b, each),
                |out, c: &haul_engine::DiffChange| {
                    let sym = match c.change {
                        "added" => "+",
                        "removed" => "-",
                        "content" => "M",
                        _ => "m",
                    };
                    writeln!(out, "{sym} {}", escape_str(&c.path))
                },
            )?;
            Ok(exit::OK)
        }
        SnapshotCommand::Restore {
            repo,
            read,
            id,
            dst,
            paths,
            jobs,
            no_owner,
            no_xattrs,
            no_acls,
            delete,
            exclude,
            dry_run,
            verbose,
            no_progress,
        } => {
            let r = open_read(&repo, &read)?;
            let record = dry_run || verbose;
            let opts = RestoreOptions {
                paths,
                jobs: jobs.unwrap_or(0),
                delete,
                filter: Filter::new(&exclude)?,
                record_changes: record,
                write: WriteOptions {
                    dry_run,
                    owner: !no_owner,
                    xattrs: !no_xattrs,
                    acls: !no_acls && !no_xattrs,
                    ..WriteOptions::default()
                },
            };
            let reporter =
                Reporter::new(!no_progress && !repo.json, change_sink(record, repo.json));
            let res = r.restore(&id, &dst, &opts, &reporter);
            let changes = reporter.finish();
            let s = res?;
            if repo.json {
                // A stale lock it broke is said on stderr, as every command
                // does; the entries' notices are in the JSON.
                let locks: Vec<String> = s
                    .notices
                    .iter()
                    .filter(|n| n.path == r.location())
                    .map(|n| n.reason.clone())
                    .collect();
                notices(&locks);
            }
            let code = exit_code(&s);
            if repo.json {
                let mut v = summary_json(&s, code)?;
                changes.add_to(&mut v);
                print_json(&v)?;
            } else {
                print_human(&s, verbose, "-v")?;
            }
            Ok(code)
        }
        SnapshotCommand::Check {
            repo,
            read,
            read_data,
            no_progress,
        } => {
            let r = open_read(&repo, &read)?;
            let reporter = Reporter::new(!no_progress && !repo.json, ChangeSink::None);
            let res = r.check(CheckOptions { read_data }, &reporter);
            reporter.finish();
            let rep = res?;
            if repo.json {
                notices(&rep.notices);
                print_json(&rep)?;
            } else {
                for e in &rep.errors {
                    eprintln!("haul: check: {}", escape_str(&e.to_string()));
                }
                for s in &rep.affected_snapshots {
                    eprintln!("haul: damaged snapshot: {s}");
                }
                for f in &rep.affected_files {
                    eprintln!(
                        "haul: damaged file: {} in snapshot {}",
                        escape_str(&f.path),
                        &f.snapshot[..8]
                    );
                }
                eprintln!(
                    "checked {} snapshots, {} packs, {} blobs{}: {}",
                    rep.snapshots,
                    rep.packs,
                    rep.blobs,
                    if read_data { " (all data read)" } else { "" },
                    if rep.ok { "no errors" } else { "ERRORS FOUND" }
                );
                // Last, as advice after the findings.
                notices(&rep.notices);
            }
            Ok(if rep.ok { exit::OK } else { exit::MISMATCH })
        }
        SnapshotCommand::Forget {
            repo,
            ids,
            keep_last,
            keep_within,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_interval,
            dry_run,
        } => {
            let mut policy = KeepPolicy {
                last: keep_last,
                within_secs: keep_within,
                ..Default::default()
            };
            for (n, f) in [
                (
                    keep_hourly,
                    KeepPolicy::hourly as fn(KeepPolicy, u64) -> KeepPolicy,
                ),
                (keep_daily, KeepPolicy::daily),
                (keep_weekly, KeepPolicy::weekly),
                (keep_monthly, KeepPolicy::monthly),
                (keep_yearly, KeepPolicy::yearly),
            ] {
                if let Some(n) = n {
                    policy = f(policy, n);
                }
            }
            policy.buckets.extend(
                keep_interval
                    .iter()
                    .map(|&(len, n)| (Bucket::Every(len), n)),
            );
            // Usage errors come before the repository is opened or locked.
            if !ids.is_empty() && !policy.is_empty() {
                return usage("give snapshot ids or a --keep-* policy, not both");
            }
            if ids.is_empty() && policy.is_empty() {
                return usage("nothing to do: give snapshot ids or a --keep-* policy");
            }
            if ids.is_empty() && policy.keeps_nothing() {
                return usage(
                    "every --keep-* count is 0: such a policy keeps no snapshot and would \
                     forget them all (restic treats it as no policy); give a count above 0, \
                     or the ids of the snapshots to forget",
                );
            }
            let r = open(&repo)?;
            let (keep, remove) = if !ids.is_empty() {
                // By id alone: a damaged record can be forgotten too.
                let mut remove = Vec::new();
                for id in &ids {
                    remove.push(r.find_snapshot_id(id)?);
                }
                let (all, _) = r.snapshot_records()?;
                let keep = all
                    .iter()
                    .map(|s| s.id)
                    .filter(|id| !remove.contains(id))
                    .collect();
                (keep, remove)
            } else {
                // A damaged record has no time: it is kept (and warned about).
                let all = r.snapshots()?;
                let pairs: Vec<_> = all.iter().map(|s| (s.id, s.snapshot.time)).collect();
                policy.apply(&pairs)
            };
            if !dry_run {
                r.forget(&remove)?;
            }
            if repo.json {
                print_json(&json!({
                    "dry_run": dry_run,
                    "keep": keep.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                    "remove": remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                }))?;
            } else {
                for id in &remove {
                    writeln!(
                        std::io::stdout(),
                        "{} {}",
                        if dry_run { "would remove" } else { "removed" },
                        id.to_hex()
                    )?;
                }
                eprintln!(
                    "{} kept, {} {}",
                    keep.len(),
                    remove.len(),
                    if dry_run { "to remove" } else { "removed" }
                );
            }
            Ok(exit::OK)
        }
        SnapshotCommand::Prune { repo, no_progress } => {
            let r = open(&repo)?;
            let reporter = Reporter::new(!no_progress && !repo.json, ChangeSink::None);
            let res = r.prune(&reporter);
            reporter.finish();
            let s = res?;
            notices(&s.notices);
            if repo.json {
                print_json(&s)?;
            } else {
                eprintln!(
                    "removed {} packs ({} rewritten), {} blobs; freed {} bytes; index files: {} -> {}",
                    s.packs_removed,
                    s.packs_rewritten,
                    s.blobs_removed,
                    s.bytes_freed,
                    s.index_files_before,
                    s.index_files_after
                );
            }
            Ok(exit::OK)
        }
        SnapshotCommand::Repair {
            repo,
            snapshots,
            no_progress,
        } => {
            let r = open(&repo)?;
            let reporter = Reporter::new(!no_progress && !repo.json, ChangeSink::None);
            let res = r.repair(RepairOptions { snapshots }, &reporter);
            reporter.finish();
            let s = res?;
            notices(&s.notices);
            if repo.json {
                print_json(&s)?;
            } else {
                for p in &s.packs_missing {
                    eprintln!("haul: repair: pack missing: {p}");
                }
                for p in &s.packs_damaged {
                    eprintln!("haul: repair: pack damaged (sound blobs kept, pack removed): {p}");
                }
                for p in &s.packs_unreadable {
                    eprintln!("haul: repair: pack unreadable (left in place, unindexed): {p}");
                }
                for f in &s.index_files_damaged {
                    eprintln!("haul: repair: index file damaged (removed): {f}");
                }
                for x in &s.snapshots {
                    match (&x.id, &x.removed) {
                        (Some(id), _) => {
                            println!("snapshot {} repaired as {id}", x.original)
                        }
                        (None, why) => println!(
                            "snapshot {} removed: {}",
                            x.original,
                            why.as_deref().unwrap_or("")
                        ),
                    }
                    for p in &x.dropped {
                        println!("  dropped {p}");
                    }
                }
                for d in &s.snapshots_damaged {
                    eprintln!(
                        "haul: repair: damaged snapshot left as it is (use --snapshots): {d}"
                    );
                }
                eprintln!(
                    "read {} packs; {} blobs kept from damaged packs, {} dropped; index files: {} -> {}",
                    s.packs,
                    s.blobs_salvaged,
                    s.blobs_dropped,
                    s.index_files_before,
                    s.index_files_after
                );
            }
            Ok(exit::OK)
        }
    }
}
