//! `haul copy`.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::Args;
use haul_engine::{copy, CopyOptions, CopySummary, EntryIssue, Filter, IdMap, WriteOptions};
use serde_json::json;

use crate::exit;
use crate::render::{escape_path, escape_str, json_path, ChangeSink, Reporter};

/// The most worker threads `-j` accepts: more only costs memory (each
/// thread has a deep stack and, in a create, its own open bundles).
pub const MAX_JOBS: u64 = 1024;

/// `-j N`: 1 to [`MAX_JOBS`]; anything else is a usage error.
pub fn jobs_parser() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=MAX_JOBS)
}

// Value parsers: a bad value is a usage error (exit 2) with clap's message.
// The value is checked here and kept as typed; `run` builds from it again.

/// `--exclude GLOB`.
pub fn parse_exclude(s: &str) -> Result<String, String> {
    Filter::new(&[s]).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_usermap(s: &str) -> Result<String, String> {
    IdMap::new().usermap(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_groupmap(s: &str) -> Result<String, String> {
    IdMap::new().groupmap(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_chown(s: &str) -> Result<String, String> {
    IdMap::new().chown(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `--bwlimit RATE`: KiB/s as a plain number (rsync), or with a suffix
/// K, M or G (powers of 1024); bytes per second.
fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: the suffix must be K, M or G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1 << 10),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 500, 500K, 2M)"))?;
    let v = (n * mult as f64) as u64;
    if !(n.is_finite() && v >= 1) {
        return Err(format!(
            "{s:?}: the rate must be at least 1 byte per second"
        ));
    }
    Ok(v)
}

/// Flags follow rsync's names where rsync has the same feature.
#[derive(Args, Debug)]
pub struct CopyArgs {
    // The help is an attribute, not a doc comment: its brackets are not
    // rustdoc links.
    #[arg(
        help = "Source directory (or single file), or a remote one as [USER@]HOST:PATH \
                  or ssh://[USER@]HOST[:PORT]/PATH. A trailing slash makes no difference"
    )]
    pub src: PathBuf,
    /// Destination, created if missing; it becomes a mirror of SRC's contents.
    /// Local or remote (as SRC); several remote destinations fan out.
    #[arg(required = true, num_args = 1..)]
    pub dst: Vec<PathBuf>,
    /// Worker threads, 1-1024 [default: one per CPU].
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
    pub jobs: Option<usize>,
    /// Delete entries in DST that are not in SRC (excluded entries are kept).
    #[arg(long)]
    pub delete: bool,
    /// Skip entries matching GLOB (rsync rules: no '/' matches a name at any
    /// depth, a leading '/' anchors at SRC, a trailing '/' matches directories only,
    /// 'dir/***' matches dir and everything below it).
    #[arg(long, value_name = "GLOB", value_parser = parse_exclude)]
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
    #[arg(long, value_name = "FROM:TO,...", value_parser = parse_usermap)]
    pub usermap: Vec<String>,
    /// Map groups: FROM:TO[,...], as --usermap.
    #[arg(long, value_name = "FROM:TO,...", value_parser = parse_groupmap)]
    pub groupmap: Vec<String>,
    /// Give every entry this owner and/or group: USER:GROUP, USER or :GROUP.
    #[arg(long, value_name = "USER:GROUP", value_parser = parse_chown)]
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
    /// List every change as it is made, and every entry not fully preserved.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// The ssh command for remote locations, split on spaces (rsync's -e).
    #[arg(short = 'e', long = "rsh", value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// The haul to run on the remote host.
    #[arg(long, value_name = "PATH", default_value = "haul")]
    pub remote_haul: String,
    /// With several destinations: one host at a time.
    #[arg(long)]
    pub serial: bool,
    /// Send at most RATE per connection: KiB/s, or with a suffix K, M or G.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// zstd level on the wire, 1-19 [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compress_level: Option<i32>,
    /// Send the wire uncompressed.
    #[arg(long, conflicts_with = "compress_level")]
    pub no_compress: bool,
    /// Fail a remote copy when the other side sends nothing at all (it
    /// sends keepalives while busy) for SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

pub fn run(a: CopyArgs) -> Result<u8> {
    if let Some(code) = crate::remote_cmd::run(&a)? {
        return Ok(code);
    }
    let dst = a.dst[0].clone();
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
        verify: a.verify,
        record_changes: record,
        write: WriteOptions {
            dry_run: a.dry_run,
            owner: !a.no_owner,
            xattrs: !a.no_xattrs,
            acls: !a.no_acls && !a.no_xattrs,
            ids,
        },
    };
    let sink = change_sink(record, a.json);
    let reporter = Reporter::new(!a.no_progress && !a.json, sink);
    let result = copy(&a.src, &dst, &opts, &reporter);
    let changes = reporter.finish();
    // A fatal error: `main` prints it (and its JSON object with --json).
    let summary = result?;
    report(&summary, a.json, a.verbose, &changes, &[])
}

/// Prints a copy's (or an extraction's) summary: with `json`, one object on
/// stdout with the changes and the `more` fields; otherwise the human lines
/// on stderr. Returns its exit code.
pub fn report(
    s: &CopySummary,
    json: bool,
    verbose: bool,
    changes: &crate::render::Changes,
    more: &[(&str, serde_json::Value)],
) -> Result<u8> {
    let code = exit_code(s);
    if json {
        let mut v = summary_json(s, code)?;
        changes.add_to(&mut v);
        for (k, x) in more {
            v[*k] = x.clone();
        }
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        print_human(s, verbose, "-v")?;
    }
    Ok(code)
}

/// Where a copy's or a restore's changes go: nowhere unless they are
/// recorded (`-n` or `-v`), else into the JSON summary or one line each.
pub fn change_sink(record: bool, json: bool) -> ChangeSink {
    match (record, json) {
        (false, _) => ChangeSink::None,
        (true, true) => ChangeSink::Collect,
        (true, false) => ChangeSink::Lines,
    }
}

/// A copy's or a restore's summary as JSON, with `ok` and `exit_code`.
pub fn summary_json(s: &CopySummary, code: u8) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    v["ok"] = json!(code == exit::OK);
    v["exit_code"] = json!(code);
    v["failed"] = failed_json(&s.failed);
    v["partial"] = issues_json(&s.partial, "reason");
    v["verify_mismatches"] = issues_json(&s.verify_mismatches, "reason");
    v["notices"] = issues_json(&s.notices, "reason");
    Ok(v)
}

/// The JSON list of failed entries: each carries an "error" (partial ones
/// carry a "reason").
pub fn failed_json(items: &[EntryIssue]) -> serde_json::Value {
    issues_json(items, "error")
}

fn issues_json(items: &[EntryIssue], key: &str) -> serde_json::Value {
    items
        .iter()
        .map(|i| json!({"path": json_path(&i.path), key: i.reason}))
        .collect()
}

/// `haul: failed: PATH: REASON`, escaped for the terminal.
pub fn failed_line(path: &Path, reason: &str) -> String {
    format!(
        "haul: failed: {}: {}",
        escape_path(path),
        escape_str(reason)
    )
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

/// The kind of one reason an entry was not fully preserved: the reason
/// without the words that carry ids or modes (`owner 1000:1000 not set: ...`
/// and `owner 0:0 not set: ...` are one kind), so that entries group.
fn reason_kind(part: &str) -> String {
    let (head, cause) = part.split_once(": ").unwrap_or((part, ""));
    let head: Vec<&str> = head
        .split(' ')
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect();
    if cause.is_empty() {
        head.join(" ")
    } else {
        format!("{}: {cause}", head.join(" "))
    }
}

/// How many example paths a grouped "not fully preserved" line names.
const EXAMPLES: usize = 3;

/// Prints what went wrong and the counts, on stderr. Entries not fully
/// preserved are grouped by kind of reason, with a count and the first few
/// paths (an unprivileged run has one per entry, and the one real failure
/// must not drown in them), unless `list_all`; `all_flag` is the flag that
/// lists them all. Failures come last, next to the counts.
pub fn print_human(s: &CopySummary, list_all: bool, all_flag: &str) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    if list_all {
        for i in &s.partial {
            writeln!(
                err,
                "haul: not fully preserved: {}: {}",
                escape_path(&i.path),
                escape_str(&i.reason)
            )?;
        }
    } else {
        // Kinds in order of first appearance; an entry counts once per kind.
        let mut kinds: Vec<(String, u64, Vec<&Path>)> = Vec::new();
        for i in &s.partial {
            let mut seen: Vec<String> = Vec::new();
            for k in i.reason.split("; ").map(reason_kind) {
                if seen.contains(&k) {
                    continue;
                }
                let at = match kinds.iter().position(|(kk, ..)| *kk == k) {
                    Some(at) => at,
                    None => {
                        kinds.push((k.clone(), 0, Vec::new()));
                        kinds.len() - 1
                    }
                };
                let (_, n, ex) = &mut kinds[at];
                *n += 1;
                if ex.len() < EXAMPLES {
                    ex.push(&i.path);
                }
                seen.push(k);
            }
        }
        for (kind, n, ex) in &kinds {
            let names: Vec<String> = ex.iter().map(|p| escape_path(p)).collect();
            writeln!(
                err,
                "haul: not fully preserved: {}: {n} {}: {}{}",
                escape_str(kind),
                if *n == 1 { "entry" } else { "entries" },
                names.join(", "),
                if *n > ex.len() as u64 {
                    format!(", ... ({all_flag} lists them all)")
                } else {
                    String::new()
                }
            )?;
        }
    }
    if s.partial_not_listed > 0 {
        writeln!(
            err,
            "haul: ... and {} more partially preserved entries",
            s.partial_not_listed
        )?;
    }
    for i in &s.notices {
        writeln!(
            err,
            "haul: notice: {}: {}",
            escape_path(&i.path),
            escape_str(&i.reason)
        )?;
    }
    if s.notices_not_listed > 0 {
        writeln!(err, "haul: ... and {} more notices", s.notices_not_listed)?;
    }
    for i in &s.verify_mismatches {
        writeln!(
            err,
            "haul: verify: {}: {}",
            escape_path(&i.path),
            escape_str(&i.reason)
        )?;
    }
    for i in &s.failed {
        writeln!(err, "{}", failed_line(&i.path, &i.reason))?;
    }
    if s.failed_not_listed > 0 {
        writeln!(
            err,
            "haul: ... and {} more failed entries",
            s.failed_not_listed
        )?;
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
