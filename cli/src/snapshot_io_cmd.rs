//! `haul snapshot download|upload` (aliases `export`, `import`): a
//! snapshot as an archive other tools read, and an archive as a snapshot.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use haul_engine::{ArchiveInput, ErrorKind, ImportOptions, Repository};
use serde_json::json;

use crate::archive_cmd::{report_archive, OutArgs, Output};
use crate::copy_cmd::{failed_json, failed_line, jobs_parser};
use crate::exit;
use crate::render::{escape_str, ChangeSink, Reporter};
use crate::snapshot_cmd::{ReadArgs, RepoArgs};

#[derive(Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Snapshot id (unique hex prefix) or `latest`.
    pub id: String,
    #[command(flatten)]
    pub out: OutArgs,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The archive (tar, tar.zst or zip, told by its content); `-` is stdin (tar and tar.zst).
    pub input: PathBuf,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Worker threads, 1-1024 [default: one per CPU].
    #[arg(short = 'j', long, value_name = "N", value_parser = jobs_parser())]
    pub jobs: Option<usize>,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn download(a: DownloadArgs) -> Result<u8> {
    let Some(opts) = a.out.options(Default::default()) else {
        return Ok(exit::USAGE);
    };
    let mut r = Repository::open(&a.repo.repo)?;
    r.on_warning(|m| eprintln!("haul: warning: {m}"));
    if a.repo.force_unlock {
        let n = r.force_unlock()?;
        eprintln!("haul: removed {n} lock(s)");
    }
    let r = if a.read.no_lock { r.without_locks() } else { r };
    // The snapshot is looked up before OUT is created: a typo leaves nothing.
    r.find_snapshot(&a.id)?;
    let (out, w) = Output::open(&a.out.output)?;
    let reporter = Reporter::new(
        !a.no_progress && !a.repo.json && a.out.output.as_os_str() != "-",
        ChangeSink::None,
    );
    let res = r.export_snapshot(&a.id, w, &opts, &reporter);
    reporter.finish();
    let s = match res {
        Ok(s) => s,
        Err(e) => {
            out.abandon();
            return Err(e.into());
        }
    };
    out.commit()?;
    report_archive(&s, a.repo.json, "wrote")
}

pub fn upload(a: UploadArgs) -> Result<u8> {
    let input = if a.input.as_os_str() == "-" {
        ArchiveInput::Stdin
    } else {
        ArchiveInput::Path(a.input.clone())
    };
    let mut r = Repository::open(&a.repo.repo)?;
    r.on_warning(|m| eprintln!("haul: warning: {m}"));
    if a.repo.force_unlock {
        let n = r.force_unlock()?;
        eprintln!("haul: removed {n} lock(s)");
    }
    let opts = ImportOptions {
        tags: a.tags,
        jobs: a.jobs.unwrap_or(0),
        time: None,
    };
    let reporter = Reporter::new(!a.no_progress && !a.repo.json, ChangeSink::None);
    let res = r.import_snapshot(&input, &opts, &reporter);
    reporter.finish();
    let s = match res {
        // A zip on stdin: its directory is at its end, so it needs a path.
        Err(e) if matches!(input, ArchiveInput::Stdin) && e.kind() == ErrorKind::InvalidInput => {
            eprintln!("haul: error: {}", escape_str(&e.to_string()));
            return Ok(exit::USAGE);
        }
        r => r?,
    };
    for n in &s.notices {
        eprintln!("haul: {}", escape_str(n));
    }
    let code = if s.failed.is_empty() && s.failed_not_listed == 0 {
        exit::OK
    } else {
        exit::SOME_FAILED
    };
    if a.repo.json {
        let mut v = serde_json::to_value(&s)?;
        v["ok"] = json!(code == exit::OK);
        v["exit_code"] = json!(code);
        v["failed"] = failed_json(&s.failed);
        let mut o = std::io::stdout().lock();
        serde_json::to_writer(&mut o, &v)?;
        writeln!(o)?;
    } else {
        for i in &s.failed {
            eprintln!("{}", failed_line(&i.path, &i.reason));
        }
        if s.failed_not_listed > 0 {
            eprintln!("haul: ... and {} more failed entries", s.failed_not_listed);
        }
        eprintln!(
            "{} files, {} dirs, {} symlinks, {} hardlinks, {} special ({} bytes); \
             added {} new ({} stored in {} packs) in {:.2}s",
            s.files,
            s.dirs,
            s.symlinks,
            s.hardlinks,
            s.specials,
            s.bytes,
            s.bytes_new,
            s.bytes_stored,
            s.packs,
            s.seconds
        );
        writeln!(std::io::stdout(), "snapshot {} saved", s.id.to_hex())?;
    }
    Ok(code)
}
