//! `haul archive create|extract|list`.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use haul_engine::{
    create_archive, extract_archive, list_archive, ArchiveFormat, ArchiveInput, ArchiveOptions,
    ArchiveSummary, ErrorKind, ExtractOptions, FileKind, Filter, IdMap, WriteOptions,
    ZipCompression,
};
use serde_json::json;

use crate::copy_cmd::{change_sink, failed_json, failed_line, jobs_parser, parse_exclude};
use crate::exit;
use crate::render::{escape_str, Reporter};

/// Archives that other tools read: zip, tar and tar.zst.
#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Write SRC... into an archive (`SRC/` stores SRC's contents at the root).
    Create(CreateArgs),
    /// Extract an archive into DST, with full metadata and nothing outside DST.
    Extract(ExtractArgs),
    /// List an archive's members.
    List(ListArgs),
}

impl ArchiveCommand {
    pub fn json(&self) -> bool {
        match self {
            ArchiveCommand::Create(a) => a.json,
            ArchiveCommand::Extract(a) => a.json,
            ArchiveCommand::List(a) => a.json,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Tar,
    #[value(name = "tar.zst", alias = "tzst")]
    TarZst,
    Zip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    Deflate,
    Zstd,
    Store,
}

/// Where and how an archive is written: `archive create` and `snapshot
/// download` share these flags.
#[derive(Args, Debug)]
pub struct OutArgs {
    /// The archive to write: `.zip`, `.tar`, `.tar.zst` or `.tzst`; `-` is stdout (needs --format).
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: PathBuf,
    /// The format, when OUT's name does not say it.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Compression level (zstd: 1-22, default 3; deflate: 0-9, default 6).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// How zip members are compressed.
    #[arg(long, value_enum, default_value = "deflate")]
    pub compression: CompressionArg,
    /// Worker threads, 1-1024 [default: one per CPU].
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
    pub jobs: Option<usize>,
}

impl OutArgs {
    /// The options these flags ask for, or `None` when OUT's name does not
    /// tell the format (said on stderr: a usage error).
    pub fn options(&self, filter: Filter) -> Option<ArchiveOptions> {
        let Some(format) = format_of(self.format, &self.output) else {
            eprintln!(
                "haul: error: {}: cannot tell the format from the name; give --format tar|tar.zst|zip",
                escape_str(&self.output.to_string_lossy())
            );
            return None;
        };
        Some(ArchiveOptions {
            format: Some(format),
            level: self.level,
            zip_compression: match self.compression {
                CompressionArg::Deflate => ZipCompression::Deflate,
                CompressionArg::Zstd => ZipCompression::Zstd,
                CompressionArg::Store => ZipCompression::Store,
            },
            jobs: self.jobs.unwrap_or(0),
            filter,
            output_inode: None,
        })
    }

    /// Whether the archive goes to stdout.
    pub fn to_stdout(&self) -> bool {
        self.output.as_os_str() == "-"
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Trees or files to archive. `DIR` is stored as `DIR/...`; `DIR/` stores its contents.
    #[arg(required = true)]
    pub src: Vec<PathBuf>,
    #[command(flatten)]
    pub out: OutArgs,
    /// Skip entries matching GLOB (rsync rules, as `haul copy`).
    #[arg(long, value_name = "GLOB", value_parser = parse_exclude)]
    pub exclude: Vec<String>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// The archive; its format is read from its content. `-` is stdin (tar and tar.zst).
    pub input: PathBuf,
    /// Destination directory; created if missing.
    pub dst: PathBuf,
    /// Extract only this member and what is below it (repeatable).
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<PathBuf>,
    /// Delete entries in DST that are not in the archive (excluded entries are kept).
    #[arg(long)]
    pub delete: bool,
    /// Skip members matching GLOB; such entries of DST are never deleted.
    #[arg(long, value_name = "GLOB", value_parser = parse_exclude)]
    pub exclude: Vec<String>,
    /// Show what would change; touch nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Do not set owner and group (never set unless run as root).
    #[arg(long)]
    pub no_owner: bool,
    /// Do not set extended attributes (ACLs included).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Do not set POSIX ACLs.
    #[arg(long)]
    pub no_acls: bool,
    /// Clear setuid, setgid and sticky bits and create no devices, even as root.
    #[arg(long)]
    pub no_same_permissions: bool,
    /// Worker threads, 1-1024 [default: one per CPU].
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
    pub jobs: Option<usize>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// List every change as it is made, and every entry not fully preserved.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The archive; `-` is stdin (tar and tar.zst).
    pub input: PathBuf,
    /// Print one JSON array of members on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: ArchiveCommand) -> Result<u8> {
    match c {
        ArchiveCommand::Create(a) => create(a),
        ArchiveCommand::Extract(a) => extract(a),
        ArchiveCommand::List(a) => list(a),
    }
}

fn input(p: &std::path::Path) -> ArchiveInput {
    if p.as_os_str() == "-" {
        ArchiveInput::Stdin
    } else {
        ArchiveInput::Path(p.to_path_buf())
    }
}

fn format_of(f: Option<FormatArg>, out: &std::path::Path) -> Option<ArchiveFormat> {
    match f {
        Some(FormatArg::Tar) => Some(ArchiveFormat::Tar),
        Some(FormatArg::TarZst) => Some(ArchiveFormat::TarZst),
        Some(FormatArg::Zip) => Some(ArchiveFormat::Zip),
        None => ArchiveFormat::from_name(out),
    }
}

/// Where an archive is written (by `archive create` and `snapshot
/// download`): stdout, or a temporary file beside OUT renamed onto it only
/// once complete (an interrupted run leaves no half-written archive under
/// OUT's name).
pub struct Output {
    tmp: Option<(PathBuf, PathBuf)>,
    /// The temporary file's (device, inode), so a source that holds it
    /// leaves it out.
    pub inode: Option<(u64, u64)>,
}

impl Output {
    pub fn open(out: &std::path::Path) -> Result<(Output, Box<dyn Write + Send>)> {
        if out.as_os_str() == "-" {
            return Ok((
                Output {
                    tmp: None,
                    inode: None,
                },
                Box::new(std::io::stdout()),
            ));
        }
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = out
            .file_name()
            .with_context(|| format!("{}: not a file name", out.display()))?;
        let tmp = dir.join(format!(
            ".{}.haul-part.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: creating archive", tmp.display()))?;
        let inode = {
            use std::os::unix::fs::MetadataExt;
            f.metadata().ok().map(|m| (m.dev(), m.ino()))
        };
        Ok((
            Output {
                tmp: Some((tmp, out.to_path_buf())),
                inode,
            },
            Box::new(f),
        ))
    }

    pub fn commit(self) -> Result<()> {
        if let Some((tmp, out)) = self.tmp {
            std::fs::rename(&tmp, &out)
                .with_context(|| format!("{}: naming archive", out.display()))?;
        }
        Ok(())
    }

    pub fn abandon(self) {
        if let Some((tmp, _)) = self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn create(a: CreateArgs) -> Result<u8> {
    let Some(opts) = a.out.options(Filter::new(&a.exclude)?) else {
        return Ok(exit::USAGE);
    };
    let (out, w) = Output::open(&a.out.output)?;
    let mut opts = opts;
    opts.output_inode = out.inode;
    let reporter = Reporter::new(
        !a.no_progress && !a.json && !a.out.to_stdout(),
        change_sink(false, false),
    );
    let r = create_archive(&a.src, w, &opts, &reporter);
    reporter.finish();
    let s = match r {
        Ok(s) => s,
        Err(e) => {
            out.abandon();
            return Err(e.into());
        }
    };
    out.commit()?;
    report_archive(&s, a.json, "archived")
}

/// Reports an archive written (`archive create`, `snapshot download`):
/// the JSON summary on stdout, or failures, notices and a closing line
/// (`haul: VERB N entries, ...`) on stderr. Returns the exit code.
pub fn report_archive(s: &ArchiveSummary, json: bool, verb: &str) -> Result<u8> {
    let code = if s.failed_count() > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    };
    if json {
        let mut v = serde_json::to_value(s)?;
        v["ok"] = json!(code == exit::OK);
        v["exit_code"] = json!(code);
        v["failed"] = failed_json(&s.failed);
        let mut o = std::io::stdout().lock();
        serde_json::to_writer(&mut o, &v)?;
        writeln!(o)?;
        return Ok(code);
    }
    let mut err = std::io::stderr().lock();
    for i in &s.failed {
        writeln!(err, "{}", failed_line(&i.path, &i.reason))?;
    }
    for i in &s.notices {
        writeln!(
            err,
            "haul: notice: {}: {}",
            i.path.display(),
            escape_str(&i.reason)
        )?;
    }
    writeln!(
        err,
        "haul: {verb} {} entries, {} bytes of data into {} bytes of {} in {:.1}s",
        s.entries, s.bytes_in, s.bytes_out, s.format, s.seconds
    )?;
    Ok(code)
}

fn extract(a: ExtractArgs) -> Result<u8> {
    let inp = input(&a.input);
    let record = a.dry_run || a.verbose;
    let opts = ExtractOptions {
        paths: a.paths.clone(),
        jobs: a.jobs.unwrap_or(0),
        delete: a.delete,
        filter: Filter::new(&a.exclude)?,
        record_changes: record,
        no_same_permissions: a.no_same_permissions,
        write: WriteOptions {
            dry_run: a.dry_run,
            owner: !a.no_owner,
            xattrs: !a.no_xattrs,
            acls: !a.no_acls && !a.no_xattrs,
            ids: IdMap::new(),
        },
    };
    let reporter = Reporter::new(!a.no_progress && !a.json, change_sink(record, a.json));
    let r = extract_archive(&inp, &a.dst, &opts, &reporter);
    let changes = reporter.finish();
    let summary = match r {
        // A zip on stdin: its directory is at its end, so it needs a path.
        Err(e) if matches!(inp, ArchiveInput::Stdin) && e.kind() == ErrorKind::InvalidInput => {
            eprintln!("haul: error: {}", escape_str(&e.to_string()));
            return Ok(exit::USAGE);
        }
        r => r?,
    };
    crate::copy_cmd::report(&summary, a.json, a.verbose, &changes, &[])
}

fn kind_char(k: FileKind) -> char {
    match k {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDev => 'c',
        FileKind::BlockDev => 'b',
    }
}

fn mode_string(k: FileKind, m: u32) -> String {
    let mut s = String::new();
    s.push(kind_char(k));
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (b, c)) in bits.iter().enumerate() {
        let special = match i {
            2 => (m & 0o4000 != 0).then_some(('s', 'S')),
            5 => (m & 0o2000 != 0).then_some(('s', 'S')),
            8 => (m & 0o1000 != 0).then_some(('t', 'T')),
            _ => None,
        };
        s.push(match special {
            Some((lower, upper)) => {
                if m & b != 0 {
                    lower
                } else {
                    upper
                }
            }
            None if m & b != 0 => *c,
            None => '-',
        });
    }
    s
}

fn list(a: ListArgs) -> Result<u8> {
    let inp = input(&a.input);
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut werr: Option<std::io::Error> = None;
    if a.json {
        out.write_all(b"[")?;
    }
    let r = list_archive(&inp, &mut |m| {
        if werr.is_some() {
            return;
        }
        let r = if a.json {
            let sep = if first { "" } else { "," };
            serde_json::to_string(m)
                .map_err(std::io::Error::other)
                .and_then(|s| write!(out, "{sep}\n{s}"))
        } else {
            let mut line = format!(
                "{} {:>5}/{:<5} {:>12} {} {}",
                mode_string(m.kind, m.mode),
                m.uid,
                m.gid,
                m.size,
                m.mtime,
                escape_str(&m.path)
            );
            if let Some(t) = &m.target {
                line.push_str(&format!(" -> {}", escape_str(t)));
            }
            if let Some(h) = &m.hardlink {
                line.push_str(&format!(" link to {}", escape_str(h)));
            }
            writeln!(out, "{line}")
        };
        first = false;
        if let Err(e) = r {
            werr = Some(e);
        }
    });
    if let Some(e) = werr {
        return Err(e.into());
    }
    r.context("listing")?;
    if a.json {
        out.write_all(b"\n]\n")?;
    }
    Ok(exit::OK)
}
