//! `haul copy`.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use haul_engine::{copy, CopyOptions, CopySummary, EntryIssue, Filter, IdMap};
use serde_json::json;

use crate::exit;
use crate::render::{action_word, ChangeSink, Reporter};

/// Flags follow rsync's names where rsync has the same feature.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source directory (or single file). A trailing slash makes no difference.
    pub src: PathBuf,
    /// Destination; created if missing. It becomes a mirror of SRC's contents.
    pub dst: PathBuf,
    /// Worker threads [default: one per CPU].
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Delete entries in DST that are not in SRC (excluded entries are kept).
    #[arg(long)]
    pub delete: bool,
    /// Skip entries matching GLOB (rsync rules: no '/' matches a name at any
    /// depth, a leading '/' anchors at SRC, a trailing '/' matches directories only).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Decide what changed by blake3 content digest, not size and mtime.
    #[arg(short = 'c', long)]
    pub checksum: bool,
    /// Show what would change; touch nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// After copying, re-read DST and compare blake3 digests with SRC.
    #[arg(long)]
    pub verify: bool,
    /// Do not preserve owner and group.
    #[arg(long)]
    pub no_owner: bool,
    /// Do not preserve extended attributes (ACLs included).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Do not preserve POSIX ACLs.
    #[arg(long)]
    pub no_acls: bool,
    /// Map owners: FROM:TO[,...]; FROM is a uid, a range LOW-HIGH, a name or '*'.
    #[arg(long, value_name = "FROM:TO,...")]
    pub usermap: Vec<String>,
    /// Map groups: FROM:TO[,...], as --usermap.
    #[arg(long, value_name = "FROM:TO,...")]
    pub groupmap: Vec<String>,
    /// Give every entry this owner and/or group: USER:GROUP, USER or :GROUP.
    #[arg(long, value_name = "USER:GROUP")]
    pub chown: Option<String>,
    /// Map owners by user/group name; ids with no name keep their number.
    #[arg(long)]
    pub map_by_name: bool,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// List every change as it is made.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

pub fn run(a: CopyArgs) -> Result<u8> {
    let mut ids = IdMap::new();
    for m in &a.usermap {
        ids = ids.usermap(m).with_context(|| format!("--usermap {m}"))?;
    }
    for m in &a.groupmap {
        ids = ids.groupmap(m).with_context(|| format!("--groupmap {m}"))?;
    }
    if let Some(c) = &a.chown {
        ids = ids.chown(c).with_context(|| format!("--chown {c}"))?;
    }
    ids = ids.map_by_name(a.map_by_name);
    let record = a.dry_run || a.verbose;
    let opts = CopyOptions {
        jobs: a.jobs.unwrap_or(0),
        delete: a.delete,
        filter: Filter::new(&a.exclude)?,
        checksum: a.checksum,
        dry_run: a.dry_run,
        verify: a.verify,
        owner: !a.no_owner,
        xattrs: !a.no_xattrs,
        acls: !a.no_acls && !a.no_xattrs,
        ids,
        record_changes: record,
    };
    let sink = match (record, a.json) {
        (false, _) => ChangeSink::None,
        (true, true) => ChangeSink::Collect,
        (true, false) => ChangeSink::Lines,
    };
    let reporter = Reporter::new(!a.no_progress && !a.json, sink);
    let result = copy(&a.src, &a.dst, &opts, &reporter);
    let changes = reporter.finish();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            if a.json {
                let v = json!({"ok": false, "exit_code": exit::FATAL, "error": e.to_string()});
                println!("{v}");
            }
            return Err(e.into());
        }
    };
    let code = exit_code(&summary);
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        v["ok"] = json!(code == exit::OK);
        v["exit_code"] = json!(code);
        v["failed"] = failed_json(&summary.failed);
        v["changes"] = changes
            .iter()
            .map(|(act, p)| json!({"action": action_word(*act), "path": p}))
            .collect();
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        print_human(&summary)?;
    }
    Ok(code)
}

/// The JSON list of failed entries: each carries an "error" (partial ones,
/// serialised by the engine, carry a "reason").
pub fn failed_json(items: &[EntryIssue]) -> serde_json::Value {
    items
        .iter()
        .map(|i| json!({"path": i.path.to_string_lossy(), "error": i.reason}))
        .collect()
}

pub fn exit_code(s: &CopySummary) -> u8 {
    if !s.verify_mismatches.is_empty() {
        exit::MISMATCH
    } else if s.failed_count() > 0 {
        exit::SOME_FAILED
    } else if s.partial_count() > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    }
}

pub fn print_human(s: &CopySummary) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    for i in &s.failed {
        writeln!(err, "haul: failed: {}: {}", i.path.display(), i.reason)?;
    }
    if s.failed_not_listed > 0 {
        writeln!(
            err,
            "haul: ... and {} more failed entries",
            s.failed_not_listed
        )?;
    }
    for i in &s.partial {
        writeln!(
            err,
            "haul: not fully preserved: {}: {}",
            i.path.display(),
            i.reason
        )?;
    }
    if s.partial_not_listed > 0 {
        writeln!(
            err,
            "haul: ... and {} more partially preserved entries",
            s.partial_not_listed
        )?;
    }
    for i in &s.notices {
        writeln!(err, "haul: notice: {}: {}", i.path.display(), i.reason)?;
    }
    if s.notices_not_listed > 0 {
        writeln!(err, "haul: ... and {} more notices", s.notices_not_listed)?;
    }
    for i in &s.verify_mismatches {
        writeln!(err, "haul: verify: {}: {}", i.path.display(), i.reason)?;
    }
    let src = &s.source;
    let rate = if s.seconds > 0.0 {
        s.bytes_copied as f64 / s.seconds / 1048576.0
    } else {
        0.0
    };
    writeln!(
        err,
        "{}{} files, {} dirs, {} symlinks, {} hardlinks, {} special ({} bytes): \
         {} created, {} updated, {} metadata, {} unchanged, {} deleted; \
         {} bytes copied in {:.2}s ({:.1} MiB/s){}",
        if s.dry_run { "dry run: " } else { "" },
        src.files,
        src.dirs,
        src.symlinks,
        src.hardlinks,
        src.specials,
        src.bytes,
        s.created,
        s.updated,
        s.metadata_only,
        s.unchanged,
        s.deleted,
        s.bytes_copied,
        s.seconds,
        rate,
        match (s.failed_count(), s.partial_count()) {
            (0, 0) => String::new(),
            (f, p) => format!("; {f} failed, {p} not fully preserved"),
        }
    )
}
