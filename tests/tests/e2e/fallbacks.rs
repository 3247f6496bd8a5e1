//! End-to-end tests of the slow paths that no machine the tests run on takes by
//! itself: new files under a temporary name instead of `O_TMPFILE`, and data through
//! a userspace buffer instead of `FICLONE` or `copy_file_range`. The `haul` process
//! gets `HAUL_FORCE_FALLBACKS=1`, which makes those three calls answer "unsupported".
//!
//! The switch is proven by tracing haul with `strace` (Debian package `strace`, which
//! `scripts/test` installs): with it no such call is made and the temporary names and
//! the buffer's 256 KiB writes show; without it the fast calls do show, so the check
//! cannot pass by tracing nothing.
//!
//! Run as root (CI does): the full fixture needs root.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use haul_tests::fixture::{self, paths};
use haul_tests::repo::{is_id, jstr, os, stdout_json, Repo};
use haul_tests::util::{tmp, MIB};
use haul_tests::{
    assert_trees_equal, command_as, copy_args, require_root, run_to_end, walk, CompareOpts, Kind,
    RunResult, Tree,
};

const KIB: u64 = 1 << 10;

/// The engine's userspace copy buffer (`BUF` in engine/src/copy.rs).
const BUF: u64 = 256 * KIB;

/// The environment variable the engine reads once at start.
const SWITCH: &str = "HAUL_FORCE_FALLBACKS";

/// Files added beside the full fixture: one well over the buffer (several turns of the
/// loop), and a sparse one whose data extents span more than one buffer, with holes
/// between them and at the end.
const BIG: &str = "fallbacks/big";
const HOLES: &str = "fallbacks/holes";
const HOLES_SIZE: u64 = 8 * MIB;

/// The full fixture as root, plus [`BIG`] and [`HOLES`].
fn build_source(src: &Path) {
    fixture::build_full_as_root(src);
    fixture::mkdir(&src.join("fallbacks"));
    fixture::write_file(
        &src.join(BIG),
        &fixture::random_bytes("fallbacks big", (4 * BUF + 12_345) as usize),
    );
    fixture::make_sparse(
        &src.join(HOLES),
        HOLES_SIZE,
        &[
            (0, fixture::random_bytes("holes a", (3 * BUF) as usize)),
            (
                2 * MIB,
                fixture::random_bytes("holes b", (BUF + 64 * KIB) as usize),
            ),
            (
                5 * MIB,
                fixture::random_bytes("holes c", (16 * KIB) as usize),
            ),
        ],
    );
}

fn strace_bin() -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("strace");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "strace is missing: these tests trace haul with it to prove that {SWITCH}=1 \
         turns the fast paths off; install the Debian package strace (scripts/test does)"
    );
}

/// Runs `haul ARGS` under strace, with the switch set or unset, tracing the calls the
/// switch is about and the writes; returns the run and the trace. `TZ=UTC` and no
/// `HAUL_REPO`, like the repository helpers.
fn traced(args: Vec<OsString>, forced: bool, log: &Path) -> (RunResult, String) {
    let mut cmd = command_as(&strace_bin(), None);
    cmd.args(["-f", "-qq", "-s", "0", "-e", "signal=none"])
        .args(["-e", "trace=openat,copy_file_range,ioctl,pwrite64"])
        .arg("-o")
        .arg(log)
        .arg("--")
        .arg(haul_tests::haul_bin())
        .args(&args)
        .env("TZ", "UTC")
        .env_remove("HAUL_REPO");
    if forced {
        cmd.env(SWITCH, "1");
    } else {
        cmd.env_remove(SWITCH);
    }
    let r = run_to_end(cmd, args);
    let trace = fs::read_to_string(log).unwrap_or_else(|e| {
        panic!(
            "strace wrote no trace at {}: {e}\n{}",
            log.display(),
            r.describe()
        )
    });
    (r, trace)
}

/// The trace's lines that contain `needle`.
fn lines_with<'a>(trace: &'a str, needle: &str) -> Vec<&'a str> {
    trace.lines().filter(|l| l.contains(needle)).collect()
}

/// Lines of a traced forced run that show a fast path the switch should have turned off.
fn fast_calls(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter(|l| {
            l.contains("O_TMPFILE") || l.contains("copy_file_range(") || l.contains("FICLONE")
        })
        .collect()
}

/// New files created under a temporary name (the fallback for `O_TMPFILE`).
fn tmp_creates(trace: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.contains("openat(") && l.contains(".haul-tmp.") && l.contains("O_EXCL"))
        .count()
}

/// Non-empty regular files of a walked tree, a hardlink group counted once (its later
/// names are links, not new files). An empty file is created under its own name.
fn regular_files(tree: &Tree) -> usize {
    tree.values()
        .filter(|e| e.kind == Kind::File && e.size > 0)
        .map(|e| (e.dev, e.ino))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Writes of one whole buffer: turns of the userspace copy loop.
fn buffer_writes(trace: &str) -> usize {
    let full = format!(", {BUF}, ");
    trace
        .lines()
        .filter(|l| l.contains("pwrite64(") && l.contains(&full))
        .count()
}

/// The holes of [`HOLES`] are kept: the same data segments as in SRC (all its pieces are
/// block-aligned), and far less allocated than its size.
fn assert_holes_kept(s: &Tree, d: &Tree, context: &str) {
    let (x, y) = (&s[Path::new(HOLES)], &d[Path::new(HOLES)]);
    assert_eq!(y.size, HOLES_SIZE, "{context}");
    assert_eq!(
        x.data_segments, y.data_segments,
        "{context}: the sparse file's data segments changed"
    );
    assert!(
        y.allocated < 2 * MIB,
        "{context}: an 8 MiB file with ~1.1 MiB of data allocates {} bytes",
        y.allocated
    );
    let big = &d[Path::new(paths::SPARSE)];
    assert!(
        big.allocated < MIB,
        "{context}: the fixture's 1 GiB sparse file allocates {} bytes",
        big.allocated
    );
}

#[test]
fn copy_round_trip_with_fallbacks_forced_as_root() {
    require_root("copy_round_trip_with_fallbacks_forced_as_root");
    let t = tmp();
    let src = t.path().join("src");
    build_source(&src);

    let dst = t.path().join("dst");
    let (r, trace) = traced(
        copy_args(&[], &src, &dst),
        true,
        &t.path().join("forced.trace"),
    );
    r.expect_clean();
    let s = walk(&src);
    let d = walk(&dst);
    assert_trees_equal(
        &s,
        &d,
        &CompareOpts::default(),
        "copy with the fallbacks forced",
    );
    assert_holes_kept(&s, &d, "copy with the fallbacks forced");

    let fast = fast_calls(&trace);
    assert!(
        fast.is_empty(),
        "with {SWITCH}=1 haul still tried a fast path:\n{}",
        fast.join("\n")
    );
    let files = regular_files(&s);
    assert!(
        tmp_creates(&trace) >= files,
        "with {SWITCH}=1 only {} new files were created under a temporary name, for {files} \
         non-empty files",
        tmp_creates(&trace)
    );
    // BIG: 4 full buffers; HOLES: 3 in its first extent, 1 in its second.
    assert!(
        buffer_writes(&trace) >= 8,
        "with {SWITCH}=1 the userspace loop wrote {} whole {BUF}-byte buffers, expected at \
         least 8:\n{}",
        buffer_writes(&trace),
        lines_with(&trace, "pwrite64(").join("\n")
    );

    // The same copy without the switch does make the fast calls, so the check above
    // is not passing on a trace that misses them.
    let dst2 = t.path().join("dst2");
    let (r, trace) = traced(
        copy_args(&[], &src, &dst2),
        false,
        &t.path().join("plain.trace"),
    );
    r.expect_clean();
    assert_trees_equal(
        &s,
        &walk(&dst2),
        &CompareOpts::default(),
        "copy without the switch",
    );
    for call in ["O_TMPFILE", "copy_file_range(", "FICLONE"] {
        assert!(
            !lines_with(&trace, call).is_empty(),
            "without {SWITCH} the trace shows no {call}: is strace tracing haul?"
        );
    }
}

#[test]
fn restore_round_trip_with_fallbacks_forced_as_root() {
    require_root("restore_round_trip_with_fallbacks_forced_as_root");
    let t = tmp();
    let src = t.path().join("src");
    build_source(&src);
    let repo = Repo::new(t.path().join("repo"));
    let r = repo.create_raw(&[&src], &[]);
    r.expect_code(0);
    let id = jstr(&stdout_json(&r), "id").to_string();
    assert!(is_id(&id), "{}", r.describe());

    let restore = |dst: &Path| {
        vec![
            os("snapshot"),
            os("restore"),
            os(&id),
            os(dst),
            os("--json"),
            os("--no-progress"),
            os("--repo"),
            os(&repo.root),
        ]
    };
    let s = walk(&src);

    let dst = t.path().join("dst");
    let (r, trace) = traced(restore(&dst), true, &t.path().join("forced.trace"));
    r.expect_clean();
    let d = walk(&dst);
    assert_trees_equal(
        &s,
        &d,
        &CompareOpts::default(),
        "restore with the fallbacks forced",
    );
    assert_holes_kept(&s, &d, "restore with the fallbacks forced");
    let fast = fast_calls(&trace);
    assert!(
        fast.is_empty(),
        "with {SWITCH}=1 restore still tried a fast path:\n{}",
        fast.join("\n")
    );
    let files = regular_files(&s);
    assert!(
        tmp_creates(&trace) >= files,
        "with {SWITCH}=1 restore created only {} new files under a temporary name, for \
         {files} non-empty files",
        tmp_creates(&trace)
    );

    let dst2 = t.path().join("dst2");
    let (r, trace) = traced(restore(&dst2), false, &t.path().join("plain.trace"));
    r.expect_clean();
    assert_trees_equal(
        &s,
        &walk(&dst2),
        &CompareOpts::default(),
        "restore without the switch",
    );
    assert!(
        !lines_with(&trace, "O_TMPFILE").is_empty(),
        "without {SWITCH} the restore trace shows no O_TMPFILE: is strace tracing haul?"
    );
}
