//! The `haul` command line: maps flags to engine options and renders
//! progress and results. Exit codes are documented in the README and in
//! [`exit`].
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod archive_cmd;
mod copy_cmd;
mod exit;
mod remote_cmd;
mod render;
mod snapshot_cmd;
mod snapshot_io_cmd;

/// haul: fast, lossless tree transfer, snapshots and archives.
#[derive(Parser, Debug)]
#[command(
    name = "haul",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Exit codes: 0 success; 1 fatal error (the run could not proceed); 2 usage error; \
                  3 some entries failed; 4 some metadata not preserved; \
                  5 --verify or `snapshot check` found a difference."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make DST an exact mirror of the contents of SRC (like `rsync -aHAXS --numeric-ids SRC/ DST/`).
    Copy(copy_cmd::CopyArgs),
    /// Manage repositories.
    #[command(subcommand)]
    Repo(snapshot_cmd::RepoCommand),
    /// Zip, tar and tar.zst archives that other tools read and haul restores exactly.
    #[command(subcommand)]
    Archive(archive_cmd::ArchiveCommand),
    /// Deduplicated, compressed snapshots of trees in a repository.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// The other end of `haul copy` over ssh (run by ssh, or from a
    /// `command=` in authorized_keys).
    Serve(remote_cmd::ServeArgs),
    /// Ask a host (over ssh, or this one) what `migrate` needs to know:
    /// its users and groups, and whether a path is in use.
    Query(remote_cmd::QueryArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let json = match &cli.command {
        Command::Copy(a) => a.json,
        Command::Archive(c) => c.json(),
        Command::Repo(c) => c.json(),
        Command::Snapshot(c) => c.json(),
        Command::Serve(_) => false,
        Command::Query(_) => true,
    };
    let r = match cli.command {
        Command::Copy(args) => copy_cmd::run(args),
        Command::Archive(c) => archive_cmd::run(c),
        Command::Repo(c) => snapshot_cmd::run_repo(c),
        Command::Snapshot(c) => snapshot_cmd::run(c),
        Command::Serve(a) => remote_cmd::serve(a),
        Command::Query(a) => remote_cmd::query(a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A closed pipe (`haul ... | head`) is not a failure, with or
            // without --json.
            if is_broken_pipe(&e) {
                return ExitCode::from(exit::OK);
            }
            let msg = format!("{e:#}");
            if json {
                // One object a script can parse, as a run that got going prints.
                let v = serde_json::json!({"ok": false, "exit_code": exit::FATAL, "error": msg});
                let _ = writeln!(std::io::stdout(), "{v}");
            }
            // The message may carry a planted name: escape it.
            let _ = writeln!(
                std::io::stderr(),
                "haul: error: {}",
                render::escape_str(&msg)
            );
            ExitCode::from(exit::FATAL)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        // serde_json wraps the write error and does not give it as a source.
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}
