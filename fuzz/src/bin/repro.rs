//! Replays one input through one fuzz target, without libFuzzer:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin repro -- TARGET [FILE|DIR]...
//! ```
//!
//! With no file, reads stdin. A directory (a corpus) replays every file in it.
//! A panic is the reproduced crash; exit code 0 means every input passed.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

fn run(target: fn(&[u8]), path: &Path) -> std::io::Result<usize> {
    if path.is_dir() {
        let mut n = 0;
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            n += run(target, &e.path())?;
        }
        Ok(n)
    } else {
        eprintln!("{}", path.display());
        target(&std::fs::read(path)?);
        Ok(1)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = haul_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    let Some(target) = args
        .first()
        .and_then(|a| haul_fuzz::TARGETS.iter().find(|(n, _)| n == a))
        .map(|(_, f)| *f)
    else {
        eprintln!(
            "usage: repro TARGET [FILE|DIR]...   (targets: {})",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    if args.len() == 1 {
        let mut data = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut data) {
            eprintln!("repro: reading stdin: {e}");
            return ExitCode::from(2);
        }
        target(&data);
        eprintln!("1 input passed");
        return ExitCode::SUCCESS;
    }
    let mut total = 0;
    for p in &args[1..] {
        match run(target, Path::new(p)) {
            Ok(n) => total += n,
            Err(e) => {
                eprintln!("repro: {p}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    eprintln!("{total} inputs passed");
    ExitCode::SUCCESS
}
